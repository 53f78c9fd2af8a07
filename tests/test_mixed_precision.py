"""Mixed precision (`mixed_bfloat16`, `mixed_float16`) and XLA (`jit_compile=True`): inference and training stay
finite on awkward batches (all-padding rows, one-residue and length-1 inputs, fully masked sequences) and close to
float32; the global dtype policy is reset after every test."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests._reference import assert_close, torch_outputs
from tf_esm import TFEsmForMaskedLM, TFEsmForSequenceClassification
from tf_esm.configuration import ESM2_VOCAB

CLS, PAD, EOS, MASK = (ESM2_VOCAB.index(token) for token in ("<cls>", "<pad>", "<eos>", "<mask>"))
RESIDUES = [ESM2_VOCAB.index(letter) for letter in "LAGVSERTIDPKQNFYMHWC"]
POLICIES = ["mixed_bfloat16", "mixed_float16"]
# Largest |mixed precision - float32 reference| allowed on the logits, relative to their largest magnitude.
RELATIVE_TOLERANCE = {"mixed_bfloat16": 3e-2, "mixed_float16": 4e-3}
ARCHITECTURES = ["rotary", "absolute"]  # ESM-2 and ESM-1b layouts


@pytest.fixture(scope="module")
def checkpoints(reference_checkpoints):
    return {kind: reference_checkpoints(kind, "EsmForMaskedLM") for kind in ARCHITECTURES}


@pytest.fixture
def dtype_policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy("float32")


def awkward_batch():
    """A normal row, an all-padding row, a fully masked row and a one-residue row."""
    rng = np.random.default_rng(0)
    width = 12
    rows = [
        [CLS, *rng.choice(RESIDUES, size=width - 2), EOS],
        [PAD] * width,
        [CLS, *[MASK] * 6, EOS],
        [CLS, RESIDUES[0], EOS],
    ]
    input_ids = np.array([row + [PAD] * (width - len(row)) for row in rows], np.int32)
    return {"input_ids": input_ids, "attention_mask": (input_ids != PAD).astype(np.int32)}


def mlm_labels(input_ids):
    labels = np.where(np.isin(input_ids, RESIDUES), input_ids, -100).astype(np.int32)
    labels[2, 1:7] = RESIDUES[3]  # the fully masked row: predict a residue at every <mask>
    return labels


def finite(value):
    return bool(np.all(np.isfinite(np.asarray(value, dtype=np.float32))))


LENGTH_ONE = np.array([[CLS], [RESIDUES[1]]], np.int32)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("dtype_policy", POLICIES, indirect=True)
def test_inference_is_finite_and_close_to_float32(checkpoints, dtype_policy, architecture):
    reference = checkpoints[architecture]
    model = TFEsmForMaskedLM.from_pretrained(reference.path)
    batch = awkward_batch()
    outputs = model(batch, output_hidden_states=True)
    assert keras.backend.standardize_dtype(outputs.logits.dtype) == dtype_policy.split("_")[1]
    assert finite(outputs.logits) and all(finite(state) for state in outputs.hidden_states)
    # The reference's token-dropout ratio divides by the row length, so its all-padding row is NaN: compare the rest.
    rows = batch["attention_mask"].any(axis=1)
    expected = torch_outputs(reference.model, batch["input_ids"], batch["attention_mask"]).logits.numpy()[rows]
    tolerance = RELATIVE_TOLERANCE[dtype_policy] * np.abs(expected).max()
    assert_close(np.asarray(outputs.logits, np.float32)[rows], expected, tolerance, f"logits, {dtype_policy}")

    length_one = model(LENGTH_ONE).logits
    expected = torch_outputs(reference.model, LENGTH_ONE).logits.numpy()
    assert_close(np.asarray(length_one, np.float32), expected, tolerance, f"length-1 logits, {dtype_policy}")

    # The explicit-softmax path (attention probabilities requested) masks without overflow too.
    for probs in model(batch, output_attentions=True).attentions:
        probs = np.asarray(probs, np.float32)
        assert finite(probs)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=2e-2)
        real_queries = batch["attention_mask"][:, None, :, None] == 1
        padded_keys = batch["attention_mask"][:, None, None, :] == 0
        assert np.all(probs[np.broadcast_to(real_queries & padded_keys, probs.shape)] == 0)


@pytest.mark.parametrize("dtype_policy, jit_compile", [("mixed_bfloat16", True), ("mixed_float16", False)],
                         indirect=["dtype_policy"])
def test_training_is_finite(checkpoints, dtype_policy, jit_compile):
    batch = awkward_batch()
    labels = mlm_labels(batch["input_ids"])  # the all-padding row has only -100 labels
    data = tf.data.Dataset.from_tensor_slices((batch, labels)).repeat(4).batch(4)
    model = TFEsmForMaskedLM.from_pretrained(checkpoints["rotary"].path)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=["accuracy"], jit_compile=jit_compile)
    if dtype_policy == "mixed_float16":  # Keras scales the float16 loss against gradient underflow
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(data, epochs=3, verbose=0).history
    assert all(finite(values) for values in history.values())
    assert history["loss"][-1] < history["loss"][0]
    assert all(finite(variable.numpy()) for variable in model.weights)
    predicted = model.predict(batch, batch_size=4, verbose=0)
    assert finite(predicted)
    called = np.asarray(model(batch).logits, np.float32)
    np.testing.assert_allclose(np.asarray(predicted, np.float32), called,
                               atol=RELATIVE_TOLERANCE[dtype_policy] * np.abs(called).max())


def test_xla_fit_and_predict_match_float32_graph(reference_checkpoints):
    batch = awkward_batch()
    # No label on the all-padding row: its layer norms see constant zero vectors, whose gradient scales with
    # 1/sqrt(layer_norm_eps) = 1e6, in the reference too.
    labels = np.array([0, -100, 1, 0], np.int32)
    data = tf.data.Dataset.from_tensor_slices((batch, labels)).batch(4)
    directory = reference_checkpoints("absolute", "EsmForSequenceClassification", num_labels=2).path
    xla, graph = (TFEsmForSequenceClassification.from_pretrained(directory) for _ in range(2))
    xla.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=True)
    graph.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    np.testing.assert_allclose(xla.predict(batch, verbose=0), graph(batch).logits.numpy(), atol=1e-5)
    xla_history = xla.fit(data, epochs=2, verbose=0).history
    graph_history = graph.fit(data, epochs=2, verbose=0).history
    np.testing.assert_allclose(xla_history["loss"], graph_history["loss"], rtol=1e-4)
    for xla_variable, variable in zip(xla.weights, graph.weights):
        np.testing.assert_allclose(xla_variable.numpy(), variable.numpy(), atol=1e-5)
