"""ESMFold's compiled inference path under JAX (`tf_esm/folding/compiled_jax.py`), against transformers'
`EsmForProteinFolding`. Keras picks its backend at import, so the JAX side runs in a child process
(tests/_folding_jax_child.py) whatever backend this suite runs under; the child blocks TensorFlow imports."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests._folding_jax_child import CASES
from tests._reference import record_parity
from tests.folding_reference import max_abs_diff
from tests.test_folding_model import ATOL, _batch, _make_reference

pytest.importorskip("jax")

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Compilations expected after each case: bucket 16 once (whatever the length in it and the number of recycles),
# bucket 32 once, and bucket 16 again for a new chunk size (the chunks run as a loop inside the program).
EXPECTED_TRACES = {"short": 1, "same_bucket": 1, "no_recycles": 1, "next_bucket": 2, "chunked": 3}


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("esmfold_jax")
    reference = _make_reference(directory, fp16_esm=False)
    out = directory / "jax_outputs.npz"
    environment = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
                       PYTHONPATH=os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")])))
    completed = subprocess.run([sys.executable, os.path.join(REPOSITORY, "tests", "_folding_jax_child.py"),
                                str(directory), str(out)], env=environment, capture_output=True, text=True,
                               timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return reference, dict(np.load(out))


def test_jax_compiled_infer_matches_pytorch(jax_run):
    reference, outputs = jax_run
    for name, sequence, kwargs in CASES:
        reference.trunk.set_chunk_size(kwargs.get("chunk_size"))
        with torch.no_grad():
            if "num_recycles" in kwargs:  # transformers' infer does not take it; its forward does
                aatype, mask = _batch([sequence])
                theirs = reference(torch.from_numpy(aatype), attention_mask=torch.from_numpy(mask),
                                   num_recycles=kwargs["num_recycles"])
            else:
                theirs = reference.infer(sequence)
        reference.trunk.set_chunk_size(None)
        assert float(theirs["positions"][-1].std()) > 1.0  # a real structure
        for key in ("positions", "ptm", "plddt"):
            difference = max_abs_diff(outputs[f"{name}_{key}"], theirs[key])
            record_parity(f"jax {name} {key}", difference)
            assert difference <= ATOL[key], (name, key, difference)


def test_jax_compiles_once_per_bucket_and_chunk_size(jax_run):
    _, outputs = jax_run
    assert {name: int(outputs[f"{name}_traces"]) for name in EXPECTED_TRACES} == EXPECTED_TRACES


def test_jax_folding_imports_no_tensorflow(jax_run):
    _, outputs = jax_run
    assert not bool(outputs["tensorflow_imported"])
    assert list(outputs["attempted_tf_imports"]) == []
