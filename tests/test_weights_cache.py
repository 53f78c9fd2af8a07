"""Large PyTorch-layout checkpoints load through a converted copy in the cache, memory-mapped
(`io/weights_cache.py`): the same values bit for bit, file-backed instead of the process's own memory, written once
and rewritten when the checkpoint changes."""

import os

import keras
import numpy as np
import pytest

from tests.test_folding_model import SEQUENCES, _make_reference
from tf_esm import TFEsmForMaskedLM
from tf_esm.folding import TFEsmForProteinFolding
from tf_esm.io import buffers, weights_cache

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="variables adopt a file's memory map under TensorFlow only")


def _entries(cache):
    root = os.path.join(cache, "converted")
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def _is_mapped(variable):
    return buffers.is_mapped(np.asarray(variable.value.value()))


def test_a_converted_checkpoint_loads_the_same_values_mapped_and_is_written_once(reference_checkpoints, tmp_path):
    source = tmp_path / "model"
    import shutil

    shutil.copytree(reference_checkpoints("rotary").path, source)
    cache = str(tmp_path / "cache")
    direct = TFEsmForMaskedLM.from_pretrained(str(source), weights_cache=False, strict=True)
    cached = TFEsmForMaskedLM.from_pretrained(str(source), weights_cache=cache, strict=True)
    entry, = _entries(cache)
    for ours, theirs in zip(cached.weights, direct.weights):
        assert ours.path.split("/", 1)[1] == theirs.path.split("/", 1)[1]
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours.value), keras.ops.convert_to_numpy(theirs.value),
                                      err_msg=ours.path)
    kernel = cached.esm.encoder.layer.stacked_weight("intermediate.dense.kernel")
    assert _is_mapped(kernel) and not _is_mapped(direct.esm.encoder.layer.stacked_weight("intermediate.dense.kernel"))
    ids = np.array([[0, 5, 6, 7, 8, 2]])
    np.testing.assert_array_equal(np.asarray(cached(ids).logits), np.asarray(direct(ids).logits))

    written = os.path.join(cache, "converted", entry, "tf_esm_model.h5")
    stamp = os.stat(written).st_mtime_ns
    TFEsmForMaskedLM.from_pretrained(str(source), weights_cache=cache)
    assert _entries(cache) == [entry] and os.stat(written).st_mtime_ns == stamp  # reused, not rewritten

    weights = source / "model.safetensors"
    os.utime(weights, ns=(stamp + 10**9, stamp + 10**9))  # the checkpoint changed: a new entry
    TFEsmForMaskedLM.from_pretrained(str(source), weights_cache=cache)
    assert len(_entries(cache)) == 2


def test_auto_converts_large_checkpoints_only(reference_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("TF_ESM_CACHE", str(tmp_path / "cache"))
    path = reference_checkpoints("rotary").path
    TFEsmForMaskedLM.from_pretrained(path)  # "auto": a tiny checkpoint loads directly
    assert _entries(str(tmp_path / "cache")) == []
    monkeypatch.setattr(weights_cache, "AUTO_THRESHOLD", 0)
    model = TFEsmForMaskedLM.from_pretrained(path)
    assert len(_entries(str(tmp_path / "cache"))) == 1
    assert _is_mapped(model.esm.encoder.layer.stacked_weight("intermediate.dense.kernel"))


def test_esmfold_with_stacked_trunk_weights_folds_the_same_through_the_cache(tmp_path):
    source = tmp_path / "esmfold"
    source.mkdir()
    _make_reference(source, fp16_esm=False, seed=5)
    cache = str(tmp_path / "cache")
    direct = TFEsmForProteinFolding.from_pretrained(str(source), weights_cache=False, strict=True)
    cached = TFEsmForProteinFolding.from_pretrained(str(source), weights_cache=cache, strict=True)
    assert len(_entries(cache)) == 1
    assert _is_mapped(cached.esm.encoder.layer.stacked_weight("intermediate.dense.kernel"))
    assert all(_is_mapped(variable) for variable in cached.trunk.blocks.stacked_weights if len(variable.shape) > 1)
    ours, theirs = cached.infer(SEQUENCES[0], num_recycles=0), direct.infer(SEQUENCES[0], num_recycles=0)
    for key in theirs:
        np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(theirs[key]), err_msg=key)
