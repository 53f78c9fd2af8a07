"""TensorFlow graphs trace a stack of identical layers once (`layers_tf`): the unrolled loop's numbers (to float32
rounding), one trace instead of one per layer, and the PyTorch reference's outputs."""

import gc

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

    # The same kernels; the graph optimiser fuses a little differently across the calls: float32 rounding.
    for ours, theirs in zip(tf.nest.flatten(once), tf.nest.flatten(unrolled)):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=1e-6)  # measured 2.4e-7
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
    kernel = model.esm.encoder.layer.stacked_weight("intermediate.dense.kernel")
    original = kernel.numpy()
    changed = original.copy()
    changed[LAYERS - 1] *= 1.5  # the last layer's kernel only
    try:
        kernel.assign(changed)
        after = function(input_ids, attention_mask).numpy()
        eager = model(input_ids, attention_mask=attention_mask).last_hidden_state.numpy()
    finally:
        kernel.assign(original)
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
    assert not layers_tf.traceable_stack(model.esm.encoder.layer)


def test_folding_stem_and_trunk_blocks_traced_once(monkeypatch):
    """ESMFold's compiled TensorFlow path: the stem's layers and the trunk's blocks are traced once each, and the
    result is the unrolled graph's (measured: bit for bit)."""
    import keras

    from tests.test_folding_model import STEM, STRUCTURE_MODULE, TRUNK
    from tf_esm import TFEsmForProteinFolding
    from tf_esm.configuration import ESM2_VOCAB, EsmConfig
    from tf_esm.folding.trunk import TriangularSelfAttentionBlock

    config = EsmConfig(**dict(STEM, num_hidden_layers=3), is_folding_model=True, vocab_list=list(ESM2_VOCAB),
                       esmfold_config=dict(fp16_esm=False, lddt_head_hid_dim=16, trunk=dict(TRUNK, num_blocks=3)))
    keras.utils.set_random_seed(0)
    model = TFEsmForProteinFolding(config)
    model.build()
    model.compiled_inference = True  # the compiled program (not "auto"'s eager first call)
    traced = []
    for cls in (TFEsmLayer, TriangularSelfAttentionBlock):
        original = cls.call

        def counted(self, *args, __original=original, **kwargs):
            traced.append(type(self).__name__)
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "call", counted)
    aatype = np.random.default_rng(0).integers(0, 20, (2, 17)).astype(np.int32)
    once = model(aatype, num_recycles=1)
    assert sorted(traced) == ["TFEsmLayer", "TriangularSelfAttentionBlock"], traced

    monkeypatch.setattr(layers_tf, "TRACE_ONCE", False)
    model._inference_functions.clear()
    del traced[:]
    unrolled = model(aatype, num_recycles=1)
    assert sorted(traced) == ["TFEsmLayer"] * 3 + ["TriangularSelfAttentionBlock"] * 3, traced
    for key in ("positions", "plddt", "ptm", "s_z"):
        np.testing.assert_array_equal(np.asarray(once[key]), np.asarray(unrolled[key]), err_msg=key)


def test_folding_first_call_traces_the_trunk_block_once_for_all_recycling_passes(monkeypatch):
    """ESMFold's eager inference (the default under TensorFlow): every recycling pass runs the trunk's blocks
    through one traced block, traced by the first pass only (it was traced again per pass); the outputs are the
    op-by-op ones."""
    import keras

    from tests.test_folding_model import STEM, TRUNK
    from tf_esm import TFEsmForProteinFolding
    from tf_esm.configuration import ESM2_VOCAB, EsmConfig
    from tf_esm.folding.trunk import TriangularSelfAttentionBlock

    config = EsmConfig(**dict(STEM, num_hidden_layers=2), is_folding_model=True, vocab_list=list(ESM2_VOCAB),
                       esmfold_config=dict(fp16_esm=False, lddt_head_hid_dim=16, trunk=dict(TRUNK, num_blocks=3)))
    keras.utils.set_random_seed(0)
    model = TFEsmForProteinFolding(config)
    model.build()
    assert model.compiled_inference is None
    calls = []
    original = TriangularSelfAttentionBlock.call

    def counted(self, *args, **kwargs):
        calls.append(tf.executing_eagerly())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TriangularSelfAttentionBlock, "call", counted)
    aatype = np.random.default_rng(1).integers(0, 20, (2, 13)).astype(np.int32)
    first = model(aatype, num_recycles=2)  # three passes over three blocks
    assert model.inference_trace_count == 0
    assert calls == [False], calls  # one trace, no eager block call
    del calls[:]
    eager = keras.Model.__call__(model, aatype, num_recycles=2)  # op by op, no inference path
    assert calls == [True] * 9
    for key in ("positions", "plddt", "ptm", "s_z", "s_s"):
        np.testing.assert_allclose(np.asarray(first[key]), np.asarray(eager[key]), rtol=1e-4, atol=1e-4,
                                   err_msg=key)
    gc.collect()  # the traced block went with the call
    assert not any(model.trunk.blocks in stacks for stacks in layers_tf._EAGER_TRACES.values())
