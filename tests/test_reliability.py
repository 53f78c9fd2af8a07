"""Reliability and security: untrusted checkpoints, damaged files, long inputs, interrupted writers."""

import os
import pickle

import h5py
import numpy as np
import pytest

from tests._reference import assert_close, torch_outputs
from tf_esm import TFEsmForMaskedLM, TFEsmModel
from tf_esm.io import native_h5
from tf_esm.io.weights import CheckpointError, read_state_dict


class _Payload:
    """Unpickling this runs `open(marker, "w")`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_checkpoint(path, marker):
    with open(path, "wb") as handle:
        pickle.dump({"esm.embeddings.word_embeddings.weight": _Payload(str(marker))}, handle)


@pytest.mark.parametrize("filename", ["pytorch_model.bin", "model.pt"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, filename):
    marker = tmp_path / "pwned"
    _malicious_checkpoint(tmp_path / filename, marker)
    with pytest.raises(CheckpointError, match="refused to load"):
        read_state_dict(tmp_path / filename)
    assert not marker.exists()
    # The payload is real: an unsafe load would have created the file.
    with open(tmp_path / filename, "rb") as handle:
        pickle.load(handle)
    assert marker.exists()


def test_malicious_bin_in_a_model_directory_is_refused(reference_checkpoints, tmp_path):
    ref = reference_checkpoints("rotary")
    ref.config.save_pretrained(str(tmp_path))
    marker = tmp_path / "pwned"
    _malicious_checkpoint(tmp_path / "pytorch_model.bin", marker)
    with pytest.raises(CheckpointError, match="pytorch_model.bin: refused to load"):
        TFEsmForMaskedLM.from_pretrained(tmp_path)
    assert not marker.exists()


def test_truncated_safetensors_names_the_file(reference_checkpoints, tmp_path):
    ref = reference_checkpoints("rotary")
    data = open(os.path.join(ref.path, "model.safetensors"), "rb").read()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        read_state_dict(tmp_path / "model.safetensors")


def test_truncated_h5_names_the_file(reference_checkpoints, tmp_path):
    TFEsmForMaskedLM.from_pretrained(reference_checkpoints("rotary").path).save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "tf_esm_model.h5"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="tf_esm_model.h5: not a readable HDF5 file"):
        TFEsmForMaskedLM.from_pretrained(tmp_path / "m")


def test_h5_of_another_architecture_names_the_tensor(reference_checkpoints, tmp_path):
    """Weights saved from a 32-wide model, config claiming 48: the first mismatching tensor is named."""
    TFEsmForMaskedLM.from_pretrained(reference_checkpoints("rotary").path).save_pretrained(tmp_path / "m")
    with h5py.File(tmp_path / "m" / "tf_esm_model.h5", "r+") as handle:
        group = native_h5.GROUPS[int(handle.attrs["format_version"])]  # the stacked layout (version 4) today
        del handle[f"{group}/lm_head/bias"]
        handle[f"{group}/lm_head/bias"] = np.zeros(40, np.float32)
    with pytest.raises(CheckpointError, match=r"'lm_head.bias' has shape \(40,\).*needs \(33,\)"):
        TFEsmForMaskedLM.from_pretrained(tmp_path / "m")


def test_rotary_model_runs_past_1024_tokens_with_parity(reference_checkpoints):
    ref = reference_checkpoints("rotary", "EsmModel")
    rng = np.random.default_rng(5)
    input_ids = np.concatenate([[0], rng.integers(4, 24, size=1100), [2]])[None].astype(np.int32)
    expected = torch_outputs(ref.model, input_ids, np.ones_like(input_ids))
    out = TFEsmModel.from_pretrained(ref.path)(input_ids)
    assert_close(out.last_hidden_state, expected.last_hidden_state, atol=5e-5, what="1102 tokens")


def test_interrupted_save_keeps_the_previous_model(reference_checkpoints, tmp_path, monkeypatch):
    """A crash while writing weights leaves the earlier save intact and no temp files behind."""
    model = TFEsmForMaskedLM.from_pretrained(reference_checkpoints("rotary").path)
    target = tmp_path / "saved"
    model.save_pretrained(target)
    before = {name: (target / name).read_bytes() for name in os.listdir(target)}

    original = h5py.Group.create_dataset
    calls = {"n": 0}

    def create_dataset_then_crash(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("simulated crash mid-write")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset_then_crash)
    for variable in model.weights[:2]:
        variable.assign(variable.numpy() + 1.0)
    model.config.some_new_setting = 1  # config.json would change too
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(target, overwrite=True)
    monkeypatch.setattr(h5py.Group, "create_dataset", original)
    assert sorted(os.listdir(target)) == sorted(before)
    for name, data in before.items():
        assert (target / name).read_bytes() == data, name


def test_save_pretrained_refuses_a_non_empty_foreign_directory(reference_checkpoints, tmp_path):
    model = TFEsmForMaskedLM.from_pretrained(reference_checkpoints("rotary").path)
    (tmp_path / "notes.txt").write_text("my lab notebook")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "my lab notebook"
    model.save_pretrained(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "my lab notebook"  # overwrite replaces our files only
