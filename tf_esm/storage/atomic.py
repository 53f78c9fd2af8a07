"""Crash-safe file writing: write to a temporary name in the target's directory, then rename into place.

The one writing policy of tf_esm (library, CLI and embedding stores): the temporary file is flushed to disk
(fsync) before the rename, so after a crash the target holds either its previous content or the complete new
one, never a renamed file whose data had not reached the disk. An interrupted writer (exception, Ctrl-C, kill)
leaves the previous file untouched. The rename is `os.replace` (atomic within one directory on POSIX file
systems and NTFS); on POSIX the directory is flushed after it too, so the new name itself survives a crash
(Windows cannot open a directory for that, and there the rename is only as durable as NTFS makes it).
"""

from __future__ import annotations

import contextlib
import os
import secrets


PARTIAL_SUFFIX = ".partial"

# Whether a directory can be opened and fsynced, which makes a rename in it durable (POSIX; not Windows).
DIRECTORY_FSYNC = os.name == "posix"


def fsync_file(path):
    """Flush a written file's data to disk (a directory: `fsync_directory`). Through a writable descriptor:
    Windows flushes only those."""
    if os.path.isdir(path):
        fsync_directory(path)
        return
    descriptor = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_directory(directory):
    """Flush `directory`'s entries (a rename in it) to disk where the platform can (`DIRECTORY_FSYNC`); True if
    it did. A file system that refuses (some network mounts) is not an error: the rename itself has happened."""
    if not DIRECTORY_FSYNC:
        return False
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return False
    try:
        os.fsync(descriptor)
        return True
    except OSError:
        return False
    finally:
        os.close(descriptor)


def _replace(source, target):
    """`os.replace`, with a clear error where the target is in use: Windows refuses to replace a file that is
    open or memory-mapped (the weights of a model loaded from it are a map of the file)."""
    try:
        os.replace(source, target)
    except PermissionError as error:
        if not os.path.lexists(target):
            raise
        raise PermissionError(
            error.errno, f"cannot replace {target}: it may be open or memory-mapped (on Windows the weights of a "
            f"model loaded from it map the file); write to another path, or release the model loaded from it "
            f"first ({error.strerror})", target) from error


def replace_durably(tmp_path, path):
    """Move a finished temporary file onto `path`: its data reaches the disk before the rename makes it visible,
    and the rename reaches it after (where the platform can flush a directory)."""
    fsync_file(tmp_path)
    _replace(tmp_path, path)
    fsync_directory(os.path.dirname(os.path.abspath(path)))


def _unique_name(directory, prefix, suffix, create):
    """`create(path)` for a fresh random name `prefix + token + suffix` in `directory`, retried while it exists."""
    for _ in range(100):
        path = os.path.join(directory, f"{prefix}{secrets.token_hex(4)}{suffix}")
        try:
            create(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name {prefix}XXXXXXXX{suffix} in {directory}")


def _create_file(path):
    # Mode 0o666 less the process's umask, applied by the kernel: what a plain `open()` would give.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))


def _temporary_file(directory, name, suffix=""):
    """A hidden `.NAME.XXXXXXXX.partial` file, created with the mode a plain `open()` would give."""
    return _unique_name(directory, f".{name}.", suffix + PARTIAL_SUFFIX, _create_file)


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


def _fsync_tree(directory):
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                fsync_file(path)
        fsync_directory(root)


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
    # os.mkdir applies the umask to 0o777: a normal directory's mode (mkdtemp would make it private).
    staging = _unique_name(parent, f".{os.path.basename(path)}.partial-", "", os.mkdir)
    try:
        yield staging
        _fsync_tree(staging)
        check_target(path, overwrite)
        if is_empty_target(path):
            if os.path.isdir(path):
                os.rmdir(path)
            _replace(staging, path)
            fsync_directory(parent)
            return
        retired = _unique_name(parent, f".{os.path.basename(path)}.old-", "", os.mkdir)
        os.rmdir(retired)
        _replace(path, retired)
        try:
            _replace(staging, path)
        except BaseException:
            os.replace(retired, path)
            raise
        fsync_directory(parent)
        if os.path.isdir(retired) and not os.path.islink(retired):
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.remove(retired)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
