"""fair-esm checkpoints (`esm2_*.pt`, `esm1b_*.pt`, `esm1v_*.pt`) and HF directories -> tf_esm model directories.

A fair-esm `.pt` file is a pickled dict as fairseq wrote it:

* `model`: the state dict, names prefixed with `encoder.sentence_encoder.` (embeddings, layers, final layer norm)
  or `encoder.` (the LM head);
* `args` (ESM-1b / ESM-1v, `arch="roberta_large"`) or `cfg["model"]` (ESM-2): an `argparse.Namespace` with the
  shape of the network (`encoder_layers`, `encoder_embed_dim`, ...).

The contact-regression weights live in a sibling file `<stem>-contact-regression.pt` (none for ESM-1v, whose
names contain "esm1v"). Files are read with `torch.load(weights_only=True)`; `argparse.Namespace` is the only
class allowed besides tensors, so a pickle that needs any other code is refused, never run.

fair-esm names are renamed to the HF reference names by `FAIR_ESM_RENAMES`, the one table of this module; the
result then goes through `tf_esm.io.weights.load_state_dict` like every other checkpoint format. Reading only: turning
a checkpoint into a tf_esm model directory is `tf_esm.pipelines.convert`.
"""

from __future__ import annotations

import argparse
import logging
import os
import re

import numpy as np

from tf_esm.configuration import ESM2_VOCAB, EsmConfig
from tf_esm.io.weights import CheckpointError, torch_load_safely

logger = logging.getLogger("tf_esm")

# The alphabet every ESM-2 / ESM-1b / ESM-1v model uses (fair-esm's "ESM-1b" alphabet).
PAD_TOKEN_ID = ESM2_VOCAB.index("<pad>")
MASK_TOKEN_ID = ESM2_VOCAB.index("<mask>")
EOS_TOKEN_ID = ESM2_VOCAB.index("<eos>")

# fairseq's module prefixes, which fair-esm strips before building its model.
_FAIRSEQ_PREFIX = re.compile(r"^(?:encoder\.sentence_encoder\.|encoder\.)")

# fair-esm name (prefix stripped) -> HF reference name. Applied with re.fullmatch; the first matching rule wins.
FAIR_ESM_RENAMES = (
    (r"embed_tokens\.weight", r"esm.embeddings.word_embeddings.weight"),
    (r"embed_positions\.weight", r"esm.embeddings.position_embeddings.weight"),
    (r"emb_layer_norm_before\.(weight|bias)", r"esm.embeddings.layer_norm.\1"),
    (r"emb_layer_norm_after\.(weight|bias)", r"esm.encoder.emb_layer_norm_after.\1"),
    (r"layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", r"esm.encoder.layer.\1.attention.self.query.\2"),
    (r"layers\.(\d+)\.self_attn\.k_proj\.(weight|bias)", r"esm.encoder.layer.\1.attention.self.key.\2"),
    (r"layers\.(\d+)\.self_attn\.v_proj\.(weight|bias)", r"esm.encoder.layer.\1.attention.self.value.\2"),
    (r"layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"esm.encoder.layer.\1.attention.output.dense.\2"),
    (r"layers\.(\d+)\.self_attn\.rot_emb\.inv_freq",
     r"esm.encoder.layer.\1.attention.self.rotary_embeddings.inv_freq"),
    (r"layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"esm.encoder.layer.\1.attention.LayerNorm.\2"),
    (r"layers\.(\d+)\.fc1\.(weight|bias)", r"esm.encoder.layer.\1.intermediate.dense.\2"),
    (r"layers\.(\d+)\.fc2\.(weight|bias)", r"esm.encoder.layer.\1.output.dense.\2"),
    (r"layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"esm.encoder.layer.\1.LayerNorm.\2"),
    (r"lm_head\.(dense\.weight|dense\.bias|layer_norm\.weight|layer_norm\.bias|bias)", r"lm_head.\1"),
    (r"lm_head\.weight", r"lm_head.decoder.weight"),
    (r"contact_head\.regression\.(weight|bias)", r"esm.contact_head.regression.\1"),
)
_RENAMES = tuple((re.compile(pattern), replacement) for pattern, replacement in FAIR_ESM_RENAMES)

REGRESSION_NAMES = ("esm.contact_head.regression.weight", "esm.contact_head.regression.bias")
_DECODER_NAME = "lm_head.decoder.weight"
_WORD_EMBEDDINGS_NAME = "esm.embeddings.word_embeddings.weight"


def fair_esm_to_reference_name(name):
    """A fair-esm state-dict name (with or without fairseq's `encoder.` prefixes) -> the HF reference name."""
    stripped = _FAIRSEQ_PREFIX.sub("", name)
    for pattern, replacement in _RENAMES:
        if pattern.fullmatch(stripped):
            return pattern.sub(replacement, stripped)
    raise CheckpointError(
        f"tensor {name!r} has no counterpart in tf_esm's ESM models (only ESM-2, ESM-1b and ESM-1v checkpoints "
        "are supported)."
    )


def regression_path(path):
    """Where fair-esm looks for the contact-regression weights of the checkpoint `path`."""
    root, _ = os.path.splitext(os.fspath(path))
    return root + "-contact-regression.pt"


def has_regression_weights(path):
    """fair-esm's rule: every model except ESM-1v (and ESM-IF) ships contact-regression weights."""
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    return not ("esm1v" in stem or "esm_if" in stem)


def _load_pickle(path):
    data = torch_load_safely(path, allowed_globals=(argparse.Namespace,))
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: not a fair-esm checkpoint (expected a dict with a 'model' state dict; "
                              f"found {found}).")
    return data


def _tensors_to_float32(state_dict, path):
    out = {}
    for name, value in state_dict.items():
        if not hasattr(value, "detach"):
            raise CheckpointError(f"{path}: entry {name!r} of the state dict is a {type(value).__name__}, "
                                  "not a tensor.")
        tensor = value.detach().cpu()
        # fair-esm builds an fp32 model and copies every tensor into it (the released ESM-2 files are fp16).
        out[name] = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    return out


def _model_args(data, path):
    """('esm2', cfg) or ('esm1b', args): the checkpoint's layout and its hyper-parameters."""
    stem = os.path.splitext(os.path.basename(path))[0]
    cfg = data.get("cfg")
    cfg_model = cfg.get("model") if isinstance(cfg, dict) else None
    args = data.get("args")
    # fair-esm decides by file name; the content decides when the file was renamed.
    if stem.startswith("esm2") and cfg_model is not None:
        return "esm2", cfg_model
    if args is not None:
        return "esm1b", args
    if cfg_model is not None:
        return "esm2", cfg_model
    raise CheckpointError(f"{path}: not a fair-esm checkpoint (no 'args' and no 'cfg'['model'] hyper-parameters).")


def _get(args, names, path, default=None, required=True):
    """Read the first of `names` from an argparse.Namespace (or dict) of model arguments."""
    for name in names:
        value = args.get(name) if isinstance(args, dict) else getattr(args, name, None)
        if value is not None:
            return value
    if required and default is None:
        raise CheckpointError(f"{path}: the model arguments lack {names[0]!r}.")
    return default


def _build_config(layout, args, state_dict, path):
    num_layers = int(_get(args, ("encoder_layers", "layers"), path))
    hidden_size = int(_get(args, ("encoder_embed_dim", "embed_dim"), path))
    num_heads = int(_get(args, ("encoder_attention_heads", "attention_heads"), path))
    vocab_size = state_dict[_WORD_EMBEDDINGS_NAME].shape[0] if _WORD_EMBEDDINGS_NAME in state_dict else None
    if vocab_size != len(ESM2_VOCAB):
        raise CheckpointError(f"{path}: tensor 'embed_tokens.weight' has {vocab_size} rows; ESM-2 / ESM-1b / "
                              f"ESM-1v use the {len(ESM2_VOCAB)}-token alphabet.")
    common = dict(
        vocab_size=vocab_size, pad_token_id=PAD_TOKEN_ID, mask_token_id=MASK_TOKEN_ID, eos_token_id=EOS_TOKEN_ID,
        hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        # fair-esm applies no dropout at inference and fairseq's layer norms use PyTorch's default epsilon.
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-5,
        vocab_list=list(ESM2_VOCAB), architectures=["EsmForMaskedLM"],
    )
    if layout == "esm2":
        return EsmConfig(
            **common,
            intermediate_size=4 * hidden_size,  # fixed in fair-esm's ESM2, whatever the arguments say
            max_position_embeddings=1026,  # unused by rotary positions; the value of the published HF configs
            position_embedding_type="rotary",
            token_dropout=bool(_get(args, ("token_dropout",), path, default=True)),
            emb_layer_norm_before=False,
        )
    arch = _get(args, ("arch",), path)
    if arch != "roberta_large":
        raise CheckpointError(f"{path}: architecture {arch!r} is not supported; tf_esm converts ESM-2 and "
                              "ESM-1b / ESM-1v ('roberta_large') checkpoints.")
    max_positions = int(_get(args, ("max_positions",), path, default=1024))
    return EsmConfig(
        **common,
        intermediate_size=int(_get(args, ("encoder_ffn_embed_dim", "ffn_embed_dim"), path)),
        # fair-esm's learned table holds padding_idx + 1 extra rows: positions start after the padding index.
        max_position_embeddings=max_positions + PAD_TOKEN_ID + 1,
        position_embedding_type="absolute",
        token_dropout=bool(_get(args, ("token_dropout",), path, default=False, required=False)),
        emb_layer_norm_before=any(k.startswith("esm.embeddings.layer_norm.") for k in state_dict),
    )


def read_fair_esm_checkpoint(path):
    """Read a fair-esm ESM-2 / ESM-1b / ESM-1v `.pt` file (and its contact-regression sibling).

    Returns `(EsmConfig, {HF reference name: float32 numpy array})`, the weights fair-esm's
    `load_model_and_alphabet_local` would put in its model: for ESM-1b / ESM-1v the `<mask>` embedding row is
    zeroed, as fair-esm does on load. The tied LM decoder is checked against the word embeddings and dropped.

    Raises:
        CheckpointError: the file is unreadable, needs code beyond tensors and `argparse.Namespace`, is not a
            supported fair-esm model, or holds a tensor with no counterpart (the error names it).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file.")
    data = _load_pickle(path)
    raw = dict(data["model"])
    if has_regression_weights(path):
        sibling = regression_path(path)
        if os.path.isfile(sibling):
            raw.update(_load_pickle(sibling)["model"])
        else:
            logger.warning("%s: no contact-regression file %s; the contact head stays untrained.", path, sibling)
    layout, args = _model_args(data, path)

    state_dict = {}
    for name, value in _tensors_to_float32(raw, path).items():
        reference = fair_esm_to_reference_name(name)
        if reference in state_dict:
            raise CheckpointError(f"{path}: tensors {name!r} and another name both map to {reference!r}.")
        state_dict[reference] = value
    if _WORD_EMBEDDINGS_NAME not in state_dict:
        raise CheckpointError(f"{path}: the checkpoint has no 'embed_tokens.weight'.")
    config = _build_config(layout, args, state_dict, path)

    embeddings = state_dict[_WORD_EMBEDDINGS_NAME]
    decoder = state_dict.pop(_DECODER_NAME, None)
    if layout == "esm1b":
        # fair-esm zeroes the <mask> row of the (tied) embedding on load ("for token drop").
        embeddings[config.mask_token_id] = 0.0
        if decoder is not None:
            decoder[config.mask_token_id] = 0.0
    if decoder is not None and (decoder.shape != embeddings.shape or not np.array_equal(decoder, embeddings)):
        raise CheckpointError(f"{path}: tensor 'lm_head.weight' differs from 'embed_tokens.weight'; ESM ties the "
                              "LM decoder to the word embeddings.")
    return config, state_dict
