"""What the stores of `tf-esm embed` share, and the directory-of-`.npz` store.

The stores (`NpzStore` here, `tf_esm.io.hdf5_store.Hdf5Store`, `tf_esm.io.parquet_store.ParquetStore`) all
resume: a store opened on an existing output reports the records it already holds (`done`), and refuses to
continue one written with other settings. All write through `tf_esm.atomic`'s policy, so a killed run leaves
complete records only. The file layouts are documented in `tf-esm embed --help` and README.
"""

from __future__ import annotations

import json
import os

from tf_esm.io.atomic import remove_stale_partials, write_atomic

# What an embedding run can store per record (`tf-esm embed --include`, `tf_esm.inference.iter_embeddings`).
INCLUDE_CHOICES = ("mean", "per_tok", "bos", "contacts")
HDF5_SUFFIXES = (".h5", ".hdf5")
PARQUET_SUFFIX = ".parquet"
EMBED_SETTINGS_FILE = "tf_esm_embed.json"
SETTINGS_ATTRIBUTE = "tf_esm_embed"


class EmbeddingStoreError(ValueError):
    """An output that cannot be resumed or written (wrong kind of file, other settings): an input error."""


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
    different = [f"{key}: {stored.get(key)!r} then, {value!r} now" for key, value in settings.items()
                 if stored.get(key) != value]
    if different:
        raise EmbeddingStoreError(
            f"OUTPUT {path} was written with other settings ({'; '.join(different)}); resume with the same "
            "options, choose another OUTPUT, or pass --overwrite.")


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
        self.done = set() if overwrite else {
            record_id_from_key(name[:-4]) for name in names if name.endswith(".npz") and not name.startswith(".")}
        self.saved = len(self.done)

    def add(self, record_id, sequence_length, result):
        import numpy as np

        arrays = {"id": np.asarray(record_id), "length": np.asarray(int(result["length"])),
                  "sequence_length": np.asarray(int(sequence_length)),
                  "truncated": np.asarray(bool(result["truncated"]))}
        for kind, (layer, array) in result_arrays(result):
            arrays[kind if kind == "contacts" else f"{kind}_{layer}"] = array
        write_atomic(os.path.join(self.path, record_key(record_id) + ".npz"),
                     lambda handle: np.savez(handle, **arrays))
        self.saved += 1

    def commit(self, reopen=False):
        pass

    def discard(self):
        pass
