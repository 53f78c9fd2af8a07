"""The columnar HDF5 store of `tf-esm embed`: one matrix per kind and layer instead of one group per record.

Layout of OUTPUT (N records, D = hidden size, T = sum of lengths, C = sum of length**2):
  ids (N,) UTF-8 strings; lengths, sequence_lengths (N,) int32; truncated (N,) bool; windows (N,) int32
  input_indices (N,) int64             each record's position in the input FASTA (rows are in computed order)
  sequence_sha256 (N,) strings         sha256 of each record's sequence (what a resumed run compares)
  mean/<layer>, bos/<layer>            (N, D) float32
  per_tok/<layer> (T, D) float32       rows per_tok_offsets[i]:per_tok_offsets[i+1] are record i's residues
  per_tok_offsets (N+1,) int64
  contacts (C,) float32                contacts_offsets[i]:contacts_offsets[i+1], reshaped (L, L), is record i's map
  contacts_offsets (N+1,) int64
  root attributes: tf_esm_embed (the run's settings, JSON), tf_esm_layout ("columnar/1")
Every dataset is chunked (about 1 MiB a chunk) and resizable along its first axis, uncompressed: float32
activations barely compress, and chunks sized to the row count waste less than one row per chunk.

Crash safety without trusting HDF5 under SIGKILL: an HDF5 file open for writing can be left unreadable by a kill
(its metadata cache writes in no safe order; SWMR mode orders them but leaves a flag that only `h5clear` removes
and does not support variable-length strings). So OUTPUT is never open for writing. New records go to a journal
directory next to it, `.NAME.journal/`, as segment files in the same layout: a segment is written under a
hidden temporary name and renamed (after fsync) when it closes, every `checkpoint_interval` seconds. `commit()`
writes OUTPUT's old rows plus every segment into a new file, fsyncs it, renames it onto OUTPUT and removes the
journal. A kill leaves OUTPUT as it was plus complete segments; the next run counts both as done and merges them
(a segment whose ids OUTPUT already holds was merged by a run killed before it removed the journal: deleted).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time

from tf_esm.storage.atomic import PARTIAL_SUFFIX, fsync_file, replace_durably
from tf_esm.io.embedding_stores import (
    SETTINGS_ATTRIBUTE, EmbeddingStoreError, check_settings, next_input_index, stored_record)

LAYOUT_ATTRIBUTE = "tf_esm_layout"
LAYOUT = "columnar/1"
ROW_DATASETS = ("ids", "lengths", "sequence_lengths", "truncated", "windows", "input_indices", "sequence_sha256")
CHUNK_BYTES = 1 << 20
# Rows are buffered in memory up to these sizes, then written as one slice per dataset (a row's Python objects
# cost about 1 KB besides its arrays, hence the row limit).
BLOCK_BYTES = 8 << 20
BLOCK_ROWS = 1024
RESULT_FIELDS = {"mean": "mean_representations", "per_tok": "representations", "bos": "bos_representations"}


def array_names(include, layers):
    """The float datasets of a run: mean/<layer>, bos/<layer>, per_tok/<layer>, contacts."""
    names = [f"{kind}/{int(layer)}" for kind in ("mean", "bos", "per_tok") if kind in include
             for layer in sorted(set(layers))]
    return names + (["contacts"] if "contacts" in include else [])


def _rows_per_chunk(total, row_bytes):
    """Chunk rows near CHUNK_BYTES; when `total` is known, equal chunks that waste less than one row each."""
    target = max(1, CHUNK_BYTES // max(1, row_bytes))
    if not total:
        return target
    return math.ceil(total / math.ceil(total / target))


class ColumnarFile:
    """Appends blocks of rows to an h5py File in the columnar layout (creating the datasets if needed)."""

    def __init__(self, handle, names, dim, totals=None):
        import h5py
        import numpy as np

        self.handle, self.names, self.dim = handle, list(names), int(dim)
        totals = totals or {}
        handle.attrs[LAYOUT_ATTRIBUTE] = LAYOUT
        specs = {"ids": ((), h5py.string_dtype("utf-8"), 16), "lengths": ((), np.int32, 4),
                 "sequence_lengths": ((), np.int32, 4), "truncated": ((), np.bool_, 1), "windows": ((), np.int32, 4),
                 "input_indices": ((), np.int64, 8), "sequence_sha256": ((), h5py.string_dtype("utf-8"), 64)}
        for name in self.names:
            if name == "contacts":
                specs["contacts"] = ((), np.float32, 4)
                specs["contacts_offsets"] = ((), np.int64, 8)
            else:
                specs[name] = ((self.dim,), np.float32, 4 * self.dim)
                if name.startswith("per_tok/"):
                    specs["per_tok_offsets"] = ((), np.int64, 8)
        for name, (tail, dtype, row_bytes) in specs.items():
            if name in handle:
                continue
            total = totals.get("tokens" if name.startswith("per_tok/") else name if name == "contacts" else "rows")
            if name.endswith("_offsets"):
                total = None if totals.get("rows") is None else totals["rows"] + 1
            chunks = (_rows_per_chunk(total, row_bytes),) + tail
            initial = (1,) if name.endswith("_offsets") else (0,)
            handle.create_dataset(name, initial + tail, maxshape=(None,) + tail, dtype=dtype, chunks=chunks)
        self.rows = handle["ids"].shape[0]

    def append(self, block):
        """Write one block (see `block_from_rows`): every dataset grows by one slice."""
        count = len(block["ids"])
        if not count:
            return
        for name, values in block.items():
            if name.endswith("_counts"):
                offsets = self.handle[name.replace("_counts", "_offsets")]
                self._extend(offsets, offsets[-1] + values.cumsum())
            else:
                self._extend(self.handle[name], values)
        self.rows += count

    @staticmethod
    def _extend(dataset, values):
        start = dataset.shape[0]
        dataset.resize(start + len(values), axis=0)
        dataset[start:] = values


def block_from_rows(rows, names, dim):
    """Rows `(record_id, sequence_length, result, input_index, sequence_sha256)` as one dict of stacked arrays,
    named as the datasets."""
    import numpy as np

    block = {"ids": np.array([row[0] for row in rows], dtype=object),
             "lengths": np.array([int(row[2]["length"]) for row in rows], dtype=np.int32),
             "sequence_lengths": np.array([int(row[1]) for row in rows], dtype=np.int32),
             "truncated": np.array([bool(row[2]["truncated"]) for row in rows], dtype=np.bool_),
             "windows": np.array([int(row[2].get("windows", 1)) for row in rows], dtype=np.int32),
             "input_indices": np.array([int(row[3]) for row in rows], dtype=np.int64),
             "sequence_sha256": np.array([row[4] or "" for row in rows], dtype=object)}
    for name in names:
        values = []
        for record_id, _, result, *_ in rows:
            length = int(result["length"])
            if name == "contacts":
                value, expected = result.get("contacts"), (length, length)
            else:
                kind, layer = name.split("/")
                value = result.get(RESULT_FIELDS[kind], {}).get(int(layer))
                expected = (length, dim) if kind == "per_tok" else (dim,)
            if value is None:
                raise EmbeddingStoreError(f"record {record_id!r}: the result has no {name}")
            value = np.asarray(value, dtype=np.float32)
            if value.shape != expected:
                raise EmbeddingStoreError(f"record {record_id!r}: {name} has shape {value.shape}, expected {expected}")
            values.append(value.reshape(-1) if name == "contacts" else value)
        if name.startswith("per_tok/") or name == "contacts":
            block[name] = np.concatenate(values) if values else np.zeros((0, dim) if name != "contacts" else 0,
                                                                         np.float32)
            counts = "contacts_counts" if name == "contacts" else "per_tok_counts"
            block[counts] = np.array([len(value) for value in values], dtype=np.int64)
        else:
            block[name] = np.stack(values) if values else np.zeros((0, dim), np.float32)
    return block


def read_block(handle, names, start, stop):
    """Rows [start, stop) of a columnar file as a block (the inverse of `ColumnarFile.append`)."""
    import numpy as np

    block = {name: handle[name][start:stop] for name in ROW_DATASETS if name in handle}
    # A file written before input positions and digests were recorded: -1 and "" mean not recorded.
    block.setdefault("input_indices", np.full(len(block["ids"]), -1, np.int64))
    block.setdefault("sequence_sha256", np.full(len(block["ids"]), "", object))
    for name in names:
        if name.startswith("per_tok/") or name == "contacts":
            offsets = handle["contacts_offsets" if name == "contacts" else "per_tok_offsets"][start:stop + 1]
            block[name] = handle[name][offsets[0]:offsets[-1]]
            block["contacts_counts" if name == "contacts" else "per_tok_counts"] = offsets[1:] - offsets[:-1]
        else:
            block[name] = handle[name][start:stop]
    return block


def open_columnar(h5py, path, what="OUTPUT"):
    """Open a columnar file for reading, with clear errors for other files and the old per-record layout."""
    try:
        handle = h5py.File(path, "r")
    except OSError:
        raise EmbeddingStoreError(f"{what} {path} exists and is not an HDF5 file; choose another OUTPUT or pass "
                                  "--overwrite.") from None
    layout = handle.attrs.get(LAYOUT_ATTRIBUTE)
    if layout != LAYOUT:
        written = SETTINGS_ATTRIBUTE in handle.attrs
        handle.close()
        if written and layout is None:
            raise EmbeddingStoreError(
                f"{what} {path} has the per-record layout of an older 'tf-esm embed' (one group per record) and "
                "cannot be resumed; read it with tf_esm.io.read_embeddings, or choose another OUTPUT or pass "
                "--overwrite to write the columnar layout.")
        if written:
            raise EmbeddingStoreError(f"{what} {path} has layout {layout!r}; this tf-esm writes {LAYOUT!r}.")
        raise EmbeddingStoreError(f"{what} {path} exists but was not written by 'tf-esm embed'; choose another "
                                  "OUTPUT or pass --overwrite.")
    return handle


class Hdf5Store:
    """`tf-esm embed` into one columnar HDF5 file, through a journal of segment files (see the module doc)."""

    def __init__(self, path, settings, overwrite, checkpoint_interval, include, layers, dim):
        import h5py

        self.h5py = h5py
        self.path = os.path.abspath(path)
        directory, name = os.path.split(self.path)
        if os.path.isdir(self.path):
            raise EmbeddingStoreError(f"OUTPUT {path} is a directory; an .h5/.hdf5 OUTPUT must be a file.")
        self.journal = os.path.join(directory, f".{name}.journal")
        self.settings, self.checkpoint_interval = settings, checkpoint_interval
        self.names, self.dim = array_names(include, layers), int(dim)
        for entry in os.listdir(self.journal) if os.path.isdir(self.journal) else []:
            if entry.endswith(PARTIAL_SUFFIX) or overwrite:
                os.remove(os.path.join(self.journal, entry))
        self.keep_output = os.path.exists(self.path) and not overwrite
        self.done = {}
        for source in self._sources():
            with open_columnar(h5py, source) as handle:
                check_settings(path, json.loads(handle.attrs[SETTINGS_ATTRIBUTE]), settings)
                ids = handle["ids"].asstr()[()]
                indices = handle["input_indices"][()] if "input_indices" in handle else [None] * len(ids)
                digests = (handle["sequence_sha256"].asstr()[()] if "sequence_sha256" in handle
                           else [None] * len(ids))
            if source != self.path and not self.done.keys().isdisjoint(ids):
                os.remove(source)  # merged into OUTPUT by a run killed before it removed the journal
                continue
            self.done.update((record_id, stored_record(index, digest))
                             for record_id, index, digest in zip(ids, indices, digests))
        self.next_index = next_input_index(self.done)
        segments = self._segments()
        self.next_segment = int(segments[-1][-8:-3]) + 1 if segments else 0
        self.saved = len(self.done)
        self.rows, self.buffered = [], 0
        self.segment = self.segment_path = None
        self.last_checkpoint = time.monotonic()

    def _segments(self):
        if not os.path.isdir(self.journal):
            return []
        return sorted(os.path.join(self.journal, entry) for entry in os.listdir(self.journal)
                      if entry.startswith("seg-") and entry.endswith(".h5"))

    def _sources(self):
        return ([self.path] if self.keep_output else []) + self._segments()

    def add(self, record_id, sequence_length, result, input_index=None, sequence_sha256=None):
        """Buffer one record; `input_index` is its FASTA position (default: after every record added so far)."""
        input_index = self.next_index if input_index is None else int(input_index)
        self.next_index = max(self.next_index, input_index + 1)
        self.rows.append((record_id, sequence_length, result, input_index, sequence_sha256))
        self.buffered += sum(getattr(value, "nbytes", 0) for field in RESULT_FIELDS.values()
                             for value in result.get(field, {}).values())
        self.buffered += getattr(result.get("contacts"), "nbytes", 0)
        if self.buffered >= BLOCK_BYTES or len(self.rows) >= BLOCK_ROWS:
            self._write_block()
        if time.monotonic() - self.last_checkpoint >= self.checkpoint_interval:
            self.checkpoint()

    def _write_block(self):
        if not self.rows:
            return
        block = block_from_rows(self.rows, self.names, self.dim)
        if self.segment is None:
            os.makedirs(self.journal, exist_ok=True)
            self.segment_path = os.path.join(self.journal, f"seg-{self.next_segment:05d}.h5")
            partial = os.path.join(self.journal, f".seg-{self.next_segment:05d}.h5{PARTIAL_SUFFIX}")
            handle = self.h5py.File(partial, "w")
            handle.attrs[SETTINGS_ATTRIBUTE] = json.dumps(self.settings, sort_keys=True)
            self.segment = ColumnarFile(handle, self.names, self.dim)
        self.segment.append(block)
        self.rows, self.buffered = [], 0

    def checkpoint(self):
        """Close the open segment: its rows are durable (a temporary file renamed after fsync)."""
        self._write_block()
        if self.segment is not None:
            partial = self.segment.handle.filename
            saved = self.segment.rows
            self.segment.handle.close()
            self.segment = None
            replace_durably(partial, self.segment_path)
            with contextlib.suppress(OSError):
                fsync_file(self.journal)
            self.next_segment += 1
            self.saved += saved
        self.last_checkpoint = time.monotonic()

    def commit(self, reopen=False):
        """Checkpoint, then merge OUTPUT's rows and the journal into a new OUTPUT (temporary file, fsync, rename)."""
        self.checkpoint()
        if reopen:
            return
        segments = self._segments()
        if segments:
            self._merge(([self.path] if self.keep_output else []) + segments)
            self.keep_output = True
        shutil.rmtree(self.journal, ignore_errors=True)

    def _merge(self, sources):
        handles = [self.h5py.File(source, "r") for source in sources]
        try:
            totals = {"rows": sum(handle["ids"].shape[0] for handle in handles)}
            if "per_tok_offsets" in handles[0]:
                totals["tokens"] = sum(int(handle["per_tok_offsets"][-1]) for handle in handles)
            if "contacts" in handles[0]:
                totals["contacts"] = sum(int(handle["contacts_offsets"][-1]) for handle in handles)
            directory, name = os.path.split(self.path)
            partial = os.path.join(directory, f".{name}{PARTIAL_SUFFIX}")
            try:
                with self.h5py.File(partial, "w") as output:
                    output.attrs[SETTINGS_ATTRIBUTE] = json.dumps(self.settings, sort_keys=True)
                    merged = ColumnarFile(output, self.names, self.dim, totals)
                    for handle in handles:
                        rows = handle["ids"].shape[0]
                        step = max(1, BLOCK_BYTES // max(1, self._row_bytes(handle, rows)))
                        for start in range(0, rows, step):
                            merged.append(read_block(handle, self.names, start, min(rows, start + step)))
                replace_durably(partial, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.remove(partial)
                raise
        finally:
            for handle in handles:
                handle.close()

    def _row_bytes(self, handle, rows):
        size = sum(handle[name].size * 4 for name in self.names) + 32 * rows
        return size // max(1, rows)

    def discard(self):
        """After a failure: drop the unsaved rows; merge the journal's complete segments if there are any."""
        self.rows, self.buffered = [], 0
        if self.segment is not None:
            partial = self.segment.handle.filename
            with contextlib.suppress(Exception):
                self.segment.handle.close()
            self.segment = None
            with contextlib.suppress(OSError):
                os.remove(partial)
        if self._segments():
            with contextlib.suppress(Exception):
                self.commit()
        else:
            shutil.rmtree(self.journal, ignore_errors=True)
