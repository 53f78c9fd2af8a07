"""JAX-only: programs compiled with `jax.jit` whose weights are arguments, with each stack of identical layers (a
`LayerStack`: the ESM encoder's layers, ESMFold's trunk blocks) run as one `jax.lax.scan` over its stacked weights.

Unrolled, a deep stack is one copy of the layer per layer in the program: XLA's compile time grows with the depth
(33 layers for esm2 650M, 36 for ESMFold's 3B stem). Scanned, XLA compiles the layer once. The maths stays in the
layers (`keras.ops`); this module only maps their variables to the values the program was given. A `LayerStack`
holds its weights stacked already, so the scan loops over the program's arguments themselves: the weights are held
once. Backend-neutral modules import it only when `keras.backend.backend() == "jax"`.

`jit_with_weights` compiles a function of the inputs with the variables' values as its first argument. While such a
program is traced, `LayerStack.apply` calls `scan_stack`; outside (eager calls, someone else's `jax.jit`, Keras'
training step) a stack runs its layers in a Python loop.
"""

from __future__ import annotations

import contextlib
import threading

import jax
import keras

from tf_esm.backend import matmul_precision

# Run each `LayerStack` as one scan inside `jit_with_weights` programs. Off: unrolled, one copy of the layer per
# layer in the program (benchmarks/jax_encoder_compile.py --unrolled compares the two).
SCAN_STACKS = True

# While a program is traced: the variable -> value pairs of its stateless scope.
_TRACE = threading.local()


def jit_with_weights(variables, forward, compiler_options=None):
    """`run(*inputs)`: `forward(*inputs)` compiled with `jax.jit`, the values of `variables` (a model's variables)
    passed as arguments, not baked in as constants, so one program serves whatever the weights are.

    `run.jitted` is the jitted function and `run.arguments(*inputs)` its full argument list (for lowering or
    compiling ahead of time)."""
    variables = list(variables)

    def program(values, *inputs):
        mapping = list(zip(variables, values))
        # float32 products traced at full precision on a GPU, unless the user chose one (backend.matmul_precision).
        with keras.StatelessScope(state_mapping=mapping), _tracing(mapping), matmul_precision():
            return forward(*inputs)

    jitted = jax.jit(program, compiler_options=compiler_options or None)

    def arguments(*inputs):
        return ([variable.value for variable in variables], *inputs)

    def run(*inputs):
        return jitted(*arguments(*inputs))

    run.jitted, run.arguments, run.variables = jitted, arguments, variables
    return run


@contextlib.contextmanager
def _tracing(mapping):
    previous = getattr(_TRACE, "mapping", None)
    _TRACE.mapping = mapping
    try:
        yield
    finally:
        _TRACE.mapping = previous


def tracing():
    """Whether a program of `jit_with_weights` is being traced (its variables mapped to its arguments)."""
    return getattr(_TRACE, "mapping", None) is not None


def scans_stacks():
    """Whether a `LayerStack` applied now runs as one scan (`scan_stack`)."""
    return SCAN_STACKS and tracing()


def scan_stack(stack, step, carry, with_outputs=False, checkpoint=False):
    """`carry = step(layer, carry)` for each layer of a `LayerStack` (modeling/layer_stack.py), inside a program
    being traced, as one `lax.scan` over the stacked weights the program was given (nothing is copied). The body
    maps the template's weights to the layer's slices, inside the program's own mapping. With `with_outputs`,
    `step` returns `(carry, outputs)` and this returns `(carry, [each layer's outputs])`. With `checkpoint`, each
    layer's activations are recomputed in the backward pass (`jax.checkpoint` of the body: one layer each)."""
    mapping = _TRACE.mapping
    template, template_weights = stack.template, stack.template_weights

    def body(carry, values):
        pairs = list(mapping) + list(zip(template_weights, values))  # later pairs win
        with keras.StatelessScope(state_mapping=pairs, initialize_variables=False), _tracing(pairs):
            result = step(template, carry)
        return result if with_outputs else (result, None)

    if checkpoint:
        body = jax.checkpoint(body, prevent_cse=False)  # inside a scan CSE cannot undo it (jax.checkpoint's docs)
    carry, outputs = jax.lax.scan(body, carry, [variable.value for variable in stack.stacked_weights])
    if not with_outputs:
        return carry
    return carry, [jax.tree_util.tree_map(lambda stacked, i=index: stacked[i], outputs) for index in
                   range(stack.count)]
