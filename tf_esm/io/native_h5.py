"""tf_esm's own weight file, `tf_esm_model.h5` (what `save_pretrained` and `tf-esm convert` write).

Datasets are named by reference (PyTorch) names, as every other format `io/weights.py` reads. Two versions:

* version 1 (tf_esm before 2026-12): every tensor in the reference layout, so each Keras kernel was transposed on
  loading, into new memory.
* version 2 (written now): each tensor in the layout of its Keras variable (a dataset whose attribute
  `keras_layout` is true holds the transposed reference matrix), stored contiguously at 64-byte-aligned offsets,
  in the group `weights_keras_layout` (`GROUPS`).
* version 3 (written for a model with bfloat16 weights, e.g. ESMFold converted with a bfloat16 stem): version 2,
  plus bfloat16 tensors stored as they are. HDF5 has no bfloat16, so such a dataset holds the 16-bit patterns
  (`<u2`) with the attribute `bfloat16` set; it maps like any other. Its own group (`weights_bfloat16`) makes a
  tf_esm that predates it refuse the file, rather than load bit patterns as integers.
* version 4 (written for a model with stacked weights, `modeling/layer_stack.py`: the ESM encoder's layers, ESMFold's
  trunk blocks, so every tf_esm model now): version 3, plus each stacked weight stored as one dataset over the
  layers (`esm/encoder/layer/*/...`, `trunk/blocks/*/...`; a `keras_layout` stack of matrices has each matrix
  transposed), mapped as one array. Its own group (`weights_stacked`) makes an older tf_esm refuse the file rather
  than miss the stacked weights; files of versions 1-3 still load (their per-layer tensors are stacked on loading,
  a copy: convert again to map them).
  The reader maps the file (`numpy.memmap`, copy-on-write) and hands each tensor out as a view of the mapping;
  under TensorFlow the variables adopt those views without a copy (`weights.load_state_dict`), so loading costs
  what building the model costs, and pages come in from the page cache on first use, as PyTorch's memory-mapped
  safetensors loading does (benchmarks/RESULTS.md, "Loading from a memory map").

Every version reads back through `read_h5` as {reference name: array} in the reference layout: a version-2
matrix comes back as the transposed view of its mapping, which `load_state_dict` transposes back for free.
A file that is replaced while mapped (our writers rename a new file into place) keeps the old contents mapped;
a file truncated in place by another program makes the next page-in fail (SIGBUS), as any memory map does.
"""

from __future__ import annotations

import os

import numpy as np

from tf_esm.io.buffers import own_array, read_ahead

FORMAT_VERSION = 2
# The group of each version's datasets. Version 2 has its own, so that a tf_esm older than it refuses the file
# ("no 'weights' group") instead of loading its square kernels transposed without a word.
GROUPS = {1: "weights", 2: "weights_keras_layout", 3: "weights_bfloat16", 4: "weights_stacked"}
ALIGNMENT = 64  # TensorFlow's CPU buffer alignment (io/weights_tf.py)
# dtypes a mapping is handed out for; any other dataset (or an unaligned / chunked one) is read with h5py.
_MAPPABLE = {np.dtype(name) for name in ("<f4", "<f2", "<f8", "<i4", "<i8")}
_BFLOAT16_BITS = np.dtype("<u2")  # how a bfloat16 dataset is stored (attribute `bfloat16`)


def _bfloat16():
    import ml_dtypes  # a dependency of Keras

    return np.dtype(ml_dtypes.bfloat16)


def save_weights_h5(model, path):
    """Write the model's weights to an HDF5 file (Keras layout, aligned), atomically: version 2, version 3 when
    some weights are bfloat16 (stored as they are), version 4 when some are stacked."""
    import h5py

    from tf_esm.backend import to_numpy
    from tf_esm.storage.atomic import atomic_path
    from tf_esm.io.stacked_weights import is_stacked, matrix_ndim
    from tf_esm.io.names import model_variables

    variables = sorted(model_variables(model).items())
    version = FORMAT_VERSION
    if any(is_stacked(name) for name, _ in variables):
        version = 4
    elif any(variable.dtype == "bfloat16" for _, (variable, _) in variables):
        version = 3
    with atomic_path(path, suffix=".h5") as tmp_path:
        with h5py.File(tmp_path, "w", alignment_threshold=1, alignment_interval=ALIGNMENT) as handle:
            handle.attrs["format"] = "tf_esm"
            handle.attrs["format_version"] = version
            group = handle.create_group(GROUPS[version])
            for name, (variable, transpose) in variables:
                value = to_numpy(variable.value)  # no copy under TensorFlow
                bfloat16 = value.dtype.name == "bfloat16"
                dataset = group.create_dataset(name.replace(".", "/"),
                                               data=value.view(_BFLOAT16_BITS) if bfloat16 else value)
                if bfloat16:
                    dataset.attrs["bfloat16"] = True
                if transpose and value.ndim == matrix_ndim(name):
                    dataset.attrs["keras_layout"] = True


def read_h5(path, populate=True):
    """A lazy {reference name: array} view of a tf_esm HDF5 weight file (any version). `populate`: ask
    the kernel to read the file ahead into the page cache (`buffers.read_ahead`)."""
    import h5py

    from tf_esm.io.stacked_weights import matrix_ndim
    from tf_esm.io.names import CheckpointError, LazyTensors

    def open_weights(handle):
        for group in (GROUPS[4], GROUPS[3], GROUPS[2], GROUPS[1]):
            if group in handle:
                return handle[group]
        names = " or ".join(repr(GROUPS[version]) for version in sorted(GROUPS, reverse=True))
        raise CheckpointError(f"{path}: not a tf_esm weight file (no {names} group).")

    entries = {}  # name -> (h5 location, transposed, file offset or None, dtype, stored shape)

    def visit(location, item):
        if isinstance(item, h5py.Dataset):
            dtype = item.dtype
            if item.attrs.get("bfloat16", False):
                if dtype != _BFLOAT16_BITS:
                    raise CheckpointError(f"{path}: tensor {location!r} is marked bfloat16 but stored as {dtype} "
                                          "(expected 16-bit patterns, <u2).")
                dtype = _bfloat16()
            offset = item.id.get_offset() if item.chunks is None and item.compression is None else None
            mappable = dtype in _MAPPABLE or dtype.name == "bfloat16"
            if offset is not None and (offset % ALIGNMENT or not mappable or item.size == 0):
                offset = None
            name = location.replace("/", ".")
            transposed = bool(item.attrs.get("keras_layout", False)) and item.ndim == matrix_ndim(name)
            entries[name] = (location, transposed, offset, dtype, item.shape)

    try:
        with h5py.File(path, "r") as handle:
            open_weights(handle).visititems(visit)
    except OSError as error:
        raise CheckpointError(f"{path}: not a readable HDF5 file ({error}).") from None
    mapping = None  # the whole file, copy-on-write; its pages come in while the model is built
    if any(entry[2] is not None for entry in entries.values()):
        try:
            mapping = np.memmap(path, dtype=np.uint8, mode="c")
        except (OSError, ValueError):  # a file system without memory maps: read every tensor instead
            mapping = None
        else:
            if populate:
                read_ahead([path])

    def read(name):
        location, transposed, offset, dtype, shape = entries[name]
        if offset is not None and mapping is not None:
            count = int(np.prod(shape, dtype=np.int64))
            value = own_array(mapping[offset:offset + count * dtype.itemsize].view(dtype).reshape(shape),
                              mapped=os.fspath(path))
        else:
            try:
                with h5py.File(path, "r") as handle:
                    value = open_weights(handle)[location][()]
            except OSError as error:
                raise CheckpointError(f"{path}: tensor {name!r} is not readable ({error}).") from None
            if dtype.name == "bfloat16":
                value = value.view(dtype)
        return value.swapaxes(-1, -2) if transposed else value

    return LazyTensors(entries, read)
