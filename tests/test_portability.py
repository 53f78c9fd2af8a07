"""Linux-only mechanisms behind capability flags, each exercised with the flag switched on this machine: no
`posix_fadvise` read-ahead, no /proc/cpuinfo, and a platform (Windows) that cannot replace a memory-mapped file, so
`save_pretrained(overwrite=True)` into the directory a model maps its weights from fails with an error naming it."""

import os

import pytest

from tf_esm.io import buffers
from tf_esm.modeling import precision


def test_read_ahead_is_skipped_without_the_capability(tmp_path, monkeypatch):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 64)
    calls = []
    monkeypatch.setattr(os, "posix_fadvise", lambda *args: calls.append(args), raising=False)
    buffers.read_ahead([str(path)])
    assert len(calls) == 1
    monkeypatch.setattr(buffers, "READ_AHEAD", False)
    buffers.read_ahead([str(path)])
    assert len(calls) == 1


def test_cpu_flags_unknown_without_proc(monkeypatch):
    monkeypatch.setattr(precision, "CPU_FLAGS_FILE", None)
    assert precision.cpu_flags() is None
    assert precision.cpu_bf16_flags() is None


@pytest.mark.tensorflow_only("only TensorFlow's variables adopt views of the file's memory map")
def test_saving_over_the_mapped_file_fails_clearly_where_mapped_files_are_locked(reference_checkpoints, tmp_path,
                                                                                  monkeypatch):
    from tf_esm import TFEsmForMaskedLM
    from tf_esm.io.weights import variable_memory

    reference = reference_checkpoints("rotary")
    directory = str(tmp_path / "model")
    weights_file = os.path.join(directory, "tf_esm_model.h5")
    TFEsmForMaskedLM.from_pretrained(reference.path).save_pretrained(directory, format="h5")
    model = TFEsmForMaskedLM.from_pretrained(directory)
    mapped = {buffers.mapped_file(variable_memory(variable)) for variable in model.weights}
    assert mapped == {weights_file}  # every variable is a view of the file's mapping
    model.save_pretrained(directory, overwrite=True, format="h5")  # POSIX replaces a mapped file
    model = TFEsmForMaskedLM.from_pretrained(directory)
    monkeypatch.setattr(buffers, "MAPPED_FILES_LOCKED", True)
    with pytest.raises(OSError, match=r"tf_esm_model\.h5: this model's weights are a memory map"):
        model.save_pretrained(directory, overwrite=True, format="h5")
    model.save_pretrained(str(tmp_path / "elsewhere"), format="h5")
