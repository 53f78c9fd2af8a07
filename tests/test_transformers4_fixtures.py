"""Parity with transformers 4.46 for what 5.x does not implement: relative positions and the decoder cache.

The fixtures were generated once by conversion_scripts/make_reference_fixtures.py in a transformers 4.46.3 venv
(versions in tests/fixtures/transformers4/VERSIONS.txt); see that folder's README for each array.
"""

import os

import numpy as np
import pytest
import safetensors.numpy

from tests._reference import assert_close as _assert_close
from tests._reference import as_numpy
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
    assert_close(as_numpy(out.hidden_states), ref["hidden_states"], "hidden_states")
    assert_close(as_numpy(out.attentions), ref["attentions"], "attentions")
    assert_close(out.loss, ref["loss"], "loss")
    # The probability-free path gives the same logits.
    assert_close(model(ref["input_ids"], attention_mask=ref["attention_mask"]).logits, ref["logits"], "logits (fast)")


def test_relative_positions_matter():
    """Guards against a silent no-op (what transformers 5.x does): zeroing the distance table changes logits."""
    path, ref = load("relative_key")
    model = TFEsmForMaskedLM.from_pretrained(path)
    table = model.esm.encoder.layer.stacked_weight("attention.self.distance_embedding.embeddings")  # every layer's
    table.assign(np.zeros(table.shape, np.float32))
    out = as_numpy(model(ref["input_ids"], attention_mask=ref["attention_mask"]).logits)
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
    assert_close(as_numpy(out.hidden_states), ref["hidden_states"], "hidden_states")
    assert_close(as_numpy(out.attentions), ref["attentions"], "attentions")
    assert_close(as_numpy(out.cross_attentions), ref["cross_attentions"], "cross_attentions")
    # Cache: self keys are stored after rotary, values as projected; cross values as projected.
    cache = out.past_key_values
    assert len(cache) == 2 and all(len(layer) == 4 for layer in cache)
    assert_close(as_numpy([[layer[0], layer[1]] for layer in cache]), ref["past_self_kv_rotated"], "self k/v")
    assert_close(as_numpy([layer[3] for layer in cache]), ref["past_key_values"][:, 3], "cross values")
    # Cross keys are stored after rotary at the encoder positions 0..S-1 (4.46 stores the raw projections, which it
    # rotates at each step): the reference's, rotated here with its own rotary table and formula.
    state = safetensors.numpy.load_file(os.path.join(FIXTURES, "decoder_cache", "model.safetensors"))
    inv_freq = [state[f"encoder.layer.{index}.crossattention.self.rotary_embeddings.inv_freq"] for index in range(2)]
    expected = np.stack([rotate(ref["past_key_values"][index, 2], inv_freq[index]) for index in range(2)])
    assert_close(as_numpy([layer[2] for layer in cache]), expected, "cross keys")


def rotate(keys, inv_freq):
    """Rotary at positions 0..len-1 of (batch, heads, len, head_dim) keys, with transformers' formula."""
    import torch
    from transformers.models.esm.modeling_esm import apply_rotary_pos_emb

    keys = torch.as_tensor(keys)
    angles = torch.outer(torch.arange(keys.shape[2], dtype=torch.float32), torch.as_tensor(inv_freq))
    angles = torch.cat([angles, angles], dim=-1)[None]  # (1, len, head_dim)
    _, rotated = apply_rotary_pos_emb(keys, keys, angles.cos(), angles.sin(), unsqueeze_dim=1)
    return rotated.numpy()


def test_rotate_reproduces_the_rotated_self_keys_of_the_fixture():
    """`rotate` is 4.46's rotary: it turns the raw cached self keys into the fixture's rotated ones."""
    path, ref = load("decoder_cache")
    state = safetensors.numpy.load_file(os.path.join(path, "model.safetensors"))
    for index in range(2):
        inv_freq = state[f"encoder.layer.{index}.attention.self.rotary_embeddings.inv_freq"]
        assert_close(rotate(ref["past_key_values"][index, 0], inv_freq), ref["past_self_kv_rotated"][index, 0],
                     f"rotated self keys, layer {index}", atol=1e-6)


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
    np.testing.assert_allclose(as_numpy(step.last_hidden_state)[:, 0], as_numpy(full.last_hidden_state)[:, prefix],
                               atol=ATOL)
