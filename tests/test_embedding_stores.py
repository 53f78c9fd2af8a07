"""The stores of `tf-esm embed` (columnar HDF5, Parquet) and `tf_esm.io.read_embeddings`.

Round trips go through the real command and compare with `embed_sequences` in-process (which tests/test_inference.py
checks against PyTorch); the crash tests SIGKILL a writer process at random moments; the size and memory tests
hold the issue-14 targets on small sizes (file <= 1.5x the raw float32 + id bytes; RSS growth bounded).
"""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests._tiny_mlm_fixtures import checkpoint, model  # noqa: F401 (pytest fixtures)
from tf_esm.cli import main
from tf_esm.io import read_embeddings
from tf_esm.io.embedding_reader import EmbeddingReadError
from tf_esm.io.embedding_stores import EmbeddingStoreError, sequence_digest
from tf_esm.io.hdf5_store import LAYOUT, Hdf5Store
from tf_esm.io.parquet_store import ParquetStore, embedding_schema, result_to_row, rows_to_table, shard_paths
from tf_esm.pipelines.inference import embed_sequences

RECORDS = {"alpha": "MKTAYIAKQRQISFVKSH", "beta": "GSHMLEDPVAAL", "gamma/2": "WCYNQ",
           "long": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRV"}
TRUNCATION = 30
OPTIONS = ["--repr-layers", "0", "-1", "--include", "mean", "per_tok", "bos", "contacts",
           "--truncation-seq-length", str(TRUNCATION)]
DIM = 32  # the tiny rotary checkpoint's hidden size
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fasta(path, records):
    path.write_text("".join(f">{key}\n{sequence}\n" for key, sequence in records.items()))
    return str(path)


def _embed(capsys, *args):
    code = main([str(arg) for arg in args])
    err = capsys.readouterr().err
    assert code == 0, err
    return err


@pytest.fixture(scope="module")
def expected(model):
    """`embed_sequences` in-process, per record id: the numbers every store must hold."""
    results = embed_sequences(model, list(RECORDS.values()), repr_layers=[0, -1],
                              include=["mean", "per_tok", "bos", "contacts"], truncation_seq_length=TRUNCATION)
    return dict(zip(RECORDS, results))


def _check_reader(path, expected):
    """Every kind and layer through read_embeddings equals the in-process results, in FASTA order."""
    for kind, field in (("mean", "mean_representations"), ("bos", "bos_representations"),
                        ("per_tok", "representations")):
        for layer in (0, 2, -1):
            ids, values = read_embeddings(path, kind, layer)
            assert ids == list(RECORDS)
            absolute = 2 if layer == -1 else layer
            for record_id, value in zip(ids, values):
                np.testing.assert_allclose(value, expected[record_id][field][absolute], atol=1e-6)
            if kind != "per_tok":
                assert values.shape == (len(RECORDS), DIM) and values.dtype == np.float32
    ids, contacts = read_embeddings(path, "contacts")
    assert ids == list(RECORDS)
    for record_id, value in zip(ids, contacts):
        np.testing.assert_allclose(value, expected[record_id]["contacts"], atol=1e-6)


def test_hdf5_layout_and_round_trip(tmp_path, capsys, checkpoint, expected):
    output = tmp_path / "out.h5"
    _embed(capsys, "embed", checkpoint.path, _fasta(tmp_path / "in.fasta", RECORDS), output, *OPTIONS)
    assert sorted(os.listdir(tmp_path)) == ["in.fasta", "out.h5"]  # no journal, no temporary file
    with h5py.File(output, "r") as handle:
        assert handle.attrs["tf_esm_layout"] == LAYOUT
        settings = json.loads(handle.attrs["tf_esm_embed"])
        assert settings["repr_layers"] == [0, 2] and settings["hidden_size"] == DIM
        assert sorted(handle) == ["bos", "contacts", "contacts_offsets", "ids", "input_indices", "lengths", "mean",
                                  "per_tok", "per_tok_offsets", "sequence_lengths", "sequence_sha256",
                                  "truncated", "windows"]
        np.testing.assert_array_equal(handle["windows"][()], 1)  # --truncation-seq-length: truncated, not windowed
        # Rows in computed order (longest first), each with its FASTA position.
        assert [list(RECORDS)[i] for i in handle["input_indices"][()]] == list(handle["ids"].asstr()[()])
        ids = list(handle["ids"].asstr()[()])
        assert sorted(ids) == sorted(RECORDS)
        lengths = [min(len(RECORDS[i]), TRUNCATION) for i in ids]
        np.testing.assert_array_equal(handle["lengths"][()], lengths)
        np.testing.assert_array_equal(handle["sequence_lengths"][()], [len(RECORDS[i]) for i in ids])
        np.testing.assert_array_equal(handle["truncated"][()], [i == "long" for i in ids])
        np.testing.assert_array_equal(handle["per_tok_offsets"][()], np.concatenate([[0], np.cumsum(lengths)]))
        np.testing.assert_array_equal(handle["contacts_offsets"][()],
                                      np.concatenate([[0], np.cumsum(np.square(lengths))]))
        for kind in ("mean", "bos"):
            assert sorted(handle[kind]) == ["0", "2"]
            assert handle[f"{kind}/2"].shape == (4, DIM) and handle[f"{kind}/2"].maxshape == (None, DIM)
        assert handle["per_tok/0"].shape == (sum(lengths), DIM) and handle["per_tok/0"].chunks is not None
        row = ids.index("alpha")
        np.testing.assert_allclose(handle["mean/2"][row], expected["alpha"]["mean_representations"][2], atol=1e-6)
    _check_reader(output, expected)


@pytest.mark.parametrize("target", ["out.parquet", "shards"])
def test_parquet_round_trip_and_other_readers(tmp_path, capsys, checkpoint, expected, target):
    output = tmp_path / target
    _embed(capsys, "embed", checkpoint.path, _fasta(tmp_path / "in.fasta", RECORDS), output, *OPTIONS,
           "--format", "parquet")
    if target == "shards":
        assert os.listdir(output) == ["part-00000.parquet"]
    else:
        assert sorted(os.listdir(tmp_path)) == ["in.fasta", "out.parquet"]  # the .parts directory is gone
    _check_reader(output, expected)
    table = pq.read_table(output)  # plain pyarrow: a file or a directory of shards
    assert table.column_names == ["id", "length", "sequence_length", "truncated", "windows", "input_index",
                                  "sequence_sha256",
                                  "mean_0", "mean_2", "bos_0", "bos_2", "per_tok_0", "per_tok_2", "contacts"]
    assert table.schema.field("mean_2").type == pa.list_(pa.float32(), DIM)
    assert table.schema.field("per_tok_2").type == pa.list_(pa.list_(pa.float32(), DIM))
    row = table.column("id").to_pylist().index("gamma/2")
    np.testing.assert_allclose(np.asarray(table.column("mean_2")[row].as_py()),
                               expected["gamma/2"]["mean_representations"][2], atol=1e-6)
    np.testing.assert_allclose(np.asarray(table.column("contacts")[row].as_py()).reshape(5, 5),
                               expected["gamma/2"]["contacts"], atol=1e-6)
    import duckdb
    import pandas

    frame = pandas.read_parquet(output)
    assert isinstance(frame, pandas.DataFrame) and len(frame) == 4
    np.testing.assert_allclose(np.asarray(frame.set_index("id").loc["gamma/2", "mean_2"]),
                               expected["gamma/2"]["mean_representations"][2], atol=1e-6)
    # DuckDB reads the BYTE_STREAM_SPLIT floats and the shard directory by a glob, and SQL sees typed columns.
    source = str(output / "*.parquet") if target == "shards" else str(output)
    ids, lengths, means = zip(*duckdb.sql(f"SELECT id, length, mean_2 FROM read_parquet('{source}') ORDER BY id")
                              .fetchall())
    assert list(ids) == sorted(RECORDS)
    for record_id, length, mean in zip(ids, lengths, means):
        assert length == len(expected[record_id]["representations"][2])
        np.testing.assert_allclose(np.asarray(mean), expected[record_id]["mean_representations"][2], atol=1e-6)


def test_schema_and_rows_for_other_writers(expected):
    """What a Beam pipeline does: rows of `result_to_row` into `pyarrow` by the schema (row by row, as its sink)."""
    schema = embedding_schema(["mean", "per_tok"], [0, 2], DIM, settings={"model": "x"})
    rows = [result_to_row(expected[key], key, len(RECORDS[key]), schema, index, sequence_digest(RECORDS[key]))
            for index, key in enumerate(RECORDS)]
    assert pa.Table.from_pylist(rows, schema=schema).equals(rows_to_table(rows, schema))
    with pytest.raises(ValueError, match=r"record 'alpha': no mean representation of layer 5"):
        result_to_row(expected["alpha"], "alpha", 18, embedding_schema(["mean"], [5], DIM), 0)
    with pytest.raises(ValueError, match=r"record 'alpha': mean_2 has shape \(32,\), expected \(4,\)"):
        result_to_row(expected["alpha"], "alpha", 18, embedding_schema(["mean"], [2], 4), 0)


def test_resume_keeps_old_rows_and_refuses_other_settings(tmp_path, capsys, checkpoint, expected):
    first = _fasta(tmp_path / "first.fasta", {key: RECORDS[key] for key in ("alpha", "beta")})  # a prefix
    full = _fasta(tmp_path / "full.fasta", RECORDS)
    for output in (tmp_path / "out.h5", tmp_path / "out.parquet", tmp_path / "shards"):
        extra = ["--format", "parquet"] if output.name == "shards" else []
        _embed(capsys, "embed", checkpoint.path, first, output, *OPTIONS, *extra)
        before = read_embeddings(output, "per_tok", 2)
        err = _embed(capsys, "embed", checkpoint.path, full, output, *OPTIONS, *extra)
        assert err.endswith("(2 already there, skipped).\n"), err
        ids, values = read_embeddings(output, "per_tok", 2)
        assert ids[:2] == before[0]
        for old, new in zip(before[1], values):
            np.testing.assert_array_equal(old, new)  # carried over bit for bit
        _check_reader(output, expected)
        code = main([str(a) for a in ("embed", checkpoint.path, full, output, "--include", "bos", *extra)])
        err = capsys.readouterr().err
        assert code == 2 and "was written with other settings" in err, err


FORMATS = [("out.h5", []), ("out.parquet", []), ("shards", ["--format", "parquet"]), ("npz", [])]


@pytest.mark.parametrize("name,extra", FORMATS)
def test_records_read_back_in_fasta_order(tmp_path, capsys, checkpoint, model, name, extra):
    """Stored as computed (longest first), read back in FASTA order (lengths 18, 12, 5, 40 here), each vector the
    one-sequence embedding; `embed_sequences` returns the same order."""
    output = tmp_path / name
    _embed(capsys, "embed", checkpoint.path, _fasta(tmp_path / "in.fasta", RECORDS), output, *extra)
    ids, means = read_embeddings(output)
    assert ids == list(RECORDS)
    together = embed_sequences(model, list(RECORDS.values()))
    for index, (record_id, sequence) in enumerate(RECORDS.items()):
        alone = embed_sequences(model, [sequence])[0]["mean_representations"][2]
        np.testing.assert_allclose(means[index], alone, atol=1e-5)
        np.testing.assert_allclose(together[index]["mean_representations"][2], alone, atol=1e-5)


def _refused(capsys, *args):
    code = main([str(arg) for arg in args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("tf-esm: error: OUTPUT "), err
    assert "--overwrite" in err, err
    return err


@pytest.mark.parametrize("name,extra", FORMATS)
def test_resume_refuses_changed_sequences_other_fastas_and_moved_records(tmp_path, capsys, checkpoint, name,
                                                                         extra):
    """Resume compares each stored record with the FASTA: never a stale vector, never another file's records."""
    output = tmp_path / name
    _embed(capsys, "embed", checkpoint.path, _fasta(tmp_path / "in.fasta", RECORDS), output, *extra)
    before = read_embeddings(output)

    changed = _fasta(tmp_path / "changed.fasta", {**RECORDS, "beta": "GSHMLEDPVAAW"})
    err = _refused(capsys, "embed", checkpoint.path, changed, output, *extra)
    assert "the sequence of 1 record(s) in this FASTA differs from the one embedded ('beta')" in err, err
    other = _fasta(tmp_path / "other.fasta", {"delta": "MKV", **RECORDS})
    err = _refused(capsys, "embed", checkpoint.path, other, output, *extra)
    assert "record 'alpha' is record 2 of this FASTA but was record 1" in err, err
    subset = _fasta(tmp_path / "subset.fasta", {"alpha": RECORDS["alpha"], "delta": "MKV"})
    err = _refused(capsys, "embed", checkpoint.path, subset, output, *extra)
    assert "holds 3 record(s) that are not in this FASTA ('beta', 'gamma/2', 'long')" in err, err
    ids, means = read_embeddings(output)
    assert ids == before[0]
    np.testing.assert_array_equal(means, before[1])  # nothing was written

    _embed(capsys, "embed", checkpoint.path, changed, output, *extra, "--overwrite")
    ids, means = read_embeddings(output)
    assert ids == list(RECORDS) and not np.allclose(means[1], before[1][1])


def test_resume_refuses_another_model_saved_under_the_same_path(tmp_path, capsys, checkpoint):
    """The settings carry a fingerprint of the model: a directory re-saved after fine-tuning is another model."""
    from tf_esm import TFEsmForMaskedLM

    model_dir = tmp_path / "model"
    TFEsmForMaskedLM.from_pretrained(checkpoint.path).save_pretrained(model_dir)
    fasta, output = _fasta(tmp_path / "in.fasta", RECORDS), tmp_path / "out.h5"
    _embed(capsys, "embed", model_dir, fasta, output)
    tuned = TFEsmForMaskedLM.from_pretrained(model_dir)
    embeddings = tuned.esm.embeddings.word_embeddings.embeddings
    embeddings.assign(embeddings.numpy() + 0.01)
    tuned.save_pretrained(model_dir, overwrite=True)
    err = _refused(capsys, "embed", model_dir, fasta, output)
    assert "was written with other settings (model_sha256: " in err, err


def test_old_per_record_layout_is_not_resumed_but_is_read(tmp_path, capsys, checkpoint, expected):
    """An .h5 of earlier versions (one group per record): resuming it is a clear error; the reader reads it."""
    old = tmp_path / "old.h5"
    with h5py.File(old, "w") as handle:
        handle.attrs["tf_esm_embed"] = json.dumps({"model": "m"})
        for key in ("alpha", "beta"):
            group = handle.create_group(key)
            group["mean/2"] = expected[key]["mean_representations"][2]
            group.attrs["id"] = key
    code = main([str(a) for a in ("embed", checkpoint.path, _fasta(tmp_path / "in.fasta", RECORDS), old)])
    err = capsys.readouterr().err
    assert code == 2 and "per-record layout of an older 'tf-esm embed'" in err and err.count("\n") == 1, err
    ids, means = read_embeddings(old)
    assert ids == ["alpha", "beta"]
    np.testing.assert_array_equal(means[1], expected["beta"]["mean_representations"][2])


def test_reader_errors_name_what_is_there(tmp_path, capsys, checkpoint):
    output = tmp_path / "out.h5"
    _embed(capsys, "embed", checkpoint.path, _fasta(tmp_path / "in.fasta", RECORDS), output, "--include", "mean")
    with pytest.raises(EmbeddingReadError, match=r"holds no bos representations \(it has mean/2\)"):
        read_embeddings(output, "bos")
    with pytest.raises(EmbeddingReadError, match=r"layer 1 of mean is not stored; stored layers: \[2\]"):
        read_embeddings(output, "mean", 1)
    with pytest.raises(EmbeddingReadError, match="kind must be one of"):
        read_embeddings(output, "logits")
    with pytest.raises(EmbeddingReadError, match="no such file"):
        read_embeddings(tmp_path / "missing.h5")


# ------------------------------------------------------------------------------- crash safety, size and memory

WRITER = textwrap.dedent("""
    import sys, time, numpy as np
    from tf_esm.io.hdf5_store import Hdf5Store
    from tf_esm.io.parquet_store import ParquetStore

    kind, path, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store_class = Hdf5Store if kind == "h5" else ParquetStore
    include = ["mean", "per_tok"]

    def result(index):
        length = 1 + index % 7
        base = np.arange(length * 8, dtype=np.float32).reshape(length, 8) + index
        return {"length": length, "truncated": False, "mean_representations": {2: base.mean(0)},
                "representations": {2: base}}

    while True:  # runs of 150 records each, as repeated commands would: resume, add, checkpoint, commit
        store = store_class(path, {"model": "synthetic"}, False, 0.02, include, [2], 8)
        todo = [i for i in range(total) if f"r{i}" not in store.done][:150]
        if not todo:
            store.discard()  # as `tf-esm embed` does when nothing is left: merges a killed run's journal
            break
        for index in todo:
            store.add(f"r{index}", 1 + index % 7, result(index))
            time.sleep(0.002)  # about 4 s of records in all: room for the kills to land
        store.commit()
""")


def _synthetic_check(path, total=None):
    ids, means = read_embeddings(path)
    ids_tok, per_tok = read_embeddings(path, "per_tok")
    assert ids == ids_tok and len(set(ids)) == len(ids)
    for record_id, mean, rows in zip(ids, means, per_tok):
        index = int(record_id[1:])
        base = np.arange((1 + index % 7) * 8, dtype=np.float32).reshape(-1, 8) + index
        np.testing.assert_array_equal(rows, base)
        np.testing.assert_array_equal(mean, base.mean(0))
    if total is not None:
        assert sorted(ids) == [f"r{i}" for i in sorted(range(total), key=lambda i: f"r{i}")]
    return len(ids)


@pytest.mark.parametrize("kind,name", [("h5", "out.h5"), ("parquet", "out.parquet"), ("parquet", "shards")])
def test_sigkill_at_random_moments_leaves_valid_resumable_output(tmp_path, kind, name):
    """Kill the writer 5 times at random moments (inside segment writes, merges, renames): each time OUTPUT (if
    any) reads back with only complete, correct rows, and the next run carries on to the full set."""
    path = str(tmp_path / name)
    total, rng = 2000, random.Random(14)
    command = [sys.executable, "-c", WRITER, kind, path, str(total)]
    env = dict(os.environ, PYTHONPATH=REPO)
    kills = 0
    for _ in range(5):
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.6, 1.6))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        _, err = process.communicate()
        assert process.returncode in (0, -signal.SIGKILL), err.decode()[-2000:]
        # OUTPUT exists once records are durable: the .h5 or .parquet file, or the first shard of the directory
        # (which the run creates at its start: a kill before the first shard leaves it without one).
        if os.path.isfile(path) or (os.path.isdir(path) and shard_paths(path)):
            _synthetic_check(path)
    assert kills >= 3, "the writer finished too fast for the kills to land"
    finish = subprocess.run(command, env=env, capture_output=True, timeout=300)
    assert finish.returncode == 0, finish.stderr.decode()[-2000:]
    assert _synthetic_check(path, total) == total
    leftovers = [entry for entry in os.listdir(tmp_path) if entry != name]
    assert leftovers == [], leftovers  # no journal, .parts directory or temporary file left
    if kind == "parquet" and name == "shards":
        assert not [entry for entry in os.listdir(path) if entry.startswith(".")]


def _synthetic_results(count, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    for index in range(count):
        yield f"rec{index:07d}", {"length": 20, "truncated": False,
                                  "mean_representations": {2: rng.standard_normal(dim).astype(np.float32)}}


@pytest.mark.parametrize("kind", ["h5", "parquet"])
def test_file_size_is_within_one_and_a_half_times_the_raw_bytes(tmp_path, kind):
    count, dim = 4000, 64
    path = str(tmp_path / ("out.h5" if kind == "h5" else "out.parquet"))
    store_class = Hdf5Store if kind == "h5" else ParquetStore
    store = store_class(path, {"model": "synthetic"}, False, 1e9, ["mean"], [2], dim)
    raw = 0
    for record_id, result in _synthetic_results(count, dim):
        store.add(record_id, 20, result)
        raw += dim * 4 + len(record_id.encode())
    store.commit()
    size = os.path.getsize(path)
    assert size <= 1.5 * raw, f"{size} bytes for {raw} raw bytes ({size / raw:.2f}x)"
    assert read_embeddings(path)[1].shape == (count, dim)


MEMORY = textwrap.dedent("""
    import sys, time, numpy as np
    from tf_esm.io.hdf5_store import Hdf5Store
    from tf_esm.io.parquet_store import ParquetStore

    def rss_mb():
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) / 1024 for line in handle if line.startswith("VmRSS:"))

    kind, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = (Hdf5Store if kind == "h5" else ParquetStore)(path, {"model": "m"}, False, 1e9, ["mean"], [2], 64)
    rng = np.random.default_rng(0)
    rss = {}
    for index in range(count):
        store.add(f"rec{index:07d}", 20, {"length": 20, "truncated": False,
                                          "mean_representations": {2: rng.standard_normal(64).astype(np.float32)}})
        if index + 1 == int(count * 0.4):
            rss["40"] = rss_mb()
    rss["100"] = rss_mb()
    print(rss["100"] - rss["40"])
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("kind", ["h5", "parquet"])
def test_store_memory_is_flat(tmp_path, kind):
    """The store's own resident memory over the last 60 % of 50,000 records (no model: the store alone; the
    whole command is tests/test_load.py's and benchmarks/bench_store.py's). Fails with unbounded row buffers
    (Parquet: ~21 MB) or a row group's encoder memory kept by Arrow's allocator (~20 MB)."""
    path = str(tmp_path / ("out.h5" if kind == "h5" else "out.parquet"))
    result = subprocess.run([sys.executable, "-c", MEMORY, kind, path, "50000"], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    growth = float(result.stdout.split()[-1])
    assert growth <= 10, f"RSS grew {growth:.1f} MB from 40 % to 100 % of 50,000 records"


def test_store_errors(tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle["data"] = np.arange(3)
    with pytest.raises(EmbeddingStoreError, match="was not written by 'tf-esm embed'"):
        Hdf5Store(str(foreign), {}, False, 1.0, ["mean"], [2], 8)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "notes.txt").write_text("mine")
    with pytest.raises(EmbeddingStoreError, match="holds files other than part-NNNNN.parquet shards"):
        ParquetStore(str(tmp_path / "shards"), {}, False, 1.0, ["mean"], [2], 8)


@pytest.mark.parametrize("kind", ["h5", "parquet"])
def test_a_kill_between_merge_and_cleanup_adds_no_duplicates(tmp_path, monkeypatch, kind):
    """OUTPUT replaced by the merged file, then killed before the journal (shards) went: the next run must see
    those segments as merged, not merge them a second time."""
    import tf_esm.io.hdf5_store
    import tf_esm.io.parquet_store

    path = str(tmp_path / ("out.h5" if kind == "h5" else "out.parquet"))
    store_class = Hdf5Store if kind == "h5" else ParquetStore
    results = dict(_synthetic_results(30, dim=8))
    first = store_class(path, {"model": "m"}, False, 1e9, ["mean"], [2], 8)
    for record_id in list(results)[:20]:
        first.add(record_id, 20, results[record_id])
    monkeypatch.setattr(tf_esm.io.hdf5_store.shutil, "rmtree", lambda *args, **kwargs: None)
    monkeypatch.setattr(tf_esm.io.parquet_store.os, "remove", lambda *args: None)
    first.commit()  # merged, but the journal / shards stay as a kill would leave them
    monkeypatch.undo()
    assert [entry for entry in os.listdir(tmp_path) if entry.startswith(".")]
    second = store_class(path, {"model": "m"}, False, 1e9, ["mean"], [2], 8)
    assert set(second.done) == set(list(results)[:20])
    for record_id in list(results)[20:]:
        second.add(record_id, 20, results[record_id])
    second.commit()
    ids, means = read_embeddings(path)
    assert ids == list(results)
    np.testing.assert_array_equal(means, np.stack([r["mean_representations"][2] for r in results.values()]))
    assert os.listdir(tmp_path) == [os.path.basename(path)]
