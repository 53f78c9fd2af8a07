"""Buffers of the checkpoint readers (`io/weights.py`): aligned read buffers that TensorFlow can adopt without a copy,
the staging buffer reused for matrices that are transposed anyway, and a hint to the kernel to read the files
ahead. Paging per use (`paged_in` / `paged_out`, Linux, through madvise and /proc/self/pagemap) serves only the
opt-in `modeling/layers_tf.paged_weights` (`TFEsmForProteinFolding.page_weights`). Backend-neutral: the hand-over
to TensorFlow itself is `io/weights_tf.py`."""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import weakref

import numpy as np

from tf_esm._switch import ThreadSwitch

# Arrays the readers allocated or mapped themselves (`read_buffer`, `io/native_h5.py`), by the address of their
# first byte: only these may become the memory of a variable without a copy (`weights._as_variable_value`); a
# caller's array is always copied.
_OWN_ARRAYS = {}
_ALIGNMENT = 64  # TensorFlow's CPU buffer alignment (io/weights_tf.py)


def _root(array):
    """The array at the end of `array`'s chain of views: what keeps its memory alive (the buffer of
    `read_buffer`, a file's memory map)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def own_array(array, mapped=False):
    """Register `array` (read by a reader into its own buffer; `mapped`: a view of a file mapping)."""
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
    if advise is None:
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


# Linux advice values (paging per use, an opt-in: `modeling/layers_tf.paged_weights`).
_MADV_WILLNEED, _MADV_DONTNEED, _MADV_POPULATE_READ = 3, 4, 22  # POPULATE_READ: kernel 5.14+


_LIBC_MADVISE = []  # madvise from libc, looked up once (a `ctypes.CDLL` per call cost ~0.1 s per ESMFold fold)


def _madvise(begin, length, advice):
    """madvise(2) through ctypes, which releases the GIL during the call (`mmap.madvise` holds it). 0 on success."""
    if not _LIBC_MADVISE:
        function = ctypes.CDLL(None, use_errno=True).madvise
        function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _LIBC_MADVISE.append(function)
    return _LIBC_MADVISE[0](begin, length, advice)


# ------------------------------------------------------------------------------------------------ paging per use
def mapped_span(address):
    """(address, nbytes, weak reference to the mapping) of the live array registered by `own_array(...,
    mapped=True)` whose first byte is at `address` (the memory of a variable that adopted a view of a file
    mapping), else None. `paged_in` / `paged_out` skip a span whose mapping has gone since."""
    root, nbytes, _, mapped = _OWN_ARRAYS.get(address, (lambda: None, 0, None, False))
    mapping = root()
    return (address, nbytes, weakref.ref(mapping)) if mapped and mapping is not None else None


def merge_spans(spans, gap=1 << 16):
    """`spans` (`mapped_span`) sorted, with those of one mapping less than `gap` bytes apart joined into one (a
    layer's weights lie next to each other in the file: one madvise per layer instead of one per weight; what
    lies between them is the same file's clean pages)."""
    merged = []
    for address, nbytes, mapping in sorted(spans, key=lambda span: span[0]):
        if merged and merged[-1][2]() is mapping() is not None and address - sum(merged[-1][:2]) < gap:
            merged[-1] = (merged[-1][0], max(sum(merged[-1][:2]), address + nbytes) - merged[-1][0], mapping)
        else:
            merged.append((address, nbytes, mapping))
    return merged


def _whole_pages(address, nbytes):
    page = mmap.PAGESIZE
    begin = -(-address // page) * page
    end = (address + nbytes) // page * page
    return begin, max(0, end - begin)


def paged_in(spans):
    """Fault in the pages of `spans` (of mapped arrays, `mapped_span`) now, one call per span (from the page cache:
    ~0.2 s for 11 GB here; faults one page at a time inside a matrix product cost about twice that)."""
    if not sys.platform.startswith("linux"):
        return
    for address, nbytes, mapping in spans:
        if (alive := mapping()) is not None:  # held through the call
            _madvise(address, nbytes, _MADV_POPULATE_READ)
        del alive


def _written_pages(begin, length, pagemap):
    """Whether any page of [begin, begin + length) is the process's own (anonymous) copy rather than the file's:
    a private mapping's page that was written (a variable updated in place). From `pagemap` (/proc/self/pagemap,
    open for reading): bit 63 present, 62 swapped, 61 file page. True when that cannot be read (then nothing may
    be dropped)."""
    page = mmap.PAGESIZE
    try:
        pagemap.seek(begin // page * 8)
        entries = np.frombuffer(pagemap.read(length // page * 8), dtype=np.uint64)
    except OSError:
        return True
    if entries.size != length // page:
        return True
    present, swapped, file_page = (entries >> 63) & 1, (entries >> 62) & 1, (entries >> 61) & 1
    return bool(np.any(swapped | (present & (file_page ^ 1))))


# The kernel's fault-around window (/sys/kernel/debug/fault_around_bytes, 64 KiB by default): a fault, or a
# populate, in a file mapping also maps the window's other pages, so `paged_out` drops whole windows.
_FAULT_AROUND = 1 << 16


def paged_out(spans):
    """Drop from this process the mapped pages of `spans` (`mapped_span`) after a use, in whole fault-around
    windows (within the mapping): they stay in the page cache (reclaimable; not this process's memory) and come
    back at the next use (`paged_in`). Dropping a clean page of a private file mapping loses nothing; a span with a
    written page (its only copy is the process's own) is left alone. Returns the number of spans dropped."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        pagemap = open("/proc/self/pagemap", "rb")  # once per call: a stack's layer has a span per weight
    except OSError:
        return 0  # which pages were written cannot be told: nothing may be dropped
    dropped = 0
    with pagemap:
        for address, nbytes, mapping in spans:
            alive = mapping()  # held through the call
            if alive is None:
                continue
            low, high = alive.ctypes.data, alive.ctypes.data + alive.nbytes
            first = max(low, address // _FAULT_AROUND * _FAULT_AROUND)
            last = min(high, -(-(address + nbytes) // _FAULT_AROUND) * _FAULT_AROUND)
            begin, length = _whole_pages(first, last - first)
            if length and not _written_pages(begin, length, pagemap):
                _madvise(begin, length, _MADV_DONTNEED)
                dropped += 1
            del alive
    return dropped
