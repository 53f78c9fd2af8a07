"""Crash-safe file writing: write to a temporary name in the target's directory, then rename into place.

The one writing policy of tf_esm (library, CLI and embedding stores): the temporary file is flushed to disk
(fsync) before the rename, so after a crash the target holds either its previous content or the complete new
one, never a renamed file whose data had not reached the disk. An interrupted writer (exception, Ctrl-C, kill)
leaves the previous file untouched; a rename within one directory is atomic on POSIX file systems.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


PARTIAL_SUFFIX = ".partial"


def fsync_file(path):
    """Flush a written file's data to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def replace_durably(tmp_path, path):
    """Move a finished temporary file onto `path`: its data reaches the disk before the rename makes it visible."""
    fsync_file(tmp_path)
    os.replace(tmp_path, path)


def _temporary_file(directory, name, suffix=""):
    """A hidden `.NAME.XXXX.partial` file with the mode a plain `open()` would give (mkstemp makes it private)."""
    fd, tmp_path = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix + PARTIAL_SUFFIX, dir=directory)
    os.close(fd)
    os.chmod(tmp_path, 0o666 & ~_umask())
    return tmp_path


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path next to `path`; on success it replaces `path`, on failure it is removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp_path = _temporary_file(directory, os.path.basename(path), suffix)
    try:
        yield tmp_path
        replace_durably(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def write_text_atomic(path, text):
    """Write `text` (UTF-8) to `path` through a temporary file and a rename."""
    with atomic_path(path) as tmp_path:
        with open(tmp_path, "w", encoding="utf-8") as handle:
            handle.write(text)


def write_atomic(path, write):
    """Call `write(handle)` on a binary file that replaces `path` only once it is complete."""
    with atomic_path(path) as tmp_path:
        with open(tmp_path, "wb") as handle:
            write(handle)


def remove_stale_partials(directory):
    """Temporary files that a killed writer left behind in `directory` (hidden names ending in `.partial`)."""
    for name in os.listdir(directory):
        if name.startswith(".") and name.endswith(PARTIAL_SUFFIX):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(directory, name))


class StagedFiles:
    """Write several files of one directory, then rename them all into place at the end (or none on failure).

    Example:
        with StagedFiles(directory) as staged:
            write_config(staged.path("config.json"))
            write_weights(staged.path("tf_esm_model.h5"))
    """

    def __init__(self, directory):
        self.directory = os.fspath(directory)
        self._staged = {}

    def __enter__(self):
        os.makedirs(self.directory, exist_ok=True)
        return self

    def path(self, name):
        tmp_path = _temporary_file(self.directory, name)
        self._staged[name] = tmp_path
        return tmp_path

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            for name, tmp_path in self._staged.items():
                replace_durably(tmp_path, os.path.join(self.directory, name))
        else:
            for tmp_path in self._staged.values():
                if os.path.exists(tmp_path):
                    os.remove(tmp_path)
        return False


def is_empty_target(path):
    """True when `path` does not exist or is an empty directory (a writer may fill it without asking)."""
    return not os.path.lexists(path) or (os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path))


def check_target(path, overwrite):
    """Refuse to replace an existing non-empty output unless `overwrite`."""
    if not overwrite and not is_empty_target(path):
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True (--overwrite) to replace it.")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_tree(directory):
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                fsync_file(path)


@contextlib.contextmanager
def atomic_directory(path, overwrite=False):
    """Yield a staging directory next to `path`; on success it replaces `path` in one rename.

    A non-empty existing `path` is replaced only with `overwrite` (checked before and after the work); on any
    failure the staging directory is removed and `path` is left as it was.
    """
    import shutil

    path = os.path.abspath(os.fspath(path))
    check_target(path, overwrite)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.partial-", dir=parent)
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; give it a normal directory's mode
        _fsync_tree(staging)
        check_target(path, overwrite)
        if is_empty_target(path):
            if os.path.isdir(path):
                os.rmdir(path)
            os.rename(staging, path)
            return
        retired = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
        os.rmdir(retired)
        os.rename(path, retired)
        try:
            os.rename(staging, path)
        except BaseException:
            os.rename(retired, path)
            raise
        if os.path.isdir(retired) and not os.path.islink(retired):
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.remove(retired)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
