"""TensorFlow-only: a stack of identical layers (a `LayerStack`) traced once inside a graph, not once per layer.

Unrolled in a `tf.function`, a stack of N layers is N copies of the layer in the graph: traced N times in Python,
then optimised and instantiated N times by TensorFlow's runtime on the first call. That was most of the fixed cost
of a `tf-esm embed` run at the small sizes and of ESMFold's first call at a new length (36 stem layers, 48 trunk
blocks). Here the stack's template layer is traced once as a nested function whose arguments are its weights, run
with its variables mapped to those arguments (a `keras.StatelessScope`, as `encoder_jax` does for a scan), and the
nested function is called once per layer with that layer's slices of the stacked weights. The calls are not
inlined (`_noinline`): the runtime optimises the layer's graph once (the same oneDNN fusions) and the outer graph
stays small. The kernels are those of the unrolled loop, and the numbers too, to float32 rounding
(tests/test_layers_tf.py).

Only for inference (`training` false): the nested function maps the layer's weights, not other state (dropout's
seed generator would not advance inside it). Backend-neutral modules import this module only under TensorFlow.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np

from tf_esm._switch import ThreadSwitch
from tf_esm.backend import require_tensorflow

tf = require_tensorflow("tf_esm.modeling.layers_tf (layers traced once)")

# Trace a stack of identical layers once inside graphs. Off: one trace per layer (unrolled), as before.
TRACE_ONCE = True
# Keep the per-layer calls as function calls. Inlined, the runtime optimises N copies again on the first call
# (first calls, inlined or not: benchmarks/RESULTS.md, "Layers traced once").
NOINLINE = True

_EAGER = ThreadSwitch()


def traced_in_eager():
    """Within this context, eager (op-by-op) inference also runs each stack of identical layers through one traced
    function (traced afresh on each call: its cost is one layer's trace, paid per stack and call). ESMFold's first
    call at a new length runs this way (`TFEsmForProteinFolding`), without tracing the whole model."""
    return _EAGER.on()


def _apply(count, call, carry, with_outputs=False):
    """`carry = call(index, carry)` for index < count."""
    outputs = []
    for index in range(count):
        carry = call(index, carry)
        if with_outputs:
            carry, out = carry
            outputs.append(out)
    return (carry, outputs) if with_outputs else carry


def _traced_once(variables, step_of_values):
    """`call(values, state)`: `step_of_values(state)` traced once as a nested function whose first argument is the
    values of `variables` (mapped in while tracing), and called with each set of values after that."""

    def body(values, state):
        with keras.StatelessScope(state_mapping=list(zip(variables, values)), initialize_variables=False):
            return step_of_values(state)

    traced = tf.function(body, autograph=False, experimental_attributes={"_noinline": NOINLINE})
    concrete = []

    def call(values, state):
        if not concrete:  # one trace; the later calls skip tf.function's per-call signature matching
            concrete.append(traced.get_concrete_function(values, state))
        return concrete[0](values, state)

    return call


def traceable_stack(stack):
    """Whether `apply_stack` may run this `LayerStack` (modeling/layer_stack.py): inside a graph being built, or
    eagerly inside `traced_in_eager()`."""
    if not TRACE_ONCE or not stack.built:
        return False
    return not tf.executing_eagerly() or bool(_EAGER)


# Eagerly, step -> stack -> {carry signature: traced step}: a caller that applies a stack several times with one
# `step` object (ESMFold's recycling passes) has it traced once. Entries go with the step or the stack.
_EAGER_TRACES = weakref.WeakKeyDictionary()


def _carry_signature(carry):
    """What a trace of `carry` depends on: arrays' shapes and dtypes, other (Python) values themselves."""
    return tuple((tuple(t.shape), str(t.dtype)) if tf.is_tensor(t) or isinstance(t, np.ndarray) else ("value", t)
                 for t in tf.nest.flatten(carry))


def _traced_step(stack, step, carry):
    template = stack.template
    if not tf.executing_eagerly():  # a graph being built: its own trace
        return _traced_once(stack.template_weights, lambda state: step(template, state))
    traces = _EAGER_TRACES.setdefault(step, weakref.WeakKeyDictionary()).setdefault(stack, {})
    key = _carry_signature(carry)
    if key not in traces:
        step_ref = weakref.ref(step)  # the entry must not keep its key alive
        traces[key] = _traced_once(stack.template_weights, lambda state: step_ref()(template, state))
    return traces[key]


def apply_stack(stack, step, carry, with_outputs=False):
    """`carry = step(layer, carry)` for each layer of a `LayerStack`: the template traced once, its weights mapped
    to the function's arguments, and called with each layer's slices of the stacked weights (`tf.unstack`: views
    of the stacked buffers, no copy; under a distribution strategy, of this replica's copy, passed as arguments
    rather than captured). `step` may use tensors of the enclosing graph (captured by the nested function). With
    `with_outputs`, `step` returns `(carry, outputs)` and this returns `(carry, [each layer's outputs])`. Eagerly,
    the trace is reused by later calls with the same `step` object and carry shapes."""
    traced = _traced_step(stack, step, carry)
    per_weight = [tf.unstack(variable.value, num=stack.count) for variable in stack.stacked_weights]

    def call(index, state):
        return traced([slices[index] for slices in per_weight], state)

    return _apply(stack.count, call, carry, with_outputs=with_outputs)
