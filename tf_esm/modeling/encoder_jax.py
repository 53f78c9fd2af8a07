"""JAX-only: programs compiled with `jax.jit` whose weights are arguments, with each stack of identical layers (the
ESM encoder's layers; ESMFold's trunk blocks, a `LayerStack`) run as one `jax.lax.scan` over the layers' stacked
weights.

Unrolled, a deep stack is one copy of the layer per layer in the program: XLA's compile time grows with the depth
(33 layers for esm2 650M, 36 for ESMFold's 3B stem). Scanned, XLA compiles the layer once. The maths stays in the
layers (`keras.ops`); this module only maps their variables to the values the program was given. Backend-neutral
modules import it only when `keras.backend.backend() == "jax"`.

`StackedWeights` splits a model's variables into plain ones and stacks: the stacks' weights are stacked once,
outside the program (and again only when a weight changes), at the price of a second copy of those weights in
memory. `jit_with_weights` compiles a function of the inputs with those values as its first arguments. While such a
program is traced, `stacked_values(layers)` gives a stack's stacked weights, and `scan_layers` runs a step over the
stack as one scan; outside (eager calls, someone else's `jax.jit`) they fall back to the layers one by one.
"""

from __future__ import annotations

import contextlib
import threading

import jax
import keras
import numpy as np

from tf_esm.backend import matmul_precision

# Run the ESM encoder's layers as one scan where the program has their stacked weights. Off: unrolled, as before
# (benchmarks/jax_encoder_compile.py --unrolled compares the two).
SCAN_ENCODER = True

# While a program is traced: the variable -> value pairs of its stateless scope, and, per stack (keyed by the id of
# its first layer), the stacked weights that `scan_layers` loops over.
_TRACE = threading.local()


def _signature(layer):
    return [(tuple(v.shape), str(v.dtype)) for v in layer.variables]


def stackable(layers):
    """Whether `layers` (two or more) all have variables of the same shapes and dtypes, in the same order."""
    layers = list(layers)
    return len(layers) > 1 and all(_signature(layer) == _signature(layers[0]) for layer in layers)


class StackedWeights:
    """A model's variables as a compiled program's arguments: `plain` values as they are, and for each stack of
    identical layers one array per variable, stacked over the layers (leading axis = layer)."""

    def __init__(self, variables, stacks):
        self.stacks = [list(layers) for layers in stacks if stackable(layers)]
        in_stacks = {id(v) for layers in self.stacks for layer in layers for v in layer.variables}
        self.plain = [v for v in variables if id(v) not in in_stacks]
        self._flat = ()
        self._stacked = []
        self._lock = threading.Lock()

    def values(self):
        """(plain values, stacked values per stack); the stacks are rebuilt only when a weight changed."""
        current = [[[v.value for v in layer.variables] for layer in layers] for layers in self.stacks]
        flat = [value for per_stack in current for per_layer in per_stack for value in per_layer]
        with self._lock:
            if len(self._flat) != len(flat) or any(a is not b for a, b in zip(self._flat, flat)):
                self._stacked = [[_stack(values) for values in zip(*per_stack)] for per_stack in current]
                self._flat = flat
            stacked = self._stacked
        return [v.value for v in self.plain], stacked

    @contextlib.contextmanager
    def scope(self, plain_values, stacked_values):
        """Inside a traced program: the variables mapped to the program's arguments. Each stacked layer's variables
        map to its own slice too, should anything read them outside the scan."""
        mapping = list(zip(self.plain, plain_values))
        for layers, stacked in zip(self.stacks, stacked_values):
            for index, layer in enumerate(layers):
                mapping.extend((v, values[index]) for v, values in zip(layer.variables, stacked))
        scans = {id(layers[0]): stacked for layers, stacked in zip(self.stacks, stacked_values)}
        with keras.StatelessScope(state_mapping=mapping), _tracing(mapping, scans):
            yield


def _stack(values):
    # Stacked by numpy on the host, then put on the device once: eager jnp ops would compile a small program per
    # weight shape. Half-precision weights keep their dtype (numpy has float16; bfloat16 comes from ml_dtypes).
    return jax.device_put(np.stack([np.asarray(v) for v in values]))


def jit_with_weights(weights, forward, compiler_options=None):
    """`run(*inputs)`: `forward(*inputs)` compiled with `jax.jit`, the variables' values (`weights.values()`)
    passed as arguments, not baked in as constants, so one program serves whatever the weights are.

    `run.jitted` is the jitted function and `run.arguments(*inputs)` its full argument list (for lowering or
    compiling ahead of time)."""

    def program(plain_values, stacked_values, *inputs):
        # float32 products traced at full precision on a GPU, unless the user chose one (backend.matmul_precision).
        with weights.scope(plain_values, stacked_values), matmul_precision():
            return forward(*inputs)

    jitted = jax.jit(program, compiler_options=compiler_options or None)

    def arguments(*inputs):
        return (*weights.values(), *inputs)

    def run(*inputs):
        return jitted(*arguments(*inputs))

    run.jitted, run.arguments, run.weights = jitted, arguments, weights
    return run


@contextlib.contextmanager
def _tracing(mapping, scans):
    previous = getattr(_TRACE, "state", None)
    _TRACE.state = (mapping, scans)
    try:
        yield
    finally:
        _TRACE.state = previous


def tracing():
    """Whether a program of `jit_with_weights` is being traced (its variables mapped to its arguments)."""
    return getattr(_TRACE, "state", None) is not None


def scan_stack(stack, step, carry):
    """`carry = step(layer, carry)` for each layer of a `LayerStack` (modeling/layer_stack.py), inside a program
    being traced, as one `lax.scan` over the stacked weights the program was given: the weights are already
    stacked, so nothing is copied."""
    return _scan(stack.template, stack.template_weights, step, carry,
                 [variable.value for variable in stack.stacked_weights])


def _scan(template, template_variables, step, carry, stacked, with_outputs=False):
    """`lax.scan` of `step(template, carry)` over `stacked` (one array per template variable, leading axis =
    layer): the body maps the template's variables to the layer's slices, inside the program's own mapping."""
    mapping, scans = _TRACE.state

    def body(carry, values):
        pairs = list(mapping) + list(zip(template_variables, values))  # later pairs win
        with keras.StatelessScope(state_mapping=pairs, initialize_variables=False), _tracing(pairs, scans):
            result = step(template, carry)
        return result if with_outputs else (result, None)

    carry, outputs = jax.lax.scan(body, carry, stacked)
    return (carry, outputs) if with_outputs else carry


def stacked_values(layers):
    """The stacked weights of `layers` in the program being traced, or None (not tracing such a program, or the
    program was not given this stack)."""
    state = getattr(_TRACE, "state", None)
    if state is None or not layers:
        return None
    return state[1].get(id(layers[0]))


def scan_layers(layers, step, carry, with_outputs=False):
    """`carry = step(layer, carry)` for each of `layers`, as one `lax.scan` over their stacked weights: the body
    runs `layers[0]` with its variables mapped to the weights of the layer at hand. With `with_outputs`, `step`
    returns `(carry, outputs)` and this returns `(carry, outputs stacked over the layers)`. Stacks the program was
    not given stacked weights for run in a Python loop (the outputs then stacked the same way)."""
    stacked = stacked_values(layers)
    if stacked is None:
        outputs = []
        for layer in layers:
            carry = step(layer, carry)
            if with_outputs:
                carry, out = carry
                outputs.append(out)
        if not with_outputs:
            return carry
        return carry, jax.tree_util.tree_map(lambda *xs: jax.numpy.stack(xs), *outputs)
    return _scan(layers[0], layers[0].variables, step, carry, stacked, with_outputs=with_outputs)


def scan_encoder(layers, hidden_states, output_hidden_states, output_attentions, **layer_kwargs):
    """The ESM encoder's layer loop as one scan, or None where it cannot be (no stacked weights in this trace, or
    the scan switched off). Returns (last hidden state, per-layer input hidden states or None, per-layer attention
    probabilities or None, per-layer cross-attention probabilities or None), the per-layer tensors as tuples, as
    the unrolled loop collects them. `layer_kwargs` are what every layer gets (masks, rotary tables, ...)."""
    if not SCAN_ENCODER or stacked_values(layers) is None:
        return None

    def step(layer, hidden):
        new, probs, cross_probs, _ = layer(hidden, output_attentions=output_attentions, **layer_kwargs)
        outputs = (hidden if output_hidden_states else None, probs, cross_probs)
        return new, outputs

    hidden_states, (inputs, probs, cross_probs) = scan_layers(layers, step, hidden_states, with_outputs=True)

    def unstack(stacked):
        return None if stacked is None else tuple(stacked[index] for index in range(len(layers)))

    return hidden_states, unstack(inputs), unstack(probs), unstack(cross_probs)
