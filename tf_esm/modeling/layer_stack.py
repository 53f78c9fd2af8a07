"""`LayerStack`: N layers of one structure as ONE Keras layer, their weights stacked along a leading layer axis.

The one way tf_esm runs a stack of identical layers: the ESM encoder's layers (`encoder.layer`) and ESMFold's trunk
blocks (`trunk.blocks`). ESMFold's trunk is 48 identical blocks of 62 Keras layers and 80 weights each. As 48 Keras
layers that was ~3,000 layers to construct and build and ~3,800 variables to create for every `from_pretrained`,
most of its time (benchmarks/RESULTS.md, "One layer per stack"). Here one template layer is constructed and built, with no memory
(its variables are created in a stateless scope and never initialised), and the stack owns one variable per
template weight, of shape `(count,) + weight shape`. Layer i runs as the template with its variables mapped to
slice i of the stacked ones (a `keras.StatelessScope`, as the traced and scanned layer loops already ran):

* in a JAX program compiled with the weights as arguments (`encoder_jax.jit_with_weights`), one `lax.scan` over the
  stacked values themselves: no stacked copy of the weights is made;
* under TensorFlow, for inference in a graph (or eagerly inside `layers_tf.traced_in_eager`), the template traced
  once and called per slice (`layers_tf.apply_stack`), slices that share the stacked buffers;
* elsewhere (eager calls, training, and calls with per-layer inputs such as a head mask or a decoder cache) a
  Python loop over the stacked values unstacked (`ops.unstack`; the gradient of a stacked weight is one dense
  tensor, each layer's gradient in its slice).

Weight names: a stacked variable is named `stacked.<path in the template>.<leaf>`, each '.' written '-' (`KERAS_DOT`
of `io/names.py`: `trunk/blocks/stacked-tri_mul_out-linear_z-kernel`), which the reference name rule of
`io/names.py` turns into `trunk.blocks.*.tri_mul_out.linear_z.weight`: the `*` stands for the layer index, as in
transformers 5's wildcard keys. Checkpoints with per-layer names (`trunk.blocks.0...`) are stacked on loading;
tf_esm's own file stores the stacks as they are (`io/native_h5.py`).

Only the template's weights (`layer.weights`) are stacked: the template's seed generators (dropout's) are the
stack's own state, shared across the layers; the seed state advances per layer and per call.

Gradient checkpointing: with `gradient_checkpointing` set (a plain attribute, off by default; models set it from
their config, `set_gradient_checkpointing` on every stack of a model), a training call recomputes each layer in
the backward pass (`checkpointing.py`, one checkpoint per layer) on every backend and loop above.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tf_esm import keras_compat
from tf_esm.io.names import stacked_variable_inner, stacked_variable_name
from tf_esm.modeling.checkpointing import checkpointed_call


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
        # Recompute each layer in the backward pass of a training call (checkpointing.py); not a weight, not saved
        # with the layer: the model's config carries it.
        self.gradient_checkpointing = False
        # Not an attribute Keras tracks: the template's (unset) variables are not the stack's weights.
        object.__setattr__(self, "_template", make_layer())
        object.__setattr__(self, "_make_layer", make_layer)
        # Its seed generators (dropout's) are the stack's state: shared by the layers, initialised, saved and
        # updated (in Keras' stateless training steps too) with the model's other variables.
        self.template_seed_generators = [
            value for layer in [self._template] + keras_compat.all_sublayers(self._template)
            for value in vars(layer).values() if isinstance(value, keras.random.SeedGenerator)]

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
        keras_compat.build_without_values(self._template, *shapes)  # slices are mapped in at each call
        object.__setattr__(self, "_pairs", ())  # (template weight, stacked weight); Keras would track a list
        object.__setattr__(self, "_shapes", shapes)
        self._stack_new_weights()
        self.built = True

    def _unstacked_template_weights(self):
        """The template's weights that have no stacked variable yet."""
        stacked_ids = {id(weight) for weight, _ in self._pairs}
        return [weight for weight in self._template.weights if id(weight) not in stacked_ids]

    def _stack_new_weights(self):
        """A stacked variable for each template weight that has none yet (all of them, when building)."""
        template = self._template
        new = self._unstacked_template_weights()
        initializers = [keras_compat.initializer_of(weight) for weight in new]
        fresh = _FreshTemplates(self._make_layer, self._shapes, self.count, sum(each is None for each in initializers))
        prefix = template.path + "/"
        pairs = list(self._pairs)
        for index, weight in enumerate(new):
            relative = weight.path[len(prefix):] if weight.path.startswith(prefix) else weight.name
            pairs.append((weight, self.add_weight(
                name=stacked_variable_name(relative),
                shape=(self.count,) + tuple(weight.shape), dtype=weight.dtype, trainable=weight.trainable,
                initializer=_StackedInitializer(initializers[index], self.count, fresh, index))))
        object.__setattr__(self, "_pairs", tuple(pairs))

    def change_template(self, change):
        """`change(template)`, which may add weights to the template (LoRA adapters: `Dense.enable_lora`); each new
        weight gets its stacked variable, initialised as N separate layers' would be, and a template weight whose
        `trainable` the change set passes it on to its stacked variable. Adding variables to a built layer takes
        Keras' private state unlocking (`keras_compat.unlocked_state`); public-only mode refuses it."""
        trainable = [weight.trainable for weight in self.template_weights]
        with keras_compat.unlocked_state(self, "changing the layers of a built LayerStack (LoRA adapters)"):
            with keras.StatelessScope(initialize_variables=False):
                result = change(self._template)
            new = self._unstacked_template_weights()
            keras_compat.forget_initialization(new)  # never initialised: no memory of their own
            missing = [weight.path for weight in new if keras_compat.initializer_of(weight) is None]
            if missing:
                raise RuntimeError(f"{self.name}: Keras does not say the initializers of {missing}, so their stacked "
                                   "values cannot be drawn (keras_compat: initializer_attribute).")
            for (weight, stacked), before in zip(self._pairs, trainable):
                if weight.trainable != before:  # `enable_lora` freezes the kernel it adapts
                    stacked.trainable = weight.trainable
            self._stack_new_weights()
        return result

    @property
    def template_weights(self):
        """The template's weights, in the order of `stacked_weights`."""
        return [template_weight for template_weight, _ in self._pairs]

    @property
    def stacked_weights(self):
        return [stacked for _, stacked in self._pairs]

    def stacked_weight(self, name):
        """The stacked variable of the template weight `name`, its path in the template joined by dots
        (`intermediate.dense.kernel`): layer i's weight is its slice i."""
        for stacked in self.stacked_weights:
            if stacked_variable_inner(stacked.name) == name:
                return stacked
        raise KeyError(f"{self.name} has no stacked weight {name!r}; it has "
                       f"{[stacked_variable_inner(stacked.name) for stacked in self.stacked_weights]}.")

    def layer_values(self):
        """Each layer's weights (slices of the stacked values), in the order of `template_weights`: one list per
        layer. The stacked values are read whole, then unstacked (under TensorFlow, views of their buffers): a
        gather from the variable itself would switch TensorFlow's variable to copy-on-read, copying it out of a
        mapped file and on every later read."""
        per_weight = [ops.unstack(stacked.value, num=self.count, axis=0) for stacked in self.stacked_weights]
        return [[values[index] for values in per_weight] for index in range(self.count)]

    def run_layer(self, values, step, carry, checkpoint=False):
        """`step(template, carry)` with the template's weights mapped to `values`. Inside another stateless scope
        (a JAX program's arguments, Keras' stateless training step) its mapping stays in force; the template's
        other state (seed generators) is updated where it lives, as an ordinary layer's would be. With
        `checkpoint`, the layer's activations are recomputed in the backward pass (`checkpointing.py`)."""
        mapped = {id(weight) for weight in self.template_weights}
        others = [variable for variable in self._template.variables if id(variable) not in mapped]
        if checkpoint:
            # Weights, other state and carry as the checkpoint's arguments; the state it updates comes back out.
            def layer(layer_values, other_values, state):
                pairs = list(zip(self.template_weights, layer_values)) + list(zip(others, other_values))
                with mapped_scope(pairs) as scope:
                    result = step(self._template, state)
                updated = [scope.get_current_value(variable) for variable in others]
                return result, [old if new is None else new for old, new in zip(other_values, updated)]

            # Copies: TensorFlow's `value` is the variable itself and PyTorch assigns in place, so the recomputation
            # would read the state as this call leaves it, not as it found it.
            state_values = [ops.copy(variable.value) for variable in others]
            result, updated = checkpointed_call(layer, list(values), state_values, carry)
            for variable, value in zip(others, updated):
                variable.assign(value)
            return result
        with mapped_scope(list(zip(self.template_weights, values)), others) as scope:
            result = step(self._template, carry)
        for variable in others:
            if (value := scope.get_current_value(variable)) is not None:
                variable.assign(value)  # an update of the enclosing stateless scope, if any
        return result

    def apply(self, step, carry, training=False, with_outputs=False, per_layer=None):
        """`carry = step(layer, carry)` for each layer in turn; returns the last `carry` (a tensor or a nested
        structure of tensors). See the module docstring for how each backend runs the loop.

        With `with_outputs`, `step` returns `(carry, outputs)` and this returns `(carry, [each layer's outputs])`.
        With `per_layer` (a sequence of one value per layer: a head mask, a cache), `step(layer, carry, value)`
        gets layer i's value, and the layers run in the Python loop on every backend. A training call of a stack
        with `gradient_checkpointing` recomputes each layer in the backward pass."""
        checkpoint = bool(training) and self.gradient_checkpointing
        if per_layer is None:
            backend = keras.backend.backend()
            if backend == "jax":
                from tf_esm.modeling import encoder_jax

                if encoder_jax.scans_stacks():
                    return encoder_jax.scan_stack(self, step, carry, with_outputs=with_outputs,
                                                  checkpoint=checkpoint)
            elif backend == "tensorflow" and not training:
                from tf_esm.modeling import layers_tf

                if layers_tf.traceable_stack(self):
                    return layers_tf.apply_stack(self, step, carry, with_outputs=with_outputs)
        elif len(per_layer) != self.count:
            raise ValueError(f"per_layer has {len(per_layer)} values for {self.count} layers.")
        outputs = []
        for index, values in enumerate(self.layer_values()):
            if per_layer is None:
                result = self.run_layer(values, step, carry, checkpoint=checkpoint)
            else:
                result = self.run_layer(values, lambda layer, state: step(layer, state, per_layer[index]), carry,
                                        checkpoint=checkpoint)
            if with_outputs:
                result, layer_outputs = result
                outputs.append(layer_outputs)
            carry = result
        return (carry, outputs) if with_outputs else carry

    def get_config(self):
        config = super().get_config()
        config["count"] = self.count
        return config


def set_gradient_checkpointing(model, enabled):
    """Turn gradient checkpointing on or off for every `LayerStack` inside `model` (a layer or model); returns
    how many stacks there are."""
    stacks = [layer for layer in [model] + keras_compat.all_sublayers(model) if isinstance(layer, LayerStack)]
    for stack in stacks:
        stack.gradient_checkpointing = bool(enabled)
    return len(stacks)


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
