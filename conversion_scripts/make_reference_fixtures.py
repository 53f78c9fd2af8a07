#!/usr/bin/env python
"""Write reference fixtures from a transformers 4.x release for the tf_esm parity tests.

transformers 5.x accepts position_embedding_type="relative_key"/"relative_key_query" but applies no position
information, and its ESM has no key/value cache; the 4.x releases up to ~4.5x implement both. This script is run
once, in a separate environment with a 4.x release, and its output (tests/fixtures/transformers4/) is committed so
the test suite, which runs with transformers 5.x, can read it.

Environment used (see tests/fixtures/transformers4/VERSIONS.txt for the exact versions):

    python3 -m venv /work/venv4
    /work/venv4/bin/pip install torch==2.13.0          # CPU wheel; install it first
    /work/venv4/bin/pip install transformers==4.46.3 "numpy<2" safetensors
    /work/venv4/bin/python conversion_scripts/make_reference_fixtures.py

Do not use 4.57.x: its EsmModel.forward does not pass attention_mask to the embeddings, so token-dropout rescaling
counts padding tokens, and it has no key/value cache. This script checks both properties and refuses to run
otherwise.

Cases (each a subdirectory with config.json + model.safetensors from save_pretrained and reference.npz):
    relative_key, relative_key_query, rotary_maskaware: EsmForMaskedLM, token_dropout=True.
    decoder_cache: EsmModel, is_decoder=True, add_cross_attention=True, rotary, use_cache=True.
See tests/fixtures/transformers4/README.md for the array names and shapes.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import platform
import shutil
import sys

import numpy as np
import torch
import transformers
from transformers import EsmConfig, EsmForMaskedLM, EsmModel
from transformers.models.esm import modeling_esm

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "tests", "fixtures", "transformers4")

# Standard ESM-2 alphabet ids.
CLS, PAD, EOS, MASK = 0, 1, 2, 32
RESIDUES = list(range(4, 24))  # the 20 standard amino acids L A G V S E R T I D P K Q N F Y M H W C

TINY = dict(
    vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    max_position_embeddings=64, pad_token_id=PAD, mask_token_id=MASK, hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0, layer_norm_eps=1e-5, initializer_range=0.02,
)


def check_transformers():
    """Refuse to run on a release without the behaviour the fixtures are meant to capture."""
    if not transformers.__version__.startswith("4."):
        sys.exit(f"needs a transformers 4.x release, found {transformers.__version__}")
    if "past_key_value" not in inspect.signature(modeling_esm.EsmSelfAttention.forward).parameters:
        sys.exit(f"transformers {transformers.__version__} ESM has no key/value cache; use 4.46.3")
    src = inspect.getsource(modeling_esm.EsmModel.forward)
    call = src[src.index("self.embeddings("):]
    call = call[: call.index(")")]
    if "attention_mask" not in call:
        sys.exit(f"transformers {transformers.__version__} EsmModel.forward does not pass attention_mask to the "
                 "embeddings (token dropout counts padding); use 4.46.3")


def randomize_(model, seed):
    """Non-trivial random weights: outputs are far from constant and every parameter matters."""
    gen = torch.Generator().manual_seed(seed)

    def normal(t, mean, std):
        t.copy_(mean + std * torch.randn(t.shape, generator=gen))

    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.LayerNorm):
                normal(module.weight, 1.0, 0.2)
                normal(module.bias, 0.0, 0.2)
            elif isinstance(module, torch.nn.Linear):
                normal(module.weight, 0.0, 0.2)
                if module.bias is not None:
                    normal(module.bias, 0.0, 0.1)
            elif isinstance(module, torch.nn.Embedding):
                std = 1.0 if name.endswith("distance_embedding") else 0.5
                normal(module.weight, 0.0, std)
        for name, param in model.named_parameters():
            if name == "lm_head.bias":
                normal(param, 0.0, 0.5)
    return model


def mlm_batch(seed):
    """3 sequences of 12, 9 and 5 residues with <cls>/<eos>, right-padded; the padded rows hold <mask> tokens."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [12, 9, 5]
    seq_len = max(lengths) + 2
    input_ids = torch.full((3, seq_len), PAD, dtype=torch.long)
    for row, n in enumerate(lengths):
        res = torch.tensor(RESIDUES)[torch.randint(0, len(RESIDUES), (n,), generator=gen)]
        input_ids[row, : n + 2] = torch.cat([torch.tensor([CLS]), res, torch.tensor([EOS])])
    attention_mask = (input_ids != PAD).long()
    true_ids = input_ids.clone()
    # Masks sit in padded rows so that a padding-unaware token-dropout ratio would change the outputs.
    for row, col in [(1, 3), (1, 7), (2, 2)]:
        input_ids[row, col] = MASK
    labels = torch.full_like(input_ids, -100)
    for row, col in [(1, 3), (1, 7), (2, 2), (0, 5), (0, 10)]:
        labels[row, col] = true_ids[row, col]
    return input_ids, attention_mask, labels


def check_token_dropout(model, input_ids, attention_mask, embeddings):
    """hidden_states[0] must equal the word embeddings rescaled by ESM's token dropout over real tokens only."""
    word = model.esm.embeddings.word_embeddings(input_ids)
    word = word.masked_fill((input_ids == MASK)[..., None], 0.0)
    n_mask = (input_ids == MASK).sum(-1).float()
    n_real = attention_mask.sum(-1).float()
    expected = word * (1 - 0.15 * 0.8) / (1 - n_mask / n_real)[:, None, None] * attention_mask[..., None]
    diff = (expected - embeddings).abs().max().item()
    if diff > 1e-6:
        sys.exit(f"token dropout is not mask-aware in this release (max diff {diff:.3g})")


def save_model(model, case_dir):
    model.save_pretrained(case_dir, safe_serialization=True)
    for extra in os.listdir(case_dir):
        if extra not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(case_dir, extra))
    os.chmod(os.path.join(case_dir, "model.safetensors"), 0o644)


def f32(t):
    return t.detach().cpu().numpy().astype(np.float32)


def make_mlm_case(out_dir, name, position_embedding_type, seed):
    torch.manual_seed(seed)
    config = EsmConfig(**TINY, position_embedding_type=position_embedding_type, token_dropout=True,
                       emb_layer_norm_before=False, attn_implementation="eager")
    model = randomize_(EsmForMaskedLM(config), seed).eval()
    input_ids, attention_mask, labels = mlm_batch(seed + 1)
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                    output_hidden_states=True, output_attentions=True, return_dict=True)
    check_token_dropout(model, input_ids, attention_mask, out.hidden_states[0])
    case_dir = os.path.join(out_dir, name)
    save_model(model, case_dir)
    np.savez_compressed(
        os.path.join(case_dir, "reference.npz"),
        input_ids=input_ids.numpy().astype(np.int32),
        attention_mask=attention_mask.numpy().astype(np.int32),
        labels=labels.numpy().astype(np.int32),
        logits=f32(out.logits),
        last_hidden_state=f32(out.hidden_states[-1]),
        hidden_states=f32(torch.stack(out.hidden_states)),
        attentions=f32(torch.stack(out.attentions)),
        loss=np.float32(out.loss.item()),
    )
    return case_dir


# --- decoder_cache -------------------------------------------------------------------------------------------------
# transformers 4.46 cannot run an ESM incremental step as shipped:
#  1. EsmEmbeddings multiplies the new tokens' embeddings (B, 1, H) by the full attention mask (B, past + 1), which
#     broadcasts to (B, past + 1, H) and then fails in attention.
#  2. RotaryEmbedding rotates the query with positions 0..q_len-1 whatever the cache length, so a cached step puts
#     the new query at position 0 instead of past_len (in self- and cross-attention).
# The step is therefore run through 4.46's own modules with two minimal patches, active only inside `patched_step`:
# the embeddings see only the new tokens' mask, and queries are rotated at positions past_len + i. With past_len = 0
# the patched rotary is the shipped one (same table, same slicing), and the script asserts that the step reproduces
# the unpatched full pass.

_Q_OFFSET = [0]


def _rotary_with_query_offset(self, q, k):
    off = _Q_OFFSET[0]
    n = max(k.shape[-2], off + q.shape[-2])
    t = torch.arange(n, device=k.device).type_as(self.inv_freq)
    emb = torch.cat((torch.outer(t, self.inv_freq),) * 2, dim=-1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]
    rot = modeling_esm.rotate_half
    qc, qs = cos[:, :, off: off + q.shape[-2]], sin[:, :, off: off + q.shape[-2]]
    kc, ks = cos[:, :, : k.shape[-2]], sin[:, :, : k.shape[-2]]
    return q * qc + rot(q) * qs, k * kc + rot(k) * ks


@contextlib.contextmanager
def patched_step(model, past_len):
    orig_rotary = modeling_esm.RotaryEmbedding.forward
    orig_emb = model.embeddings.forward

    def emb_forward(input_ids=None, attention_mask=None, **kw):
        if attention_mask is not None and input_ids is not None:
            attention_mask = attention_mask[:, -input_ids.shape[1]:]
        return orig_emb(input_ids=input_ids, attention_mask=attention_mask, **kw)

    modeling_esm.RotaryEmbedding.forward = _rotary_with_query_offset
    model.embeddings.forward = emb_forward
    _Q_OFFSET[0] = past_len
    try:
        yield
    finally:
        modeling_esm.RotaryEmbedding.forward = orig_rotary
        del model.embeddings.forward
        _Q_OFFSET[0] = 0


def stack_cache(past):
    """Legacy tuple cache ((self_k, self_v, cross_k, cross_v) per layer) -> self (L, 2, ...) and cross (L, 2, ...)."""
    self_kv = torch.stack([torch.stack([layer[0], layer[1]]) for layer in past])
    cross_kv = torch.stack([torch.stack([layer[2], layer[3]]) for layer in past])
    return f32(self_kv), f32(cross_kv)


def rotate_keys(model, keys):
    """Apply 4.46's rotary (positions 0..len-1) to cached self-attention keys, which 4.46 stores un-rotated."""
    rot = model.encoder.layer[0].attention.self.rotary_embeddings
    _, k = rot(keys[..., :1, :], keys)
    return k


def make_decoder_case(out_dir, name, seed, prefix_len=5):
    torch.manual_seed(seed)
    config = EsmConfig(**TINY, position_embedding_type="rotary", is_decoder=True, add_cross_attention=True,
                       use_cache=True, token_dropout=False, emb_layer_norm_before=False, attn_implementation="eager")
    model = randomize_(EsmModel(config), seed).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    lengths, seq_len = [10, 7], 10
    input_ids = torch.full((2, seq_len), PAD, dtype=torch.long)
    for row, n in enumerate(lengths):
        res = torch.tensor(RESIDUES)[torch.randint(0, len(RESIDUES), (n - 2,), generator=gen)]
        input_ids[row, :n] = torch.cat([torch.tensor([CLS]), res, torch.tensor([EOS])])
    attention_mask = (input_ids != PAD).long()
    # Encoder length == decoder length: both HF releases rotate cross-attention keys too, and 5.x needs equal lengths.
    encoder_hidden_states = torch.randn(2, seq_len, 32, generator=gen)
    encoder_attention_mask = torch.ones(2, seq_len, dtype=torch.long)
    encoder_attention_mask[1, 6:] = 0
    enc = dict(encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask)
    k = prefix_len
    assert k < min(lengths)
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, output_attentions=True,
                     output_hidden_states=True, return_dict=True, **enc)
        prefix = model(input_ids=input_ids[:, :k], attention_mask=attention_mask[:, :k], use_cache=True,
                       return_dict=True, **enc)
        with patched_step(model, past_len=k):
            step = model(input_ids=input_ids[:, k: k + 1], attention_mask=attention_mask[:, : k + 1],
                         past_key_values=prefix.past_key_values, use_cache=True, return_dict=True, **enc)
        # Only the embedding patch (the shipped rotary): shows 4.46's query-position bug, for the README.
        orig = modeling_esm.RotaryEmbedding.forward
        with patched_step(model, past_len=k):
            modeling_esm.RotaryEmbedding.forward = orig
            step_shipped_rotary = model(input_ids=input_ids[:, k: k + 1], attention_mask=attention_mask[:, : k + 1],
                                        past_key_values=prefix.past_key_values, use_cache=True, return_dict=True,
                                        **enc)
    diffs = {
        "prefix_vs_full": (prefix.last_hidden_state - full.last_hidden_state[:, :k]).abs().max().item(),
        "step_vs_full": (step.last_hidden_state[:, 0] - full.last_hidden_state[:, k]).abs().max().item(),
        "step_cache_vs_full": max(
            (step.past_key_values[i][j] - full.past_key_values[i][j][:, :, : k + 1]).abs().max().item()
            for i in range(config.num_hidden_layers) for j in range(2)),
        "step_shipped_rotary_vs_full": (step_shipped_rotary.last_hidden_state[:, 0]
                                        - full.last_hidden_state[:, k]).abs().max().item(),
    }
    for key in ("prefix_vs_full", "step_vs_full", "step_cache_vs_full"):
        if diffs[key] > 1e-5:
            sys.exit(f"decoder_cache: {key} = {diffs[key]:.3g}")
    case_dir = os.path.join(out_dir, name)
    save_model(model, case_dir)
    full_self, full_cross = stack_cache(full.past_key_values)
    pre_self, pre_cross = stack_cache(prefix.past_key_values)
    assert np.array_equal(pre_cross, full_cross)  # the cross cache depends on the encoder states only
    step_self, _ = stack_cache(step.past_key_values)
    with torch.no_grad():
        rotated = torch.stack([torch.stack([rotate_keys(model, layer[0]), layer[1]]) for layer in full.past_key_values])
    np.savez_compressed(
        os.path.join(case_dir, "reference.npz"),
        input_ids=input_ids.numpy().astype(np.int32),
        attention_mask=attention_mask.numpy().astype(np.int32),
        encoder_hidden_states=f32(encoder_hidden_states),
        encoder_attention_mask=encoder_attention_mask.numpy().astype(np.int32),
        last_hidden_state=f32(full.last_hidden_state),
        pooler_output=f32(full.pooler_output),
        hidden_states=f32(torch.stack(full.hidden_states)),
        attentions=f32(torch.stack(full.attentions)),
        cross_attentions=f32(torch.stack(full.cross_attentions)),
        past_key_values=np.concatenate([full_self, full_cross], axis=1),
        past_self_kv_rotated=f32(rotated),
        prefix_len=np.int32(k),
        prefix_last_hidden_state=f32(prefix.last_hidden_state),
        prefix_past_self_kv=pre_self,
        step_input_ids=input_ids[:, k: k + 1].numpy().astype(np.int32),
        step_attention_mask=attention_mask[:, : k + 1].numpy().astype(np.int32),
        step_last_hidden_state=f32(step.last_hidden_state),
        step_past_self_kv=step_self,
        step_shipped_rotary_last_hidden_state=f32(step_shipped_rotary.last_hidden_state),
    )
    return case_dir, diffs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    args = parser.parse_args()
    check_transformers()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    for sub in ("relative_key", "relative_key_query", "rotary_maskaware", "decoder_cache"):
        shutil.rmtree(os.path.join(out_dir, sub), ignore_errors=True)

    make_mlm_case(out_dir, "relative_key", "relative_key", seed=100)
    make_mlm_case(out_dir, "relative_key_query", "relative_key_query", seed=200)
    make_mlm_case(out_dir, "rotary_maskaware", "rotary", seed=300)
    _, diffs = make_decoder_case(out_dir, "decoder_cache", seed=400)
    for key, value in diffs.items():
        print(f"decoder_cache {key}: {value:.3g}")

    rel = os.path.relpath(os.path.abspath(__file__), REPO_ROOT)
    with open(os.path.join(out_dir, "VERSIONS.txt"), "w") as fh:
        fh.write(f"python {platform.python_version()}\n")
        fh.write(f"torch {torch.__version__}\n")
        fh.write(f"transformers {transformers.__version__}\n")
        fh.write(f"numpy {np.__version__}\n")
        fh.write(f"command: /work/venv4/bin/python {rel}\n")
    print(f"wrote fixtures to {out_dir}")


if __name__ == "__main__":
    main()
