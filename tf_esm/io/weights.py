"""Checkpoint files <-> Keras variables, through ONE name-mapping table.

Every Keras layer in tf_esm is named after the PyTorch reference module it reproduces, so a Keras variable path
such as `tf_esm_for_masked_lm/esm/embeddings/word_embeddings/embeddings` translates to the reference name
`esm.embeddings.word_embeddings.weight` by a fixed rule (a stacked weight of a `LayerStack`, such as the encoder's
`esm/encoder/layer/stacked-attention-self-query-kernel`, to `esm.encoder.layer.*.attention.self.query.weight`):

* drop the top-level model name, join the rest with '.' (a '-' inside a name is a '.' of the reference's module
  path, `KERAS_DOT`; tf_esm before 2026-12 named its layers with the '.' itself, which the rule still reads);
* rename the leaf by `LEAF_RULES` (Keras `kernel` is the transposed torch `weight`, `embeddings`/`gamma`/`beta`
  are `weight`/`weight`/`bias`); any other leaf is a raw parameter with the reference's own name and layout.

`REFERENCE_ALIASES` lists how each file format's names are brought to those reference names (transformers 5.x
`gamma`/`beta` layer norms, the per-layer rotary `inv_freq` buffers of 4.x checkpoints, ...), and `IGNORED` the
reference tensors that have no Keras variable (the tied LM decoder, constant buffers). Every loader (safetensors,
sharded safetensors, `.bin`, fair-esm `.pt` after `tf_esm.io.fair_esm` renames it, our own HDF5) yields a
`{reference name: numpy array}` mapping that goes through `load_state_dict`; every saver goes through
`model_state_dict` (our HDF5 writer, `io/native_h5.py`, through `model_variables`: it stores the Keras layout).
Safetensors files are read one tensor at a time as `load_state_dict` assigns them, and our HDF5 files are memory
maps, so loading never holds a second copy of the whole checkpoint (peak memory of `from_pretrained` before and
after: benchmarks/RESULTS.md, "Where tf_esm's memory goes" and "Loading from a memory map").
"""

from __future__ import annotations

import collections
import collections.abc
import contextlib
import json
import logging
import os
import re
import struct

import numpy as np

from tf_esm.io.buffers import (
    STAGING,
    is_own_array,
    own_array,
    read_ahead,
    read_buffer,
    staged_reads,
)
from tf_esm.io.names import (  # the name rule and the shared reader types, imported from here too
    KERAS_DOT,
    LEAF_RULES,
    STACK_WILDCARD,
    CheckpointError,
    LazyTensors,
    keras_name,
    model_variables,
    reference_name,
)
from tf_esm.io.stacked_weights import is_stacked, matrix_ndim, swapped, with_stacks
from tf_esm.keras_compat import assign_weight, forget_initialization

logger = logging.getLogger("tf_esm")

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

# The pretraining (masked-LM) head: every pretrained ESM checkpoint has one, and leaving it behind is how
# fine-tuning for a new task starts, so an unused one is only noted.
PRETRAINING_HEAD = "lm_head"
# Reference-name prefix of a trained head -> the transformers class that holds it (first match wins).
# The base model's module in every task model: `esmc.` (ESM C), `esm.` (ESM-1, ESM-2, ESMFold).
BASE_PREFIXES = ("esmc.", "esm.")
HEAD_ARCHITECTURES = (("score.", "EsmcForTokenClassification"),
                      ("classifier.out_proj.", "EsmForSequenceClassification"),
                      ("classifier.", "EsmForTokenClassification"),
                      ("trunk.", "EsmForProteinFolding"))

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
TORCH_WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
H5_WEIGHTS_NAME = "tf_esm_model.h5"
# Looked for in this order inside a model directory.
WEIGHT_FILES = (H5_WEIGHTS_NAME, SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, TORCH_WEIGHTS_NAME,
                TORCH_WEIGHTS_INDEX_NAME)


def _renamed(state_dict, rename):
    """`state_dict` under new names (`rename(old) -> new`), without reading any tensor; the first tensor wins
    when several names collapse to one (identical copies)."""
    sources = {}
    for name in state_dict:
        sources.setdefault(rename(name), name)
    return LazyTensors(sources, lambda name: state_dict[sources[name]])


def normalize_reference_names(state_dict):
    """Apply REFERENCE_ALIASES (names only: tensors are read when looked up)."""
    def rename(name):
        for pattern, replacement in REFERENCE_ALIASES:
            name = pattern.sub(replacement, name)
        return name

    return _renamed(state_dict, rename)


def _is(patterns, name):
    return any(p.search(name) for p in patterns)


def _add_base_prefix(state_dict, model_names, prefix=None):
    """Base-model checkpoints (EsmModel, EsmcModel) have no 'esm.' / 'esmc.' prefix; our models always do."""
    if prefix is None:
        prefix = next((candidate for candidate in BASE_PREFIXES if any(k.startswith(candidate) for k in model_names)),
                      BASE_PREFIXES[-1])
    if any(k.startswith(prefix) for k in state_dict):
        return state_dict
    if not any(k.startswith(prefix) for k in model_names):
        return state_dict
    return _renamed(state_dict, lambda name: prefix + name)


# ------------------------------------------------------------------------------------- deferred initialisation
# Building a model to load into without computing random initial values for the weights the checkpoint replaces
# (`tf_esm.keras_compat.deferred_initialization`, a private Keras interface with a build-then-assign fallback):
# `assign_weight` gives each variable the checkpoint value as its first value, and `finish_initialization` runs
# the real initializer only for the weights the checkpoint lacks (a new task head). The numbers are those of
# build-then-assign (benchmarks/RESULTS.md has the time it saves).


def variable_memory(variable):
    """The current value of the Keras `variable` as a NumPy array over the variable's own memory where the backend
    allows it. Under TensorFlow the Keras variable's `value` is a `tf.Variable`, which NumPy copies; the tensor it
    reads (`.value()`) shares the variable's buffer, so a variable that adopted a view of a file mapping
    (`load_state_dict`) is seen as that view."""
    value = variable.value
    read = getattr(value, "value", None)
    return np.asarray(read() if callable(read) else value)


def check_not_mapped_from(model, directory):
    """Where a mapped file cannot be replaced (`buffers.MAPPED_FILES_LOCKED`, Windows): raise if `model`'s
    weights are a memory map of a file in `directory`, which saving into it would have to replace."""
    from tf_esm.io import buffers

    if not buffers.MAPPED_FILES_LOCKED or not os.path.isdir(directory):
        return
    target = os.path.realpath(directory)
    for variable in model.weights:
        try:
            value = variable_memory(variable)
        except Exception:  # a backend whose tensors NumPy cannot view: nothing of ours is mapped there
            return
        path = buffers.mapped_file(value)
        if path is not None and os.path.dirname(os.path.realpath(path)) == target:
            raise OSError(
                f"{path}: this model's weights are a memory map of this file, which this platform cannot replace "
                f"while it is mapped, so the model cannot be saved over it. Save to another directory, or release "
                f"the model (del model) before writing into {directory}.")


def finish_initialization(model):
    """Initialise the variables of `model` that were given no value, with their own initializers."""
    forget_initialization(model.variables, initialize=True)


# The pooler (`esm.pooler.dense.*`, in checkpoints saved from transformers' EsmModel) when the model was built
# without one: nothing reads it, so loading skips it without a warning.
POOLER = re.compile(r"(^|\.)pooler\.")


def _as_variable_value(value, dtype, transpose):
    """`value` (numpy) as a backend tensor of `dtype`, transposed if asked.

    The backend converts the contiguous array (one copy; none under TensorFlow for an array a reader read into
    an aligned buffer or mapped, `read_buffer`, `io/native_h5.py` and `weights_tf.wrap`: a mapped matrix in the
    variable's layout needs no transposition either) and transposes it with its own blocked,
    multi-threaded kernel: a NumPy transpose of a large matrix walks memory with a stride and was most of the
    loading time of the full-size ESMFold (benchmarks/RESULTS.md, "Loading").
    """
    import keras
    from keras import ops

    from tf_esm.backend import contiguous

    tensor = None
    tensorflow = keras.backend.backend() == "tensorflow"
    if tensorflow:
        from tf_esm.io import weights_tf

        if transpose and is_own_array(swapped(value)):
            # Stored in the variable's layout already (a version-2 tf_esm file hands out `mapped.T`).
            value, transpose = swapped(value), False
    if dtype == "bfloat16" and value.dtype.name == "bfloat16":  # stored in bfloat16 (a version-3 tf_esm file)
        tensor = weights_tf.wrap(value) if tensorflow and is_own_array(value) else None
        if tensor is not None and not transpose:
            return tensor  # the mapping becomes the variable's memory, as for float32
        if tensor is None:
            tensor = ops.cast(ops.convert_to_tensor(value.astype(np.float32)), dtype)  # exact, both ways
    elif dtype == "bfloat16":  # no NumPy name: the backend rounds (to nearest even, as torch and ml_dtypes)
        value = value.astype(np.float32, copy=False)
        source = weights_tf.wrap(value) if tensorflow and is_own_array(value) else None  # cast from it, no copy
        tensor = ops.cast(ops.convert_to_tensor(value) if source is None else source, dtype)
    elif value.dtype != np.dtype(dtype):
        value = value.astype(np.float32).astype(dtype) if value.dtype.name == "bfloat16" else value.astype(dtype)
    elif tensorflow and is_own_array(value):
        tensor = weights_tf.wrap(value)  # the read buffer becomes the tensor's (and the variable's) memory
        if tensor is not None and not transpose:
            return tensor
    if tensor is None:
        tensor = ops.convert_to_tensor(value)
    return contiguous(ops.swapaxes(tensor, -1, -2)) if transpose else tensor


def matched_state_dict(state_dict, variables, source="checkpoint"):
    """`state_dict` under the names of `variables` (`model_variables`): reference names normalised, the base
    model's prefix added where the checkpoint lacks it, per-layer tensors gathered under their stacked names."""
    state_dict = _add_base_prefix(normalize_reference_names(state_dict), variables)
    return with_stacks(state_dict, variables, source)


def load_state_dict(model, state_dict, strict=False, source="checkpoint", architectures=None):
    """Assign a {reference name: array} dict to `model`'s variables. Returns (missing, unexpected) name lists.

    A tensor whose shape does not fit is always an error naming it. Missing tensors (new weights, e.g. a task
    head on a base checkpoint) and unexpected ones are warnings, or errors when `strict`. An unused masked-LM
    head is the normal start of fine-tuning; an unused trained task head (a classifier, ESMFold's trunk) loses
    weights somebody trained, so its warning says so and names the class that keeps them (from the checkpoint's
    `architectures` when given, else from the head's names). A pooler in the checkpoint of a model built without
    one is skipped silently.
    """
    variables = model_variables(model)
    state_dict = matched_state_dict(state_dict, variables, source)
    ignored = IGNORED if any(_is((POOLER,), name) for name in variables) else IGNORED + (POOLER,)
    import keras

    synchronous = keras.backend.backend() == "tensorflow"
    unexpected = []
    try:
        for name in state_dict:
            if name not in variables:
                if not _is(ignored, name):
                    unexpected.append(name)
                continue
            variable, transpose = variables[name]
            # A matrix transposed into a new buffer can be read into the reused staging buffer; not one with a
            # dimension of 1, whose "transpose" may share its input's memory.
            staged = synchronous and transpose and len(variable.shape) == 2 and min(variable.shape) > 1
            with staged_reads() if staged else contextlib.nullcontext():
                value = np.asarray(state_dict[name])
                transpose = transpose and value.ndim == matrix_ndim(name)
                shape = value.shape[:-2] + value.shape[:-3:-1] if transpose else value.shape
                if tuple(shape) != tuple(variable.shape):
                    stacked = is_stacked(name) and len(shape) == len(variable.shape)  # name each layer's tensor
                    what, have, need = ((name.replace(STACK_WILDCARD, "{i}"), value.shape[1:], variable.shape[1:])
                                        if stacked else (name, value.shape, variable.shape))
                    raise CheckpointError(
                        f"{source}: tensor {what!r} has shape {tuple(have)}, but the model's variable "
                        f"{variable.path} needs {tuple(need)}" + (" (transposed)" if transpose else "")
                        + (f" (layers: {value.shape[0]} in the file, {variable.shape[0]} in the model)"
                           if stacked else "") + "."
                    )
                assign_weight(variable, _as_variable_value(value, variable.dtype, transpose))
    finally:
        STAGING.buffer = None  # the staging buffer lives for one load
    missing = sorted(n for n in variables if n not in state_dict and not _is(OPTIONAL, n))
    unexpected.sort()
    if strict and (missing or unexpected):
        raise CheckpointError(f"{source}: missing tensors {missing}; unexpected tensors {unexpected}.")
    if missing:
        logger.warning("Some weights of %s were not in %s and are newly initialised: %s (expected for a new task "
                       "head: train the model before using its outputs)", type(model).__name__, source,
                       name_list(missing))
    if unexpected:
        _warn_unused(model, source, unexpected, architectures)
    return missing, unexpected


def _head(name):
    """The head (top-level module) a reference name belongs to: `classifier`, `lm_head`, `esm.contact_head`, ..."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("esm", "esmc") and len(parts) > 2 else parts[0]


def _warn_unused(model, source, unexpected, architectures):
    heads = collections.defaultdict(list)
    for name in unexpected:
        heads[_head(name)].append(name)
    pretraining = heads.pop(PRETRAINING_HEAD, None)
    if pretraining:
        logger.warning("Some tensors of %s were not used by %s: %s (the masked-LM head of pretraining: expected "
                       "when fine-tuning a pretrained checkpoint for a new task)", source, type(model).__name__,
                       name_list(pretraining))
    if not heads:
        return
    names = [name for group in heads.values() for name in group]
    own = getattr(model, "reference_architecture", lambda: type(model).__name__.removeprefix("TF"))()
    saved_as = next((name.removeprefix("TF") for name in architectures or () if name.removeprefix("TF") != own),
                    None)
    holder = saved_as or next((cls for prefix, cls in HEAD_ARCHITECTURES
                               if any(name.startswith(prefix) for name in names)), None)
    hint = ""
    if holder:
        origin = "its config.json's architectures" if saved_as else "the names of those tensors"
        hint = f" The checkpoint was saved as {holder} ({origin}): load it with TF{holder} to keep them."
    logger.warning("%s did not use the trained %s of %s, so those trained weights are lost: %s.%s",
                   type(model).__name__, " and ".join(sorted(heads)), source, name_list(names), hint)


def name_list(names, shown=5):
    """`names` for a one-line report: all of them when few, else the first `shown` and how many more (a full
    ESMFold checkpoint loaded as an encoder leaves thousands of tensors unused)."""
    names = list(names)
    if len(names) <= shown + 1:
        return "[" + ", ".join(names) + "]"
    return "[" + ", ".join(names[:shown]) + f", ... and {len(names) - shown} more ({len(names)} in all)]"


def model_state_dict(model):
    """{reference name: numpy array} in the reference layout (what `load_state_dict` reads back), stacked weights
    under their per-layer names (`trunk.blocks.0.x`, ...), as the reference has them."""
    from tf_esm.backend import to_numpy

    out = {}
    for name, (variable, transpose) in model_variables(model).items():
        value = to_numpy(variable.value)  # (Keras' `numpy()` warns under NumPy 2: no `copy` argument)
        value = swapped(value) if transpose and value.ndim == matrix_ndim(name) else value
        if is_stacked(name):
            out.update((name.replace(f".{STACK_WILDCARD}.", f".{index}.", 1), layer)
                       for index, layer in enumerate(value))
        else:
            out[name] = value
    # Constant buffers the reference saves with its weights (no Keras variable; ignored when loading).
    out.update(getattr(model, "_reference_buffers", dict)())
    return out


# --------------------------------------------------------------------------------------------------------- readers

# safetensors dtype -> numpy dtype it is read as (bfloat16: its bit pattern, widened to float32 after reading).
_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
                       "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def _read_safetensors(path):
    """A lazy {name: array} view of a safetensors file.

    The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}} and
    the raw data. Tensors are read with plain file reads, not a memory map: mapped file pages would count towards
    the process's resident memory until the whole checkpoint had been read.
    """
    def unreadable(reason):
        return CheckpointError(f"{path}: not a readable safetensors file ({reason}).")

    try:
        file_size = os.path.getsize(path)
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise unreadable("shorter than its 8-byte header length")
            (header_size,) = struct.unpack("<Q", prefix)
            if 8 + header_size > file_size:
                raise unreadable(f"header of {header_size} bytes runs past the end of the file")
            header = json.loads(handle.read(header_size))
    except (OSError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise unreadable(error) from None
    if not isinstance(header, dict):
        raise unreadable("the header is not a JSON object")
    header.pop("__metadata__", None)
    tensors = {}
    for name, entry in header.items():
        try:
            dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
            shape = tuple(int(n) for n in entry["shape"])
            begin, end = (int(n) for n in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise unreadable(f"tensor {name!r} has an unsupported or malformed entry {entry!r}") from None
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * dtype.itemsize or begin < 0 or 8 + header_size + end > file_size:
            raise unreadable(f"tensor {name!r}: data_offsets {[begin, end]} do not fit shape {list(shape)} "
                             f"{entry['dtype']} or the file's {file_size} bytes")
        tensors[name] = (8 + header_size + begin, dtype, shape, count, entry["dtype"] == "BF16")

    def read(name):
        offset, dtype, shape, count, bfloat16 = tensors[name]
        data = read_buffer(count, dtype)
        with open(path, "rb", buffering=0) as handle:
            handle.seek(offset)
            view, filled = memoryview(data).cast("B"), 0
            while filled < len(view):
                got = handle.readinto(view[filled:])
                if not got:
                    break
                filled += got
        if filled != data.nbytes:
            raise CheckpointError(f"{path}: tensor {name!r} is cut short ({filled // dtype.itemsize} of {count} "
                                  "values).")
        if bfloat16:
            return (data.astype(np.uint32) << 16).view(np.float32).reshape(shape)
        return own_array(data.reshape(shape))

    return LazyTensors(tensors, read)


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


def _read_index(path, reader, ahead=False):
    with open(path, encoding="utf-8") as handle:
        try:
            weight_map = json.load(handle)["weight_map"]
        except (json.JSONDecodeError, KeyError) as error:
            raise CheckpointError(f"{path}: not a valid shard index ({error}).") from None
    directory = os.path.dirname(path)
    shards = []
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(directory, shard)
        if not os.path.isfile(shard_path):
            raise CheckpointError(f"{path}: shard {shard} is missing.")
        shards.append(reader(shard_path))
    if ahead:
        read_ahead([os.path.join(directory, shard) for shard in sorted(set(weight_map.values()))])
    return collections.ChainMap(*reversed(shards))  # lazy shards stay lazy; a later shard wins, as before


def read_state_dict(path, populate=True):
    """A checkpoint file (or the weights in a model directory) as a {reference name: numpy array} mapping.

    Safetensors and HDF5 tensors are read when looked up (`dict(read_state_dict(path))` reads them all)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for filename in WEIGHT_FILES:
            candidate = os.path.join(path, filename)
            if os.path.isfile(candidate):
                return read_state_dict(candidate, populate)
        raise CheckpointError(f"{path}: no weights found (looked for {', '.join(WEIGHT_FILES)}).")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file.")
    if path.endswith(".safetensors.index.json"):
        return _read_index(path, _read_safetensors, ahead=True)
    if path.endswith(".bin.index.json"):
        return _read_index(path, _read_torch_bin)
    if path.endswith(".safetensors"):
        state_dict = _read_safetensors(path)
        read_ahead([path])
        return state_dict
    if path.endswith((".h5", ".hdf5")):
        from tf_esm.io.native_h5 import read_h5

        return read_h5(path, populate)
    if path.endswith((".bin", ".pt", ".pth")):
        return _read_torch_bin(path)
    raise CheckpointError(f"{path}: unknown checkpoint format (expected .safetensors, .bin, .pt or .h5).")


def save_weights_safetensors(state, path):
    """Write a {reference name: array} dict as safetensors (loadable by PyTorch transformers), atomically."""
    from safetensors.numpy import save_file

    from tf_esm.storage.atomic import atomic_path

    with atomic_path(path, suffix=".safetensors") as tmp_path:
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, tmp_path, metadata={"format": "pt"})
