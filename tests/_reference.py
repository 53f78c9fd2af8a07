"""Build tiny random-weight PyTorch reference models with transformers and save them (no downloads)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

TINY = dict(vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, pad_token_id=1, mask_token_id=32, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, layer_norm_eps=1e-5)

KINDS = {
    # ESM-2 layout: rotary positions, token dropout, no embedding layer norm.
    "rotary": dict(position_embedding_type="rotary", token_dropout=True, emb_layer_norm_before=False),
    # ESM-1b layout: learned absolute positions, embedding layer norm, token dropout.
    "absolute": dict(position_embedding_type="absolute", token_dropout=True, emb_layer_norm_before=True),
}


@dataclasses.dataclass
class ReferenceCheckpoint:
    path: str
    model: object  # the torch model, in eval mode
    config: object


def make_reference_checkpoint(directory, kind="rotary", model_class="EsmForMaskedLM", noise=0.2, seed=0,
                              safe_serialization=True, **options):
    import torch
    import transformers

    torch.manual_seed(seed)
    settings = dict(TINY, **KINDS[kind], **options)
    config = transformers.EsmConfig(**settings)
    config._attn_implementation = "eager"  # eager attention returns the attention maps we compare
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            # Random, non-trivial values everywhere (layer norms, biases, heads), so every weight matters.
            parameter.add_(torch.randn_like(parameter) * noise)
    model.save_pretrained(str(directory), safe_serialization=safe_serialization)
    return ReferenceCheckpoint(str(directory), model, config)


def batch_with_padding_and_masks(rng=None, lengths=(12, 7, 3), mask_positions=((0, 3), (1, 2), (1, 5))):
    """A right-padded batch of residue ids with <cls>/<eos> and a few <mask> tokens (ESM-2 vocabulary)."""
    rng = rng or np.random.default_rng(1)
    width = max(lengths) + 2
    input_ids = np.ones((len(lengths), width), dtype=np.int32)
    for row, length in enumerate(lengths):
        input_ids[row, 0] = 0
        input_ids[row, 1:length + 1] = rng.integers(4, 29, size=length)
        input_ids[row, length + 1] = 2
    for row, position in mask_positions:
        input_ids[row, position] = 32
    attention_mask = (input_ids != 1).astype(np.int32)
    return input_ids, attention_mask


def torch_outputs(model, input_ids, attention_mask=None, **kwargs):
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(input_ids, dtype=torch.long),
                     attention_mask=None if attention_mask is None else torch.as_tensor(attention_mask),
                     **kwargs)


# Max abs differences measured by parity assertions, printed at the end of the test run (see conftest.py).
PARITY_REPORT = {}


def assert_close(ours, theirs, atol, what, case=None):
    """Assert max |ours - theirs| <= atol (shapes equal) and record the measured difference for the report."""
    ours = np.asarray(ours)
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    assert np.all(np.isfinite(ours)), f"{what}: non-finite values"
    diff = float(np.max(np.abs(ours - theirs))) if ours.size else 0.0
    if case is None:  # the running test's id, parameters included: "test_name[rotary]"
        case = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0]
    key = f"{case} :: {what}"
    PARITY_REPORT[key] = max(diff, PARITY_REPORT.get(key, 0.0))
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol}"
    return diff
