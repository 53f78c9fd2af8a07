"""Which Keras backend runs the models, and the fence around the parts that only TensorFlow can run.

The models, tokenizer, checkpoint readers and batch embedding are written in `keras.ops` and run under any Keras 3
backend (KERAS_BACKEND=tensorflow, jax or torch); under JAX or PyTorch they import no TensorFlow. A few features are
TensorFlow programs by nature — `tf.data` pipelines (`tf_esm.pipelines.data`), the in-graph string tokenizer
(`tf_esm.graph_tokenizer`), SavedModel export (`tf_esm.pipelines.export`) and the blocked CPU attention — and their modules call
`require_tensorflow` first, so that using one elsewhere fails with one sentence saying what to do rather than a
`ModuleNotFoundError` or a type error from deep inside another backend.
"""

from __future__ import annotations

import os


class TensorFlowRequiredError(ImportError):
    """A TensorFlow-only feature was used under another Keras backend, or without TensorFlow installed."""


# What to install for each Keras backend's own package.
_BACKEND_INSTALL = {"jax": 'pip install "tf_esm[jax]"', "torch": "pip install torch==2.13.0",
                    "tensorflow": "pip install tensorflow"}


def check_keras_importable():
    """Import Keras, turning a missing backend package (KERAS_BACKEND=jax without jax, ...) into one sentence.

    Raises `ImportError` naming the backend, the missing package and what to install."""
    try:
        import keras  # noqa: F401
    except ImportError as error:
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        missing = getattr(error, "name", None) or ""
        if missing.split(".")[0] in _BACKEND_INSTALL:
            package = missing.split(".")[0]
            raise ImportError(
                f"KERAS_BACKEND={backend} needs the {package} package, which is not installed: "
                f"{_BACKEND_INSTALL[package]}"
                + (" (or unset KERAS_BACKEND to run on TensorFlow)." if backend != "tensorflow" else ".")) from error
        raise


def keras_backend():
    """The Keras backend in use ("tensorflow", "jax", "torch", ...), read without importing TensorFlow."""
    import keras

    return keras.backend.backend()


def to_numpy(value):
    """A backend tensor or Keras variable value as a NumPy array, without a copy where the backend allows it (a
    CPU tensor under TensorFlow, JAX or PyTorch). Under PyTorch a tensor that requires grad (every variable's, and
    every output computed from one outside `no_gradients`) refuses `np.asarray`: it is detached first."""
    import numpy as np

    if keras_backend() == "torch":
        import torch

        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.dtype == torch.bfloat16:  # no NumPy bfloat16 in torch: the same values through float32
                import ml_dtypes

                return value.float().numpy().astype(ml_dtypes.bfloat16)
            return value.numpy()
    return np.asarray(value)


def contiguous(tensor):
    """`tensor` in a dense row-major buffer of its own where it is a strided view (a transposed checkpoint matrix):
    under PyTorch, a variable holding a view computes its products with other kernels than one loaded from a file
    in the Keras layout, so the same weights would give results a few last bits apart. Elsewhere the tensor as it
    is (TensorFlow and JAX tensors have no strides)."""
    if keras_backend() != "torch":
        return tensor
    return tensor.contiguous()


def no_gradients():
    """A context in which model calls record nothing for a backward pass: `torch.no_grad()` under PyTorch, whose
    autograd otherwise keeps every intermediate activation of an eager call alive until its outputs are freed.
    Elsewhere nothing (TensorFlow and JAX record gradients only inside a GradientTape or `jax.grad`)."""
    import contextlib

    if keras_backend() != "torch":
        return contextlib.nullcontext()
    import torch

    return torch.no_grad()


def require_tensorflow(feature, instead="The models, tokenizer, checkpoints and embed_sequences work under every "
                                      "backend."):
    """Return the `tensorflow` module, or raise `TensorFlowRequiredError` naming `feature` when the Keras backend is
    not TensorFlow (its tensors and graphs would not mix with the models') or TensorFlow is not installed.
    `instead`: what to use under another backend (the end of the message)."""
    backend = keras_backend()
    if backend != "tensorflow":
        raise TensorFlowRequiredError(
            f"{feature} needs TensorFlow (KERAS_BACKEND=tensorflow); you are on {backend} "
            f"(KERAS_BACKEND={os.environ.get('KERAS_BACKEND', backend)}). {instead}")
    try:
        import tensorflow as tf
    except ImportError as error:
        raise TensorFlowRequiredError(
            f"{feature} needs TensorFlow, which cannot be imported here ({error}); pip install tensorflow, "
            "or choose another backend with KERAS_BACKEND=jax for the models alone.") from error
    return tf


def matmul_precision():
    """A context in which float32 matrix products are true float32 on every device, as in the PyTorch references.

    Under JAX on a GPU, a float32 product at JAX's default precision runs in TensorFloat-32 (10-bit mantissa),
    which puts fp32 results ~1e-3 away from the reference (benchmarks/RESULTS.md, "GPU"). tf_esm's model calls
    and compiled programs therefore trace at "highest" there, unless the user chose a precision
    (`jax.config.update("jax_default_matmul_precision", ...)`: "default" or "tensorfloat32" for the faster
    products). Half-precision products are unaffected. Elsewhere (TensorFlow, JAX on a CPU) it does nothing.
    """
    import contextlib

    if keras_backend() != "jax":
        return contextlib.nullcontext()
    import jax

    if jax.config.jax_default_matmul_precision is not None or jax.default_backend() == "cpu":
        return contextlib.nullcontext()
    return jax.default_matmul_precision("highest")
