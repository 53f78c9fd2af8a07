"""The `tf-esm` command on tiny random-weight checkpoints: outputs equal the Python API's numbers computed directly
(hidden states, contact head, LM logits), resuming, crash safety, and one-line errors with their exit codes.

Most runs call `main([...])` in-process; a few run the installed console script to check the real process
(exit status, stderr, SIGKILL)."""

import csv
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from tests._tiny_mlm_fixtures import checkpoint, model, tokenizer  # noqa: F401 (pytest fixtures)
from tf_esm import TFEsmForMaskedLM
from tf_esm.cli import main, record_key
from tf_esm.io import read_embeddings
from tf_esm.progress import ProgressBar

TF_ESM = os.path.join(os.path.dirname(sys.executable), "tf-esm")
SLOW_TF_ESM = os.path.join(os.path.dirname(__file__), "_slow_tf_esm.py")  # tf-esm pausing after each record
RECORDS = {
    "alpha": "MKTAYIAKQRQISFVKSH",
    "beta": "GSHMLEDPVAAL",
    "gamma/2": "WCYNQ",
    "long": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRV",  # 40 residues; truncated to 30 below
}
TRUNCATION = 30
LAYERS = {0: 0, -1: 2}  # --repr-layers value -> stored layer number (2-layer model)
ATOL = 2e-5
# TensorFlow's C++ start-up lines, which it prints before the command can silence them (see the report).
_NATIVE_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl|To enable the following)")


def _stderr_lines(text):
    return [line for line in text.splitlines() if line.strip() and not _NATIVE_LOG.match(line)]


def _write_fasta(path, records):
    with open(path, "w") as handle:
        for record_id, sequence in records.items():
            handle.write(f">{record_id} some description\n{sequence[:20]}\n{sequence[20:]}\n")
    return str(path)


def _run(*args, env=None):
    return subprocess.run([TF_ESM, *map(str, args)], capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, **(env or {})))


def _main(capsys, *args):
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def fasta(tmp_path_factory):
    return _write_fasta(tmp_path_factory.mktemp("fasta") / "proteins.fasta", RECORDS)


@pytest.fixture(scope="module")
def expected(checkpoint, tokenizer):
    """Per record: the PyTorch reference's hidden states / contacts for that sequence alone (first 30 residues)."""
    results = {}
    for record_id, sequence in RECORDS.items():
        ids = torch.as_tensor([tokenizer.encode(sequence[:TRUNCATION])])
        with torch.no_grad():
            hidden = [state.numpy() for state in checkpoint.model(ids, output_hidden_states=True).hidden_states]
            contacts = checkpoint.model.predict_contacts(ids, torch.ones_like(ids))[0].numpy()
        n = ids.shape[1] - 2
        result = {"contacts": contacts, "length": n}
        for layer in LAYERS.values():
            states = np.asarray(hidden[layer])[0]
            result[("per_tok", layer)] = states[1:n + 1]
            result[("mean", layer)] = states[1:n + 1].mean(axis=0)
            result[("bos", layer)] = states[0]
        results[record_id] = result
    return results


def _h5_records(path):
    """Per record id, its row of a columnar `tf-esm embed` .h5 as a dict: length, sequence_length, truncated and
    the arrays by dataset name ("mean/2", "per_tok/0", "contacts"), read through `tf_esm.io.read_embeddings`."""
    with h5py.File(path, "r") as handle:
        ids = list(handle["ids"].asstr()[()])
        records = {record_id: {"length": int(length), "sequence_length": int(full), "truncated": bool(cut)}
                   for record_id, length, full, cut in zip(ids, handle["lengths"][()],
                                                           handle["sequence_lengths"][()], handle["truncated"][()])}
        names = [f"{kind}/{layer}" for kind in ("mean", "bos", "per_tok") if kind in handle for layer in handle[kind]]
        names += ["contacts"] if "contacts" in handle else []
    for name in names:
        kind, _, layer = name.partition("/")
        read_ids, values = read_embeddings(path, kind, int(layer) if layer else -1)
        assert sorted(read_ids) == sorted(ids)  # read in input order; the file's rows are in computed order
        for record_id, value in zip(read_ids, values):
            records[record_id][name] = value
    return records


def _check_h5_record(record, expected_record, kinds):
    assert record["length"] == expected_record["length"]
    for kind in kinds:
        if kind == "contacts":
            np.testing.assert_allclose(record["contacts"], expected_record["contacts"], atol=ATOL)
            continue
        for layer in LAYERS.values():
            assert record[f"{kind}/{layer}"].dtype == np.float32
            np.testing.assert_allclose(record[f"{kind}/{layer}"], expected_record[(kind, layer)], atol=ATOL)


# ---------------------------------------------------------------------------------------------------- embed


def test_embed_hdf5_with_the_console_script(tmp_path, checkpoint, fasta, expected, tokenizer):
    output = tmp_path / "embeddings.h5"
    result = _run("embed", checkpoint.path, fasta, output, "--repr-layers", "0", "-1", "--include", "mean",
                  "per_tok", "bos", "contacts", "--truncation-seq-length", TRUNCATION)
    assert result.returncode == 0, result.stderr
    assert _stderr_lines(result.stderr) == [
        "tf-esm: warning: record 'long' has 40 residues; using the first 30 (--truncation-seq-length).",
        f"tf-esm: embedded 4 records into {output}.",
    ]  # no progress bar in a pipe
    assert sorted(os.listdir(tmp_path)) == ["embeddings.h5"]  # no temporary file left
    stored = _h5_records(output)
    assert sorted(stored) == sorted(RECORDS)
    assert read_embeddings(output)[0] == list(RECORDS)  # FASTA order
    for record_id, record in expected.items():
        assert stored[record_id]["truncated"] == (record_id == "long")
        assert stored[record_id]["sequence_length"] == len(RECORDS[record_id])
        _check_h5_record(stored[record_id], record, ("mean", "per_tok", "bos", "contacts"))
    # Anchored to the PyTorch reference too: the last layer's mean of one record.
    ids = np.asarray([tokenizer.encode(RECORDS["alpha"])])
    with torch.no_grad():
        reference = checkpoint.model(torch.as_tensor(ids), output_hidden_states=True).hidden_states[-1]
    np.testing.assert_allclose(stored["alpha"]["mean/2"], reference[0, 1:-1].mean(0).numpy(), atol=1e-4)


def test_embed_npz_directory(tmp_path, capsys, checkpoint, fasta, expected):
    output = tmp_path / "embeddings"
    code, _, err = _main(capsys, "embed", checkpoint.path, fasta, output, "--repr-layers", "-1", "--include",
                         "mean", "bos", "--truncation-seq-length", TRUNCATION, "--max-tokens-per-batch", "40")
    assert code == 0, err
    assert sorted(os.listdir(output)) == sorted([record_key(r) + ".npz" for r in RECORDS] + ["tf_esm_embed.json"])
    for record_id, record in expected.items():
        with np.load(output / (record_key(record_id) + ".npz")) as arrays:
            assert sorted(arrays) == ["bos_2", "id", "input_index", "length", "mean_2", "sequence_length",
                                      "sequence_sha256", "truncated", "windows"]
            assert str(arrays["id"]) == record_id and int(arrays["length"]) == record["length"]
            np.testing.assert_allclose(arrays["mean_2"], record[("mean", 2)], atol=ATOL)
            np.testing.assert_allclose(arrays["bos_2"], record[("bos", 2)], atol=ATOL)


def test_resume_skips_finished_records_and_keeps_their_data(tmp_path, capsys, checkpoint, expected):
    first = _write_fasta(tmp_path / "first.fasta", {k: RECORDS[k] for k in ("alpha", "beta")})  # a prefix
    full = _write_fasta(tmp_path / "full.fasta", RECORDS)
    output = tmp_path / "out.h5"
    options = ["--repr-layers", "0", "-1", "--include", "mean", "per_tok", "--truncation-seq-length", TRUNCATION]
    code, _, err = _main(capsys, "embed", checkpoint.path, first, output, *options)
    assert code == 0 and err.splitlines()[-1] == f"tf-esm: embedded 2 records into {output}."
    before = {key: _h5_records(output)["alpha"][key] for key in ("mean/0", "mean/2", "per_tok/2")}

    code, _, err = _main(capsys, "embed", checkpoint.path, full, output, *options)
    assert code == 0
    assert err.splitlines()[-1] == f"tf-esm: embedded 2 records into {output} (2 already there, skipped)."
    stored = _h5_records(output)
    for key, value in before.items():
        np.testing.assert_array_equal(stored["alpha"][key], value)  # untouched, bit for bit
    for record_id, record in expected.items():
        _check_h5_record(stored[record_id], record, ("mean", "per_tok"))

    code, _, err = _main(capsys, "embed", checkpoint.path, full, output, *options)
    assert code == 0 and err == f"tf-esm: all 4 records are already in {output}; nothing to do.\n"
    assert _main(capsys, "embed", checkpoint.path, full, output, *options, "--quiet") == (0, "", "")

    code, _, err = _main(capsys, "embed", checkpoint.path, full, output, "--include", "bos")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"tf-esm: error: OUTPUT {output} was written with other settings (")
    assert sorted(os.listdir(tmp_path)) == ["first.fasta", "full.fasta", "out.h5"]


def test_interrupt_saves_finished_records_and_a_failure_leaves_no_output(tmp_path, capsys, monkeypatch,
                                                                         checkpoint, fasta, expected):
    import tf_esm.pipelines.inference

    real = tf_esm.pipelines.inference.iter_embeddings

    def stopping_after(count, exception):
        def iter_embeddings(*args, **kwargs):
            for number, item in enumerate(real(*args, **kwargs)):
                if number == count:
                    raise exception
                yield item
        return iter_embeddings

    output = tmp_path / "out.h5"
    options = ["--include", "mean", "--repr-layers", "0", "-1", "--truncation-seq-length", TRUNCATION]
    monkeypatch.setattr(tf_esm.pipelines.inference, "iter_embeddings", stopping_after(2, KeyboardInterrupt()))
    code, _, err = _main(capsys, "embed", checkpoint.path, fasta, output, *options, "--checkpoint-interval", "1e9")
    assert code == 130
    assert err.splitlines()[-1] == (f"tf-esm: error: interrupted; 2 records are saved in {output}. Run the same "
                                    "command again to finish.")
    stored = _h5_records(output)
    assert len(stored) == 2
    for record_id, record in stored.items():
        _check_h5_record(record, expected[record_id], ("mean",))

    monkeypatch.setattr(tf_esm.pipelines.inference, "iter_embeddings", real)
    code, _, err = _main(capsys, "embed", checkpoint.path, fasta, output, *options)
    assert code == 0 and err.endswith("(2 already there, skipped).\n")

    fresh = tmp_path / "fresh.h5"
    monkeypatch.setattr(tf_esm.pipelines.inference, "iter_embeddings", stopping_after(1, RuntimeError("device lost")))
    code, _, err = _main(capsys, "embed", checkpoint.path, fasta, fresh, *options)
    assert code == 1
    assert err.splitlines()[-1] == "tf-esm: error: RuntimeError: device lost (run with --debug for the traceback)"
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["out.h5"]  # neither fresh.h5 nor its temporary copy
    code, _, err = _main(capsys, "embed", checkpoint.path, fasta, fresh, *options, "--debug")
    assert code == 1 and "Traceback (most recent call last)" in err and "RuntimeError: device lost" in err


def test_sigkill_never_leaves_a_corrupt_output(tmp_path, capsys, checkpoint, expected):
    """SIGKILL of the real command mid-run: OUTPUT is not there yet (never half-written), the journal holds only
    complete segments, and the same command again merges them and finishes."""
    records = {f"{record_id}_{copy}": sequence for copy in range(2) for record_id, sequence in RECORDS.items()}
    fasta = _write_fasta(tmp_path / "many.fasta", records)
    output = tmp_path / "out.h5"
    journal = tmp_path / ".out.h5.journal"
    options = ["--include", "mean", "--repr-layers", "0", "-1", "--truncation-seq-length", TRUNCATION]
    process = subprocess.Popen(  # tf-esm pausing one second after each stored record
        [sys.executable, SLOW_TF_ESM, "1.0", "embed", checkpoint.path, fasta, str(output), *map(str, options),
         "--checkpoint-interval", "0", "--max-tokens-per-batch", "32"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def segments():
        return sorted(name for name in os.listdir(journal) if name.startswith("seg-")) if journal.exists() else []

    try:
        deadline = time.monotonic() + 180
        while not segments() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert segments(), "the run never reached its first checkpoint"
        time.sleep(0.3)  # land somewhere inside the next record
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not output.exists()
    saved = {}
    for name in segments():  # complete, readable files with only complete records
        saved.update(_h5_records(journal / name))
    assert 1 <= len(saved) < len(records)
    for record_id, record in saved.items():
        _check_h5_record(record, expected[record_id.rsplit("_", 1)[0]], ("mean",))

    code, _, err = _main(capsys, "embed", checkpoint.path, fasta, output, *options)
    assert code == 0
    assert err.endswith(f"(already there, skipped).\n".replace("(", f"({len(saved)} "))
    stored = _h5_records(output)
    assert set(stored) == set(records)
    for record_id, record in stored.items():
        _check_h5_record(record, expected[record_id.rsplit("_", 1)[0]], ("mean",))
    assert sorted(os.listdir(tmp_path)) == ["many.fasta", "out.h5"]  # the journal is gone


# ---------------------------------------------------------------------------------------------- embed errors


def _one_error_line(result, expected_code, *fragments):
    code, _, err = result
    assert code == expected_code, err
    assert err.count("\n") == 1 and err.startswith("tf-esm: error: "), err
    for fragment in fragments:
        assert fragment in err, err


def test_bad_inputs_give_one_line_errors(tmp_path, capsys, checkpoint, fasta):
    headerless = tmp_path / "headerless.fasta"
    headerless.write_text("MKTAYIAK\n>a\nMK\n")
    unknown = tmp_path / "unknown.fasta"
    unknown.write_text(">ok\nMKTA\n>bad\nMKTJAYI\n")
    out = tmp_path / "out.h5"
    _one_error_line(_main(capsys, "embed", checkpoint.path, headerless, out), 2,
                    "line 1: sequence data before the first '>' header")
    _one_error_line(_main(capsys, "embed", checkpoint.path, unknown, out), 2,
                    "record 'bad': invalid character 'J' at position 4")
    _one_error_line(_main(capsys, "embed", tmp_path / "no_such_model", fasta, out), 2,
                    "does not exist locally and is not a hub id")
    _one_error_line(_main(capsys, "embed", "facebook/esm2_t6_8M_UR50D", fasta, out), 2,
                    "this machine is offline (or HF_HUB_OFFLINE is set)")
    _one_error_line(_main(capsys, "embed", checkpoint.path, fasta, out, "--repr-layers", "3"), 2,
                    "--repr-layers 3: this model has layers 0..2 (or -3..-1).")
    _one_error_line(_main(capsys, "embed", checkpoint.path, fasta, out, "--include", "logits"), 2,
                    "argument --include: invalid choice: 'logits'", "(see 'tf-esm embed --help')")
    _one_error_line(_main(capsys, "embed", checkpoint.path, fasta, out, "--max-tokens-per-batch", "0"), 2,
                    "expected a positive integer, got '0'")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle["data"] = np.arange(3)
    _one_error_line(_main(capsys, "embed", checkpoint.path, fasta, foreign), 2,
                    "exists but was not written by 'tf-esm embed'")
    with h5py.File(foreign, "r") as handle:
        np.testing.assert_array_equal(handle["data"][()], np.arange(3))  # the input is left alone
    a_file = tmp_path / "not_a_directory"
    a_file.write_text("x")
    _one_error_line(_main(capsys, "embed", checkpoint.path, fasta, a_file), 2, "exists and is not a directory")


def test_console_script_error_is_one_line_without_traceback(tmp_path, fasta):
    result = _run("embed", tmp_path / "missing_model", fasta, tmp_path / "out.h5")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert _stderr_lines(result.stderr) == [
        f"tf-esm: error: No model directory '{tmp_path / 'missing_model'}': it does not exist locally and is not "
        "a hub id like 'facebook/esm2_t6_8M_UR50D'."]
    assert not (tmp_path / "out.h5").exists()


# ---------------------------------------------------------------------------------------------------- score

SEQUENCE = "MKTAYIAKQRQISFV"
MUTANTS = ["K2A", "T3G:Y5F", "V15W", "M1M"]


def _direct_scores(model, tokenizer, strategy):
    """The ESM-1v formulas from TFEsmForMaskedLM logits, one sequence per forward pass."""
    vocab = tokenizer.get_vocab()

    def log_probs(rows):
        logits = np.asarray(model(np.asarray(rows)).logits, dtype=np.float64)
        return logits - np.log(np.exp(logits).sum(-1, keepdims=True))

    def masked(row, position):
        row = list(row)
        row[position] = tokenizer.mask_token_id
        return row

    def pll(sequence):
        row = tokenizer.encode(sequence)
        every_position_masked = log_probs([masked(row, i + 1) for i in range(len(sequence))])
        return sum(every_position_masked[i, i + 1, vocab[c]] for i, c in enumerate(sequence))

    wild_type = tokenizer.encode(SEQUENCE)
    scores = []
    for mutant in MUTANTS:
        sites = [(p[0], int(p[1:-1]), p[-1]) for p in mutant.split(":")]
        if strategy == "pseudo-ppl":
            mutated = list(SEQUENCE)
            for _, position, mt in sites:
                mutated[position - 1] = mt
            scores.append(pll("".join(mutated)) - pll(SEQUENCE))
        else:
            total = 0.0
            for wt, position, mt in sites:
                lp = log_probs([wild_type if strategy == "wt-marginals" else masked(wild_type, position)])[0]
                total += lp[position, vocab[mt]] - lp[position, vocab[wt]]
            scores.append(total)
    return np.asarray(scores)


def _mutations_csv(path, mutants=MUTANTS, column="mutant"):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", column, "note"])
        for number, mutant in enumerate(mutants):
            writer.writerow([number, mutant, f"a, quoted note {number}"])
    return str(path)


@pytest.mark.parametrize("strategy", ["masked-marginals", "wt-marginals", "pseudo-ppl"])
def test_score_equals_direct_computation(tmp_path, capsys, model, checkpoint, tokenizer, strategy):
    mutations = _mutations_csv(tmp_path / "dms.csv")
    output = tmp_path / "scored.csv"
    code, out, err = _main(capsys, "score", checkpoint.path, "--sequence", SEQUENCE, "--mutations", mutations,
                           "--strategy", strategy, "--output", output, "--max-tokens-per-batch", "50")
    assert code == 0, err
    assert out == "" and err == f"tf-esm: scored 4 mutants with 1 model(s) ({strategy}) into {output}.\n"
    with open(output, newline="") as handle:
        rows = list(csv.reader(handle))
    column = os.path.basename(checkpoint.path)
    assert rows[0] == ["id", "mutant", "note", column]
    assert [row[2] for row in rows[1:]] == [f"a, quoted note {n}" for n in range(4)]  # input columns kept
    scores = np.asarray([float(row[3]) for row in rows[1:]])
    expected = _direct_scores(model, tokenizer, strategy)
    assert np.abs(expected).max() > 0.05
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=1e-4)


def test_score_several_models_to_stdout(tmp_path, capsys, checkpoint):
    second = tmp_path / "esm_copy"
    shutil.copytree(checkpoint.path, second)
    mutations = _mutations_csv(tmp_path / "dms.csv", mutants=["Y5F", "K2A:Q9P"], column="variant")
    code, out, err = _main(capsys, "score", checkpoint.path, second, "--sequence", "G" + SEQUENCE, "--mutations",
                           mutations, "--mutation-col", "variant", "--offset-idx", "0", "--strategy", "wt-marginals")
    assert code == 0 and err == ""
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["id", "variant", "note", os.path.basename(checkpoint.path), "esm_copy", "ensemble"]
    assert [row[3] for row in rows[1:]] == [row[4] for row in rows[1:]]  # same weights, same scores
    assert [float(row[5]) for row in rows[1:]] == [float(row[3]) for row in rows[1:]]  # their mean


@pytest.mark.parametrize("mutant, fragments", [
    ("A2G", ["row 3: mutant 'A2G': the wild-type residue at position 2 is 'K', not 'A'"]),
    ("K2", ["row 3: mutant 'K2': 'K2' is not a substitution written like 'A24G'"]),
    ("K99A", ["row 3: mutant 'K99A': position 99 is outside the sequence (positions 1..15"]),
    ("", ["row 3: empty mutant ''"]),
])
def test_score_malformed_mutations(tmp_path, capsys, checkpoint, mutant, fragments):
    mutations = _mutations_csv(tmp_path / "dms.csv", mutants=["K2A", mutant])
    result = _main(capsys, "score", checkpoint.path, "--sequence", SEQUENCE, "--mutations", mutations, "--output",
                   tmp_path / "out.csv")
    _one_error_line(result, 2, f"--mutations {mutations}, ", *fragments)
    assert not (tmp_path / "out.csv").exists()


def test_score_input_errors(tmp_path, capsys, checkpoint):
    mutations = _mutations_csv(tmp_path / "dms.csv")
    base = ["score", checkpoint.path, "--mutations", mutations]
    _one_error_line(_main(capsys, *base, "--sequence", "MKTJAY"), 2,
                    "--sequence: invalid character 'J' at position 4")
    _one_error_line(_main(capsys, *base, "--sequence", SEQUENCE, "--mutation-col", "mut"), 2,
                    "no column 'mut' (columns: id, mutant, note); choose one with --mutation-col")
    _one_error_line(_main(capsys, *base, "--sequence", SEQUENCE, "--output", mutations), 2,
                    "--output must not be the --mutations file")
    _one_error_line(_main(capsys, "score", checkpoint.path, "--sequence", SEQUENCE), 2,
                    "give --sequence and --mutations (or --saturate for a saturation scan)")
    _one_error_line(_main(capsys, *base, "--sequence", SEQUENCE, "--strategy", "entropy"), 2,
                    "argument --strategy: invalid choice: 'entropy'")


# ------------------------------------------------------------------------------------------------- contacts


def test_contacts_npy_and_png(tmp_path, capsys, checkpoint, fasta, expected):
    outdir = tmp_path / "contacts"  # matplotlib (for --png) is in the test extra
    code, _, err = _main(capsys, "contacts", checkpoint.path, fasta, outdir, "--png", "--truncation-seq-length",
                         TRUNCATION)
    assert code == 0, err
    assert err.splitlines()[-1] == f"tf-esm: wrote contact maps of 4 records to {outdir}."
    for record_id, record in expected.items():
        contacts = np.load(outdir / (record_key(record_id) + ".npy"))
        assert contacts.dtype == np.float32 and contacts.shape == (record["length"],) * 2
        np.testing.assert_allclose(contacts, record["contacts"], atol=ATOL)
        with open(outdir / (record_key(record_id) + ".png"), "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    code, _, err = _main(capsys, "contacts", checkpoint.path, fasta, outdir, "--png", "--truncation-seq-length",
                         TRUNCATION)
    assert code == 0 and "nothing to do" in err
    changed = _write_fasta(tmp_path / "changed.fasta", {**RECORDS, "gamma/2": "WCYNQAA"})  # a resumed run compares
    _one_error_line(_main(capsys, "contacts", checkpoint.path, changed, outdir, "--truncation-seq-length",
                          TRUNCATION), 2, "the contact map of 1 record(s) does not fit this FASTA's sequence "
                                          "('gamma/2')")


def test_png_without_matplotlib_says_how_to_install(tmp_path, capsys, monkeypatch, checkpoint, fasta):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    _one_error_line(_main(capsys, "contacts", checkpoint.path, fasta, tmp_path / "c", "--png"), 2,
                    "--png needs matplotlib, which is not installed: pip install matplotlib",
                    'pip install -e ".[plot]"')


# ----------------------------------------------------------------------------------------------------- fold


def _tiny_esmfold(directory):
    import transformers

    from tests.folding_reference import perturb_
    from tf_esm.configuration import ESM2_VOCAB

    structure = dict(sequence_dim=16, pairwise_dim=8, ipa_dim=8, resnet_dim=8, num_heads_ipa=2, num_qk_points=2,
                     num_v_points=2, num_blocks=1)
    trunk = dict(num_blocks=1, sequence_state_dim=16, pairwise_state_dim=8, sequence_head_width=8,
                 pairwise_head_width=8, position_bins=8, max_recycles=1, chunk_size=None,
                 structure_module=structure)
    stem = dict(vocab_size=33, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=1026, pad_token_id=1, mask_token_id=32, position_embedding_type="rotary",
                token_dropout=True, emb_layer_norm_before=False, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, layer_norm_eps=1e-5)
    torch.manual_seed(0)
    config = transformers.EsmConfig(**stem, is_folding_model=True, vocab_list=list(ESM2_VOCAB),
                                    esmfold_config=dict(fp16_esm=False, lddt_head_hid_dim=8, trunk=trunk))
    perturb_(transformers.EsmForProteinFolding(config).eval(), scale=0.1).save_pretrained(str(directory))
    return str(directory)


def _read_tsv(path):
    with open(path) as handle:
        return [line.rstrip("\n").split("\t") for line in handle]


def test_fold_writes_pdbs_and_summary(tmp_path, capsys, monkeypatch):
    from tf_esm import folding
    model_dir = _tiny_esmfold(tmp_path / "esmfold")
    model = folding.TFEsmForProteinFolding.from_pretrained(model_dir)
    loaded = []

    def from_pretrained(reference, **kwargs):  # hand the command this same instance
        loaded.append(reference)
        return model

    monkeypatch.setattr(folding.TFEsmForProteinFolding, "from_pretrained", from_pretrained)
    # 20 positions, and 3 + 25 (linker) + 3: one length bucket, so one compiled graph serves `--compiled` below.
    records = {"one": "MKTAYIAKQRQISFVKSHFS", "two/b": "GSH:WCY"}
    fasta = _write_fasta(tmp_path / "fold.fasta", records)
    alone, together = tmp_path / "alone", tmp_path / "together"
    options = ["--num-recycles", "0", "--chunk-size", "4"]
    batch_sizes, infer = [], model.infer
    monkeypatch.setattr(model, "infer", lambda sequences, **kw: batch_sizes.append(len(sequences)) or infer(sequences, **kw))
    code, _, err = _main(capsys, "fold", model_dir, fasta, alone, *options)
    assert code == 0, err
    assert batch_sizes == [1, 1]  # the default: one record per call, whatever else the file holds
    monkeypatch.setattr(model, "infer", infer)
    code, _, err = _main(capsys, "fold", model_dir, fasta, together, *options, "--max-tokens-per-batch", "31")
    assert code == 0, err
    assert re.search(r"folded 2 records into .* in \d+:\d\d \(\d+\.\d\d s per protein\)", err), err
    assert loaded == [model_dir, model_dir]

    rows = _read_tsv(alone / "summary.tsv")
    assert rows[0] == ["id", "length", "mean_plddt", "ptm", "seconds"]
    assert [row[:2] for row in rows[1:]] == [["one", "20"], ["two/b", "6"]]  # FASTA order, residues only
    assert all(float(row[4]) > 0 for row in rows[1:])
    for row, batched_row in zip(rows[1:], _read_tsv(together / "summary.tsv")[1:]):
        output = model.infer([records[row[0]]], num_recycles=0, chunk_size=4)  # the Python API, one sequence
        with open(alone / (record_key(row[0]) + ".pdb")) as handle:
            assert handle.read() == model.output_to_pdb(output)[0]
        exists = np.asarray(output["atom37_atom_exists"])
        mean_plddt = 100 * (np.asarray(output["plddt"]) * exists).sum() / exists.sum()
        ptm = float(np.asarray(output["ptm"]))
        for values in (row, batched_row):  # batching changes neither number
            assert float(values[2]) == pytest.approx(mean_plddt, abs=0.006)
            assert float(values[3]) == pytest.approx(ptm, abs=6e-5)
    assert model.inference_trace_count == 0  # the default folds eagerly: no compile
    code, _, err = _main(capsys, "fold", model_dir, fasta, tmp_path / "compiled", *options, "--compiled")
    assert code == 0, err
    assert model.inference_trace_count == 1  # one program for the bucket
    model.compiled_inference = None
    code, _, err = _main(capsys, "fold", model_dir, fasta, alone)
    assert code == 0 and "nothing to do" in err
    changed = _write_fasta(tmp_path / "changed.fasta", {**records, "two/b": "GSH:WCW"})  # a resumed run compares
    _one_error_line(_main(capsys, "fold", model_dir, changed, alone), 2,
                    "the structure of 1 record(s) was folded from another sequence than this FASTA's ('two/b')")
    bad = tmp_path / "bad.fasta"
    bad.write_text(">x\nMK::TA\n")
    _one_error_line(_main(capsys, "fold", model_dir, bad, alone), 2, "record 'x', chain 2")

    # The old order (FASTA OUTDIR --model M) still works, with a warning that shows the new one.
    code, _, err = _main(capsys, "fold", fasta, alone, "--model", model_dir)
    assert code == 0 and "nothing to do" in err
    assert "warning: `tf-esm fold FASTA OUTDIR [--model MODEL]` is the old order; MODEL now comes first" in err
    assert f"tf-esm fold {model_dir} {fasta} {alone}" in err
    # alone, together, --compiled; nothing was left to fold by the later runs: no model loaded by them
    assert loaded == [model_dir, model_dir, model_dir]


def test_fold_wrong_calls_show_the_usage(tmp_path, capsys):
    fasta = _write_fasta(tmp_path / "fold.fasta", {"one": "MKTAYIAKQR"})
    usage = "usage: tf-esm fold [options] MODEL FASTA OUTDIR"
    _one_error_line(_main(capsys, "fold", "facebook/esmfold_v1", fasta), 2, "missing OUTDIR: " + usage,
                    "e.g. tf-esm fold facebook/esmfold_v1 proteins.fasta structures/")
    _one_error_line(_main(capsys, "fold", "m", fasta, tmp_path / "out", "extra"), 2,
                    "unrecognized arguments: extra (" + usage, "see 'tf-esm fold --help'")
    _one_error_line(_main(capsys, "fold", "m", fasta, tmp_path / "out", "--model", "n"), 2,
                    "MODEL given twice (m and --model n)")
    assert not (tmp_path / "out").exists()
    code, out, _ = _main(capsys, "fold", "--help")
    assert code == 0 and out.startswith(usage) and "\n  --model" not in out  # the old option is not listed


def test_fold_batches_by_length_budget():
    from tf_esm.cli.fold import _fold_batches

    lengths = [5, 9, 3, 12, 2]
    assert _fold_batches(lengths, 12) == [[3], [1], [0, 2, 4]]  # longest first, at least one per batch
    assert _fold_batches(lengths, 4) == [[3], [1], [0], [2], [4]]


# ------------------------------------------------------------------------------------ fair-esm .pt end to end


@pytest.mark.filterwarnings("ignore:Regression weights not found")  # fair-esm, for the ESM-1v file
def test_fair_esm_checkpoints_match_fair_esm_itself(tmp_path, capsys, fasta):
    """`tf-esm embed` on an ESM-2 .pt and `tf-esm score` on an ESM-1v .pt against fair-esm's own model, with
    esm-extract's slicing and predict.py's masked-marginals / wt-marginals formulas."""
    from tests._fair_esm_helpers import fair_esm_load, write_esm1v, write_esm2

    esm2_path = write_esm2(str(tmp_path))
    output = tmp_path / "embeddings.h5"
    code, _, err = _main(capsys, "embed", esm2_path, fasta, output, "--repr-layers", "0", "-1", "--include", "mean",
                         "per_tok", "bos", "contacts", "--truncation-seq-length", TRUNCATION)
    assert code == 0, err
    reference, alphabet = fair_esm_load(esm2_path)
    convert = alphabet.get_batch_converter(truncation_seq_length=TRUNCATION)
    stored = _h5_records(output)
    for record_id, sequence in RECORDS.items():
        _, _, tokens = convert([(record_id, sequence)])
        with torch.no_grad():
            out = reference(tokens, repr_layers=[0, 2], return_contacts=True)
        n = min(len(sequence), TRUNCATION)
        group = stored[record_id]
        for layer in (0, 2):
            states = out["representations"][layer][0].numpy()
            np.testing.assert_allclose(group[f"per_tok/{layer}"], states[1:n + 1], atol=1e-4)
            np.testing.assert_allclose(group[f"mean/{layer}"], states[1:n + 1].mean(0), atol=1e-4)
            np.testing.assert_allclose(group[f"bos/{layer}"], states[0], atol=1e-4)
        np.testing.assert_allclose(group["contacts"], out["contacts"][0].numpy(), atol=1e-4)

    esm1v_path = write_esm1v(str(tmp_path))
    reference, alphabet = fair_esm_load(esm1v_path)
    _, _, tokens = alphabet.get_batch_converter()([("wt", SEQUENCE)])
    mutations = _mutations_csv(tmp_path / "dms.csv")
    for strategy in ("masked-marginals", "wt-marginals"):
        scored = tmp_path / f"{strategy}.csv"
        code, _, err = _main(capsys, "score", esm1v_path, "--sequence", SEQUENCE, "--mutations", mutations,
                             "--strategy", strategy, "--output", scored)
        assert code == 0, err
        with open(scored, newline="") as handle:
            rows = list(csv.DictReader(handle))
        rows_per_position = []
        for i in range(tokens.shape[1]):  # predict.py: every token position masked in turn
            masked = tokens.clone()
            if strategy == "masked-marginals":
                masked[0, i] = alphabet.mask_idx
            with torch.no_grad():
                rows_per_position.append(torch.log_softmax(reference(masked)["logits"], dim=-1)[0, i])
        token_probs = torch.stack(rows_per_position)
        for row in rows:
            expected = sum(
                float(token_probs[1 + int(s[1:-1]) - 1, alphabet.get_idx(s[-1])]
                      - token_probs[1 + int(s[1:-1]) - 1, alphabet.get_idx(s[0])])
                for s in row["mutant"].split(":"))  # label_row, summed over the sites of a multi-mutant
            assert float(row["esm1v_t2_tiny_UR90S_1"]) == pytest.approx(expected, abs=1e-4), (strategy, row)


# ---------------------------------------------------------------------------------------- convert and export


def test_convert_and_export(tmp_path, capsys, checkpoint, model, tokenizer):
    converted = tmp_path / "converted"
    code, _, err = _main(capsys, "convert", checkpoint.path, converted)
    assert code == 0, err
    ids = np.asarray([tokenizer.encode("MKTAYIAKQR")])
    np.testing.assert_allclose(np.asarray(TFEsmForMaskedLM.from_pretrained(converted)(ids).logits),
                               np.asarray(model(ids).logits), atol=1e-5)
    _one_error_line(_main(capsys, "convert", checkpoint.path, converted), 2, "pass --overwrite to replace it")
    _one_error_line(_main(capsys, "convert", tmp_path / "nothing.pt", tmp_path / "x"), 2, "no such file")

    exported = tmp_path / "serving" / "1"
    code, _, err = _main(capsys, "export", converted, exported)
    assert code == 0, err
    assert os.path.isfile(exported / "saved_model.pb")
    _one_error_line(_main(capsys, "export", converted, exported), 2, "exists and is not empty; pass --overwrite")


# -------------------------------------------------------------------------------------------- help, progress


def test_help_explains_every_option_with_examples(capsys):
    code, out, _ = _main(capsys, "--help")
    assert code == 0 and "examples:" in out and "exit status" in out
    for command in ("embed", "score", "contacts", "fold", "convert", "export"):
        assert command in out
        code, out_command, _ = _main(capsys, command, "--help")
        assert code == 0 and "examples:" in out_command, command
        for option in re.findall(r"--[a-z][a-z-]+", out_command.split("\n\n")[0]):  # the usage block
            assert out_command.count(option) >= 2, (command, option)  # in the usage and explained below


def test_progress_bar_draws_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        bar = ProgressBar(4, unit="seq", total_work=100, stream=stream)
        bar.update(1, work=20)
        bar.update(3, work=80)
        bar.close()
    assert pipe.getvalue() == ""
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())  # without colours and cursor moves
    final = drawn.rstrip("\n").split("\r")[-1]
    assert final.startswith("\u2501" * 24) and " 4/4 seq " in final, final  # a full bar, the count
    assert "res/s" in final and final.endswith("ETA 0:00"), final
    assert drawn.endswith("\n")


def test_old_token_budget_option_still_works_with_a_warning(capsys):
    from tf_esm.cli.dispatch import build_parser

    for command in (["embed", "m", "in.fasta", "out.h5"], ["contacts", "m", "in.fasta", "out"],
                    ["score", "m", "--sequence", "MK", "--mutations", "x.csv"]):
        args = build_parser().parse_args([*command, "--toks-per-batch", "7"])
        assert args.max_tokens_per_batch == 7
        warning = "tf-esm: warning: --toks-per-batch is deprecated; use --max-tokens-per-batch.\n"
        assert capsys.readouterr().err == warning
        assert build_parser().parse_args([*command, "--max-tokens-per-batch", "9"]).max_tokens_per_batch == 9
        assert build_parser().parse_args(command).max_tokens_per_batch == 4096 and not capsys.readouterr().err

