"""tf_esm's own weight file, `tf_esm_model.h5` (what `save_pretrained` and `tf-esm convert` write).

Datasets are named by reference (PyTorch) names, as every other format `io/weights.py` reads. Two versions:

* version 1 (tf_esm before 2026-12): every tensor in the reference layout, so each Keras kernel was transposed on
  loading, into new memory.
* version 2 (written now): each tensor in the layout of its Keras variable (a dataset whose attribute
  `keras_layout` is true holds the transposed reference matrix), stored contiguously at 64-byte-aligned offsets,
  in the group `weights_keras_layout` (`GROUPS`).
  The reader maps the file (`numpy.memmap`, copy-on-write) and hands each tensor out as a view of the mapping;
  under TensorFlow the variables adopt those views without a copy (`weights.load_state_dict`), so loading costs
  what building the model costs, and pages come in from the page cache on first use, as PyTorch's memory-mapped
  safetensors loading does (benchmarks/RESULTS.md, "Loading from a memory map").

Either version reads back through `read_h5` as {reference name: array} in the reference layout: a version-2
matrix comes back as the transposed view of its mapping, which `load_state_dict` transposes back for free.
A file that is replaced while mapped (our writers rename a new file into place) keeps the old contents mapped;
a file truncated in place by another program makes the next page-in fail (SIGBUS), as any memory map does.
"""

from __future__ import annotations

import numpy as np

from tf_esm.io.buffers import own_array, populate_in_background

FORMAT_VERSION = 2
# The group of each version's datasets. Version 2 has its own, so that a tf_esm older than it refuses the file
# ("no 'weights' group") instead of loading its square kernels transposed without a word.
GROUPS = {1: "weights", 2: "weights_keras_layout"}
ALIGNMENT = 64  # TensorFlow's CPU buffer alignment (io/weights_tf.py)
# dtypes a mapping is handed out for; any other dataset (or an unaligned / chunked one) is read with h5py.
_MAPPABLE = {np.dtype(name) for name in ("<f4", "<f2", "<f8", "<i4", "<i8")}


def save_weights_h5(model, path):
    """Write the model's weights to an HDF5 file (version 2: Keras layout, aligned), atomically."""
    import h5py

    from tf_esm.io.atomic import atomic_path
    from tf_esm.io.weights import model_variables

    with atomic_path(path, suffix=".h5") as tmp_path:
        with h5py.File(tmp_path, "w", alignment_threshold=1, alignment_interval=ALIGNMENT) as handle:
            handle.attrs["format"] = "tf_esm"
            handle.attrs["format_version"] = FORMAT_VERSION
            group = handle.create_group(GROUPS[FORMAT_VERSION])
            for name, (variable, transpose) in sorted(model_variables(model).items()):
                value = np.asarray(variable.value)  # no copy under TensorFlow
                if value.dtype.name == "bfloat16":  # HDF5 has no bfloat16 (h5py writes opaque bytes): widen, exactly
                    value = value.astype(np.float32)
                dataset = group.create_dataset(name.replace(".", "/"), data=value)
                if transpose and value.ndim == 2:
                    dataset.attrs["keras_layout"] = True


def read_h5(path, populate=True):
    """A lazy {reference name: array} view of a tf_esm HDF5 weight file (any version). `populate`: fault the
    mapping's pages in from a background thread (for weights used in place; not for weights cast on loading,
    whose float32 pages would all be held at once); or a predicate on the reference names: the others are only
    read ahead into the page cache (weights paged in per use, ESMFold's layer stacks)."""
    import h5py

    from tf_esm.io.weights import CheckpointError, LazyTensors

    def open_weights(handle):
        for group in (GROUPS[2], GROUPS[1]):
            if group in handle:
                return handle[group]
        raise CheckpointError(f"{path}: not a tf_esm weight file (no {GROUPS[2]!r} or {GROUPS[1]!r} group).")

    entries = {}  # name -> (h5 location, transposed, file offset or None, dtype, stored shape)

    def visit(location, item):
        if isinstance(item, h5py.Dataset):
            offset = item.id.get_offset() if item.chunks is None and item.compression is None else None
            if offset is not None and (offset % ALIGNMENT or item.dtype not in _MAPPABLE or item.size == 0):
                offset = None
            transposed = bool(item.attrs.get("keras_layout", False)) and item.ndim == 2
            entries[location.replace("/", ".")] = (location, transposed, offset, item.dtype, item.shape)

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
                read_ahead_only = [] if populate is True else [
                    (entry[2], int(np.prod(entry[4], dtype=np.int64)) * entry[3].itemsize)
                    for name, entry in entries.items() if entry[2] is not None and not populate(name)]
                populate_in_background(mapping, read_ahead_only)

    def read(name):
        location, transposed, offset, dtype, shape = entries[name]
        if offset is not None and mapping is not None:
            count = int(np.prod(shape, dtype=np.int64))
            value = own_array(mapping[offset:offset + count * dtype.itemsize].view(dtype).reshape(shape),
                              mapped=True)
        else:
            try:
                with h5py.File(path, "r") as handle:
                    value = open_weights(handle)[location][()]
            except OSError as error:
                raise CheckpointError(f"{path}: tensor {name!r} is not readable ({error}).") from None
        return value.T if transposed else value

    return LazyTensors(entries, read)
