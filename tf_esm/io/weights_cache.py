"""A converted copy of a large PyTorch-layout checkpoint, written once into a cache and memory-mapped after.

A transformers checkpoint (safetensors, `.bin`) stores each dense kernel in PyTorch's [out, in] layout; a Keras
variable needs [in, out], so loading one transposes every matrix into the process's own (anonymous) memory: the
whole model, held for the process's life and never reclaimable by the kernel. transformers instead maps the file
and computes on its pages, which the kernel can drop and re-read. For a large checkpoint `from_pretrained` therefore
writes tf_esm's own file (`io/native_h5.py`: Keras layout, aligned, stacked weights stacked) once, tensor by tensor
(the process holds one tensor at a time, not the model), and loads that file as a memory map: the weights are then
file-backed pages, as transformers' are. The values are the checkpoint's, exactly (a transposition and a copy).

The cache entry is keyed by the source files (path, size, modification time), the model's variables (names,
shapes, layouts) and the file format, so a changed checkpoint or another model class gets its own entry; entries
are never modified in place (written to a temporary file, then renamed). Where: `cache_dir`, else $TF_ESM_CACHE,
else `$XDG_CACHE_HOME/tf_esm` or `~/.cache/tf_esm`, under `converted/`. Delete the folder to reclaim the disk.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

# Checkpoints at least this large (bytes) are converted by default (`from_pretrained(weights_cache="auto")`): the
# full ESMFold (14 GB) and ESM-2 3B / 15B; smaller ones (ESM-2 650M, ESM-1b, ESM-1v: 2.6 GB) load directly, where
# the process's copy costs less than the conversion's disk and first-load time.
AUTO_THRESHOLD = 8 << 30
_FORMAT_TAG = "tf_esm-converted-1"


def cache_root(cache_dir=None):
    """The folder converted checkpoints go to (see the module's docstring)."""
    if cache_dir:
        return os.path.join(os.fspath(cache_dir), "converted")
    root = os.environ.get("TF_ESM_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "tf_esm")
    return os.path.join(root, "converted")


def source_files(weights_path):
    """The files a checkpoint's tensors live in: the shards of an index, else the file itself."""
    weights_path = os.fspath(weights_path)
    if weights_path.endswith(".index.json"):
        with open(weights_path, encoding="utf-8") as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
        directory = os.path.dirname(weights_path)
        return [weights_path] + [os.path.join(directory, shard) for shard in shards]
    return [weights_path]


def applies(weights_path, option):
    """Whether a load from `weights_path` goes through the cache, for `from_pretrained`'s `weights_cache`
    option: False/None never; True or a directory always; "auto" for checkpoints of `AUTO_THRESHOLD` bytes or
    more. tf_esm's own file is mapped as it is and never converted."""
    if option is None or option is False:
        return False
    weights_path = os.fspath(weights_path)
    if weights_path.endswith((".h5", ".hdf5")) or not os.path.isfile(weights_path):
        return False
    if option == "auto":
        return sum(os.path.getsize(path) for path in source_files(weights_path)) >= AUTO_THRESHOLD
    return True


def _key(weights_path, variables):
    digest = hashlib.sha256(_FORMAT_TAG.encode())
    for path in source_files(weights_path):
        status = os.stat(path)
        digest.update(json.dumps([os.path.realpath(path), status.st_size, status.st_mtime_ns]).encode())
    for name in sorted(variables):
        variable, transpose = variables[name]
        entry = [name, list(variable.shape), bool(transpose)]
        if variable.dtype != "float32":  # stored in that precision (float32 entries keep their earlier keys)
            entry.append(str(variable.dtype))
        digest.update(json.dumps(entry).encode())
    return digest.hexdigest()[:32]


def converted_path(weights_path, variables, cache_dir=None):
    """Where the converted copy of `weights_path` for a model with these variables lives (it may not exist)."""
    return os.path.join(cache_root(cache_dir), _key(weights_path, variables), "tf_esm_model.h5")


def write_converted(state_dict, variables, path):
    """Write `state_dict` ({reference name: array}, read lazily) as tf_esm's file at `path`, one tensor at a time:
    each variable's tensor in its Keras layout (`variables`: {reference name: (variable, transpose?)}, the names
    and stacks already matched to the model's) and, for a bfloat16 variable, in bfloat16 (rounded once, here, as
    loading would round it: the file then maps as the variable's memory); every other tensor as it is (so a load
    still reports it)."""
    import h5py

    from tf_esm.storage.atomic import atomic_path
    from tf_esm.io.native_h5 import _BFLOAT16_BITS, ALIGNMENT, FORMAT_VERSION, GROUPS, _bfloat16
    from tf_esm.io.stacked_weights import is_stacked, matrix_ndim

    version = 4 if any(is_stacked(name) for name in variables) else FORMAT_VERSION
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path, suffix=".h5") as tmp_path:
        with h5py.File(tmp_path, "w", alignment_threshold=1, alignment_interval=ALIGNMENT) as handle:
            handle.attrs["format"] = "tf_esm"
            handle.attrs["format_version"] = version
            group = handle.create_group(GROUPS[version])
            stack_members = getattr(state_dict, "stack_members", {})
            for name in state_dict:
                if name in stack_members:  # per-layer tensors of a stacked weight: written one layer at a time
                    _write_stack(group, name, *stack_members[name], variables)
                    continue
                value = np.asarray(state_dict[name])
                transpose = name in variables and variables[name][1] and value.ndim == matrix_ndim(name)
                if name in variables and variables[name][0].dtype == "bfloat16" and value.dtype.name != "bfloat16":
                    value = value.astype(np.float32, copy=False).astype(_bfloat16())
                bfloat16 = value.dtype.name == "bfloat16"
                data = np.ascontiguousarray(value.swapaxes(-1, -2)) if transpose else value
                dataset = group.create_dataset(name.replace(".", "/"),
                                               data=data.view(_BFLOAT16_BITS) if bfloat16 else data)
                if transpose:
                    dataset.attrs["keras_layout"] = True
                if bfloat16:
                    dataset.attrs["bfloat16"] = True
                del value
    return path


def _write_stack(group, name, members, checkpoint, variables):
    """A stacked weight's dataset filled layer by layer from the checkpoint's per-layer tensors (`members`: {layer
    index: checkpoint name}), each in the variable's layout and precision: the conversion holds one layer's tensor at
    a time, never the whole stack (80 layers of a 6B model's feed-forward matrix are 5.7 GB in float32)."""
    from tf_esm.io.native_h5 import _BFLOAT16_BITS, _bfloat16

    variable, transpose = variables[name]
    bfloat16 = variable.dtype == "bfloat16"
    dataset = None
    for index in sorted(members):
        value = np.asarray(checkpoint[members[index]])
        layer_transpose = transpose and value.ndim == 2
        if bfloat16 and value.dtype.name != "bfloat16":
            value = value.astype(np.float32, copy=False).astype(_bfloat16())
        if layer_transpose:
            value = value.swapaxes(-1, -2)
        value = np.ascontiguousarray(value)
        stored = value.view(_BFLOAT16_BITS) if value.dtype.name == "bfloat16" else value
        if dataset is None:
            dataset = group.create_dataset(name.replace(".", "/"), shape=(len(members),) + stored.shape,
                                           dtype=stored.dtype)
            if layer_transpose:
                dataset.attrs["keras_layout"] = True
            if value.dtype.name == "bfloat16":
                dataset.attrs["bfloat16"] = True
        elif stored.shape != dataset.shape[1:] or stored.dtype != dataset.dtype:
            raise ValueError(f"tensor {members[index]!r} is {stored.dtype} {stored.shape}, but layer "
                             f"{min(members)} of the stack is {dataset.dtype} {dataset.shape[1:]}.")
        dataset[index] = stored
        del value, stored
