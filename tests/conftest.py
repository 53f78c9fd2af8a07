"""Shared test setup: the test requirements checked, quiet TensorFlow, deterministic torch, and session-scoped
tiny reference checkpoints."""

import configparser
import importlib.metadata
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import pytest

from tests._reference import (  # noqa: E402
    changed_shared_directories,
    changed_shared_models,
    make_reference_checkpoint,
    share_directory,
    share_model,
)

import keras  # noqa: E402  (reads KERAS_BACKEND)

BACKEND = keras.backend.backend()

# The test modules that run under every Keras backend: CI runs them again with KERAS_BACKEND=jax and with
# KERAS_BACKEND=torch (the README's test command). Under a backend other than TensorFlow the other modules are not collected (they test
# TensorFlow programs: tf.data, SavedModel, the string tokenizer, distribution strategies, ...), and tests in these
# modules that need TensorFlow are marked `tensorflow_only` and skipped with their reason.
EVERY_BACKEND_MODULES = (
    "test_bfloat16_storage.py",
    "test_configuration.py",
    "test_encoder_stack.py",
    "test_esmc.py",
    "test_fair_esm.py",
    "test_folding_determinism.py",
    "test_folding_half_stem.py",
    "test_hub.py",
    "test_inference.py",
    "test_keras_compat.py",
    "test_layer_stack.py",
    "test_long_proteins.py",
    "test_modeling.py",
    "test_proteingym_scoring.py",
    "test_tokenization.py",
    "test_training_scale.py",
    "test_transformers4_fixtures.py",
    "test_weights.py",
)
# Modules that run, beyond those, under one backend other than TensorFlow. ESMFold's end-to-end parity
# (test_folding_model.py) runs eagerly under PyTorch in ~30 s; under JAX, which compiles each eager op for each new
# shape, the module took 28 min on a shared 2-core machine (tests/test_folding_jax.py checks ESMFold under JAX).
BACKEND_MODULES = {"torch": ("test_folding_model.py",)}


def collected_modules(backend=BACKEND):
    """The test modules collected under `backend` (other than TensorFlow, which collects every module)."""
    return EVERY_BACKEND_MODULES + BACKEND_MODULES.get(backend, ())


if BACKEND == "tensorflow":
    # In-process CLI runs set TensorFlow's thread pools for throughput when they are the first to start the runtime;
    # start it here with the defaults so every test sees the same threading whatever the order.
    import tensorflow  # noqa: E402

    tensorflow.constant(0)

SETUP_CFG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "setup.cfg")


def read_test_requirements():
    """The `test` extra of setup.cfg, as `packaging` requirements: the PyTorch references (transformers, fair-esm,
    torch) and every other package the suite uses."""
    from packaging.requirements import Requirement

    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG, encoding="utf-8")
    lines = parser["options.extras_require"]["test"].splitlines()
    return [Requirement(line.strip()) for line in lines if line.strip() and not line.strip().startswith("#")]


def missing_test_requirements():
    """'name (why)' for each requirement of the `test` extra that is not installed or not at a matching version."""
    missing = []
    for requirement in read_test_requirements():
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(f"{requirement.name} (not installed)")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{requirement.name} (have {version}, need {requirement.specifier})")
    return missing


def pytest_configure(config):
    # The reference implementations are what the suite measures against: without one, its parity tests cannot run,
    # and a skip would look like a pass. A missing or mismatched test requirement fails the whole session instead.
    missing = missing_test_requirements()
    if missing:
        raise pytest.UsageError(
            "tf_esm's tests need the packages of the `test` extra (the PyTorch references among them); missing: "
            + ", ".join(missing) + '. Install them with: pip install -e ".[test]"')
    import torch

    torch.set_num_threads(1)


def pytest_ignore_collect(collection_path, config):
    """Under JAX or PyTorch only EVERY_BACKEND_MODULES and that backend's BACKEND_MODULES are collected (the others
    import TensorFlow-only modules)."""
    if BACKEND == "tensorflow" or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    return collection_path.name not in collected_modules()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Under a backend other than TensorFlow, tests marked `tensorflow_only(reason)` are skipped with the reason.

    TF_ESM_TEST_ORDER=reversed runs the tests in reverse order (after any other reordering): with
    `-p random_order --random-order`, a check that no test depends on another having run first."""
    if BACKEND != "tensorflow":
        for item in items:
            marker = item.get_closest_marker("tensorflow_only")
            if marker is not None:
                reason = marker.args[0] if marker.args else "a TensorFlow program"
                item.add_marker(pytest.mark.skip(reason=f"TensorFlow only ({reason}); KERAS_BACKEND={BACKEND}"))
    order = os.environ.get("TF_ESM_TEST_ORDER", "")
    if order == "reversed":
        items.reverse()
    elif order:
        raise pytest.UsageError(f"TF_ESM_TEST_ORDER={order!r}: the only value is 'reversed'")


@pytest.fixture(scope="session")
def reference_checkpoints(tmp_path_factory):
    """A factory of tiny transformers checkpoints saved to disk, cached per (kind, options) for the session."""
    cache = {}

    def get(kind="rotary", model_class="EsmForMaskedLM", **options):
        key = (kind, model_class, tuple(sorted(options.items())))
        if key not in cache:
            directory = tmp_path_factory.mktemp(f"ref_{kind}_{model_class}")
            cache[key] = make_reference_checkpoint(directory, kind, model_class, **options)
            # Shared by every test that asks for it: see shared_fixtures_unchanged.
            share_directory(directory)
            share_model(f"reference_checkpoints{key}", cache[key].model)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def esm_vocab_file(tmp_path_factory):
    """Path to a `vocab.txt` holding the standard 33-token ESM-2 vocabulary."""
    from tf_esm.tokenization import write_default_vocab

    directory = tmp_path_factory.mktemp("esm_vocab")
    path = write_default_vocab(directory / "vocab.txt")
    share_directory(directory)
    return path


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


@pytest.fixture(autouse=True)
def seeded_random_generators():
    """Every test starts from the same random state (Python, NumPy, TensorFlow and Keras, PyTorch) whatever ran
    before it, so that, e.g., the weights a reference module's constructor draws or a new Keras head gets do not
    depend on the order the tests run in. (Session and module fixtures seed what they build themselves.)"""
    import keras
    import torch

    keras.utils.set_random_seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def shared_fixtures_unchanged():
    """Fails the test that wrote into a directory shared by session/module fixtures (e.g. a vocab.txt added to the
    session's reference checkpoint) or changed a shared PyTorch reference model (weights, buffers, config): copy
    them first, so that no result depends on the order the tests run in."""
    yield
    directories = changed_shared_directories()
    models = changed_shared_models()
    if directories or models:
        pytest.fail("this test changed shared fixtures (copy them before changing them): "
                    + "; ".join([f"{path}: {what}" for path, what in directories.items()] + models), pytrace=False)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_terminal_summary(terminalreporter):
    from tests._reference import PARITY_REPORT

    if BACKEND != "tensorflow":
        terminalreporter.section(f"KERAS_BACKEND={BACKEND}")
        also = BACKEND_MODULES.get(BACKEND, ())
        terminalreporter.write_line(f"ran the modules that run under every backend ({', '.join(EVERY_BACKEND_MODULES)})"
                                    + (f" and those that run under {BACKEND} ({', '.join(also)})" if also else "")
                                    + "; the others test TensorFlow programs and need KERAS_BACKEND=tensorflow.")

    if PARITY_REPORT:
        terminalreporter.section(f"parity: max abs difference vs the PyTorch reference (KERAS_BACKEND={BACKEND})")
        for key in sorted(PARITY_REPORT):
            terminalreporter.write_line(f"{PARITY_REPORT[key]:10.3g}  {key}")
