"""Load: 1,000 mixed-length sequences (5..200 residues) through the SavedModel string signature and `tf-esm embed`,
in bounded memory.

Resident memory (RSS) is read at the start, after warm-up, after the first half and at the end; the growth over the
second half must stay small. Calibration (tiny 2-layer model, CPU): a clean run grows by about 4 MB (SavedModel,
last 500 sequences) and 17-25 MB (`tf-esm embed`, second half of the embedding phase, HDF5 metadata included); with
a leak of one retraced graph per batch, kept alive, the same measures grow by about 80 MB and 130 MB. The bounds
(25 MB, 60 MB) sit between the two.
"""

import gc
import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import tensorflow as tf

from tf_esm import TFEsmForMaskedLM
from tf_esm.pipelines.export import export_saved_model

reads_proc_status = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status")

NUM_SEQUENCES = 1000
BATCH = 50
SAVED_MODEL_GROWTH_MB = 25
CLI_GROWTH_MB = 60
SLOW_TF_ESM = os.path.join(os.path.dirname(__file__), "_slow_tf_esm.py")
# A short sleep per record (patched in by tests/_slow_tf_esm.py) makes the embedding phase's time proportional to records done,
# so its two halves in time are its two halves in records.
RECORD_DELAY_S = 0.002


def _status_mb(pid, field):
    """A /proc/<pid>/status memory field (VmRSS, VmHWM) in MB, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _rss_mb():
    gc.collect()
    try:
        import psutil
    except ImportError:
        return _status_mb("self", "VmRSS")
    return psutil.Process().memory_info().rss / 2**20


def _sequences():
    rng = np.random.default_rng(7)
    residues = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    return ["".join(rng.choice(residues, size=length)) for length in rng.integers(5, 201, size=NUM_SEQUENCES)]


@reads_proc_status
def test_saved_model_string_signature_memory_is_flat(reference_checkpoints, tmp_path):
    sequences = _sequences()
    rss = {"start": _rss_mb()}
    model = TFEsmForMaskedLM.from_pretrained(reference_checkpoints("rotary").path)
    serve = tf.saved_model.load(export_saved_model(model, tmp_path / "esm" / "1")).signatures["serving_default"]
    rss["loaded"] = _rss_mb()
    for start in range(0, NUM_SEQUENCES, BATCH):
        batch = sequences[start:start + BATCH]
        outputs = serve(sequences=tf.constant(batch))
        np.testing.assert_array_equal(outputs["residue_mask"].numpy().sum(axis=1), [len(s) for s in batch])
        assert np.isfinite(outputs["sequence_embedding"].numpy()).all()
        del outputs
        done = start + BATCH
        if done == BATCH:
            rss["warm"] = _rss_mb()
        elif done == NUM_SEQUENCES // 2:
            rss["half"] = _rss_mb()
    rss["end"] = _rss_mb()
    report = ", ".join(f"{key} {value:.1f}" for key, value in rss.items())
    print(f"\nSavedModel RSS (MB): {report}; last 500 sequences: {rss['end'] - rss['half']:+.1f}")
    assert rss["end"] - rss["half"] <= SAVED_MODEL_GROWTH_MB, f"memory grew over the last 500 sequences: {report}"


@reads_proc_status
def test_cli_embed_memory_is_flat(reference_checkpoints, tmp_path):
    sequences = _sequences()
    fasta = tmp_path / "proteins.fasta"
    fasta.write_text("".join(f">seq{index}\n{sequence}\n" for index, sequence in enumerate(sequences)))
    output = tmp_path / "embeddings.h5"
    started = tmp_path / "first_record"  # created by tests/_slow_tf_esm.py when the first record is stored
    samples, embedding_from, peak = [], None, None
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen([sys.executable, SLOW_TF_ESM, str(RECORD_DELAY_S), "embed",
                                    reference_checkpoints("rotary").path, str(fasta), str(output)], stderr=stderr,
                                   env=dict(os.environ, TF_ESM_TEST_FIRST_RECORD=str(started)))
        try:
            while process.poll() is None:
                now, rss = time.monotonic(), _status_mb(process.pid, "VmRSS")
                peak = _status_mb(process.pid, "VmHWM") or peak
                if embedding_from is None and started.exists():
                    embedding_from = now
                if rss is not None:
                    samples.append((now, rss))
                time.sleep(0.01)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0, (tmp_path / "stderr.txt").read_text()[-2000:]
    with h5py.File(output, "r") as handle:
        ids = list(handle["ids"].asstr()[()])
        assert len(ids) == NUM_SEQUENCES
        for index in (0, 499, 999):
            assert handle["lengths"][ids.index(f"seq{index}")] == len(sequences[index])

    assert embedding_from is not None and samples
    embedding = [(when, rss) for when, rss in samples if when >= embedding_from]
    middle = (embedding[0][0] + embedding[-1][0]) / 2
    first = max(rss for when, rss in embedding if when <= middle)
    second = max(rss for when, rss in embedding if when > middle)
    report = (f"embedding starts {embedding[0][1]:.1f}, first half max {first:.1f}, "
              f"second half max {second:.1f}, end {embedding[-1][1]:.1f}, peak (VmHWM) {peak:.1f}; "
              f"{len(embedding)} samples over {embedding[-1][0] - embedding[0][0]:.1f} s")
    print(f"\ntf-esm embed RSS (MB): {report}; second half: {second - first:+.1f}")
    assert second - first <= CLI_GROWTH_MB, f"memory grew over the second half of the records: {report}"
