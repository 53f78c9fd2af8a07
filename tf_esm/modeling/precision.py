"""Inference precision of a model: float32 (the default) or bfloat16 storage.

A bfloat16 model stores its weights in bfloat16 (Keras dtype policy "bfloat16", set while the model is built), so no
float32 variable is cast on every call as under the `mixed_bfloat16` training policy, and its matmuls run on the
CPU's bfloat16 units (oneDNN: AMX or AVX512_BF16). Layer norms (Keras computes them in float32 for half-precision
inputs), the softmax of the attention, the rotary tables and the mean pooling of `tf_esm.pipelines.inference` work in float32,
as the reference does under `torch.autocast`; the residual stream between them is bfloat16.

bfloat16 here is an inference precision: training wants float32 master weights (`mixed_bfloat16`).

ESMFold's stem takes float16 or bfloat16 storage the same way (`TFEsmForProteinFolding(stem_precision=...)`, built in
`dtype_policy_scope`), to match transformers' `fp16_esm` stem, which is `.half()`: float16 weights and float16
compute on any device. What torch does on half tensors there, and what the stem does: layer norms accumulate in
float32 and round once (Keras: the same); the eager attention's scores are float16 matmul outputs, its softmax runs
in float32 internally and the probabilities are rounded to float16 (the same: TensorFlow's blocked CPU attention,
and the explicit path under JAX, whose fused kernel cannot run float16 on a CPU; JAX's fused bfloat16 kernel keeps
the scores in float32, a little more precise); the rotary tables are computed in float32 from the checkpoint's
frequencies and the rotation in float32 (the same, except that torch rounds the tables to float16 first: no
measurable difference); matmuls accumulate in float32 (oneDNN and XLA: the same); the hidden states are cast to
float32 before the learned layer combination (the same). One difference is kept: torch adds a linear layer's bias
before rounding the float32 sum to half, a half matmul here rounds before the bias is added, so about a quarter of
a projection's outputs differ by one half-precision ulp; matching it would need float32 matmuls.
"""

from __future__ import annotations

import sys

import contextlib
import logging

PRECISIONS = ("float32", "bfloat16")
# CPU flags (Linux /proc/cpuinfo names) of instructions that compute bfloat16 dot products natively.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

logger = logging.getLogger("tf_esm")


def check_precision(precision):
    """The canonical name of `precision` ("float32", "bfloat16"; also "fp32", "bf16"), or a ValueError."""
    aliases = {"fp32": "float32", "bf16": "bfloat16", None: "float32"}
    name = aliases.get(precision, precision)
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    return name


# Where the CPU's feature flags are read (Linux only; elsewhere they are unknown and the checks that use them pass).
CPU_FLAGS_FILE = "/proc/cpuinfo" if sys.platform.startswith("linux") else None


def cpu_flags(path=None):
    """The CPU's feature flags (Linux), or None where they cannot be read."""
    path = path or CPU_FLAGS_FILE
    if path is None:
        return None
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def cpu_bf16_flags():
    """Which of `BF16_CPU_FLAGS` this CPU has (a tuple), or None where the flags cannot be read."""
    flags = cpu_flags()
    if flags is None:
        return None
    return tuple(flag for flag in BF16_CPU_FLAGS if flag in flags)


def runs_on_cpu():
    """Whether the backend computes on the CPU (no GPU visible to it)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.config.list_logical_devices("GPU")
    if backend == "jax":
        import jax

        return jax.default_backend() == "cpu"
    if backend == "torch":
        import torch

        return not torch.cuda.is_available()
    return True


def warn_if_slow(precision):
    """Warn when `precision` is bfloat16 and the model runs on a CPU without bfloat16 instructions, or float16 on
    a CPU under TensorFlow.

    Such a CPU still computes the right (bfloat16) numbers, by converting to float32 op by op, which is slower than
    float32 itself. On a GPU the bfloat16 model runs there as it is (tensor cores from Ampere on). Returns the
    warning's text, or None.
    """
    import keras

    if precision == "float16" and keras.backend.backend() == "tensorflow" and runs_on_cpu():
        message = ("float16 precision on a CPU: TensorFlow has no fast float16 matmul there (the full ESMFold's "
                   "float16 stem did not finish one fold in 20 minutes, benchmarks/RESULTS.md); on a CPU use "
                   "bfloat16 for half-precision weights, or float32.")
        logger.warning(message)
        return message
    if precision != "bfloat16" or not runs_on_cpu():
        return None
    found = cpu_bf16_flags()
    if found:
        return None
    if found is None:
        message = ("bfloat16 precision: cannot read this CPU's feature flags, so whether it has bfloat16 "
                   f"instructions ({' or '.join(BF16_CPU_FLAGS)}) is unknown; without them bfloat16 is emulated "
                   "and slower than float32.")
    else:
        message = (f"bfloat16 precision: this CPU has neither {' nor '.join(BF16_CPU_FLAGS)} (no bfloat16 "
                   "instructions), so bfloat16 is emulated: the results are right but slower than float32; "
                   "use float32 here.")
    logger.warning(message)
    return message


@contextlib.contextmanager
def building_in(precision):
    """Layers created in the block take `precision`'s Keras dtype policy (their variables are of that dtype).

    Keras keeps the global policy per thread, so models built at the same time in other threads are unaffected.
    """
    if precision == "float32":  # whatever policy the caller set (e.g. mixed_bfloat16 for training) applies
        yield
        return
    with dtype_policy_scope(precision):
        yield


@contextlib.contextmanager
def dtype_policy_scope(policy):
    """Keras' global dtype policy is `policy` inside the block (per thread), and what it was after it."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
