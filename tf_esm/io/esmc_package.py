"""ESM C weights as EvolutionaryScale's `esm` package saves them (`esmc_300m_2024_12_v0.pth`, `esmc_600m_...`: a
`torch.save` of `ESMC.state_dict()`), renamed to transformers' `EsmcForMaskedLM` names, so they go through the one
name table of `io/weights.py` like every other checkpoint.

The package fuses what transformers keeps apart, and the renaming splits it (names only; tensors are read and cut
when looked up):

* `transformer.blocks.{i}.attn.layernorm_qkv` is a layer norm (`.0`) then ONE projection to queries, keys and
  values stacked in that order (`.1.weight`, (3 * hidden, hidden)): `input_layernorm`, `q_proj`, `k_proj`, `v_proj`;
* `transformer.blocks.{i}.ffn` is a layer norm (`.0`), one projection to both SwiGLU halves (`.1.weight`,
  (2 * intermediate, hidden); the first half goes through SiLU and gates the second), and the down projection (`.3`):
  `post_attention_layernorm`, `mlp.gate_proj`, `mlp.up_proj`, `mlp.down_proj`;
* `attn.q_ln` / `attn.k_ln` / `attn.out_proj` are `self_attn.q_norm` / `k_norm` / `o_proj`; `embed` is
  `esmc.embed_tokens`, `transformer.norm` `esmc.norm`, and `sequence_head.{0,2,3}` the masked-LM head's `dense`,
  `layer_norm` and `decoder`.

The file holds no configuration. Its shapes give the hidden size, the layer count and the feed-forward size; the
head count is not in any shape: the released models use 64-wide heads (ESMC-300M: 960 / 15, ESMC-600M: 1152 / 18),
which is the default here, and `from_pretrained(path, num_attention_heads=N)` overrides it.
"""

from __future__ import annotations

import re

from tf_esm.io.names import CheckpointError, LazyTensors

# The head width of every released ESM C model (the `esm` package builds `d_model // 64` heads for them).
RELEASED_HEAD_DIM = 64

_BLOCK = re.compile(r"^transformer\.blocks\.(\d+)\.(.+)$")
# Whole tensors: package name (inside a block) -> transformers name (inside `esmc.layers.{i}`).
_BLOCK_RENAMES = {
    "attn.layernorm_qkv.0.weight": "input_layernorm.weight",
    "attn.layernorm_qkv.0.bias": "input_layernorm.bias",
    "attn.q_ln.weight": "self_attn.q_norm.weight",
    "attn.k_ln.weight": "self_attn.k_norm.weight",
    "attn.out_proj.weight": "self_attn.o_proj.weight",
    "ffn.0.weight": "post_attention_layernorm.weight",
    "ffn.0.bias": "post_attention_layernorm.bias",
    "ffn.3.weight": "mlp.down_proj.weight",
}
# Fused tensors: package name -> the transformers names of its equal row blocks, in order.
_BLOCK_SPLITS = {
    "attn.layernorm_qkv.1.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "ffn.1.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}
_TOP_RENAMES = {
    "embed.weight": "esmc.embed_tokens.weight",
    "transformer.norm.weight": "esmc.norm.weight",
    "sequence_head.0.weight": "lm_head.dense.weight",
    "sequence_head.0.bias": "lm_head.dense.bias",
    "sequence_head.2.weight": "lm_head.layer_norm.weight",
    "sequence_head.2.bias": "lm_head.layer_norm.bias",
    "sequence_head.3.weight": "lm_head.decoder.weight",
    "sequence_head.3.bias": "lm_head.decoder.bias",
}
# Buffers the package may save that have no weight in the model (the rotary frequencies are recomputed).
_IGNORED = re.compile(r"(^|\.)(inv_freq|_cos_cached|_sin_cached)$")


def is_esmc_package_state_dict(names):
    """Whether a state dict's names are the `esm` package's ESM C layout."""
    names = set(names)
    return "embed.weight" in names and any(name.startswith("transformer.blocks.") for name in names)


def esmc_package_to_reference(state_dict, path="checkpoint"):
    """A lazy {transformers name: array} view of an `esm`-package ESMC state dict (numpy arrays or lazily read)."""
    sources = {}  # transformers name -> (package name, row block index, block count)
    for name in state_dict:
        if _IGNORED.search(name):
            continue
        match = _BLOCK.match(name)
        if match:
            index, inner = match.groups()
            prefix = f"esmc.layers.{index}."
            if inner in _BLOCK_RENAMES:
                sources[prefix + _BLOCK_RENAMES[inner]] = (name, None, None)
                continue
            if inner in _BLOCK_SPLITS:
                parts = _BLOCK_SPLITS[inner]
                for part, target in enumerate(parts):
                    sources[prefix + target] = (name, part, len(parts))
                continue
        elif name in _TOP_RENAMES:
            sources[_TOP_RENAMES[name]] = (name, None, None)
            continue
        raise CheckpointError(f"{path}: tensor {name!r} is not part of the esm package's ESM C model (an ESM3 or "
                              "other checkpoint?).")

    def read(target):
        name, part, parts = sources[target]
        value = state_dict[name]
        if part is None:
            return value
        rows = value.shape[0]
        if rows % parts:
            raise CheckpointError(f"{path}: tensor {name!r} has {rows} rows, not a multiple of {parts}.")
        size = rows // parts
        return value[part * size:(part + 1) * size]

    return LazyTensors(sources, read)


def esmc_package_config(state_dict, path="checkpoint"):
    """The `EsmcConfig` arguments an `esm`-package state dict's shapes give (heads: 64 wide, see the module)."""
    try:
        vocab_size, hidden_size = state_dict["embed.weight"].shape
        intermediate_size = state_dict["transformer.blocks.0.ffn.3.weight"].shape[1]
    except KeyError as error:
        raise CheckpointError(f"{path}: missing tensor {error.args[0]!r} of an ESM C model.") from None
    layers = {int(match.group(1)) for name in state_dict if (match := _BLOCK.match(name))}
    if layers != set(range(len(layers))):
        raise CheckpointError(f"{path}: the blocks are not numbered 0..{len(layers) - 1}: {sorted(layers)[:10]}...")
    heads = max(1, hidden_size // RELEASED_HEAD_DIM)
    return dict(vocab_size=int(vocab_size), hidden_size=int(hidden_size), intermediate_size=int(intermediate_size),
                num_hidden_layers=len(layers), num_attention_heads=int(heads),
                architectures=["EsmcForMaskedLM"])


def read_esmc_package_checkpoint(path, config=None):
    """`(EsmcConfig, {transformers name: array})` of an `esm`-package `.pth` file (read with `weights_only=True`)."""
    from tf_esm.configuration import EsmcConfig
    from tf_esm.io.weights import _torch_to_numpy, torch_load_safely

    state_dict = torch_load_safely(path)
    if not isinstance(state_dict, dict) or not is_esmc_package_state_dict(state_dict):
        raise CheckpointError(f"{path}: not an ESM C state dict of the esm package (no embed.weight / "
                              "transformer.blocks.*).")
    arrays = _torch_to_numpy(state_dict, path)
    if config is None:
        config = EsmcConfig(**esmc_package_config(arrays, path))
    return config, esmc_package_to_reference(arrays, path)
