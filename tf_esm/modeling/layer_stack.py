"""`LayerStack`: N layers of one structure as ONE Keras layer, their weights stacked along a leading layer axis.

ESMFold's trunk is 48 identical blocks of 62 Keras layers and 80 weights each. As 48 Keras layers that was ~3,000
layers to construct and build and ~3,800 variables to create for every `from_pretrained`, most of its time
(benchmarks/RESULTS.md, "One layer per stack"). Here one template layer is constructed and built, with no memory
(its variables are created in a stateless scope and never initialised), and the stack owns one variable per
template weight, of shape `(count,) + weight shape`. Layer i runs as the template with its variables mapped to
slice i of the stacked ones (a `keras.StatelessScope`, as the traced and scanned layer loops already ran):

* in a JAX program compiled with the weights as arguments (`encoder_jax.jit_with_weights`), one `lax.scan` over the
  stacked values themselves: no stacked copy of the weights is made;
* under TensorFlow, for inference in a graph (or eagerly inside `layers_tf.traced_in_eager`), the template traced
  once and called per slice (`layers_tf.apply_stack`), slices that share the stacked buffers;
* elsewhere (eager calls, training) a Python loop over `ops.take(stacked, i)` (under TensorFlow its gradient is a
  sparse update of slice i, not a dense one of the whole stack per layer).

Weight names: a stacked variable is named `*.<path in the template>.<leaf>`, each '.' written '-' (`KERAS_DOT` of
`io/weights.py`: `trunk/blocks/*-tri_mul_out-linear_z-kernel`), so the reference name rule of `io/weights.py` gives
`trunk.blocks.*.tri_mul_out.linear_z.weight`: the `*` stands for the layer index, as in transformers 5's wildcard
keys. Checkpoints with per-layer names (`trunk.blocks.0...`) are stacked on loading; tf_esm's own file stores the
stacks as they are (`io/native_h5.py`).

Only the template's weights (`layer.weights`) are stacked: a template with other state (a dropout's seed
generator, for a rate above 0) shares it across the layers, and the seed state advances per call, not per layer.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tf_esm.io.stacked_weights import STACK_WILDCARD
from tf_esm import keras_compat
from tf_esm.io.names import keras_name



class _StackedInitializer:
    """The template weight's initializer, drawn once per layer and stacked (what N separate layers would get);
    where Keras does not say which initializer that is (`keras_compat.initializer_of`), weight `index` of `count`
    freshly built templates (`fresh`)."""

    def __init__(self, initializer, count, fresh=None, index=None):
        self.initializer, self.count, self.fresh, self.index = initializer, count, fresh, index

    def __call__(self, shape, dtype=None):
        if self.initializer is None:
            return self.fresh.draw(self.index)
        # A Keras initializer without a seed draws the same values at every call; a clone (as each of N separate
        # layers has) draws its own.
        clone = getattr(self.initializer, "clone", lambda: self.initializer)
        return ops.stack([clone()(tuple(shape[1:]), dtype=dtype) for _ in range(self.count)])


class _FreshTemplates:
    """Initial values of `count` templates made and built as ordinary layers, drawn weight by weight; the
    templates' values are dropped once every weight has been drawn."""

    def __init__(self, make_layer, shapes, count, num_weights):
        self.make_layer, self.shapes, self.count, self.remaining = make_layer, shapes, count, num_weights
        self.values = None

    def draw(self, index):
        if self.values is None:
            self.values = []
            for _ in range(self.count):
                layer = self.make_layer()
                layer.build(*self.shapes)
                # `Variable.numpy()`: NumPy's own conversion of a tf.Variable raises a DeprecationWarning.
                self.values.append([weight.numpy() for weight in layer.weights])
        stacked = np.stack([values[index] for values in self.values])
        self.remaining -= 1
        if self.remaining == 0:
            self.values = None
        return stacked


class LayerStack(keras.layers.Layer):
    """`count` layers made by `make_layer()`, applied in turn, as one layer with stacked weights.

    Args:
        make_layer: Called once, with no arguments: the template layer (its name does not matter).
        count: Number of layers (the length of the stacked axis).

    Build with the template's build arguments (`stack.build(*shapes)`), then run `stack.apply(step, carry)`, which
    computes `carry = step(layer, carry)` for each layer in turn (`layer` is the template, its weights mapped to the
    layer at hand).

    Examples:

    ```python
    >>> import keras, numpy as np
    >>> from tf_esm.modeling.layer_stack import LayerStack
    >>> stack = LayerStack(lambda: keras.layers.Dense(4), 3, name="blocks")
    >>> stack.build((None, 4))
    >>> [tuple(w.shape) for w in stack.weights]
    [(3, 4, 4), (3, 4)]
    >>> stack.apply(lambda layer, x: layer(x), np.ones((2, 4), "float32")).shape
    (2, 4)
    ```
    """

    def __init__(self, make_layer, count, **kwargs):
        super().__init__(**kwargs)
        if count < 1:
            raise ValueError(f"A LayerStack needs at least one layer, got count={count}.")
        self.count = int(count)
        # Not an attribute Keras tracks: the template's (unset) variables are not the stack's weights.
        object.__setattr__(self, "_template", make_layer())
        object.__setattr__(self, "_make_layer", make_layer)

    @property
    def template(self):
        return self._template

    def __len__(self):
        return self.count

    def __dir__(self):
        # Keras' `.keras` saving walks a layer's attributes by `dir()`: the template's variables (never set) are
        # not the stack's state; its own stacked variables are.
        hidden = ("template", "_template", "_pairs", "_make_layer")
        return [name for name in super().__dir__() if name not in hidden]

    def build(self, *shapes):
        template = self._template
        keras_compat.build_without_values(template, *shapes)  # slices are mapped in at each call
        template_weights = list(template.weights)
        initializers = [keras_compat.initializer_of(weight) for weight in template_weights]
        fresh = _FreshTemplates(self._make_layer, shapes, self.count, sum(each is None for each in initializers))
        prefix = template.path + "/"
        stacked = []
        for index, weight in enumerate(template_weights):
            relative = weight.path[len(prefix):] if weight.path.startswith(prefix) else weight.name
            stacked.append(self.add_weight(
                name=keras_name(".".join([STACK_WILDCARD] + relative.split("/"))),
                shape=(self.count,) + tuple(weight.shape), dtype=weight.dtype, trainable=weight.trainable,
                initializer=_StackedInitializer(initializers[index], self.count, fresh, index)))
        # (template weight, stacked weight); a plain attribute (Keras would track the template's in a list).
        object.__setattr__(self, "_pairs", tuple(zip(template_weights, stacked)))
        self.built = True

    @property
    def template_weights(self):
        """The template's weights, in the order of `stacked_weights`."""
        return [template_weight for template_weight, _ in self._pairs]

    @property
    def stacked_weights(self):
        return [stacked for _, stacked in self._pairs]

    def layer_values(self, index):
        """Layer `index`'s weights (slices of the stacked values), in the order of `template_weights`."""
        return [ops.take(stacked.value, index, axis=0) for stacked in self.stacked_weights]

    def run_layer(self, values, step, carry):
        """`step(template, carry)` with the template's weights mapped to `values`. Inside another stateless scope
        (a JAX program's arguments, Keras' stateless training step) its mapping stays in force; the template's
        other state (seed generators) is updated where it lives, as an ordinary layer's would be."""
        mapped = {id(weight) for weight in self.template_weights}
        others = [variable for variable in self._template.variables if id(variable) not in mapped]
        with mapped_scope(list(zip(self.template_weights, values)), others) as scope:
            result = step(self._template, carry)
        for variable in others:
            if (value := scope.get_current_value(variable)) is not None:
                variable.assign(value)  # an update of the enclosing stateless scope, if any
        return result

    def apply(self, step, carry, training=False):
        """`carry = step(layer, carry)` for each layer in turn; returns the last `carry` (a tensor or a nested
        structure of tensors). See the module docstring for how each backend runs the loop."""
        backend = keras.backend.backend()
        if backend == "jax":
            from tf_esm.modeling import encoder_jax

            if encoder_jax.tracing():
                return encoder_jax.scan_stack(self, step, carry)
        elif backend == "tensorflow" and not training:
            from tf_esm.modeling import layers_tf

            if layers_tf.traceable_stack(self):
                return layers_tf.apply_stack(self, step, carry)
        for index in range(self.count):
            carry = self.run_layer(self.layer_values(index), step, carry)
        return carry

    def get_config(self):
        config = super().get_config()
        config["count"] = self.count
        return config


class mapped_scope(keras.StatelessScope):
    """A `keras.StatelessScope` mapping `pairs` (variable, value), which also keeps the mapping of the scope it is
    entered in (Keras' own scopes replace it: a variable mapped outside would read its stored value inside): all
    of it where Keras says which scope that is (`keras_compat.current_stateless_scope`), else the values the
    variables `others` have there."""

    def __init__(self, pairs, others=()):
        super().__init__(state_mapping=pairs, initialize_variables=False)
        self.others = list(others)

    def __enter__(self):
        outer = keras_compat.current_stateless_scope()
        if outer is not None:
            for key, value in outer.state_mapping.items():
                self.state_mapping.setdefault(key, value)
        else:
            for variable in self.others:
                self.state_mapping.setdefault(id(variable), variable.value)
        return super().__enter__()
