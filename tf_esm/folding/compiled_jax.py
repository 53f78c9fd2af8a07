"""JAX-only part of ESMFold: the `jax.jit` program of the compiled inference path. The backend-neutral model
(`model.py`, `primitives.py`) imports this module only when `keras.backend.backend() == "jax"`."""

from __future__ import annotations

import contextlib
import threading

import jax
import keras
import numpy as np

from tf_esm.folding.primitives import compiling

# While a program is traced: the variable -> value pairs of its stateless scope, and, per repeated layer stack
# (keyed by the id of its first layer), the stacked weights that `scan_layers` loops over.
_TRACE = threading.local()


# On a CPU, XLA's LLVM backend at optimisation level 1 instead of its default compiles the folding program in
# about 2/3 of the CPU time, and the program measured no slower on the tiny test model (benchmarks/RESULTS.md).
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def can_compile(values):
    """Whether a call with these argument values may take the compiled path: concrete values, not traced ones
    (a call inside someone else's `jax.jit` runs as ordinary traced code)."""
    return not any(isinstance(value, (jax.core.Tracer, keras.KerasTensor)) for value in values)


def _signature(layer):
    return [(tuple(v.shape), str(v.dtype)) for v in layer.variables]


def inference_function(model, bucket, chunk_size):
    """A jitted forward pass of `model` on inputs padded to `bucket` residues, returning its outputs at the
    bucket length (uncropped: XLA needs static shapes; the caller crops them to the unpadded length).

    The weights are arguments of the program, not constants baked into it (Keras' stateless scope maps each
    variable to the value passed in), so the program is compiled once however the weights change, and is not
    the size of the model. Stacks of identical layers (`model.repeated_layer_stacks()`, the trunk blocks) get
    their weights stacked, outside the program, and run as one loop over them (`scan_layers`), so XLA compiles
    one block, not one per block. The number of recycles and the unpadded length are traced scalars: the
    recycling passes run in a loop op and the bucket padding is hidden by a mask, so one program serves every
    length in the bucket and every `num_recycles`. jax compiles one program per batch size;
    `model.inference_trace_count` counts the traces (one per compilation)."""
    stacks = [list(layers) for layers in model.repeated_layer_stacks()
              if len(layers) > 1 and all(_signature(layer) == _signature(layers[0]) for layer in layers)]
    in_stacks = {id(v) for layers in stacks for layer in layers for v in layer.variables}
    plain = [v for v in model.variables if id(v) not in in_stacks]

    def forward(plain_values, stacked_values, input_ids, attention_mask, position_ids, masking_pattern,
                num_recycles, unpadded_length):
        model.inference_trace_count += 1  # runs only while tracing
        mapping = list(zip(plain, plain_values))
        for layers, stacked in zip(stacks, stacked_values):  # each layer's own slice, should anything read it
            for index, layer in enumerate(layers):
                mapping.extend((v, values[index]) for v, values in zip(layer.variables, stacked))
        scans = {id(layers[0]): stacked for layers, stacked in zip(stacks, stacked_values)}
        with keras.StatelessScope(state_mapping=mapping), compiling(), _tracing(mapping, scans):
            return model.padded_outputs(input_ids, attention_mask, position_ids, masking_pattern,
                                        num_recycles=num_recycles, chunk_size=chunk_size,
                                        unpadded_length=unpadded_length)

    options = model.inference_compiler_options
    if options is None:
        options = dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}
    jitted = jax.jit(forward, compiler_options=options or None)
    cache = {}

    def weights():
        """(plain values, stacked values per layer stack); the stacks are rebuilt only when a weight changed."""
        current = [[[v.value for v in layer.variables] for layer in layers] for layers in stacks]
        flat = [value for per_stack in current for per_layer in per_stack for value in per_layer]
        if len(cache.get("values", ())) != len(flat) or any(a is not b for a, b in zip(cache["values"], flat)):
            cache["values"] = flat
            # Stacked by numpy: eager jnp ops would compile a small program per weight shape.
            cache["stacked"] = [[jax.device_put(np.stack([np.asarray(v) for v in values]))
                                 for values in zip(*per_stack)] for per_stack in current]
        return [v.value for v in plain], cache["stacked"]

    def run(*inputs):
        return jitted(*weights(), *inputs)

    run.jitted, run.weights = jitted, weights  # for inspection (lowering, profiling)
    return run


@contextlib.contextmanager
def _tracing(mapping, scans):
    previous = getattr(_TRACE, "state", None)
    _TRACE.state = (mapping, scans)
    try:
        yield
    finally:
        _TRACE.state = previous


def scan_layers(layers, step, carry):
    """`carry = step(layer, carry)` for each of `layers`, as one `lax.scan` over their stacked weights: the body
    runs `layers[0]` with its variables mapped to the weights of the layer at hand. Stacks the program was not
    given stacked weights for run in a Python loop."""
    mapping, scans = getattr(_TRACE, "state", None) or ((), {})
    stacked = scans.get(id(layers[0]))
    if stacked is None:
        for layer in layers:
            carry = step(layer, carry)
        return carry
    first = layers[0]

    def body(carry, values):
        pairs = list(mapping) + list(zip(first.variables, values))  # later pairs win
        with keras.StatelessScope(state_mapping=pairs), _tracing(pairs, scans):
            return step(first, carry), None

    carry, _ = jax.lax.scan(body, carry, stacked)
    return carry
