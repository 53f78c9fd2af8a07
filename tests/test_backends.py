"""The models run under Keras' JAX and PyTorch backends without TensorFlow: a subprocess with KERAS_BACKEND=jax (or
torch) in which `import tensorflow` fails (as if it were not installed) loads checkpoints of every format, runs the models, the
batch embedding and the `tf-esm embed` command, and its numbers are compared here with the PyTorch references and
with the TensorFlow path. The TensorFlow-only modules refuse with a sentence that says so.

(The parity suite itself runs again under KERAS_BACKEND=jax and torch in CI: tests/conftest.py, EVERY_BACKEND_MODULES.)
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests._fair_esm_helpers import fair_esm_load, write_esm2
from tests._reference import assert_close, batch_with_padding_and_masks, torch_outputs
from tf_esm.io import read_embeddings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLE", "W", "MKVLAAGIVGLLLAQPAMAAEKTHVQSSANPL"]
TF_ONLY_MODULES = ("tf_esm.pipelines.data", "tf_esm.pipelines.export", "tf_esm.graph_tokenizer", "tf_esm.modeling.attention_tf",
                   "tf_esm.modeling.dataset_tf")

# Runs in the subprocess. `sys.modules["tensorflow"] = None` is how Python marks a module as absent: every
# `import tensorflow` (Keras' optional ones included) fails and `importlib.util.find_spec` says it is not there.
SCRIPT = r"""
import json, os, sys
sys.modules["tensorflow"] = None
import numpy as np
import keras
from tf_esm import EsmTokenizer, TFEsmForMaskedLM, TFEsmModel, embed_sequences
from tf_esm.backend import TensorFlowRequiredError
from tf_esm.cli import main

args = json.loads(sys.argv[1])
out = {"backend": keras.backend.backend()}
tokenizer = EsmTokenizer(args["vocab"])
input_ids, attention_mask = np.asarray(args["input_ids"]), np.asarray(args["attention_mask"])
mlm = TFEsmForMaskedLM.from_pretrained(args["hf"])                  # safetensors written by transformers
result = mlm(input_ids, attention_mask=attention_mask, output_hidden_states=True, output_attentions=True)
out["logits"] = keras.ops.convert_to_numpy(result.logits)
out["hidden_last"] = keras.ops.convert_to_numpy(result.hidden_states[-1])
out["attentions_last"] = keras.ops.convert_to_numpy(result.attentions[-1])
out["contacts"] = keras.ops.convert_to_numpy(mlm.predict_contacts(input_ids, attention_mask))
batch = tokenizer(args["sequences"][:2], padding=True, return_tensors="np")
out["tokenizer_ids"] = batch["input_ids"]
fair = TFEsmForMaskedLM.from_pretrained(args["fair"])               # fair-esm .pt
fair_tokens = np.asarray(args["fair_tokens"])
out["fair_logits"] = keras.ops.convert_to_numpy(fair(fair_tokens, attention_mask=fair_tokens != 1).logits)
out["logits_plain"] = keras.ops.convert_to_numpy(mlm(input_ids, attention_mask=attention_mask).logits)
for fmt in ("h5", "safetensors"):                                  # our own formats, written and read back
    mlm.save_pretrained(os.path.join(args["tmp"], fmt), format=fmt)
    again = TFEsmForMaskedLM.from_pretrained(os.path.join(args["tmp"], fmt))
    out["reloaded_" + fmt] = keras.ops.convert_to_numpy(again(input_ids, attention_mask=attention_mask).logits)
embedded = embed_sequences(mlm, args["sequences"], repr_layers=(0, -1), include=("mean", "per_tok", "bos",
                                                                                  "contacts"))
for i, record in enumerate(embedded):
    out[f"embed_{i}_mean"] = record["mean_representations"][2]
    out[f"embed_{i}_per_tok"] = record["representations"][2]
    out[f"embed_{i}_per_tok0"] = record["representations"][0]
    out[f"embed_{i}_bos"] = record["bos_representations"][2]
    out[f"embed_{i}_contacts"] = record["contacts"]
out["cli_status"] = main(["embed", args["hf"], args["fasta"], args["h5"], "--include", "mean", "per_tok", "--quiet"])
messages = {}
for module in args["tf_only"]:
    try:
        __import__(module)
    except TensorFlowRequiredError as error:
        messages[module] = str(error)
try:
    tokenizer("MK", return_tensors="tf")
except TensorFlowRequiredError as error:
    messages["return_tensors='tf'"] = str(error)
assert sys.modules["tensorflow"] is None, "TensorFlow was imported"
np.savez(args["npz"], **{k: np.asarray(v) for k, v in out.items()})
with open(args["messages"], "w") as handle:
    json.dump(messages, handle)
"""


def run_under(backend, tmp_path, hf_path, vocab_file, fair_path, fair_tokens):
    input_ids, attention_mask = batch_with_padding_and_masks()
    fasta = tmp_path / "proteins.fasta"
    fasta.write_text("".join(f">p{i}\n{sequence}\n" for i, sequence in enumerate(SEQUENCES)))
    args = dict(hf=hf_path, vocab=str(vocab_file), fair=fair_path, fair_tokens=fair_tokens.tolist(), input_ids=input_ids.tolist(),
                attention_mask=attention_mask.tolist(), sequences=SEQUENCES, tmp=str(tmp_path),
                fasta=str(fasta), h5=str(tmp_path / "embeddings.h5"), npz=str(tmp_path / "out.npz"),
                messages=str(tmp_path / "messages.json"), tf_only=list(TF_ONLY_MODULES))
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    completed = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(args)], env=env, cwd=str(tmp_path),
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    outputs = dict(np.load(args["npz"]))
    with open(args["messages"]) as handle:
        return outputs, json.load(handle), args


@pytest.fixture(scope="module")
def fair_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fair_esm2")
    path = write_esm2(str(directory))
    model, alphabet = fair_esm_load(path)
    _, _, tokens = alphabet.get_batch_converter()([("a", "MKTAYIAK<mask>QRQ"), ("b", "GS<mask>LK")])
    import torch

    with torch.no_grad():
        logits = model(tokens)["logits"].numpy()
    return path, tokens.numpy(), logits


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_without_tensorflow_matches_the_references_and_the_tensorflow_path(backend, reference_checkpoints,
                                                                           esm_vocab_file, fair_checkpoint, tmp_path):
    from tf_esm import TFEsmForMaskedLM, embed_sequences

    reference = reference_checkpoints("rotary")
    fair_path, fair_tokens, fair_logits = fair_checkpoint
    outputs, messages, args = run_under(backend, tmp_path, reference.path, esm_vocab_file, fair_path, fair_tokens)
    assert str(outputs["backend"]) == backend

    # Models and checkpoint formats against PyTorch (transformers, fair-esm).
    input_ids, attention_mask = batch_with_padding_and_masks()
    expected = torch_outputs(reference.model, input_ids, attention_mask, output_hidden_states=True,
                             output_attentions=True)
    assert_close(outputs["logits"], expected.logits, 2e-5, "logits", backend)
    assert_close(outputs["hidden_last"], expected.hidden_states[-1], 2e-5, "last hidden state", backend)
    assert_close(outputs["attentions_last"], expected.attentions[-1], 2e-5, "last attentions", backend)
    torch_contacts = reference.model.predict_contacts(*_torch(input_ids, attention_mask)).detach().numpy()
    assert_close(outputs["contacts"], torch_contacts, 2e-5, "contacts", backend)
    # 1e-5 relative to the logits' scale (they reach ~20, where one fp32 ulp is ~2e-6), as tests/test_fair_esm.py.
    scale = max(1.0, float(np.abs(fair_logits).max()))
    assert_close(outputs["fair_logits"], fair_logits, 1e-5 * scale, "fair-esm .pt logits", backend)
    for fmt in ("h5", "safetensors"):
        # the same call as before saving (asking for attentions may take another attention kernel: torch's)
        np.testing.assert_array_equal(outputs["reloaded_" + fmt], outputs["logits_plain"])
    np.testing.assert_array_equal(outputs["tokenizer_ids"][0, :3], [0, 20, 15])  # <cls> M K

    # embed_sequences under JAX / PyTorch equals the TensorFlow path (this process) and the reference.
    model = TFEsmForMaskedLM.from_pretrained(reference.path)
    on_tensorflow = embed_sequences(model, SEQUENCES, repr_layers=(0, -1), include=("mean", "per_tok", "bos",
                                                                                     "contacts"))
    for i, (sequence, record) in enumerate(zip(SEQUENCES, on_tensorflow)):
        np.testing.assert_allclose(outputs[f"embed_{i}_mean"], record["mean_representations"][2], atol=1e-5)
        np.testing.assert_allclose(outputs[f"embed_{i}_per_tok"], record["representations"][2], atol=1e-5)
        np.testing.assert_allclose(outputs[f"embed_{i}_per_tok0"], record["representations"][0], atol=1e-5)
        np.testing.assert_allclose(outputs[f"embed_{i}_bos"], record["bos_representations"][2], atol=1e-5)
        np.testing.assert_allclose(outputs[f"embed_{i}_contacts"], record["contacts"], atol=1e-5)
        ids = _ids(sequence)
        hidden = torch_outputs(reference.model, ids, output_hidden_states=True).hidden_states[-1]
        assert_close(outputs[f"embed_{i}_per_tok"], hidden[0, 1:-1], 2e-5, "embed_sequences per_tok", f"{backend} {i}")

    # `tf-esm embed` under JAX / PyTorch wrote what embed_sequences computes.
    assert int(outputs["cli_status"]) == 0
    ids, means = read_embeddings(args["h5"], "mean", 2)
    per_tok_ids, per_tok = read_embeddings(args["h5"], "per_tok", 2)
    assert sorted(ids) == [f"p{i}" for i in range(len(SEQUENCES))] and per_tok_ids == ids
    for row, record_id in enumerate(ids):
        i = int(record_id[1:])
        # float32 rounding of two runs (measured: 1.01e-6 on one value of 1024 on AMD Zen 3)
        np.testing.assert_allclose(means[row], outputs[f"embed_{i}_mean"], atol=1e-5)
        np.testing.assert_allclose(per_tok[row], outputs[f"embed_{i}_per_tok"], atol=1e-5)

    # TensorFlow-only features say so.
    assert sorted(messages) == sorted(TF_ONLY_MODULES + ("return_tensors='tf'",))
    for feature, message in messages.items():
        assert f"needs TensorFlow (KERAS_BACKEND=tensorflow); you are on {backend}" in message, (feature, message)
    assert "return_tensors='np'" in messages["return_tensors='tf'"]


def _torch(input_ids, attention_mask):
    import torch

    return torch.as_tensor(input_ids, dtype=torch.long), torch.as_tensor(attention_mask)


def _ids(sequence):
    from tf_esm.configuration import ESM2_VOCAB

    vocab = {token: index for index, token in enumerate(ESM2_VOCAB)}
    return np.asarray([[0] + [vocab[letter] for letter in sequence] + [2]], dtype=np.int32)


def test_require_tensorflow_names_the_feature_and_the_backend(monkeypatch):
    import keras

    from tf_esm.backend import TensorFlowRequiredError, require_tensorflow

    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")  # whatever backend runs the test
    assert require_tensorflow("anything").__name__ == "tensorflow"
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(TensorFlowRequiredError, match=r"SavedModel export needs TensorFlow .*you are on jax"):
        require_tensorflow("SavedModel export")
    assert issubclass(TensorFlowRequiredError, ImportError)  # `except ImportError` treats it as not available


def test_a_missing_backend_package_is_one_sentence_saying_what_to_install(tmp_path):
    """KERAS_BACKEND=jax without jax installed: the command says which package and how to install it."""
    script = ("import sys; sys.modules['jax'] = None\n"  # as if jax were not installed
              "from tf_esm.cli import main\n"
              f"sys.exit(main(['embed', 'model_dir', {str(tmp_path / 'in.fasta')!r}, 'out.h5']))")
    (tmp_path / "in.fasta").write_text(">a\nMKT\n")
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=REPO)
    completed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in completed.stderr.splitlines() if line.startswith("tf-esm")]
    assert completed.returncode == 1, completed.stderr[-2000:]
    assert lines == ['tf-esm: error: KERAS_BACKEND=jax needs the jax package, which is not installed: '
                     'pip install "tf_esm[jax]" (or unset KERAS_BACKEND to run on TensorFlow).'], completed.stderr
