"""Parity with transformers 4.46 for what 5.x does not implement: relative positions and the decoder cache.

The fixtures were generated once by conversion_scripts/make_reference_fixtures.py in a transformers 4.46.3 venv
(versions in tests/fixtures/transformers4/VERSIONS.txt); see that folder's README for each array.
"""

import os

import numpy as np
import pytest

from tests._reference import assert_close as _assert_close
from tf_esm import TFEsmForMaskedLM, TFEsmModel

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "transformers4")
ATOL = 2e-5  # the generator notes ~1e-6 differences between thread counts


def load(case):
    return os.path.join(FIXTURES, case), dict(np.load(os.path.join(FIXTURES, case, "reference.npz")))


def assert_close(ours, expected, what, atol=ATOL):
    _assert_close(ours, expected, atol, what)


@pytest.mark.parametrize("case", ["relative_key", "relative_key_query", "rotary_maskaware"])
def test_masked_lm_matches_transformers4(case):
    path, ref = load(case)
    model = TFEsmForMaskedLM.from_pretrained(path, strict=True)
    out = model(ref["input_ids"], attention_mask=ref["attention_mask"], labels=ref["labels"],
                output_hidden_states=True, output_attentions=True)
    assert_close(out.logits, ref["logits"], "logits")
    assert_close(np.stack(out.hidden_states), ref["hidden_states"], "hidden_states")
    assert_close(np.stack(out.attentions), ref["attentions"], "attentions")
    assert_close(out.loss, ref["loss"], "loss")
    # The probability-free path gives the same logits.
    assert_close(model(ref["input_ids"], attention_mask=ref["attention_mask"]).logits, ref["logits"], "logits (fast)")


def test_relative_positions_matter():
    """Guards against a silent no-op (what transformers 5.x does): zeroing the distance table changes logits."""
    path, ref = load("relative_key")
    model = TFEsmForMaskedLM.from_pretrained(path)
    for layer in model.esm.encoder.layer:
        table = layer.attention.self_attention.distance_embedding.embeddings
        table.assign(np.zeros(table.shape, np.float32))
    out = model(ref["input_ids"], attention_mask=ref["attention_mask"]).logits.numpy()
    assert np.max(np.abs(out - ref["logits"])) > 1e-2


@pytest.fixture(scope="module")
def decoder():
    path, ref = load("decoder_cache")
    return TFEsmModel.from_pretrained(path, strict=True), ref


def test_decoder_cross_attention_full_pass(decoder):
    model, ref = decoder
    out = model(ref["input_ids"], attention_mask=ref["attention_mask"],
                encoder_hidden_states=ref["encoder_hidden_states"],
                encoder_attention_mask=ref["encoder_attention_mask"], use_cache=True,
                output_hidden_states=True, output_attentions=True)
    assert_close(out.last_hidden_state, ref["last_hidden_state"], "last_hidden_state")
    assert_close(out.pooler_output, ref["pooler_output"], "pooler_output")
    assert_close(np.stack(out.hidden_states), ref["hidden_states"], "hidden_states")
    assert_close(np.stack(out.attentions), ref["attentions"], "attentions")
    assert_close(np.stack(out.cross_attentions), ref["cross_attentions"], "cross_attentions")
    # Cache: self keys are stored after rotary, values as projected; cross values as projected.
    cache = out.past_key_values
    assert len(cache) == 2 and all(len(layer) == 4 for layer in cache)
    assert_close(np.stack([[layer[0], layer[1]] for layer in cache]), ref["past_self_kv_rotated"], "self k/v")
    assert_close(np.stack([layer[3] for layer in cache]), ref["past_key_values"][:, 3], "cross values")


def test_decoder_incremental_step_equals_full_pass(decoder):
    """A cached one-token step reproduces the full pass (the reference needs two patches for that; README)."""
    model, ref = decoder
    prefix = int(ref["prefix_len"])
    common = dict(encoder_hidden_states=ref["encoder_hidden_states"],
                  encoder_attention_mask=ref["encoder_attention_mask"], use_cache=True)
    first = model(ref["input_ids"][:, :prefix], attention_mask=ref["attention_mask"][:, :prefix], **common)
    assert_close(first.last_hidden_state, ref["prefix_last_hidden_state"], "prefix")
    step = model(ref["step_input_ids"], attention_mask=ref["step_attention_mask"],
                 past_key_values=first.past_key_values, **common)
    assert_close(step.last_hidden_state, ref["step_last_hidden_state"], "step")
    # ...and equals our own full pass at that position.
    full = model(ref["input_ids"][:, :prefix + 1], attention_mask=ref["attention_mask"][:, :prefix + 1], **common)
    np.testing.assert_allclose(step.last_hidden_state.numpy()[:, 0], full.last_hidden_state.numpy()[:, prefix],
                               atol=ATOL)
