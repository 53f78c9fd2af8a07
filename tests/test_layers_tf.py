"""TensorFlow graphs trace a stack of identical layers once (`layers_tf`): same numbers as the unrolled loop, one
trace instead of one per layer, and the PyTorch reference's outputs."""

import numpy as np
import pytest
import tensorflow as tf

from tests._reference import assert_close, batch_with_padding_and_masks, torch_outputs
from tf_esm import TFEsmModel
from tf_esm.modeling import layers_tf
from tf_esm.modeling.encoder import TFEsmLayer

LAYERS = 4


@pytest.fixture
def pair(reference_checkpoints):
    reference = reference_checkpoints("rotary", model_class="EsmModel", num_hidden_layers=LAYERS,
                                      add_pooling_layer=False)
    return reference, TFEsmModel.from_pretrained(reference.path, add_pooling_layer=False)


@pytest.fixture
def count_layer_traces(monkeypatch):
    """How often `TFEsmLayer.call` runs: once per trace of a layer inside graphs."""
    calls = []
    original = TFEsmLayer.call

    def counted(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TFEsmLayer, "call", counted)
    return calls


def _outputs(model, input_ids, attention_mask, training=False):
    def run(ids, mask):
        out = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True, training=training)
        return out.last_hidden_state, out.hidden_states, out.attentions

    return tf.function(run, autograph=False)(input_ids, attention_mask)


def test_encoder_layer_traced_once_matches_unrolled_and_reference(pair, count_layer_traces, monkeypatch):
    reference, model = pair
    input_ids, attention_mask = batch_with_padding_and_masks()
    once = _outputs(model, input_ids, attention_mask)
    assert len(count_layer_traces) == 1, count_layer_traces  # fails before layers_tf: one trace per layer (4)

    monkeypatch.setattr(layers_tf, "TRACE_ONCE", False)
    del count_layer_traces[:]
    unrolled = _outputs(model, input_ids, attention_mask)
    assert len(count_layer_traces) == LAYERS

    # The same graph once TensorFlow has inlined the calls: the same numbers, bit for bit.
    for ours, theirs in zip(tf.nest.flatten(once), tf.nest.flatten(unrolled)):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert len(once[1]) == LAYERS + 1 and len(once[2]) == LAYERS

    expected = torch_outputs(reference.model, input_ids, attention_mask, output_hidden_states=True,
                             output_attentions=True)
    keep = attention_mask.astype(bool)
    assert_close(once[0].numpy()[keep], expected.last_hidden_state.numpy()[keep], 2e-5,
                 "traced-once last hidden state")  # measured 3.0e-6
    for index, (ours, theirs) in enumerate(zip(once[1], expected.hidden_states)):
        assert_close(ours.numpy()[keep], theirs.numpy()[keep], 2e-5, f"traced-once hidden state {index}")
    for index, (ours, theirs) in enumerate(zip(once[2], expected.attentions)):
        assert_close(ours.numpy(), theirs.numpy(), 1e-5, f"traced-once attentions {index}")  # measured 6.6e-7


def test_each_layer_uses_its_own_weights(pair):
    """One trace serves every layer: changing one layer's weights changes the output (nothing baked in)."""
    _, model = pair
    input_ids, attention_mask = batch_with_padding_and_masks()
    function = tf.function(lambda ids, mask: model(ids, attention_mask=mask).last_hidden_state, autograph=False)
    before = function(input_ids, attention_mask).numpy()
    dense = model.esm.encoder.layer[LAYERS - 1].intermediate.dense
    original = dense.kernel.numpy()
    try:
        dense.kernel.assign(original * 1.5)
        after = function(input_ids, attention_mask).numpy()
        eager = model(input_ids, attention_mask=attention_mask).last_hidden_state.numpy()
    finally:
        dense.kernel.assign(original)
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, eager, atol=2e-5)  # measured ~1e-6


def test_training_keeps_one_trace_per_layer(pair, count_layer_traces):
    """Under training the loop stays unrolled (dropout's seed state lives outside the mapped weights)."""
    _, model = pair
    input_ids, attention_mask = batch_with_padding_and_masks()
    _outputs(model, input_ids, attention_mask, training=True)
    assert len(count_layer_traces) == LAYERS


def test_eager_calls_do_not_trace(pair, count_layer_traces):
    _, model = pair
    input_ids, attention_mask = batch_with_padding_and_masks()
    model(input_ids, attention_mask=attention_mask)
    assert len(count_layer_traces) == LAYERS
    assert not layers_tf.traceable_once(model.esm.encoder.layer)
