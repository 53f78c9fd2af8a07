"""ESMFold's default inference path depends on nothing but the call: fold A, fold B at another length, fold A
again, and the last fold equals a fresh model's fold of A bit for bit (under TensorFlow the eager path, under JAX
the compiled one), with a float32 or a bfloat16 stem. No background thread runs on that path."""

import threading

import keras
import numpy as np
import pytest

from tests._reference import share_directory
from tests.test_folding_model import _make_reference
from tf_esm.folding import TFEsmForProteinFolding

SEQUENCE_A = "MKTAYIAKQRQISFVKSHFSRQLE"
SEQUENCE_B = "GSHMLEDPVAGSTKWQRNNCPVEAHHLLVKAM"  # another length (and another bucket)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("esmfold_determinism")
    _make_reference(directory, fp16_esm=False, seed=3)
    share_directory(directory)
    return str(directory)


def _fold(model, sequence):
    return {key: np.asarray(value) for key, value in model.infer(sequence, num_recycles=1).items()}


@pytest.mark.parametrize("stem", ["float32", "bfloat16"])
def test_a_fold_does_not_depend_on_what_ran_before(checkpoint, stem):
    if stem == "bfloat16" and keras.backend.backend() != "tensorflow":
        pytest.skip("the bfloat16 stem's history case was measured under TensorFlow's eager-first default")
    model = TFEsmForProteinFolding.from_pretrained(checkpoint, strict=True, stem_precision=stem)
    assert model.compiled_inference is None  # the backend's one default path
    first = _fold(model, SEQUENCE_A)
    _fold(model, SEQUENCE_B)
    again = _fold(model, SEQUENCE_A)
    fresh = _fold(TFEsmForProteinFolding.from_pretrained(checkpoint, strict=True, stem_precision=stem), SEQUENCE_A)
    assert set(again) == set(fresh)
    for key in fresh:
        np.testing.assert_array_equal(again[key], fresh[key], err_msg=f"{key}: a fresh model's fold differs")
        np.testing.assert_array_equal(first[key], fresh[key], err_msg=f"{key}: the first fold differs")


def test_the_default_path_starts_no_thread(checkpoint, monkeypatch):
    model = TFEsmForProteinFolding.from_pretrained(checkpoint, strict=True)
    started = []
    original_start = threading.Thread.start

    def recording_start(thread):
        started.append(thread.name)
        return original_start(thread)

    monkeypatch.setattr(threading.Thread, "start", recording_start)
    _fold(model, SEQUENCE_A)
    _fold(model, SEQUENCE_B)
    assert started == [], f"threads started by a fold: {started}"
