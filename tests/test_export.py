"""`tf_esm.pipelines.export`: SavedModels loaded in a fresh TensorFlow-only process match the Keras and PyTorch models."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests._reference import assert_close, share_directory, torch_outputs
from tf_esm import (
    TFEsmForMaskedLM,
    TFEsmForSequenceClassification,
    TFEsmForTokenClassification,
    TFEsmModel,
)
from tf_esm.pipelines.export import EsmServingModule, export_pretrained, export_saved_model
from tf_esm.tokenization import EsmTokenizer, write_default_vocab

SEQUENCES = ["MKTAYIAKQRQISFVK", "GV L", "<mask>ACD", "W"]
# name -> (reference kind, transformers class, Keras class, checkpoint options)
MODELS = {
    "base": ("rotary", "EsmModel", TFEsmModel, {}),
    "masked_lm": ("absolute", "EsmForMaskedLM", TFEsmForMaskedLM, {}),
    "sequence": ("rotary", "EsmForSequenceClassification", TFEsmForSequenceClassification,
                 {"num_labels": 3, "problem_type": "multi_label_classification"}),
    "token": ("rotary", "EsmForTokenClassification", TFEsmForTokenClassification, {"num_labels": 4}),
}

# Runs in a fresh interpreter that imports TensorFlow only: load each export, call both signatures, try bad inputs.
FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf
spec = json.loads(sys.argv[1])
inputs = np.load(spec["inputs"])
results, errors = {}, {}
for name, path in spec["exports"].items():
    loaded = tf.saved_model.load(path)
    strings = loaded.signatures["serving_default"](sequences=tf.constant(spec["sequences"]))
    ids = loaded.signatures["token_ids"](input_ids=tf.constant(inputs["input_ids"]),
                                         attention_mask=tf.constant(inputs["attention_mask"]))
    results.update({f"{name}/strings/{key}": value.numpy() for key, value in strings.items()})
    results.update({f"{name}/ids/{key}": value.numpy() for key, value in ids.items()})
    for case, batch in spec["bad_inputs"].items():
        try:
            loaded.signatures["serving_default"](sequences=tf.constant(batch))
            errors[f"{name}/{case}"] = None
        except tf.errors.InvalidArgumentError as error:
            errors[f"{name}/{case}"] = error.message
np.savez(spec["results"], **results)
with open(spec["errors"], "w") as handle:
    json.dump({"errors": errors, "tf_esm_imported": any(m.startswith("tf_esm") for m in sys.modules)}, handle)
"""


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return EsmTokenizer(write_default_vocab(tmp_path_factory.mktemp("export_vocab")))


@pytest.fixture(scope="module")
def exported(reference_checkpoints, tokenizer, tmp_path_factory):
    """Export every model kind to a different kind of target, then run the fresh TensorFlow-only process."""
    root = tmp_path_factory.mktemp("exports")
    models, references, paths = {}, {}, {}
    for name, (kind, hf_class, keras_class, options) in MODELS.items():
        reference = reference_checkpoints(kind, hf_class, **options)
        references[name] = reference.model
        models[name] = keras_class.from_pretrained(reference.path)
        paths[name] = str(root / name / "1")
    # base: replaces an older export (overwrite=True); masked_lm: from a directory into an existing empty
    # directory (class from config.json's architectures); sequence: a Keras model; token: a directory.
    os.makedirs(paths["base"])
    with open(os.path.join(paths["base"], "old_export.txt"), "w") as handle:
        handle.write("an older export")
    export_saved_model(models["base"], paths["base"], overwrite=True)
    os.makedirs(paths["masked_lm"])
    export_pretrained(reference_checkpoints("absolute", "EsmForMaskedLM").path, paths["masked_lm"])
    export_saved_model(models["sequence"], paths["sequence"])
    export_pretrained(reference_checkpoints("rotary", "EsmForTokenClassification", num_labels=4).path,
                      paths["token"])
    batch = tokenizer(SEQUENCES, padding=True, return_tensors="np")
    input_ids, attention_mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
    np.savez(root / "inputs.npz", input_ids=input_ids, attention_mask=attention_mask)
    spec = {"exports": paths, "sequences": SEQUENCES, "inputs": str(root / "inputs.npz"),
            "results": str(root / "results.npz"), "errors": str(root / "errors.json"),
            "bad_inputs": {"bad_character": ["MKT", "MKtAY", "GV"], "too_long": ["MK", "A" * 70]}}
    process = subprocess.run([sys.executable, "-c", FRESH_PROCESS, json.dumps(spec)], capture_output=True,
                             text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    with open(spec["errors"]) as handle:
        report = json.load(handle)
    share_directory(root)
    return dict(models=models, references=references, paths=paths, input_ids=input_ids,
                attention_mask=attention_mask, results=dict(np.load(spec["results"])), **report)


def expected_outputs(model, input_ids, attention_mask):
    """The Keras model's outputs, pooled with NumPy (independently of tf_esm.pipelines.export)."""
    outputs = model(input_ids, attention_mask=attention_mask, output_hidden_states=True)
    hidden = outputs.hidden_states[-1].numpy()
    mask = (attention_mask == 1) & ~np.isin(input_ids, [0, 1, 2])
    expected = {
        "residue_mask": mask.astype(np.int32),
        "residue_embeddings": hidden * mask[..., None],
        "sequence_embedding": np.stack([hidden[row][mask[row]].mean(axis=0) for row in range(len(mask))]),
    }
    if "logits" in outputs:
        logits = outputs.logits.numpy()
        expected["logits"] = logits
        if isinstance(model, TFEsmForTokenClassification):
            expected["probabilities"] = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        elif isinstance(model, TFEsmForSequenceClassification):
            expected["probabilities"] = 1 / (1 + np.exp(-logits))
    return expected


def torch_expected(reference, input_ids, attention_mask):
    """What both signatures must return, from the PyTorch reference: each sequence run alone, without padding, for
    the real tokens; the padded batch's outputs at padding positions (where only the logits are not zeroed)."""
    encoder = getattr(reference, "esm", reference)
    hidden = torch_outputs(encoder, input_ids, attention_mask).last_hidden_state.numpy()
    logits = None if reference is encoder else torch_outputs(reference, input_ids, attention_mask).logits.numpy()
    residue_mask = (attention_mask == 1) & ~np.isin(input_ids, [0, 1, 2])  # not <cls>, <pad>, <eos>
    pooled = np.zeros(hidden[:, 0].shape, np.float32)
    for row in range(len(input_ids)):
        real = attention_mask[row] == 1
        alone = input_ids[row][real][None]
        alone_hidden = torch_outputs(encoder, alone).last_hidden_state.numpy()[0]
        hidden[row, real] = alone_hidden
        pooled[row] = alone_hidden[residue_mask[row][real]].mean(axis=0)
        if logits is not None:
            alone_logits = torch_outputs(reference, alone).logits.numpy()[0]
            if logits.ndim == 3:
                logits[row, real] = alone_logits
            else:
                logits[row] = alone_logits
    expected = {"residue_mask": residue_mask.astype(np.int32), "residue_embeddings": hidden * residue_mask[..., None],
                "sequence_embedding": pooled}
    if logits is not None:
        expected["logits"] = logits
        if logits.ndim == 3 and logits.shape[-1] == 4:  # token classification: softmax over the labels
            expected["probabilities"] = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        elif logits.ndim == 2:  # multi-label sequence classification: a sigmoid per label
            expected["probabilities"] = 1 / (1 + np.exp(-logits))
    return expected


@pytest.mark.parametrize("name", list(MODELS))
def test_fresh_process_signatures_match_torch_and_keras(exported, name, tokenizer):
    """Both signatures of each export, loaded in a TensorFlow-only process, against the PyTorch reference (every
    sequence of the padded batch also alone), and against the Keras model they were exported from."""
    assert not exported["tf_esm_imported"]
    input_ids, attention_mask = exported["input_ids"], exported["attention_mask"]
    assert (attention_mask == 0).any(axis=1).sum() == 3  # three of the four rows are padded
    expected = torch_expected(exported["references"][name], input_ids, attention_mask)
    keras_expected = expected_outputs(exported["models"][name], input_ids, attention_mask)
    results = exported["results"]
    for signature in ("strings", "ids"):
        got = {key.split("/")[-1]: value for key, value in results.items() if key.startswith(f"{name}/{signature}/")}
        extra = {"input_ids", "attention_mask"} if signature == "strings" else set()
        assert set(got) == set(expected) | extra
        np.testing.assert_array_equal(got["residue_mask"], expected["residue_mask"])
        for key, value in expected.items():
            # float32 summation order only; measured at most 1.8e-6 (vs PyTorch) and 2.4e-6 (vs Keras, eager).
            assert_close(got[key], value, 2e-5, f"{signature}/{key} vs PyTorch")
            assert_close(got[key], keras_expected[key], 2e-5, f"{signature}/{key} vs Keras")
    assert results[f"{name}/strings/input_ids"].tolist() == input_ids.tolist()
    assert results[f"{name}/strings/attention_mask"].tolist() == attention_mask.tolist()


def test_bad_requests_fail_with_index_position_and_character(exported):
    for name in MODELS:
        message = exported["errors"][f"{name}/bad_character"]
        assert message is not None
        assert "batch index] [1] [1-based position] [3] [character] [t]" in message, message
    too_long = exported["errors"]["masked_lm/too_long"]  # absolute positions: at most 62 tokens
    assert too_long is not None and "batch index] [1] [have] [72]" in too_long and "at most 62" in too_long
    assert exported["errors"]["base/too_long"] is None  # rotary positions: no limit


def test_saved_model_cli_lists_the_signatures(exported):
    # TensorFlow's saved_model_cli (the module behind the console script of that name, which may not be on PATH).
    cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    process = subprocess.run([*cli, "show", "--all", "--dir", exported["paths"]["sequence"]], capture_output=True,
                             text=True, timeout=120)
    assert process.returncode == 0, process.stderr[-2000:]
    text = process.stdout
    strings_part = text[text.index("signature_def['serving_default']"):text.index("signature_def['token_ids']")]
    assert "inputs['sequences']" in strings_part and "DT_STRING" in strings_part
    for output in ("sequence_embedding", "residue_embeddings", "residue_mask", "logits", "probabilities",
                   "input_ids", "attention_mask"):
        assert f"outputs['{output}']" in strings_part
    ids_part = text[text.index("signature_def['token_ids']"):]
    assert "inputs['input_ids']" in ids_part and "inputs['attention_mask']" in ids_part
    assert "Method name is: tensorflow/serving/predict" in ids_part


def test_existing_export_is_kept_unless_overwrite(exported, tmp_path, monkeypatch):
    replaced = exported["paths"]["base"]  # the fixture exported over an older export with overwrite=True
    assert sorted(os.listdir(replaced)) == ["assets", "assets.extra", "fingerprint.pb", "saved_model.pb",
                                            "variables"]
    assert os.listdir(os.path.dirname(replaced)) == ["1"]  # no staging or backup directory left behind
    with open(os.path.join(replaced, "assets.extra", "config.json")) as handle:
        assert json.load(handle)["hidden_size"] == exported["models"]["base"].config.hidden_size

    model = exported["models"]["base"]
    target = tmp_path / "esm" / "1"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("precious", encoding="utf-8")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_saved_model(model, target)
    assert os.listdir(target) == ["keep.txt"]

    def failing_signatures(self):
        raise OSError("disk full")

    monkeypatch.setattr(EsmServingModule, "signatures", failing_signatures)
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(model, target, overwrite=True)
    assert os.listdir(target) == ["keep.txt"]
    assert os.listdir(tmp_path / "esm") == ["1"]  # the staging directory was removed


def test_vocabulary_must_match_the_model(exported):
    with pytest.raises(ValueError, match="vocab_size=33"):
        EsmServingModule(exported["models"]["base"], vocab=["<cls>", "<pad>", "<eos>", "<unk>", "A"])
    with pytest.raises(TypeError, match="Expected one of"):
        EsmServingModule(object())


def test_a_classifier_fine_tuned_from_a_masked_lm_exports_as_the_classifier(reference_checkpoints, tokenizer,
                                                                            tmp_path, capsys):
    """save_pretrained records the saved class, so exporting the saved directory by path serves the classifier's
    logits, not a masked LM with a random head (which is what the source checkpoint's `architectures` named)."""
    import keras
    import tensorflow as tf

    from tf_esm.cli import main

    mlm = reference_checkpoints("rotary", "EsmForMaskedLM")
    model = TFEsmForSequenceClassification.from_pretrained(mlm.path, num_labels=2)
    batch = tokenizer(["MKTAYIAK", "GSHML"], padding=True, return_tensors="np")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    model.compile(optimizer="adam", jit_compile=False)
    model.fit(tf.data.Dataset.from_tensors((inputs, np.array([0, 1]))), epochs=1, verbose=0)
    saved = tmp_path / "my_classifier"
    model.save_pretrained(saved)
    with open(saved / "config.json") as handle:
        assert json.load(handle)["architectures"] == ["EsmForSequenceClassification"]
    expected = keras.ops.convert_to_numpy(model(inputs).logits)

    export_pretrained(str(saved), tmp_path / "python" / "1")
    assert main(["export", str(saved), str(tmp_path / "cli" / "1")]) == 0, capsys.readouterr().err
    for path in (tmp_path / "python" / "1", tmp_path / "cli" / "1"):
        outputs = tf.saved_model.load(str(path)).signatures["serving_default"](
            sequences=tf.constant(["MKTAYIAK", "GSHML"]))
        assert outputs["logits"].shape == (2, 2)
        np.testing.assert_allclose(outputs["logits"].numpy(), expected, atol=1e-5)
