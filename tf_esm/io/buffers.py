"""Buffers of the checkpoint readers (`io/weights.py`): aligned read buffers that TensorFlow can adopt without a copy,
the staging buffer reused for matrices that are transposed anyway, and a hint to the kernel to read the files
ahead. Backend-neutral: the hand-over to TensorFlow itself is `io/weights_tf.py`."""

from __future__ import annotations

import os
import weakref

import numpy as np

from tf_esm._switch import ThreadSwitch

# Arrays the readers allocated or mapped themselves (`read_buffer`, `io/native_h5.py`), by the address of their
# first byte: only these may become the memory of a variable without a copy (`weights._as_variable_value`); a
# caller's array is always copied.
_OWN_ARRAYS = {}
_ALIGNMENT = 64  # TensorFlow's CPU buffer alignment (io/weights_tf.py)
# Platform capabilities (tests switch them to exercise the other branch on Linux):
# the kernel can be asked to read a file ahead into the page cache (`posix_fadvise`, Linux and other POSIX);
READ_AHEAD = hasattr(os, "posix_fadvise")
# a file that is memory-mapped cannot be replaced (Windows), so a model cannot overwrite the file it maps.
MAPPED_FILES_LOCKED = os.name == "nt"


def _root(array):
    """The array at the end of `array`'s chain of views: what keeps its memory alive (the buffer of
    `read_buffer`, a file's memory map)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def own_array(array, mapped=False):
    """Register `array` (read by a reader into its own buffer; `mapped`: a view of a file mapping, given as the
    file's path or True)."""
    key = array.ctypes.data

    def forget(ref, key=key):
        if _OWN_ARRAYS.get(key, (None,))[0] is ref:  # the address may have been registered again since
            del _OWN_ARRAYS[key]

    _OWN_ARRAYS[key] = (weakref.ref(_root(array), forget), array.nbytes, array.dtype, mapped)
    return array


def is_own_array(array):
    """Whether `array` is, or is a C-contiguous view of all of, an array that `own_array` registered (whose
    memory is still alive)."""
    root, nbytes, dtype, _ = _OWN_ARRAYS.get(array.ctypes.data, (lambda: None, 0, None, False))
    return (root() is not None and array.flags.c_contiguous and array.nbytes == nbytes
            and array.dtype == dtype)


def is_mapped(array):
    """Whether `array` starts at the first byte of a live array registered by `own_array(..., mapped=True)` (the
    memory of a variable that adopted a view of a file mapping)."""
    root, _, _, mapped = _OWN_ARRAYS.get(array.ctypes.data, (lambda: None, 0, None, False))
    return bool(mapped) and root() is not None


def mapped_file(array):
    """The path of the file `array` is a mapping of (as `own_array` registered it), or None."""
    root, _, _, mapped = _OWN_ARRAYS.get(array.ctypes.data, (lambda: None, 0, None, False))
    return mapped if isinstance(mapped, str) and root() is not None else None


STAGING = ThreadSwitch()  # `.buffer`: the staging buffer of the load in progress in this thread
STAGING.buffer = None


def staged_reads():
    """Within this context the readers reuse one buffer (`read_buffer`): for a tensor that is transposed into a
    new buffer as soon as it is read, so the read buffer is garbage at once. Reusing it spares the fresh pages of
    a new buffer per tensor (a small gain: loading the full-size ESMFold took 28.4 s with it, 28.9 s without). Only
    where the transposition is synchronous (TensorFlow eager)."""
    return STAGING.on()


def read_buffer(count, dtype):
    """An uninitialised 1-D array of `count` `dtype` values, aligned for TensorFlow to use without a copy (inside
    `staged_reads()`: a view of the reused staging buffer)."""
    dtype = np.dtype(dtype)
    nbytes = count * dtype.itemsize
    if STAGING:
        raw = getattr(STAGING, "buffer", None)
        if raw is None or raw.nbytes < nbytes + _ALIGNMENT:
            raw = STAGING.buffer = np.empty(nbytes + _ALIGNMENT, np.uint8)
    else:
        raw = np.empty(nbytes + _ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % _ALIGNMENT
    return raw[start:start + nbytes].view(dtype)


def read_ahead(paths):
    """Ask the kernel to start reading `paths` into the page cache (`posix_fadvise` WILLNEED, which returns
    without waiting for the reads), so the disk reads overlap the model's construction instead of following it.
    Page cache is not the process's memory; where the call is missing (not POSIX) nothing happens."""
    advise = getattr(os, "posix_fadvise", None)
    if not READ_AHEAD or advise is None:
        return
    for path in paths:
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            advise(descriptor, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(descriptor)
