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


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_terminal_summary(terminalreporter):
    from tests._reference import PARITY_REPORT

    if PARITY_REPORT:
        terminalreporter.section("parity: max abs difference vs the PyTorch reference")
        for key in sorted(PARITY_REPORT):
            terminalreporter.write_line(f"{PARITY_REPORT[key]:10.3g}  {key}")
