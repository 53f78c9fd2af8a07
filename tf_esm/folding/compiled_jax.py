"""JAX-only part of ESMFold: the `jax.jit` program of the compiled inference path. The backend-neutral model
(`model.py`, `primitives.py`) imports this module only when `keras.backend.backend() == "jax"`."""

from __future__ import annotations

import jax
import keras

from tf_esm.folding.primitives import compiling
from tf_esm.modeling import encoder_jax

# On a CPU, XLA's LLVM backend at optimisation level 1 instead of its default compiles the folding program in
# about 2/3 of the CPU time, and the program measured no slower on the tiny test model (benchmarks/RESULTS.md).
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def can_compile(values):
    """Whether a call with these argument values may take the compiled path: concrete values, not traced ones
    (a call inside someone else's `jax.jit` runs as ordinary traced code)."""
    return not any(isinstance(value, (jax.core.Tracer, keras.KerasTensor)) for value in values)


def inference_function(model, bucket, chunk_size):
    """A jitted forward pass of `model` on inputs padded to `bucket` residues, returning its outputs at the
    bucket length (uncropped: XLA needs static shapes; the caller crops them to the unpadded length).

    The weights are arguments of the program, not constants baked into it (Keras' stateless scope maps each
    variable to the value passed in), so the program is compiled once however the weights change, and is not
    the size of the model. The stem's layers and the trunk's blocks, each a `LayerStack` whose weights are stacked
    already, run as one loop over those (`encoder_jax.scan_stack`): XLA compiles one layer and one block, not one
    per layer or block. The number of recycles and the unpadded length are traced scalars: the recycling passes
    run in a loop op and the bucket padding is hidden by a mask, so one program serves every length in the bucket
    and every `num_recycles`. jax compiles one program per batch size;
    `model.inference_trace_count` counts the traces (one per compilation)."""

    def forward(input_ids, attention_mask, position_ids, masking_pattern, num_recycles, unpadded_length):
        model.inference_trace_count += 1  # runs only while tracing
        with compiling():
            return model.padded_outputs(input_ids, attention_mask, position_ids, masking_pattern,
                                        num_recycles=num_recycles, chunk_size=chunk_size,
                                        unpadded_length=unpadded_length)

    options = model.inference_compiler_options
    if options is None:
        options = dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}
    return encoder_jax.jit_with_weights(model.variables, forward, compiler_options=options)

