"""What the stores of `tf-esm embed` share, and the directory-of-`.npz` store.

The stores (`NpzStore` here, `tf_esm.io.hdf5_store.Hdf5Store`, `tf_esm.io.parquet_store.ParquetStore`) all
resume: a store opened on an existing output reports the records it already holds (`done`: id -> `StoredRecord`,
the record's FASTA position and sequence digest), and refuses to continue one written with other settings;
`check_resume` refuses a FASTA whose records disagree with those (so no stored vector is ever stale). Records are
written in the order they are computed (longest first) with their FASTA position (`input_index`), and
`tf_esm.io.read_embeddings` returns them sorted by it: in FASTA order, as `embed_sequences` returns them. All
write through `tf_esm.storage.atomic`'s policy, so a killed run leaves complete records only. The file layouts are
documented in `tf-esm embed --help` and README.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os

from tf_esm.storage.atomic import remove_stale_partials, write_atomic

# What an embedding run can store per record (`tf-esm embed --include`, `tf_esm.pipelines.inference.iter_embeddings`).
INCLUDE_CHOICES = ("mean", "per_tok", "bos", "contacts")
HDF5_SUFFIXES = (".h5", ".hdf5")
PARQUET_SUFFIX = ".parquet"
EMBED_SETTINGS_FILE = "tf_esm_embed.json"
SETTINGS_ATTRIBUTE = "tf_esm_embed"


class EmbeddingStoreError(ValueError):
    """An output that cannot be resumed or written (wrong kind of file, other settings): an input error."""


# What a store knows of a record it holds: its position in the input FASTA and the sha256 of its sequence (None
# for an output written before tf-esm recorded them).
StoredRecord = collections.namedtuple("StoredRecord", ["input_index", "sequence_sha256"])


def sequence_digest(sequence):
    """The sha256 (hex) of a record's sequence as read from the FASTA (before any truncation)."""
    return hashlib.sha256(sequence.encode("utf-8")).hexdigest()


def _named(ids, limit=3):
    shown = ", ".join(repr(record_id) for record_id in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def check_resume(path, done, records):
    """Refuse to resume OUTPUT `path` (holding `done`) with `records` unless each stored record is the FASTA's.

    A stored record must be in the FASTA, at the same position, with the same sequence: a changed sequence would
    leave a stale vector, a record missing from the FASTA (another file) would be mixed into this one's output,
    and a moved record would come back out of FASTA order. New records may only be appended to the FASTA.
    """
    fix = "choose another OUTPUT or pass --overwrite to start over."
    unknown = [record_id for record_id, stored in done.items() if None in stored]
    if unknown:
        raise EmbeddingStoreError(
            f"OUTPUT {path} was written by an older tf-esm that did not record each record's sequence and FASTA "
            f"position ({_named(sorted(unknown))}), so it cannot be resumed safely; {fix}")
    positions = {record.id: (index, record.sequence) for index, record in enumerate(records)}
    missing = sorted(record_id for record_id in done if record_id not in positions)
    if missing:
        raise EmbeddingStoreError(
            f"OUTPUT {path} holds {len(missing)} record(s) that are not in this FASTA ({_named(missing)}): it was "
            f"written from another FASTA; {fix}")
    changed = sorted(record_id for record_id, stored in done.items()
                     if stored.sequence_sha256 != sequence_digest(positions[record_id][1]))
    if changed:
        raise EmbeddingStoreError(
            f"OUTPUT {path}: the sequence of {len(changed)} record(s) in this FASTA differs from the one embedded "
            f"({_named(changed)}), so their stored vectors are stale; {fix}")
    moved = sorted((record_id for record_id, stored in done.items()
                    if stored.input_index != positions[record_id][0]), key=lambda i: positions[i][0])
    if moved:
        first = moved[0]
        raise EmbeddingStoreError(
            f"OUTPUT {path}: record {first!r} is record {positions[first][0] + 1} of this FASTA but was record "
            f"{done[first].input_index + 1} when it was embedded ({len(moved)} moved); resume with the FASTA of "
            f"the first run (new records may be appended at its end), or {fix}")


def record_key(record_id):
    """A FASTA id as a file or HDF5 group name: `%` -> `%25`, `/` -> `%2F`, a leading `.` -> `%2E`."""
    key = record_id.replace("%", "%25").replace("/", "%2F")
    return "%2E" + key[1:] if key.startswith(".") else key


def record_id_from_key(key):
    """The inverse of `record_key`."""
    from urllib.parse import unquote

    return unquote(key)


def result_arrays(result):
    """(kind, (layer, array)) for every array of an `iter_embeddings` result; kinds named as `INCLUDE_CHOICES`."""
    import numpy as np

    for kind, field in (("mean", "mean_representations"), ("per_tok", "representations"),
                        ("bos", "bos_representations")):
        for layer, array in sorted(result.get(field, {}).items()):
            yield kind, (int(layer), np.asarray(array, dtype=np.float32))
    if "contacts" in result:
        yield "contacts", (None, np.asarray(result["contacts"], dtype=np.float32))


# Settings added after outputs were first written: what a file without them was computed with.
SETTING_DEFAULTS = {"precision": "float32"}


def check_settings(path, stored, settings):
    stored = {**SETTING_DEFAULTS, **stored}
    unrecorded = sorted(key for key in settings if key not in stored)
    if unrecorded:
        raise EmbeddingStoreError(
            f"OUTPUT {path} was written by an older tf-esm that did not record {', '.join(unrecorded)}, so it "
            "cannot be resumed safely; choose another OUTPUT or pass --overwrite to start over.")
    different = [f"{key}: {stored.get(key)!r} then, {value!r} now" for key, value in settings.items()
                 if stored.get(key) != value]
    if different:
        raise EmbeddingStoreError(
            f"OUTPUT {path} was written with other settings ({'; '.join(different)}); resume with the same "
            "options, choose another OUTPUT, or pass --overwrite.")


def next_input_index(done):
    """The position a record added without one gets: after every stored record (the order they were added)."""
    return 1 + max((stored.input_index for stored in done.values() if stored.input_index is not None), default=-1)


def stored_record(input_index, sequence_sha256):
    """A `StoredRecord` from stored values: a negative index or an empty digest means not recorded."""
    input_index = None if input_index is None or int(input_index) < 0 else int(input_index)
    return StoredRecord(input_index, str(sequence_sha256) if sequence_sha256 else None)


def _stored_npz(path):
    import numpy as np

    with np.load(path) as arrays:
        return stored_record(arrays["input_index"] if "input_index" in arrays.files else None,
                             arrays["sequence_sha256"] if "sequence_sha256" in arrays.files else None)


class NpzStore:
    """Embeddings as one `<id>.npz` per record in an existing directory, each written atomically."""

    def __init__(self, path, settings, overwrite):
        self.path = path
        settings_path = os.path.join(path, EMBED_SETTINGS_FILE)
        remove_stale_partials(path)
        names = os.listdir(path)
        if os.path.exists(settings_path) and not overwrite:
            with open(settings_path, encoding="utf-8") as handle:
                try:
                    stored = json.load(handle)
                except ValueError:
                    raise EmbeddingStoreError(f"{settings_path} is not valid JSON; pass --overwrite to start "
                                              "over.") from None
            check_settings(path, stored, settings)
        elif names and not overwrite:
            raise EmbeddingStoreError(f"OUTPUT directory {path} is not empty and was not written by 'tf-esm embed'; "
                                      "choose another OUTPUT or pass --overwrite.")
        else:
            text = json.dumps(settings, indent=2, sort_keys=True) + "\n"
            write_atomic(settings_path, lambda handle: handle.write(text.encode("utf-8")))
        self.done = {} if overwrite else {
            record_id_from_key(name[:-4]): _stored_npz(os.path.join(path, name))
            for name in names if name.endswith(".npz") and not name.startswith(".")}
        self.saved = len(self.done)
        self.next_index = next_input_index(self.done)

    def add(self, record_id, sequence_length, result, input_index=None, sequence_sha256=None):
        import numpy as np

        input_index = self.next_index if input_index is None else int(input_index)
        self.next_index = max(self.next_index, input_index + 1)
        arrays = {"id": np.asarray(record_id), "length": np.asarray(int(result["length"])),
                  "sequence_length": np.asarray(int(sequence_length)),
                  "truncated": np.asarray(bool(result["truncated"])),
                  "windows": np.asarray(int(result.get("windows", 1)), dtype=np.int32),
                  "input_index": np.asarray(input_index),
                  "sequence_sha256": np.asarray(sequence_sha256 or "")}
        for kind, (layer, array) in result_arrays(result):
            arrays[kind if kind == "contacts" else f"{kind}_{layer}"] = array
        write_atomic(os.path.join(self.path, record_key(record_id) + ".npz"),
                     lambda handle: np.savez(handle, **arrays))
        self.saved += 1

    def commit(self, reopen=False):
        pass

    def discard(self):
        pass
