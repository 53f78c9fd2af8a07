"""Module-scoped fixtures for tests that run a tiny masked-LM checkpoint: import them into the test module.

`checkpoint` is the session's tiny rotary `EsmForMaskedLM` reference (its `.path` and PyTorch `.model`), `model`
the same weights loaded as a `TFEsmForMaskedLM`, and `tokenizer` the default ESM-2 tokenizer.
(Used by tests/test_cli.py and tests/test_scoring.py; conftest.py would be the other home for them.)
"""

import pytest

from tf_esm import TFEsmForMaskedLM
from tf_esm.pipelines.data import resolve_tokenizer


@pytest.fixture(scope="module")
def checkpoint(reference_checkpoints):
    return reference_checkpoints("rotary")


@pytest.fixture(scope="module")
def model(checkpoint):
    return TFEsmForMaskedLM.from_pretrained(checkpoint.path)


@pytest.fixture(scope="module")
def tokenizer():
    return resolve_tokenizer(None)
