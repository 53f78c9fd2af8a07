"""Durable writes (`tf_esm.storage.atomic`): portable by construction, each platform capability switched off in turn."""

import os
import stat

import pytest

from tf_esm.storage import atomic

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes and umask")


@pytest.fixture
def opened(monkeypatch):
    """The (path, flags, whether a directory) of every `os.open` while the test runs."""
    calls = []
    real_open = os.open

    def recording_open(path, flags, *args, **kwargs):
        calls.append((os.fspath(path), flags, os.path.isdir(path)))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    return calls


def _write_all_ways(directory):
    atomic.write_text_atomic(directory / "one.txt", "one")
    atomic.write_atomic(directory / "two.bin", lambda handle: handle.write(b"two"))
    with atomic.StagedFiles(directory / "staged") as staged:
        atomic.write_text_atomic(staged.path("three.txt"), "three")
    with atomic.atomic_directory(directory / "tree") as staging:
        atomic.write_text_atomic(os.path.join(staging, "four.txt"), "four")


def _check_written(directory):
    assert (directory / "one.txt").read_text() == "one"
    assert (directory / "two.bin").read_bytes() == b"two"
    assert (directory / "staged" / "three.txt").read_text() == "three"
    assert (directory / "tree" / "four.txt").read_text() == "four"
    assert not [name for _, _, names in os.walk(directory) for name in names if name.endswith(".partial")]


@posix_only
def test_outputs_get_the_mode_of_a_plain_open_without_touching_the_umask(tmp_path, monkeypatch):
    previous = os.umask(0o027)
    try:
        def no_umask(mask):
            raise AssertionError("setting the umask races with other threads creating files")

        monkeypatch.setattr(os, "umask", no_umask)
        _write_all_ways(tmp_path)
    finally:
        monkeypatch.undo()
        os.umask(previous)
    _check_written(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / "one.txt").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "staged" / "three.txt").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "tree").st_mode) == 0o750


def test_files_are_flushed_through_a_writable_descriptor(tmp_path, opened):
    atomic.write_text_atomic(tmp_path / "one.txt", "one")
    file_opens = [flags for _, flags, is_directory in opened if not is_directory]
    assert file_opens and all(flags & (os.O_WRONLY | os.O_RDWR) for flags in file_opens)


@posix_only
def test_renames_are_flushed_where_directories_can_be(tmp_path, opened):
    _write_all_ways(tmp_path)
    directories = {path for path, _, is_directory in opened if is_directory}
    assert {str(tmp_path), str(tmp_path / "staged")} <= directories
    assert any(os.path.basename(path).startswith(".tree.partial-") for path in directories)  # the new tree


def test_without_directory_fsync_writes_still_succeed(tmp_path, opened, monkeypatch):
    monkeypatch.setattr(atomic, "DIRECTORY_FSYNC", False)
    _write_all_ways(tmp_path)
    atomic.fsync_file(tmp_path)  # the embedding stores flush a directory this way
    _check_written(tmp_path)
    assert not [path for path, _, is_directory in opened if is_directory]
    assert atomic.fsync_directory(tmp_path) is False


@posix_only
def test_a_file_system_that_refuses_directory_fsync_is_not_an_error(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def files_only(descriptor):
        if stat.S_ISDIR(os.fstat(descriptor).st_mode):
            raise OSError(22, "Invalid argument")
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", files_only)
    _write_all_ways(tmp_path)
    _check_written(tmp_path)


def test_a_target_that_cannot_be_replaced_is_named_and_left_as_it_was(tmp_path, monkeypatch):
    target = tmp_path / "tf_esm_model.h5"
    target.write_text("the loaded model's weights")

    def in_use(source, destination):
        raise PermissionError(13, "Access is denied")

    monkeypatch.setattr(os, "replace", in_use)
    with pytest.raises(PermissionError, match="memory-mapped") as raised:
        atomic.write_text_atomic(target, "new weights")
    assert str(target) in str(raised.value)
    assert target.read_text() == "the loaded model's weights"
    assert os.listdir(tmp_path) == [target.name]
