"""`tf-esm embed --runner` / `tf_esm.pipelines.beam`: the Apache Beam pipeline against the one-process embedding.

The main test runs Beam's DirectRunner with two worker processes (multi_processing) on two FASTA shards (one gzip,
one with sequences wrapped over several lines): every record must come out exactly once, with the numbers
`embed_sequences` (what `tf-esm embed` runs) gives in one process, in the Parquet layout of
`tf_esm.io.parquet_store`. The others use the in-memory DirectRunner (one process) for the command line's wiring and
its errors.
"""

import gzip
import os

import numpy as np
import pytest

import pyarrow.parquet as pq  # the `beam` extra is part of the `test` extra: conftest fails the session without it

from tf_esm.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LETTERS = np.array(list("ACDEFGHIKLMNPQRSTVWY"))


def _records(rng, prefix, count):
    return [(f"{prefix}{i}", "".join(rng.choice(LETTERS, int(rng.integers(3, 45))))) for i in range(count)]


@pytest.fixture
def shards(tmp_path):
    """Two FASTA shards: 14 records wrapped at 10 residues per line (gzip), 11 on one line each."""
    rng = np.random.default_rng(7)
    first, second = _records(rng, "alpha_", 14), _records(rng, "beta_", 11)
    directory = tmp_path / "shards"
    directory.mkdir()
    wrapped = "".join(f">{name} some description\n" + "".join(sequence[i:i + 10] + "\n"
                                                              for i in range(0, len(sequence), 10))
                      for name, sequence in first)
    (directory / "a.fasta.gz").write_bytes(gzip.compress(wrapped.encode()))
    (directory / "b.fasta").write_text("".join(f">{name}\n{sequence}\n" for name, sequence in second))
    return directory, dict(first + second)


@pytest.fixture
def checkpoint(reference_checkpoints):
    return reference_checkpoints("rotary")


def _read_shards(directory):
    paths = sorted(directory.glob("part-*.parquet"))
    assert paths, f"no shards in {directory}: {sorted(os.listdir(directory))}"
    return paths, pq.read_table(paths).to_pylist()


def test_two_worker_processes_embed_every_record_once_as_one_process_does(tmp_path, shards, checkpoint,
                                                                           monkeypatch):
    from tf_esm import TFEsmModel
    from tf_esm.io.parquet_store import embedding_schema, schema_settings
    from tf_esm.pipelines.beam import embed_files
    from tf_esm.pipelines.inference import embed_sequences

    # The worker processes import tf_esm from this checkout.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    directory, expected = shards
    output = tmp_path / "out"
    options = dict(repr_layers=[0, -1], include=["mean", "per_tok", "bos"], max_tokens_per_batch=96,
                   truncation_seq_length=30)
    summary = embed_files(checkpoint.path, str(directory / "*.fasta*"), str(output), pipeline_args=[
        "--runner", "DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"], **options)

    paths, rows = _read_shards(output)
    assert summary["files"] == 2 and summary["records"] == len(expected)
    assert summary["models_used"] == 2  # two worker processes, each loading the model once for all its bundles
    assert sorted(summary["shards"]) == [str(path) for path in paths]
    ids = [row["id"] for row in rows]
    assert sorted(ids) == sorted(expected)  # every record exactly once
    assert len(ids) == len(set(ids))

    model = TFEsmModel.from_pretrained(checkpoint.path, add_pooling_layer=False)
    names = sorted(expected)
    reference = dict(zip(names, embed_sequences(model, [expected[name] for name in names], **options)))
    schema = embedding_schema(["bos", "mean", "per_tok"], [0, 2], 32)
    for path in paths:  # the layout every tf_esm Parquet writer uses, with the run's settings
        assert pq.read_schema(path).remove_metadata() == schema
        assert schema_settings(pq.read_schema(path))["repr_layers"] == [0, 2]
    worst = 0.0
    for row in rows:
        result, sequence = reference[row["id"]], expected[row["id"]]
        assert row["sequence_length"] == len(sequence)
        assert row["length"] == result["length"] == min(len(sequence), 30)
        assert row["truncated"] == (len(sequence) > 30)
        for layer in (0, 2):
            for column, values in ((f"mean_{layer}", result["mean_representations"][layer]),
                                   (f"bos_{layer}", result["bos_representations"][layer]),
                                   (f"per_tok_{layer}", result["representations"][layer])):
                got = np.asarray(row[column], dtype=np.float32)
                np.testing.assert_allclose(got, values, rtol=0, atol=1e-5, err_msg=f"{row['id']} {column}")
                worst = max(worst, float(np.max(np.abs(got - values))))
    assert any(row["truncated"] for row in rows) and not all(row["truncated"] for row in rows)
    print(f"max |beam - one process| = {worst:.3g}")


def test_cli_runner_matches_the_one_process_command(tmp_path, shards, checkpoint, capsys):
    directory, expected = shards
    output = tmp_path / "beam_out"
    code = main(["embed", checkpoint.path, str(directory / "*.fasta*"), str(output), "--runner", "DirectRunner",
                 "--repr-layers", "-1", "--max-tokens-per-batch", "128", "--", "--direct_num_workers=1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"embedded {len(expected)} records from 2 files" in err
    _, rows = _read_shards(output)
    assert sorted(row["id"] for row in rows) == sorted(expected)

    # The one-process command on the same records (one file) gives the same means.
    single = tmp_path / "all.fasta"
    single.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in expected.items()))
    code = main(["embed", checkpoint.path, str(single), str(tmp_path / "npz"), "--repr-layers", "-1", "-q"])
    assert code == 0, capsys.readouterr().err
    for row in rows:
        with np.load(tmp_path / "npz" / f"{row['id']}.npz") as stored:
            np.testing.assert_allclose(np.asarray(row["mean_2"], np.float32), stored["mean_2"], rtol=0, atol=1e-5)

    # A second run does not silently mix with the first one's shards.
    code = main(["embed", checkpoint.path, str(directory / "*.fasta*"), str(output), "--runner", "DirectRunner"])
    assert code == 2
    assert "does not resume" in capsys.readouterr().err


def test_duplicate_ids_across_files_fail_before_anything_is_written(tmp_path, shards, checkpoint, capsys):
    directory, _ = shards
    (directory / "c.fasta").write_text(">beta_3\nMKV\n>gamma\nMKT\n")
    output = tmp_path / "out"
    code = main(["embed", checkpoint.path, str(directory / "*"), str(output), "--runner", "DirectRunner"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "duplicate record id 'beta_3'" in err and "c.fasta" in err and "b.fasta" in err
    assert not output.exists()  # neither shards nor Beam's temporary directory are left behind


@pytest.mark.parametrize("arguments, message", [
    (["{shards}/*.none", "{out}", "--runner", "DirectRunner"], "no FASTA file matches this pattern"),
    (["{shards}/*.fasta", "{out}.h5", "--runner", "DirectRunner"], "not HDF5"),
    (["{shards}/b.fasta", "{out}", "--", "--direct_num_workers=2"], "pass --runner too"),
    (["{shards}/*.fasta", "{out}", "--runner", "DirectRunner", "--", "--runner=FlinkRunner"], "pass the runner once"),
])
def test_cli_runner_errors(tmp_path, shards, checkpoint, capsys, arguments, message):
    directory, _ = shards
    arguments = [a.format(shards=directory, out=tmp_path / "out") for a in arguments]
    code = main(["embed", checkpoint.path, *arguments])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "out").exists()
