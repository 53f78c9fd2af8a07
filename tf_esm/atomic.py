"""Crash-safe file writing: write to a temporary name in the target's directory, then rename into place.

An interrupted writer (exception, Ctrl-C, kill) leaves the previous file untouched; a rename within one
directory is atomic on POSIX file systems.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path next to `path`; on success it replaces `path`, on failure it is removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix + ".partial", dir=directory)
    os.close(fd)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def write_text_atomic(path, text):
    """Write `text` (UTF-8) to `path` through a temporary file and a rename."""
    with atomic_path(path) as tmp_path:
        with open(tmp_path, "w", encoding="utf-8") as handle:
            handle.write(text)


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
        fd, tmp_path = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=self.directory)
        os.close(fd)
        self._staged[name] = tmp_path
        return tmp_path

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            for name, tmp_path in self._staged.items():
                os.replace(tmp_path, os.path.join(self.directory, name))
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
