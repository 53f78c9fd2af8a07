"""Checkpoint files <-> Keras variables, through ONE name-mapping table.

Every Keras layer in tf_esm is named after the PyTorch reference module it reproduces, so a Keras variable path
such as `tf_esm_for_masked_lm/esm/encoder/layer.0/attention/self/query/kernel` translates to the reference name
`esm.encoder.layer.0.attention.self.query.weight` by a fixed rule:

* drop the top-level model name, join the rest with '.';
* rename the leaf by `LEAF_RULES` (Keras `kernel` is the transposed torch `weight`, `embeddings`/`gamma`/`beta`
  are `weight`/`weight`/`bias`); any other leaf is a raw parameter with the reference's own name and layout.

`REFERENCE_ALIASES` lists how each file format's names are brought to those reference names (transformers 5.x
`gamma`/`beta` layer norms, the per-layer rotary `inv_freq` buffers of 4.x checkpoints, ...), and `IGNORED` the
reference tensors that have no Keras variable (the tied LM decoder, constant buffers). Every loader (safetensors,
sharded safetensors, `.bin`, fair-esm `.pt` after `tf_esm.fair_esm` renames it, our own HDF5) yields a
`{reference name: numpy array}` dict that goes through `load_state_dict`; every saver goes through
`model_state_dict`.
"""

from __future__ import annotations

import json
import logging
import os
import re

import numpy as np

logger = logging.getLogger("tf_esm")

# Keras leaf name -> (reference leaf name, transpose a 2-D tensor?)
LEAF_RULES = {
    "kernel": ("weight", True),
    "embeddings": ("weight", False),
    "gamma": ("weight", False),
    "beta": ("bias", False),
}

# (pattern on a checkpoint name, replacement): applied in order to bring every format to reference names.
REFERENCE_ALIASES = (
    # transformers 5.x writes some layer norms as gamma/beta.
    (re.compile(r"\.gamma$"), ".weight"),
    (re.compile(r"\.beta$"), ".bias"),
    # One rotary table for the model: 4.x stores a copy per layer, 5.x one wildcard key.
    (re.compile(r"^(.*?)encoder\.layer\.(?:\d+|\*)\.attention\.self\.rotary_embeddings\.inv_freq$"),
     r"\1rotary_embeddings.inv_freq"),
)

# Reference tensors with no Keras variable: tied to another tensor, or constant buffers we recompute.
IGNORED = (
    re.compile(r"(^|\.)lm_head\.decoder\.weight$"),
    re.compile(r"(^|\.)embeddings\.position_ids$"),
    # transformers 4.x builds an (unused) absolute table for rotary / relative models too.
    re.compile(r"(^|\.)embeddings\.position_embeddings\.weight$"),
    re.compile(r"(^|\.)af2_to_esm$"),
    # Cross-attention reuses the model's one rotary table (4.x stored a copy per cross-attention layer).
    re.compile(r"crossattention\.self\.rotary_embeddings\.inv_freq$"),
)

# Keras variables a checkpoint may lack without a warning (their defaults are exact).
OPTIONAL = (re.compile(r"rotary_embeddings\.inv_freq$"),)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
TORCH_WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
H5_WEIGHTS_NAME = "tf_esm_model.h5"
# Looked for in this order inside a model directory.
WEIGHT_FILES = (H5_WEIGHTS_NAME, SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, TORCH_WEIGHTS_NAME,
                TORCH_WEIGHTS_INDEX_NAME)


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, or its tensors do not fit the model (names the tensor)."""


def reference_name(variable_path):
    """Keras variable path -> (reference name, transpose?)."""
    parts = variable_path.split("/")[1:]  # drop the top-level model name
    if not parts:
        raise CheckpointError(f"Variable path {variable_path!r} has no layer.")
    leaf, transpose = LEAF_RULES.get(parts[-1], (parts[-1], False))
    return ".".join(parts[:-1] + [leaf]), transpose


def normalize_reference_names(state_dict):
    """Apply REFERENCE_ALIASES; the first tensor wins when several names collapse to one (identical copies)."""
    out = {}
    for name, value in state_dict.items():
        for pattern, replacement in REFERENCE_ALIASES:
            name = pattern.sub(replacement, name)
        out.setdefault(name, value)
    return out


def _is(patterns, name):
    return any(p.search(name) for p in patterns)


def _model_variables(model):
    """{reference name: (keras variable, transpose?)} over the model's trainable and non-trainable weights."""
    table = {}
    for variable in model.weights:
        name, transpose = reference_name(variable.path)
        if name in table and table[name][0] is not variable:
            raise CheckpointError(f"Two Keras variables map to {name!r}: {table[name][0].path} and {variable.path}.")
        table[name] = (variable, transpose)
    return table


def _add_base_prefix(state_dict, model_names, prefix="esm."):
    """Base-model checkpoints (EsmModel) have no 'esm.' prefix; our models always do."""
    if any(k.startswith(prefix) for k in state_dict):
        return state_dict
    if not any(k.startswith(prefix) for k in model_names):
        return state_dict
    return {prefix + k: v for k, v in state_dict.items()}


def load_state_dict(model, state_dict, strict=False, source="checkpoint"):
    """Assign a {reference name: array} dict to `model`'s variables. Returns (missing, unexpected) name lists.

    A tensor whose shape does not fit is always an error naming it. Missing tensors (new weights, e.g. a task
    head on a base checkpoint) and unexpected ones (e.g. an LM head when loading a base model) are warnings, or
    errors when `strict`.
    """
    variables = _model_variables(model)
    state_dict = _add_base_prefix(normalize_reference_names(state_dict), variables)
    unexpected = []
    for name, value in state_dict.items():
        if name not in variables:
            if not _is(IGNORED, name):
                unexpected.append(name)
            continue
        variable, transpose = variables[name]
        value = np.asarray(value)
        if transpose and value.ndim == 2:
            value = value.T
        if tuple(value.shape) != tuple(variable.shape):
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {tuple(np.asarray(state_dict[name]).shape)}, but the model's "
                f"variable {variable.path} needs {tuple(variable.shape)}"
                + (" (transposed)" if transpose else "") + "."
            )
        variable.assign(value.astype(variable.dtype, copy=False))
    missing = sorted(n for n in variables if n not in state_dict and not _is(OPTIONAL, n))
    unexpected.sort()
    if strict and (missing or unexpected):
        raise CheckpointError(f"{source}: missing tensors {missing}; unexpected tensors {unexpected}.")
    if missing:
        logger.warning("Some weights of %s were not in %s and are newly initialised: %s",
                       type(model).__name__, source, missing)
    if unexpected:
        logger.warning("Some tensors of %s were not used by %s: %s", source, type(model).__name__, unexpected)
    return missing, unexpected


def model_state_dict(model):
    """{reference name: numpy array} in the reference layout (what `load_state_dict` reads back)."""
    out = {}
    for name, (variable, transpose) in _model_variables(model).items():
        value = np.asarray(variable.numpy())
        out[name] = value.T if transpose and value.ndim == 2 else value
    return out


# --------------------------------------------------------------------------------------------------------- readers

def _read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error}).") from None
    except Exception as error:  # safetensors raises plain exceptions for some corruptions (e.g. bf16 via numpy)
        if "bf16" in str(error).lower() or "bfloat16" in str(error).lower():
            return _read_safetensors_via_torch(path)
        raise CheckpointError(f"{path}: not a readable safetensors file ({error}).") from None


def _read_safetensors_via_torch(path):
    _import_torch(path)  # bfloat16 tensors have no numpy dtype: read them through torch
    from safetensors.torch import load_file

    return {k: v.float().numpy() for k, v in load_file(path).items()}


def _import_torch(path):
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading this file needs PyTorch. Install it with `pip install torch==2.13.0` "
            "(CPU build) or `pip install tf_esm[torch]`, or convert the checkpoint to safetensors."
        ) from None
    return torch


def torch_load_safely(path, allowed_globals=()):
    """torch.load with weights_only=True: a pickle that needs arbitrary code is refused, never executed."""
    torch = _import_torch(path)
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for unsafe content, RuntimeError/EOFError for corruption
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, __import__("pickle").UnpicklingError) or "weights_only" in str(error):
            raise CheckpointError(
                f"{path}: refused to load. The pickle needs code outside the tensor allow-list ({message}). "
                "Only load checkpoints you trust, and prefer safetensors."
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({message}).") from None


def _torch_to_numpy(state_dict, path):
    out = {}
    for name, value in state_dict.items():
        if not hasattr(value, "detach"):
            continue
        tensor = value.detach()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        out[name] = tensor.cpu().numpy()
    if not out:
        raise CheckpointError(f"{path}: holds no tensors.")
    return out


def _read_torch_bin(path):
    data = torch_load_safely(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(data).__name__}.")
    return _torch_to_numpy(data, path)


def _read_index(path, reader):
    with open(path, encoding="utf-8") as handle:
        try:
            weight_map = json.load(handle)["weight_map"]
        except (json.JSONDecodeError, KeyError) as error:
            raise CheckpointError(f"{path}: not a valid shard index ({error}).") from None
    directory = os.path.dirname(path)
    out = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(directory, shard)
        if not os.path.isfile(shard_path):
            raise CheckpointError(f"{path}: shard {shard} is missing.")
        out.update(reader(shard_path))
    return out


def _read_h5(path):
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if "weights" not in handle:
                raise CheckpointError(f"{path}: not a tf_esm weight file (no 'weights' group).")
            group = handle["weights"]
            out = {}
            group.visititems(lambda name, obj: out.__setitem__(name.replace("/", "."), obj[()])
                             if isinstance(obj, h5py.Dataset) else None)
            return out
    except OSError as error:
        raise CheckpointError(f"{path}: not a readable HDF5 file ({error}).") from None


def read_state_dict(path):
    """Read a checkpoint file (or the weights in a model directory) into {reference name: numpy array}."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for filename in WEIGHT_FILES:
            candidate = os.path.join(path, filename)
            if os.path.isfile(candidate):
                return read_state_dict(candidate)
        raise CheckpointError(f"{path}: no weights found (looked for {', '.join(WEIGHT_FILES)}).")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file.")
    if path.endswith(".safetensors.index.json"):
        return _read_index(path, _read_safetensors)
    if path.endswith(".bin.index.json"):
        return _read_index(path, _read_torch_bin)
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    if path.endswith((".h5", ".hdf5")):
        return _read_h5(path)
    if path.endswith((".bin", ".pt", ".pth")):
        return _read_torch_bin(path)
    raise CheckpointError(f"{path}: unknown checkpoint format (expected .safetensors, .bin, .pt or .h5).")


def save_weights_h5(model, path):
    """Write the model's weights (reference names and layout) to an HDF5 file, atomically."""
    import h5py

    from tf_esm.atomic import atomic_path

    state = model_state_dict(model)
    with atomic_path(path, suffix=".h5") as tmp_path:
        with h5py.File(tmp_path, "w") as handle:
            handle.attrs["format"] = "tf_esm"
            handle.attrs["format_version"] = 1
            group = handle.create_group("weights")
            for name, value in sorted(state.items()):
                group.create_dataset(name.replace(".", "/"), data=value)


def save_weights_safetensors(state, path):
    """Write a {reference name: array} dict as safetensors (loadable by PyTorch transformers), atomically."""
    from safetensors.numpy import save_file

    from tf_esm.atomic import atomic_path

    with atomic_path(path, suffix=".safetensors") as tmp_path:
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, tmp_path, metadata={"format": "pt"})
