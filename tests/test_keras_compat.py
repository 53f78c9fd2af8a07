"""tf_esm/keras_compat.py: every private Keras/TensorFlow use is checked once and has a public fallback. With the
fallbacks forced (public-only mode), loading a checkpoint, a forward pass and a training step (a compiled Keras loss
on masked token labels, and the built-in loss) give the numbers of the normal path and of the PyTorch reference;
so do a `LayerStack` and the helpers one by one. Runs under every backend."""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

from tests._reference import batch_with_padding_and_masks
from tests.conftest import BACKEND
from tf_esm import keras_compat
from tf_esm.modeling.layer_stack import LayerStack

# The private uses the installed (tested) Keras and TensorFlow offer; the last two exist only under TensorFlow.
EVERY_BACKEND = ("deferred_initialization", "initializer_attribute", "stateless_scope_getter", "loss_scaling",
                 "keras_mask", "flatten_layers", "layer_state_unlock")
TENSORFLOW_ONLY = ("symbolic_build_hook", "multi_worker_mode")


def test_every_private_use_is_checked_and_taken_with_the_tested_keras():
    assert set(keras_compat._CHECKS) == set(EVERY_BACKEND + TENSORFLOW_ONLY)
    for name in EVERY_BACKEND + (TENSORFLOW_ONLY if BACKEND == "tensorflow" else ()):
        assert keras_compat.private(name), f"{name}: the private interface changed; see tf_esm/keras_compat.py"


def test_a_check_gives_the_same_answer_inside_a_keras_scope(monkeypatch):
    """The first `private(name)` may come from inside a load's stateless scope: the answer must not depend on it."""
    monkeypatch.setattr(keras_compat, "_checked", {})
    with keras.StatelessScope(initialize_variables=False):
        inside = {name: keras_compat.private(name) for name in EVERY_BACKEND}
    monkeypatch.setattr(keras_compat, "_checked", {})
    assert inside == {name: keras_compat.private(name) for name in EVERY_BACKEND}
    assert all(inside.values())
    monkeypatch.setattr(keras_compat, "_checked", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as tests/test_api_names.py runs: a check's warning must not fail it
        assert all(keras_compat.private(name) for name in EVERY_BACKEND)


def test_public_only_mode_takes_no_private_use():
    with keras_compat.public_only():
        assert not any(keras_compat.private(name) for name in keras_compat._CHECKS)
    assert keras_compat.private("keras_mask")


def test_a_failing_check_gives_the_fallback(monkeypatch):
    monkeypatch.setitem(keras_compat._CHECKS, "keras_mask", lambda: 1 / 0)
    monkeypatch.setattr(keras_compat, "_checked", {})
    assert not keras_compat.private("keras_mask")


def _token_batch():
    input_ids, attention_mask = batch_with_padding_and_masks()
    labels = np.where(input_ids % 3 == 0, 1, np.where(input_ids % 3 == 1, 2, 0)).astype(np.int32)
    labels[(input_ids <= 2) | (attention_mask == 0)] = -100  # <cls>, <pad>, <eos>: ignored
    return {"input_ids": input_ids, "attention_mask": attention_mask}, labels


def _load_forward_and_train(path, public):
    from tf_esm import TFEsmForTokenClassification

    with keras_compat.public_only(public):
        inputs, labels = _token_batch()
        results = {}
        model = TFEsmForTokenClassification.from_pretrained(path)
        results["logits"] = ops.convert_to_numpy(model(**inputs).logits)
        model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        results["keras_loss_step"] = model.train_on_batch(inputs, labels, return_dict=True)
        results["after_keras_step"] = ops.convert_to_numpy(model(**inputs).logits)
        builtin = TFEsmForTokenClassification.from_pretrained(path)
        builtin.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
        results["builtin_loss_step"] = builtin.train_on_batch(inputs, labels, return_dict=True)
        results["after_builtin_step"] = ops.convert_to_numpy(builtin(**inputs).logits)
    return results


def test_public_fallbacks_load_run_and_train_as_the_private_path(reference_checkpoints):
    import torch

    reference = reference_checkpoints("rotary", "EsmForTokenClassification", num_labels=3)
    normal = _load_forward_and_train(reference.path, public=False)
    public = _load_forward_and_train(reference.path, public=True)

    inputs, labels = _token_batch()
    with torch.no_grad():
        expected = reference.model(input_ids=torch.as_tensor(inputs["input_ids"]).long(),
                                   attention_mask=torch.as_tensor(inputs["attention_mask"]).long())
        expected_loss = torch.nn.functional.cross_entropy(
            expected.logits.reshape(-1, 3), torch.as_tensor(labels).long().reshape(-1), ignore_index=-100).item()
    for results in (normal, public):
        np.testing.assert_allclose(results["logits"], expected.logits.numpy(), atol=1e-5)
        # The loss of a step is that of the weights before it: the reference's, over the labelled tokens only.
        np.testing.assert_allclose(float(results["keras_loss_step"]["loss"]), expected_loss, rtol=1e-5)
        np.testing.assert_allclose(float(results["builtin_loss_step"]["loss"]), expected_loss, rtol=1e-5)
    np.testing.assert_allclose(public["logits"], normal["logits"], atol=1e-6)
    np.testing.assert_allclose(public["after_keras_step"], normal["after_keras_step"], atol=1e-6)
    np.testing.assert_allclose(public["after_builtin_step"], normal["after_builtin_step"], atol=1e-6)
    np.testing.assert_allclose(float(public["keras_loss_step"]["accuracy"]),
                               float(normal["keras_loss_step"]["accuracy"]))
    assert not np.allclose(public["after_keras_step"], public["logits"], atol=1e-4)  # the step changed something


class _Block(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(8, name="inner")
        self.dropout = keras.layers.Dropout(0.0, name="dropout")

    def build(self, input_shape):
        self.inner.build(input_shape)

    def call(self, x):
        return x + ops.tanh(self.inner(self.dropout(x)))


def test_layer_stack_with_public_fallbacks():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 8)).astype("float32")
    outputs = {}
    for public in (False, True):
        with keras_compat.public_only(public):
            stack = LayerStack(lambda: _Block(name="block"), 3, name="blocks")
            stack.build((None, 8))
            kernel = ops.convert_to_numpy(stack.stacked_weights[0].value)
            # Each layer its own random draw of the template's initializer (Glorot uniform), not one copy.
            assert kernel.shape == (3, 8, 8) and not np.allclose(kernel[0], kernel[1])
            limit = np.sqrt(6 / 16)
            assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > limit / 2
            for stacked in stack.stacked_weights:
                stacked.assign(np.random.default_rng(1).normal(size=stacked.shape).astype("float32"))
            outputs[public] = ops.convert_to_numpy(stack.apply(lambda layer, carry: layer(carry), x))
    np.testing.assert_allclose(outputs[True], outputs[False], atol=1e-6)


def test_lora_on_a_built_stack_needs_the_private_unlocking_and_public_only_mode_says_so(reference_checkpoints):
    from tf_esm import TFEsmForSequenceClassification

    reference = reference_checkpoints("rotary", "EsmForSequenceClassification", num_labels=2)
    with keras_compat.public_only():
        model = TFEsmForSequenceClassification.from_pretrained(reference.path)
        with pytest.raises(RuntimeError, match="public-only mode"):
            model.enable_lora(2)
    model = TFEsmForSequenceClassification.from_pretrained(reference.path)
    layers = model.enable_lora(2)
    stacked = model.esm.encoder.layer.stacked_weight("attention.self.query.lora_kernel_a")
    assert len(layers) == 2 and tuple(stacked.shape) == (2, 32, 2)  # one adapter per layer, stacked


def test_sublayers_and_keras_masks_through_the_fallbacks():
    stack = LayerStack(lambda: _Block(name="block"), 2, name="blocks")
    stack.build((None, 8))
    outer = _Block(name="outer")
    outer.extra = [keras.layers.Dense(2, name="listed"), {"stack": stack}]
    outer.build((None, 8))
    private = sorted(layer.name for layer in keras_compat.all_sublayers(outer))
    assert private == ["blocks", "dropout", "inner", "listed"]  # not the stack's template
    with keras_compat.public_only():
        assert sorted(layer.name for layer in keras_compat.all_sublayers(outer)) == private

    logits = ops.convert_to_tensor(np.random.default_rng(0).normal(size=(2, 3, 4)).astype("float32"))
    labels = np.array([[1, 2, 0], [3, 0, 0]])
    keep = ops.convert_to_tensor(np.array([[True, True, False], [True, False, False]]))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    expected = loss(labels[[0, 0, 1]][[0, 1, 2], [0, 1, 0]], ops.convert_to_numpy(logits)[[0, 0, 1], [0, 1, 0]])
    with keras_compat.public_only():
        masked = keras_compat.with_keras_mask(logits, keep)
        np.testing.assert_allclose(float(loss(labels, masked)), float(expected), rtol=1e-6)
        np.testing.assert_allclose(ops.convert_to_numpy(masked), ops.convert_to_numpy(logits))
    np.testing.assert_allclose(float(loss(labels, keras_compat.with_keras_mask(logits, keep))), float(expected),
                               rtol=1e-6)


@pytest.mark.tensorflow_only("tf.distribute")
def test_multi_worker_mode_through_the_fallback():
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    assert not keras_compat.in_multi_worker_mode(strategy)
    with keras_compat.public_only():
        assert not keras_compat.in_multi_worker_mode(strategy)
        assert keras_compat.scale_loss_for_replicas(ops.ones(())) is not None
