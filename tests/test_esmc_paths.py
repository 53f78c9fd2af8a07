"""ESM C on tf_esm's paths (TensorFlow): `tf-esm embed` (HDF5, Parquet, the Beam runner), `tf-esm convert` of the `esm`
package's weights, SavedModel export with the in-graph tokenizer, `model.fit` with the built-in losses and LoRA.
Expected values come from transformers' `EsmcModel` or the `esm` package's own outputs (tests/fixtures)."""

import json
import os

import numpy as np
import pytest
import torch

from tests._reference import as_numpy, make_esmc_reference_checkpoint
from tf_esm import EsmcTokenizer, TFEsmcForMaskedLM, TFEsmcForSequenceClassification
from tf_esm.cli import main
from tf_esm.io import read_embeddings

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "esmc_esm_package")
RECORDS = {"alpha": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "beta": "ACDEFGHIKLMNPQRSTVWY", "gamma": "MLKNVQVQLV",
           "delta": "GSHMKK"}


@pytest.fixture(scope="module")
def esmc_dir(tmp_path_factory):
    return make_esmc_reference_checkpoint(tmp_path_factory.mktemp("esmc_base"), "EsmcModel")


@pytest.fixture(scope="module")
def fasta(tmp_path_factory):
    path = tmp_path_factory.mktemp("fasta") / "proteins.fasta"
    path.write_text("".join(f">{name} a protein\n{sequence}\n" for name, sequence in RECORDS.items()))
    return path


def transformers_means(ref):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(ref.path)
    means = {}
    with torch.no_grad():
        for name, sequence in RECORDS.items():  # one at a time: no padding in the reference
            hidden = ref.model(**tokenizer([sequence], return_tensors="pt")).last_hidden_state[0]
            means[name] = hidden[1:-1].mean(0).numpy()
    return means


@pytest.mark.parametrize("suffix", [".h5", ".parquet"])
def test_embed_command_matches_transformers(esmc_dir, fasta, tmp_path, capsys, suffix):
    output = tmp_path / f"esmc{suffix}"
    code = main(["embed", esmc_dir.path, str(fasta), str(output), "--include", "mean", "per_tok",
                 "--repr-layers", "-1", "0"])
    assert code == 0, capsys.readouterr().err
    expected = transformers_means(esmc_dir)
    ids, means = read_embeddings(str(output), "mean", -1)
    assert list(ids) == list(RECORDS)
    for name, mean in zip(ids, means):
        np.testing.assert_allclose(mean, expected[name], rtol=0, atol=2e-5, err_msg=name)
    ids, per_token = read_embeddings(str(output), "per_tok", -1)
    assert [len(values) for values in per_token] == [len(RECORDS[name]) for name in ids]
    # Layer 0 is the token embedding itself: ESM C's table rows for the residues.
    _, layer0 = read_embeddings(str(output), "per_tok", 0)
    table = esmc_dir.model.embed_tokens.weight.detach().numpy()
    ids0 = EsmcTokenizer()(RECORDS["beta"])["input_ids"][1:-1]
    np.testing.assert_allclose(layer0[list(RECORDS).index("beta")], table[ids0], rtol=0, atol=1e-6)


def test_beam_runner_matches_the_one_process_command(esmc_dir, fasta, tmp_path, capsys):
    output = tmp_path / "beam_out"
    code = main(["embed", esmc_dir.path, str(fasta), str(output), "--runner", "DirectRunner", "--repr-layers", "-1",
                 "--", "--direct_num_workers=1"])
    assert code == 0, capsys.readouterr().err
    ids, means = read_embeddings(str(output), "mean", -1)
    expected = transformers_means(esmc_dir)
    assert sorted(ids) == sorted(RECORDS)
    for name, mean in zip(ids, means):
        np.testing.assert_allclose(mean, expected[name], rtol=0, atol=2e-5, err_msg=name)


def test_convert_esm_package_weights(tmp_path, capsys):
    import transformers

    reference = np.load(os.path.join(FIXTURE, "reference.npz"))
    target = tmp_path / "converted"
    code = main(["convert", os.path.join(FIXTURE, "esmc_tiny.pth"), str(target)])
    assert code == 0, capsys.readouterr().err
    # The head count is not in the file: the released models' 64-wide heads are assumed; this fixture has 2.
    config = json.loads((target / "config.json").read_text())
    config["num_attention_heads"] = config["num_key_value_heads"] = int(reference["n_heads"])
    config["head_dim"] = int(reference["d_model"]) // int(reference["n_heads"])
    (target / "config.json").write_text(json.dumps(config))
    model = TFEsmcForMaskedLM.from_pretrained(target, strict=True)
    input_ids = reference["input_ids"]
    keep = input_ids != 1
    logits = as_numpy(model(input_ids, attention_mask=keep.astype("int32")).logits)
    np.testing.assert_allclose(logits[keep], reference["sequence_logits"][keep], rtol=0, atol=5e-5)
    assert transformers.AutoTokenizer.from_pretrained(target)("MK|L")["input_ids"] == [0, 20, 15, 31, 4, 2]


def test_export_saved_model_with_the_in_graph_tokenizer(esmc_dir, tmp_path, capsys):
    import tensorflow as tf

    code = main(["export", esmc_dir.path, str(tmp_path / "esmc" / "1")])
    assert code == 0, capsys.readouterr().err
    loaded = tf.saved_model.load(str(tmp_path / "esmc" / "1"))
    sequences = list(RECORDS.values())
    out = loaded.signatures["serving_default"](sequences=tf.constant(sequences))
    tokens = EsmcTokenizer()(sequences, padding=True, return_tensors="np")
    np.testing.assert_array_equal(out["input_ids"].numpy(), tokens["input_ids"])
    expected = transformers_means(esmc_dir)
    for row, name in enumerate(RECORDS):
        np.testing.assert_allclose(out["sequence_embedding"].numpy()[row], expected[name], rtol=0, atol=2e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"position\] \[4\].*takes no whitespace"):
        loaded.signatures["serving_default"](sequences=tf.constant(["MKT AY"]))


@pytest.mark.parametrize("text", ["MKT<mask>L", "acde", "M K", "AB|CD", "J*x", "<null_1>", "\u00e9A"])
def test_in_graph_character_level_tokenizer_matches_esmc_tokenizer(text):
    import tensorflow as tf

    from tf_esm import EsmStringTokenizer
    from tf_esm.configuration import ESMC_VOCAB

    layer = EsmStringTokenizer(list(ESMC_VOCAB), character_level=True)
    ours = layer(tf.constant([text]))["input_ids"].numpy()[0].tolist()
    assert ours == EsmcTokenizer()(text)["input_ids"]


def test_fit_with_built_in_losses_and_lora(tmp_path):
    ref = make_esmc_reference_checkpoint(tmp_path / "cls", "EsmcForSequenceClassification", num_labels=2)
    tokenizer = EsmcTokenizer.from_pretrained(ref.path)
    sequences = list(RECORDS.values())
    inputs = dict(tokenizer(sequences, padding=True, return_tensors="np"))
    labels = np.array([0, 1, 0, 1])
    # The built-in loss (no loss given to compile) is transformers' cross-entropy at the start.
    model = TFEsmcForSequenceClassification.from_pretrained(ref.path)
    with torch.no_grad():
        expected = ref.model(**{k: torch.tensor(v) for k, v in inputs.items()}, labels=torch.tensor(labels)).loss
    import keras

    model.compile(optimizer=keras.optimizers.SGD(0.0))
    np.testing.assert_allclose(model.evaluate(inputs, labels, batch_size=4, verbose=0), expected.numpy(), atol=1e-5)
    model.enable_lora(rank=4)  # q_proj and v_proj ("query", "value"), the rest frozen
    lora = [v.path for v in model.trainable_weights if "lora" in v.path]
    assert len(lora) == 4 and all("q_proj" in p or "v_proj" in p for p in lora)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(inputs, labels, epochs=4, batch_size=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    model.save_lora_weights(tmp_path / "adapter.safetensors")
    fresh = TFEsmcForSequenceClassification.from_pretrained(ref.path)
    fresh.load_lora_weights(tmp_path / "adapter.safetensors")
    np.testing.assert_allclose(as_numpy(fresh(inputs).logits), as_numpy(model(inputs).logits), rtol=0, atol=1e-5)
    from tf_esm.modeling.lora import merge_lora

    merged = merge_lora(model)
    merged.save_pretrained(tmp_path / "merged", format="safetensors")
    import transformers

    theirs = transformers.EsmcForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        logits = theirs(**{k: torch.tensor(v) for k, v in inputs.items()}).logits.numpy()
    np.testing.assert_allclose(as_numpy(model(inputs).logits), logits, rtol=0, atol=2e-5)


def test_bfloat16_model_maps_a_bfloat16_weights_cache_entry(esmc_dir, tmp_path):
    """A bfloat16 model's weights cache entry holds bfloat16 (rounded once, as loading rounds), so the model's
    variables are the mapped file itself; a float32 model of the same checkpoint gets its own entry."""
    import h5py

    from tf_esm import TFEsmcModel
    from tf_esm.io import buffers
    from tf_esm.io.weights import variable_memory

    direct = TFEsmcModel.from_pretrained(esmc_dir.path, precision="bfloat16", weights_cache=False)
    TFEsmcModel.from_pretrained(esmc_dir.path, precision="bfloat16", weights_cache=str(tmp_path))  # converts
    mapped = TFEsmcModel.from_pretrained(esmc_dir.path, precision="bfloat16", weights_cache=str(tmp_path))
    for ours, theirs in zip(direct.weights, mapped.weights):
        assert str(theirs.dtype) == "bfloat16"
        np.testing.assert_array_equal(as_numpy(ours.value).astype(np.float32),
                                      as_numpy(theirs.value).astype(np.float32))
    assert all(buffers.mapped_file(variable_memory(variable)) is not None for variable in mapped.weights)
    TFEsmcModel.from_pretrained(esmc_dir.path, weights_cache=str(tmp_path))  # float32: a second entry
    entries = sorted(os.listdir(tmp_path / "converted"))
    assert len(entries) == 2
    kinds = set()
    for entry in entries:
        with h5py.File(tmp_path / "converted" / entry / "tf_esm_model.h5", "r") as handle:
            handle.visititems(lambda name, item: kinds.add((entry, str(item.dtype)))
                              if isinstance(item, h5py.Dataset) else None)
    assert {dtype for _, dtype in kinds} == {"uint16", "float32"}
