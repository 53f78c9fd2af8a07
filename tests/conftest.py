"""Shared test setup: quiet TensorFlow, deterministic torch, and session-scoped tiny reference checkpoints."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import pytest

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is part of the test extra
    torch = None

from tests._reference import make_reference_checkpoint  # noqa: E402

# In-process CLI runs set TensorFlow's thread pools for throughput when they are the first to start the runtime;
# start it here with the defaults so every test sees the same threading whatever the order.
import tensorflow  # noqa: E402

tensorflow.constant(0)


@pytest.fixture(scope="session")
def reference_checkpoints(tmp_path_factory):
    """A factory of tiny transformers checkpoints saved to disk, cached per (kind, options) for the session."""
    cache = {}

    def get(kind="rotary", model_class="EsmForMaskedLM", **options):
        key = (kind, model_class, tuple(sorted(options.items())))
        if key not in cache:
            directory = tmp_path_factory.mktemp(f"ref_{kind}_{model_class}")
            cache[key] = make_reference_checkpoint(directory, kind, model_class, **options)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def esm_vocab_file(tmp_path_factory):
    """Path to a `vocab.txt` holding the standard 33-token ESM-2 vocabulary."""
    from tf_esm.tokenization import write_default_vocab

    return write_default_vocab(tmp_path_factory.mktemp("esm_vocab") / "vocab.txt")


@pytest.fixture(scope="session")
def esm_tokenizer(esm_vocab_file):
    from tf_esm.tokenization import EsmTokenizer

    return EsmTokenizer(esm_vocab_file)


@pytest.fixture(scope="session")
def hf_tokenizer(esm_vocab_file):
    """transformers' EsmTokenizer on the same vocabulary: the reference for token ids."""
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.EsmTokenizer(esm_vocab_file)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_terminal_summary(terminalreporter):
    from tests._reference import PARITY_REPORT

    if PARITY_REPORT:
        terminalreporter.section("parity: max abs difference vs the PyTorch reference")
        for key in sorted(PARITY_REPORT):
            terminalreporter.write_line(f"{PARITY_REPORT[key]:10.3g}  {key}")
