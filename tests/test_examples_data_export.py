"""The tf.data embedding and TF Serving export examples, run on a tiny random-weight checkpoint."""

import json
import os
import runpy
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests._reference import share_directory, torch_outputs
from tf_esm.io.fasta import read_fasta
from tf_esm.tokenization import EsmTokenizer, write_default_vocab

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
EMBED = os.path.join(ROOT, "examples", "embed_in_tf_data.py")
EXPORT = os.path.join(ROOT, "examples", "export_for_tf_serving.py")
FASTA = os.path.join(ROOT, "examples", "data", "proteins.fasta")


def run_example(script, *args):
    process = subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True,
                             timeout=300, cwd=ROOT)
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
    return process.stdout


@pytest.fixture(scope="module")
def checkpoint(reference_checkpoints, tmp_path_factory):
    """A copy of the shared tiny ESM-2-style checkpoint with a vocab.txt, as hub model directories have."""
    reference = reference_checkpoints("rotary", "EsmForMaskedLM")
    directory = tmp_path_factory.mktemp("example_model") / "esm_tiny"
    shutil.copytree(reference.path, directory)
    write_default_vocab(directory)
    return str(share_directory(directory)), reference.model


@pytest.fixture(scope="module")
def torch_embeddings(checkpoint):
    """Per-record residue embeddings from the PyTorch reference, one unpadded sequence at a time."""
    tokenizer = EsmTokenizer.from_pretrained(checkpoint[0])
    embeddings = {}
    for record in read_fasta(FASTA):
        ids = np.asarray([tokenizer(record.sequence)["input_ids"]])
        hidden = torch_outputs(checkpoint[1].esm, ids).last_hidden_state.numpy()[0]
        embeddings[record.id] = hidden[1:-1]
    return embeddings


def test_embed_example_writes_h5_matching_torch(checkpoint, torch_embeddings, tmp_path):
    import h5py

    output = tmp_path / "out" / "embeddings.h5"
    stdout = run_example(EMBED, "--model", checkpoint[0], "--fasta", FASTA, "--output", output, "--per-residue",
                         "--batch-size", 3)
    assert f"Wrote {len(torch_embeddings)} embeddings" in stdout
    assert os.listdir(output.parent) == ["embeddings.h5"]
    with h5py.File(output, "r") as handle:
        ids = [value.decode() for value in handle["ids"][()]]
        pooled, residues, offsets = (handle[key][()] for key in
                                     ("sequence_embeddings", "residue_embeddings", "residue_offsets"))
    assert ids == list(torch_embeddings)
    for index, record_id in enumerate(ids):
        expected = torch_embeddings[record_id]
        np.testing.assert_allclose(residues[offsets[index]:offsets[index + 1]], expected, atol=1e-4)
        np.testing.assert_allclose(pooled[index], expected.mean(axis=0), atol=1e-4)


def test_embed_example_npy_with_in_graph_tokenizer(checkpoint, torch_embeddings, tmp_path):
    main = runpy.run_path(EMBED)["main"]
    output = tmp_path / "embeddings.npy"
    assert main(["--model", checkpoint[0], "--fasta", FASTA, "--output", str(output), "--in-graph-tokenizer",
                 "--max-tokens-per-batch", "200"]) == 0
    pooled = np.load(output)
    ids = (tmp_path / "embeddings.ids.txt").read_text(encoding="utf-8").split()
    assert ids == list(torch_embeddings)
    expected = np.stack([torch_embeddings[record_id].mean(axis=0) for record_id in ids])
    np.testing.assert_allclose(pooled, expected, atol=1e-4)
    with pytest.raises(SystemExit):
        main(["--model", checkpoint[0], "--fasta", FASTA, "--output", str(tmp_path / "x.npy"), "--per-residue"])


def test_export_example_serves_embeddings_matching_torch(checkpoint, torch_embeddings, tmp_path):
    import tensorflow as tf

    output = tmp_path / "serving" / "esm_tiny" / "1"
    records = read_fasta(FASTA)[:3]
    stdout = run_example(EXPORT, "--model", checkpoint[0], "--output", output, "--check",
                         *[record.sequence for record in records])
    assert "signature serving_default: inputs ['sequences']" in stdout
    assert "signature token_ids: inputs ['attention_mask', 'input_ids']" in stdout
    bodies = {line.split(": ", 1)[0].strip(): json.loads(line.split(": ", 1)[1])
              for line in stdout.splitlines() if line.startswith("  ") and ": {" in line}
    assert bodies["serving_default"] == {"instances": [record.sequence for record in records]}
    assert bodies["token_ids"]["signature_name"] == "token_ids"

    loaded = tf.saved_model.load(str(output))
    served = loaded.signatures["serving_default"](sequences=tf.constant([record.sequence for record in records]))
    from_ids = loaded.signatures["token_ids"](
        input_ids=tf.constant(bodies["token_ids"]["inputs"]["input_ids"], tf.int32),
        attention_mask=tf.constant(bodies["token_ids"]["inputs"]["attention_mask"], tf.int32))
    for index, record in enumerate(records):
        expected = torch_embeddings[record.id].mean(axis=0)
        np.testing.assert_allclose(served["sequence_embedding"][index], expected, atol=1e-4)
        np.testing.assert_allclose(from_ids["sequence_embedding"][index], expected, atol=1e-4)
    assert served["logits"].shape[-1] == 33

    main = runpy.run_path(EXPORT)["main"]
    with pytest.raises(FileExistsError, match="overwrite"):
        main(["--model", checkpoint[0], "--output", str(output)])
