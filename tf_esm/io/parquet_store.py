"""The Parquet layout of `tf-esm embed`: one schema, one row conversion, and the sharded writer that uses them.

Any writer of embedding Parquet files (the `tf-esm embed` store below, an Apache Beam pipeline through
`beam.io.WriteToParquet`) builds its schema with `embedding_schema` and its rows with `result_to_row`, so
every producer writes the same columns and `tf_esm.io.read_embeddings` reads them all. The names here are a
public interface: keep them stable.

Columns (names usable in SQL as they are):
  id               string       the FASTA id
  length           int32        residues embedded (after truncation)
  sequence_length  int32        residues in the record
  truncated        bool         length < sequence_length: residues were dropped (`--long truncate`)
  windows          int32        forward passes the record was embedded in: 1, or the number of overlapping
                                windows of a record longer than the model's context (`--long window`)
  input_index      int64        the record's position in the input (rows are in computed order; readers sort)
  sequence_sha256  string       sha256 of the record's sequence (what a resumed run compares); null if unknown
  mean_<layer>     fixed_size_list<float32>[D]                 mean over residues
  bos_<layer>      fixed_size_list<float32>[D]                 the <cls> position
  per_tok_<layer>  list<fixed_size_list<float32>[D]>           one D-vector per residue (length of them)
  contacts         list<float32>                               length*length contact map, row-major
<layer> is the absolute hidden-state index (0 = embedding output, N = last of N layers). The schema's metadata
key `tf_esm_embed` holds the run's settings as JSON (what a resumed run must match).

No TensorFlow here: pyarrow and numpy only, imported when first used.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time

from tf_esm.storage.atomic import PARTIAL_SUFFIX, fsync_file, remove_stale_partials, replace_durably
from tf_esm.io.embedding_stores import EmbeddingStoreError, check_settings, next_input_index, stored_record

KINDS = ("mean", "per_tok", "bos", "contacts")
SETTINGS_KEY = "tf_esm_embed"
ROW_COLUMNS = ("id", "length", "sequence_length", "truncated", "windows", "input_index", "sequence_sha256")
BLOCK_ROWS = 1024  # rows buffered as Python dicts before they become one compact Arrow batch
SHARD_PATTERN = re.compile(r"^part-(\d{5,})\.parquet$")
# Where a result of `tf_esm.pipelines.inference.iter_embeddings` keeps each kind ({layer: array}).
RESULT_FIELDS = {"mean": "mean_representations", "per_tok": "representations", "bos": "bos_representations"}


def column_name(kind, layer=None):
    """The column of one kind and layer: `mean_6`, `per_tok_0`, `bos_33`, `contacts` (no layer)."""
    if kind == "contacts":
        return "contacts"
    if kind not in RESULT_FIELDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {list(KINDS)}")
    return f"{kind}_{int(layer)}"


def parse_column_name(name):
    """(kind, layer) of an embedding column, ('contacts', None), or None for the row columns (id, length, ...)."""
    if name == "contacts":
        return "contacts", None
    for kind in ("per_tok", "mean", "bos"):
        match = re.fullmatch(rf"{kind}_(\d+)", name)
        if match:
            return kind, int(match.group(1))
    return None


def embedding_schema(include, layers, dim, settings=None):
    """The `pyarrow.Schema` of an embedding table.

    Args:
        include: kinds stored, any of "mean", "per_tok", "bos", "contacts".
        layers: absolute layer indices stored for mean/per_tok/bos (ignored when only contacts are stored).
        dim: the model's hidden size D (the fixed list size of every vector).
        settings: optional dict saved as JSON under the schema metadata key `tf_esm_embed`.
    """
    import pyarrow as pa

    unknown = sorted(set(include) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown include entries {unknown}; choose from {list(KINDS)}")
    vector = pa.list_(pa.float32(), int(dim))
    fields = [pa.field("id", pa.string(), nullable=False), pa.field("length", pa.int32(), nullable=False),
              pa.field("sequence_length", pa.int32(), nullable=False),
              pa.field("truncated", pa.bool_(), nullable=False), pa.field("windows", pa.int32(), nullable=False),
              pa.field("input_index", pa.int64(), nullable=False), pa.field("sequence_sha256", pa.string())]
    for kind in ("mean", "bos", "per_tok"):
        if kind in include:
            for layer in sorted({int(layer) for layer in layers}):
                fields.append(pa.field(column_name(kind, layer),
                                       pa.list_(vector) if kind == "per_tok" else vector, nullable=False))
    if "contacts" in include:
        fields.append(pa.field("contacts", pa.list_(pa.float32()), nullable=False))
    metadata = None if settings is None else {SETTINGS_KEY: json.dumps(settings, sort_keys=True)}
    return pa.schema(fields, metadata=metadata)


def schema_settings(schema):
    """The settings dict stored in a schema's metadata, or None."""
    stored = (schema.metadata or {}).get(SETTINGS_KEY.encode())
    return None if stored is None else json.loads(stored)


def result_to_row(result, record_id, sequence_length, schema, input_index, sequence_sha256=None):
    """One `iter_embeddings` result as a dict with exactly `schema`'s columns (what `WriteToParquet` takes).

    `input_index` orders the record among the input's (readers sort by it); `sequence_sha256` is
    `tf_esm.io.embedding_stores.sequence_digest` of its sequence (None: not recorded).

    Vectors stay numpy float32 arrays (a per-token value is a list of per-residue vectors, as pyarrow converts
    a list column element by element). A missing layer or a wrong size is an error naming the record.
    """
    import numpy as np

    length = int(result["length"])
    row = {"id": str(record_id), "length": length, "sequence_length": int(sequence_length),
           "truncated": bool(result["truncated"]), "windows": int(result.get("windows", 1)),
           "input_index": int(input_index),
           "sequence_sha256": sequence_sha256}
    for field in schema:
        parsed = parse_column_name(field.name)
        if parsed is None:
            continue
        kind, layer = parsed
        if kind == "contacts":
            value = np.asarray(result.get("contacts"), dtype=np.float32)
            if value.shape != (length, length):
                raise ValueError(f"record {record_id!r}: contacts has shape {value.shape}, expected "
                                 f"({length}, {length})")
            row["contacts"] = value.reshape(-1)
            continue
        arrays = result.get(RESULT_FIELDS[kind], {})
        if layer not in arrays:
            raise ValueError(f"record {record_id!r}: no {kind} representation of layer {layer} (has "
                             f"{sorted(arrays)})")
        dim = (field.type.value_type if kind == "per_tok" else field.type).list_size
        value = np.asarray(arrays[layer], dtype=np.float32)
        expected = (length, dim) if kind == "per_tok" else (dim,)
        if value.shape != expected:
            raise ValueError(f"record {record_id!r}: {field.name} has shape {value.shape}, expected {expected}")
        row[field.name] = list(value) if kind == "per_tok" else value
    return row


def rows_to_table(rows, schema):
    """Rows of `result_to_row` as one `pyarrow.Table`, built column by column from stacked numpy arrays."""
    import numpy as np
    import pyarrow as pa

    columns = []
    for field in schema:
        values = [row[field.name] for row in rows]
        parsed = parse_column_name(field.name)
        if parsed is None:
            columns.append(pa.array(values, type=field.type))
            continue
        kind = parsed[0]
        if kind in ("mean", "bos"):
            flat = np.stack(values).reshape(-1) if values else np.zeros(0, np.float32)
            columns.append(pa.FixedSizeListArray.from_arrays(pa.array(flat), field.type.list_size))
            continue
        counts = [len(value) for value in values]
        offsets = np.zeros(len(values) + 1, dtype=np.int32)
        np.cumsum(counts, out=offsets[1:])
        if kind == "contacts":
            flat = pa.array(np.concatenate(values) if values else np.zeros(0, np.float32))
        else:
            dim = field.type.value_type.list_size
            flat = np.concatenate([np.reshape(value, (-1, dim)) for value in values]) if values else \
                np.zeros((0, dim), np.float32)
            flat = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim)
        columns.append(pa.ListArray.from_arrays(pa.array(offsets), flat))
    return pa.Table.from_arrays(columns, schema=schema)


def shard_name(number):
    return f"part-{number:05d}.parquet"


def shard_paths(directory):
    """The complete shards of a directory (`part-NNNNN.parquet`), in order; hidden temporary files excluded."""
    names = [name for name in os.listdir(directory) if SHARD_PATTERN.match(name)]
    return [os.path.join(directory, name) for name in sorted(names, key=lambda n: int(SHARD_PATTERN.match(n)[1]))]


ParquetStoreError = EmbeddingStoreError  # an output that cannot be resumed or written: an input error

def write_options(schema):
    """ParquetWriter options for an embedding table: zstd, no dictionaries, BYTE_STREAM_SPLIT on the float32
    values (their bytes grouped by significance, which is what makes float activations compress at all)."""
    import pyarrow as pa

    floats = []
    for field in schema:
        path, kind = field.name, field.type
        while pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind):
            path, kind = path + ".list.element", kind.value_type
        if pa.types.is_floating(kind):
            floats.append(path)
    return {"compression": "zstd", "use_dictionary": False, "use_byte_stream_split": floats}


class ParquetStore:
    """`tf-esm embed` into Parquet: a directory of shards, or one `.parquet` file.

    Directory: rows go into an open shard under a hidden temporary name, in row groups of `row_group_bytes` of
    Arrow data (small by Parquet's standards: the writer's memory grows with them); every `checkpoint_interval` seconds (and at `shard_bytes`, and at `commit()`) the shard
    is closed, fsynced and renamed `part-NNNNN.parquet`. A kill loses at most the open shard; a rerun skips the
    ids of every complete shard. One file: the shards go to a hidden sibling directory `.NAME.parts/`, and
    `commit()` writes the old file's row groups and those shards into a new NAME (temporary file, fsync,
    rename) and removes the directory; after a kill the next run finds both and carries on.
    """

    def __init__(self, path, settings, overwrite, checkpoint_interval, include, layers, dim,
                 row_group_bytes=4 << 20, shard_bytes=1 << 30, single_file=None):
        import pyarrow.parquet as pq

        self.pq = pq
        self.path = os.path.abspath(path)
        if single_file is None:
            single_file = path.lower().endswith(".parquet") and not os.path.isdir(path)
        self.single_file = single_file
        self.schema = embedding_schema(include, layers, dim, settings)
        self.options = write_options(self.schema)
        self.settings = settings
        self.checkpoint_interval = checkpoint_interval
        self.row_group_bytes, self.shard_bytes = row_group_bytes, shard_bytes
        parent, name = os.path.split(self.path)
        if self.single_file:
            if os.path.isdir(self.path):
                raise ParquetStoreError(f"OUTPUT {path} is a directory; a .parquet OUTPUT must be a file.")
            self.directory = os.path.join(parent, f".{name}.parts")
        else:
            if os.path.exists(self.path) and not os.path.isdir(self.path):
                raise ParquetStoreError(f"OUTPUT {path} exists and is not a directory.")
            self.directory = self.path
        os.makedirs(self.directory, exist_ok=True)
        remove_stale_partials(self.directory)
        self.done = {}
        if overwrite:
            for shard in shard_paths(self.directory):
                os.remove(shard)
            self.keep_file = False
        else:
            self._check_existing(path)
            self.keep_file = self.single_file and os.path.exists(self.path)
        shards = shard_paths(self.directory)
        self.next_shard = int(SHARD_PATTERN.match(os.path.basename(shards[-1]))[1]) + 1 if shards else 0
        self.rows, self.batches, self.batch_bytes = [], [], 0
        self.writer = self.shard_rows = self.shard_written = None
        self.saved = len(self.done)
        self.next_index = next_input_index(self.done)
        self.last_checkpoint = time.monotonic()

    def _sources(self):
        return ([self.path] if self.single_file and os.path.exists(self.path) else []) + shard_paths(self.directory)

    def _check_existing(self, path):
        if not self.single_file:
            foreign = [name for name in os.listdir(self.directory)
                       if not SHARD_PATTERN.match(name) and not name.startswith(".")]
            if foreign:
                raise ParquetStoreError(f"OUTPUT directory {path} holds files other than part-NNNNN.parquet shards "
                                        f"({foreign[0]!r}); choose another OUTPUT or pass --overwrite.")
        for source in self._sources():
            try:
                schema = self.pq.read_schema(source)
            except Exception:  # pyarrow raises several kinds for a damaged or foreign file
                raise ParquetStoreError(f"{source} is not a readable Parquet file; choose another OUTPUT or pass "
                                        "--overwrite.") from None
            stored = schema_settings(schema)
            if stored is None:
                raise ParquetStoreError(f"OUTPUT {source} exists but was not written by 'tf-esm embed'; choose "
                                        "another OUTPUT or pass --overwrite.")
            check_settings(path, stored, self.settings)
            columns = [name for name in ("id", "input_index", "sequence_sha256") if name in schema.names]
            table = self.pq.read_table(source, columns=columns)
            ids = table.column("id").to_pylist()
            if self.single_file and source != self.path and not self.done.keys().isdisjoint(ids):
                os.remove(source)  # merged into the file by a run killed before it removed the shard
                continue
            unknown = [None] * len(ids)
            indices = table.column("input_index").to_pylist() if "input_index" in columns else unknown
            digests = table.column("sequence_sha256").to_pylist() if "sequence_sha256" in columns else unknown
            self.done.update((record_id, stored_record(index, digest))
                             for record_id, index, digest in zip(ids, indices, digests))

    def add(self, record_id, sequence_length, result, input_index=None, sequence_sha256=None):
        """Buffer one record; `input_index` is its FASTA position (default: after every record added so far)."""
        input_index = self.next_index if input_index is None else int(input_index)
        self.next_index = max(self.next_index, input_index + 1)
        self.rows.append(result_to_row(result, record_id, sequence_length, self.schema, input_index,
                                       sequence_sha256))
        if len(self.rows) >= BLOCK_ROWS:
            self._convert()
        if time.monotonic() - self.last_checkpoint >= self.checkpoint_interval:
            self.checkpoint()

    def _convert(self):
        """Buffered row dicts into one Arrow batch (compact); a full row group goes to the open shard."""
        if self.rows:
            batch = rows_to_table(self.rows, self.schema)
            self.rows = []
            self.batches.append(batch)
            self.batch_bytes += batch.nbytes
        if self.batch_bytes >= self.row_group_bytes:
            self._write_row_group()

    def _write_row_group(self):
        if not self.batches:
            return
        import pyarrow as pa

        if self.writer is None:
            self.shard_rows = 0
            self.shard_written = 0
            self.writer = self.pq.ParquetWriter(self._partial(), self.schema, **self.options)
        table = pa.concat_tables(self.batches)
        self.writer.write_table(table, row_group_size=max(1, table.num_rows))
        self.shard_rows += table.num_rows
        self.shard_written += self.batch_bytes
        self.batches, self.batch_bytes = [], 0
        pa.default_memory_pool().release_unused()  # else the encoder's buffers stay with the allocator
        if self.shard_written >= self.shard_bytes:
            self._close_shard()

    def _partial(self):
        return os.path.join(self.directory, f".{shard_name(self.next_shard)}{PARTIAL_SUFFIX}")

    def _close_shard(self):
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        replace_durably(self._partial(), os.path.join(self.directory, shard_name(self.next_shard)))
        _fsync_directory(self.directory)
        self.next_shard += 1
        self.saved += self.shard_rows

    def checkpoint(self):
        """Close the open shard with every row added so far: they are durable."""
        self._convert()
        self._write_row_group()
        self._close_shard()
        self.last_checkpoint = time.monotonic()

    def commit(self, reopen=False):
        """Save every row added so far; for a single-file OUTPUT, merge the shards into it."""
        self.checkpoint()
        if not self.single_file or reopen:
            return
        sources = ([self.path] if self.keep_file else []) + shard_paths(self.directory)
        if sources and shard_paths(self.directory):
            temporary = os.path.join(os.path.dirname(self.path), f".{os.path.basename(self.path)}{PARTIAL_SUFFIX}")
            try:
                with self.pq.ParquetWriter(temporary, self.schema, **self.options) as writer:
                    for source in sources:
                        handle = self.pq.ParquetFile(source)
                        for group in range(handle.num_row_groups):
                            table = handle.read_row_group(group).replace_schema_metadata(self.schema.metadata)
                            writer.write_table(table, row_group_size=max(1, table.num_rows))
                replace_durably(temporary, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.remove(temporary)
                raise
            self.keep_file = True
            for shard in shard_paths(self.directory):
                os.remove(shard)
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)

    def discard(self):
        """After a failure: drop the rows not yet in a complete shard (complete shards stay for a rerun)."""
        self.rows, self.batches, self.batch_bytes = [], [], 0
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
            self.writer = None
            with contextlib.suppress(OSError):
                os.remove(self._partial())
        if self.single_file:
            with contextlib.suppress(OSError):
                os.rmdir(self.directory)


def _fsync_directory(directory):
    """Make a rename in `directory` durable (the new name reaches the disk)."""
    with contextlib.suppress(OSError):
        fsync_file(directory)
