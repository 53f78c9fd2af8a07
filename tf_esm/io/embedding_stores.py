"""Where `tf-esm embed` puts its results: one HDF5 file, or a directory of `.npz` files.

Both stores resume: a store opened on an existing output reports the records it already holds (`done`), and
refuses to continue one written with other settings. Both write through `tf_esm.atomic`'s policy, so a killed
run leaves complete records only. The file layouts are documented in `tf-esm embed --help`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time

from tf_esm.io.atomic import PARTIAL_SUFFIX, remove_stale_partials, replace_durably, write_atomic

# What an embedding run can store per record (`tf-esm embed --include`, `tf_esm.inference.iter_embeddings`).
INCLUDE_CHOICES = ("mean", "per_tok", "bos", "contacts")
HDF5_SUFFIXES = (".h5", ".hdf5")
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


class Hdf5Store:
    """Embeddings in one HDF5 file, built in a hidden copy that replaces OUTPUT at checkpoints.

    The copy (`.NAME.partial`) holds the old records plus the new ones; every `checkpoint_interval` seconds and at
    `commit()` it replaces OUTPUT by a durable rename, so a killed run loses at most one interval's work.
    """

    def __init__(self, path, settings, overwrite, checkpoint_interval):
        import h5py

        self.h5py = h5py
        self.path = os.path.abspath(path)
        directory, name = os.path.split(self.path)
        self.partial = os.path.join(directory, f".{name}{PARTIAL_SUFFIX}")
        self.checkpoint_interval = checkpoint_interval
        if os.path.isdir(self.path):
            raise EmbeddingStoreError(f"OUTPUT {path} is a directory; an .h5/.hdf5 OUTPUT must be a file.")
        os.makedirs(directory, exist_ok=True)
        self.done = set()
        if os.path.exists(self.path) and not overwrite:
            self.done = self._existing_records(path, settings)
            shutil.copyfile(self.path, self.partial)
            self.file = h5py.File(self.partial, "a")
        else:
            self.file = h5py.File(self.partial, "w")
            self.file.attrs[SETTINGS_ATTRIBUTE] = json.dumps(settings, sort_keys=True)
        self.pending = 0
        self.saved = len(self.done)
        self.last_commit = time.monotonic()

    def _existing_records(self, path, settings):
        try:
            with self.h5py.File(self.path, "r") as existing:
                stored = existing.attrs.get(SETTINGS_ATTRIBUTE)
                ids = {group.attrs["id"] for group in existing.values() if "id" in group.attrs}
        except OSError:
            raise EmbeddingStoreError(f"OUTPUT {path} exists and is not an HDF5 file; choose another OUTPUT or "
                                      "pass --overwrite.") from None
        if stored is None:
            raise EmbeddingStoreError(f"OUTPUT {path} exists but was not written by 'tf-esm embed'; choose another "
                                      "OUTPUT or pass --overwrite.")
        check_settings(path, json.loads(stored), settings)
        return ids

    def add(self, record_id, sequence_length, result):
        key = record_key(record_id)
        if key in self.file:  # --overwrite of a record carried over in the copy
            del self.file[key]
        group = self.file.create_group(key)
        try:
            length = int(result["length"])
            for kind, arrays in result_arrays(result):
                dataset = group.create_dataset(kind if kind == "contacts" else f"{kind}/{arrays[0]}",
                                               data=arrays[1])
                dataset.attrs["length"] = length
                if kind != "contacts":
                    dataset.attrs["layer"] = arrays[0]
            group.attrs["length"] = length
            group.attrs["sequence_length"] = int(sequence_length)
            group.attrs["truncated"] = bool(result["truncated"])
            group.attrs["id"] = record_id  # written last: marks the record complete
        except BaseException:
            del self.file[key]
            raise
        self.pending += 1
        if time.monotonic() - self.last_commit >= self.checkpoint_interval:
            self.commit(reopen=True)

    def commit(self, reopen=False):
        """Atomically replace OUTPUT with everything written so far."""
        if self.file is None:
            return
        self.file.close()
        self.file = None
        replace_durably(self.partial, self.path)
        self.saved += self.pending
        self.pending = 0
        self.last_commit = time.monotonic()
        if reopen:
            shutil.copyfile(self.path, self.partial)
            self.file = self.h5py.File(self.partial, "a")

    def discard(self):
        if self.file is not None:
            with contextlib.suppress(Exception):
                self.file.close()
            self.file = None
        with contextlib.suppress(OSError):
            os.remove(self.partial)


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
