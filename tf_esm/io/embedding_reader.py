"""One reader for every output of `tf-esm embed`: `read_embeddings(path, kind, layer) -> (ids, values)`.

It reads the columnar `.h5` (and the per-record `.h5` of earlier versions), a `.parquet` file, a directory of
Parquet shards (`part-NNNNN.parquet`, as `tf-esm embed --format parquet` or a Beam pipeline writes them) and a
directory of `.npz` files. No TensorFlow: numpy, and h5py or pyarrow when the file needs them.

Records come back in input (FASTA) order, as `tf_esm.pipelines.inference.embed_sequences` returns them: the
stores write them as they are computed (longest first) with each record's input position, and the reader sorts
by it. Outputs of tf-esm versions that did not record positions come back in stored order.

Example:
    from tf_esm.io import read_embeddings
    ids, means = read_embeddings("embeddings.h5")                    # (N, D) float32, last stored layer
    ids, per_residue = read_embeddings("embeddings/", "per_tok", 0)  # list of (length_i, D) arrays
"""

from __future__ import annotations

import os

KINDS = ("mean", "bos", "per_tok", "contacts")


class EmbeddingReadError(ValueError):
    """A path that holds no embeddings, or not the kind or layer asked for."""


def read_embeddings(path, kind="mean", layer=-1):
    """The ids and one kind of array of an embedding output, in input (FASTA) order.

    Args:
        path: an `.h5`/`.hdf5` file, a `.parquet` file, or a directory of Parquet shards or `.npz` files.
        kind: "mean" or "bos" (one (N, D) float32 matrix), "per_tok" (a list of (length, D) arrays) or
            "contacts" (a list of (length, length) arrays).
        layer: an absolute layer index as stored (0 = embedding output), or negative to count from the end of
            the stored layers (-1, the default, is the last stored layer). Ignored for contacts.

    Returns:
        `(ids, values)`: a list of the records' ids and the matrix or list described above.
    """
    if kind not in KINDS:
        raise EmbeddingReadError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    path = os.fspath(path)
    if os.path.isdir(path):
        names = os.listdir(path)
        if any(name.startswith("part-") and name.endswith(".parquet") for name in names):
            return _read_parquet(path, kind, layer)
        if any(name.endswith(".npz") and not name.startswith(".") for name in names):
            return _read_npz_directory(path, kind, layer)
        raise EmbeddingReadError(f"{path}: a directory without part-NNNNN.parquet shards or .npz files")
    if not os.path.exists(path):
        raise EmbeddingReadError(f"{path}: no such file or directory")
    if path.lower().endswith(".parquet"):
        return _read_parquet(path, kind, layer)
    return _read_hdf5(path, kind, layer)


def _pick_layer(path, kind, layer, stored, available):
    """The absolute layer to read; `available` (the stored arrays' names) goes into the error when there is none."""
    stored = sorted(stored)
    has = ", ".join(available) or "nothing"
    if kind == "contacts":
        if not stored:
            raise EmbeddingReadError(f"{path} holds no contacts (it has {has})")
        return None
    if not stored:
        raise EmbeddingReadError(f"{path} holds no {kind} representations (it has {has})")
    if layer < 0:
        if -layer > len(stored):
            raise EmbeddingReadError(f"{path}: layer {layer} of {kind}, but only layers {stored} are stored")
        return stored[layer]
    if layer not in stored:
        raise EmbeddingReadError(f"{path}: layer {layer} of {kind} is not stored; stored layers: {stored}")
    return layer


def _read_hdf5(path, kind, layer):
    import h5py
    import numpy as np

    from tf_esm.io.hdf5_store import LAYOUT, LAYOUT_ATTRIBUTE

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise EmbeddingReadError(f"{path}: not a readable HDF5 file ({error})") from None
    with handle:
        if handle.attrs.get(LAYOUT_ATTRIBUTE) != LAYOUT:
            return _read_hdf5_groups(path, handle, kind, layer)
        ids = list(handle["ids"].asstr()[()])
        order = handle["input_indices"][()] if "input_indices" in handle else None
        available = list(_columns(handle))
        if kind == "contacts":
            _pick_layer(path, kind, layer, [0] if "contacts" in handle else [], available)
            flat, offsets = handle["contacts"][()], handle["contacts_offsets"][()]
            return _in_input_order(order, ids, [flat[a:b].reshape(int(round((b - a) ** 0.5)), -1)
                                                for a, b in zip(offsets[:-1], offsets[1:])])
        stored = [int(name) for name in handle[kind]] if kind in handle else []
        chosen = _pick_layer(path, kind, layer, stored, available)
        values = handle[f"{kind}/{chosen}"][()]
        if kind == "per_tok":
            offsets = handle["per_tok_offsets"][()]
            return _in_input_order(order, ids, np.split(values, offsets[1:-1]))
        return _in_input_order(order, ids, values)


def _in_input_order(input_indices, ids, values):
    """`ids` and `values` (a matrix or a list) sorted by the records' input positions (None: as they are)."""
    import numpy as np

    if input_indices is None:
        return ids, values
    order = np.argsort(np.asarray(input_indices), kind="stable")
    values = values[order] if isinstance(values, np.ndarray) else [values[i] for i in order]
    return [ids[i] for i in order], values


def _columns(handle):
    for kind in ("mean", "bos", "per_tok"):
        if kind in handle:
            yield from (f"{kind}/{layer}" for layer in handle[kind])
    if "contacts" in handle:
        yield "contacts"


def _read_hdf5_groups(path, handle, kind, layer):
    """The per-record layout of earlier versions: one group per record with datasets <kind>/<layer>, contacts."""
    import numpy as np

    groups = [group for group in handle.values() if "id" in getattr(group, "attrs", {})]
    if not groups:
        raise EmbeddingReadError(f"{path}: not an output of 'tf-esm embed' (no columnar datasets, no record groups)")
    first = groups[0]
    available = list(_columns(first))
    if kind == "contacts":
        _pick_layer(path, kind, layer, [0] if "contacts" in first else [], available)
        return [group.attrs["id"] for group in groups], [group["contacts"][()] for group in groups]
    chosen = _pick_layer(path, kind, layer, [int(name) for name in first[kind]] if kind in first else [],
                         available)
    values = [group[f"{kind}/{chosen}"][()] for group in groups]
    return [group.attrs["id"] for group in groups], values if kind == "per_tok" else np.stack(values)


def _read_parquet(path, kind, layer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tf_esm.io.parquet_store import column_name, parse_column_name, shard_paths

    files = shard_paths(path) if os.path.isdir(path) else [path]
    try:
        schema = pq.read_schema(files[0])
    except Exception as error:  # pyarrow raises several kinds for a damaged or foreign file
        raise EmbeddingReadError(f"{files[0]}: not a readable Parquet file ({error})") from None
    parsed = [parse_column_name(name) for name in schema.names]
    available = [name for name, item in zip(schema.names, parsed) if item is not None]
    stored = [item[1] for item in parsed if item is not None and item[0] == kind]
    if kind == "contacts":
        stored = [0] if ("contacts", None) in parsed else []
    chosen = _pick_layer(path, kind, layer, stored, available)
    column = column_name(kind, chosen)
    row_columns = ["id"] + (["input_index"] if "input_index" in schema.names else [])
    table = pa.concat_tables([pq.read_table(file, columns=row_columns + [column]) for file in files])
    ids = table.column("id").to_pylist()
    order = table.column("input_index").to_numpy() if "input_index" in row_columns else None
    values = table.column(column).combine_chunks()
    if kind in ("mean", "bos"):
        dim = values.type.list_size
        return _in_input_order(order, ids, values.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim))
    offsets = values.offsets.to_numpy()
    flat = values.flatten()
    if kind == "per_tok":
        dim = flat.type.list_size
        flat = flat.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        return _in_input_order(order, ids, [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])])
    flat = flat.to_numpy(zero_copy_only=False)
    return _in_input_order(order, ids, [flat[a:b].reshape(int(round((b - a) ** 0.5)), -1)
                                        for a, b in zip(offsets[:-1], offsets[1:])])


def _read_npz_directory(path, kind, layer):
    import numpy as np

    names = sorted(name for name in os.listdir(path) if name.endswith(".npz") and not name.startswith("."))
    ids, values, indices, stored = [], [], [], None
    for name in names:
        with np.load(os.path.join(path, name)) as arrays:
            if stored is None:
                available = [key for key in arrays.files if key.startswith(("mean_", "bos_", "per_tok_"))
                                    or key == "contacts"]
                prefix = f"{kind}_"
                stored = [0] if kind == "contacts" and "contacts" in arrays.files else [
                    int(key[len(prefix):]) for key in arrays.files
                    if key.startswith(prefix) and key[len(prefix):].isdigit()]
                chosen = _pick_layer(path, kind, layer, stored, available)
                key = "contacts" if kind == "contacts" else f"{kind}_{chosen}"
            ids.append(str(arrays["id"]))
            values.append(arrays[key])
            indices.append(int(arrays["input_index"]) if "input_index" in arrays.files else None)
    order = None if None in indices else indices
    return _in_input_order(order, ids, values if kind in ("per_tok", "contacts") else np.stack(values))
