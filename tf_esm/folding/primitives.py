"""Shared building blocks of the folding model: Linear with AlphaFold's initialisers, LayerNorm, gated
multi-head attention with additive biases, and chunked evaluation along one axis.

Layer and weight names follow the PyTorch reference (`linear_q`, `kernel`/`bias`, ...), so checkpoints map
onto them with the generic name rule of `tf_esm.io.weights`.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tf_esm._switch import ThreadSwitch

_INITS = ("default", "relu", "glorot", "gating", "normal", "final")


def _kernel_initializer(init):
    if init in ("default", "normal"):  # LeCun: std = 1 / sqrt(fan_in)
        return keras.initializers.VarianceScaling(1.0, mode="fan_in", distribution="untruncated_normal")
    if init == "relu":  # He: std = sqrt(2 / fan_in)
        return keras.initializers.VarianceScaling(2.0, mode="fan_in", distribution="untruncated_normal")
    if init == "glorot":
        return keras.initializers.GlorotUniform()
    return keras.initializers.Zeros()  # "gating" and "final"


@keras.saving.register_keras_serializable(package="tf_esm")
class Linear(keras.layers.Dense):
    """A dense layer with AlphaFold's named initialisers (supplement 1.11.4).

    Args:
        units: Output features.
        use_bias: Learn an additive bias (initialised to zero, or one for `init="gating"`).
        init: "default" (LeCun normal), "relu" (He normal), "glorot" (Glorot uniform), "gating" (weights 0,
            bias 1), "normal" (LeCun normal) or "final" (all zeros).

    Examples:

    ```python
    >>> import numpy as np
    >>> from tf_esm.folding.primitives import Linear
    >>> Linear(8, init="final", name="linear_z")(np.ones((2, 4), "float32")).shape
    (2, 8)
    ```
    """

    def __init__(self, units, use_bias=True, init="default", **kwargs):
        if init not in _INITS:
            raise ValueError(f"Unknown Linear init {init!r}; expected one of {', '.join(_INITS)}.")
        kwargs.setdefault("kernel_initializer", _kernel_initializer(init))
        kwargs.setdefault("bias_initializer", "ones" if init == "gating" else "zeros")
        super().__init__(units, use_bias=use_bias, **kwargs)
        self.init = init

    def get_config(self):
        config = super().get_config()
        config["init"] = self.init
        return config


class ConfiguredLayer(keras.layers.Layer):
    """A layer described by one tf_esm config object (`config_class`), serialised as its dict."""

    config_class = None

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = self.config_class(**config) if isinstance(config, dict) else config

    def get_config(self):
        base = super().get_config()
        base["config"] = self.config.to_dict()
        return base


def LayerNorm(name, epsilon=1e-5):
    """Layer normalisation over the last axis with PyTorch's default epsilon (weights `gamma`/`beta`)."""
    return keras.layers.LayerNormalization(epsilon=epsilon, name=name)


def absent_position_bias(length_mask, dtype="float32"):
    """Additive attention-logit bias [L] for a `length_mask` (1 inside the unpadded batch length, 0 for padding
    appended beyond it to reach a length bucket): 0, or a penalty far below the reference's masking penalties
    (down to -1e9). A query whose keys are all masked (a padding residue) then still attends, as in the reference,
    uniformly over the unpadded length only, never over the appended positions."""
    return (ops.cast(length_mask, dtype) - 1.0) * 1e12


_COMPILING = ThreadSwitch()


def compiling():
    """Marks code traced into one compiled program by a backend without graph-mode state of its own to ask
    (`jax.jit`): inside, `in_compiled_graph()` is True, so loops become loop ops instead of being unrolled."""
    return _COMPILING.on()


def in_compiled_graph():
    """True while tracing one compiled program: a TensorFlow graph (`tf.function`) or code inside `compiling()`
    (the JAX inference path). There Python loops would be unrolled, so the folding model uses loop ops instead."""
    if _COMPILING:
        return True
    if keras.backend.backend() != "tensorflow":
        return False
    from tf_esm.folding import compiled_tf

    return compiled_tf.in_graph()


def traced_structure_module(module):
    """The structure module's one traced program during eager inference under TensorFlow
    (`compiled_tf.structure_module_traced`), or None: then the module runs as it is."""
    if keras.backend.backend() != "tensorflow":
        return None
    from tf_esm.folding import compiled_tf

    return compiled_tf.traced_structure_module(module)


def chunked(fn, inputs, chunk_size, axis=1):
    """Evaluate `fn` on slices of `inputs` along `axis` and concatenate the results along the same axis.

    `fn` must treat slices along `axis` independently; then the result equals `fn(*inputs)` while the peak
    memory of the intermediate tensors is bounded by the chunk. `chunk_size=None` (or a chunk that covers the
    whole axis) evaluates in one piece. Eagerly the chunks run in a Python loop; inside a compiled program
    (`in_compiled_graph`) they run in a loop op with one chunk in flight, so the program holds `fn` once and,
    under TensorFlow, the axis may have a length unknown when tracing.

    Args:
        fn: Callable taking the tensors of `inputs`; returns one tensor.
        inputs: Tensors to slice. `None` entries, and tensors whose size along `axis` is 1 (broadcast), are
            passed whole.
        chunk_size: Maximum slice length.
        axis: Axis to slice (the same for inputs and output).
    """
    if chunk_size is None:
        return fn(*inputs)
    is_sliced = [t is not None and t.shape[axis] != 1 for t in inputs]
    if not any(is_sliced):
        return fn(*inputs)
    sizes = {t.shape[axis] for t, sliced in zip(inputs, is_sliced) if sliced}
    static_length = next(iter(sizes)) if len(sizes) == 1 and None not in sizes else None
    if static_length is not None and static_length <= chunk_size:
        return fn(*inputs)
    if in_compiled_graph():
        return _chunk_loop(fn, inputs, is_sliced, chunk_size, axis, static_length)
    if static_length is None:
        return fn(*inputs)

    def take(t, sliced, start):
        if not sliced:
            return t
        index = [slice(None)] * len(t.shape)
        index[axis] = slice(start, start + chunk_size)
        return t[tuple(index)]

    pieces = [fn(*[take(t, sliced, start) for t, sliced in zip(inputs, is_sliced)])
              for start in range(0, static_length, chunk_size)]
    return ops.concatenate(pieces, axis=axis)


def _chunk_loop(fn, inputs, is_sliced, chunk_size, axis, static_length):
    """`chunked` as a loop op: pad the axis to whole chunks, scan over them one at a time, crop."""
    reference = next(t for t, sliced in zip(inputs, is_sliced) if sliced)
    length = static_length if static_length is not None else ops.shape(reference)[axis]
    num_chunks = (length + chunk_size - 1) // chunk_size

    def split(t):  # [..., L, ...] -> [num_chunks, ..., chunk, ...]
        padding = [[0, 0] for _ in t.shape]
        padding[axis] = [0, num_chunks * chunk_size - length]
        t = ops.pad(t, padding)
        shape = ops.shape(t)
        t = ops.reshape(t, tuple(shape[:axis]) + (num_chunks, chunk_size) + tuple(shape[axis + 1:]))
        return ops.moveaxis(t, axis, 0)

    def step(pieces):
        pieces = iter(pieces)
        return fn(*[next(pieces) if sliced else t for t, sliced in zip(inputs, is_sliced)])

    # One chunk at a time bounds the memory. Under JAX, keras.ops.map is such a loop (lax.map); TensorFlow's
    # keeps ten in flight, hence the loop op of compiled_tf. The output has the dtype of the first sliced input.
    pieces = [split(t) for t, sliced in zip(inputs, is_sliced) if sliced]
    if keras.backend.backend() == "tensorflow":
        from tf_esm.folding import compiled_tf

        outputs = compiled_tf.map_sequential(step, pieces, reference.dtype)
    else:
        outputs = ops.map(step, pieces)
    outputs = ops.moveaxis(outputs, 0, axis)
    shape = ops.shape(outputs)
    outputs = ops.reshape(outputs, tuple(shape[:axis]) + (num_chunks * chunk_size,) + tuple(shape[axis + 2:]))
    index = [slice(None)] * len(outputs.shape)
    index[axis] = slice(0, length)
    return outputs[tuple(index)]


@keras.saving.register_keras_serializable(package="tf_esm")
class Attention(keras.layers.Layer):
    """Multi-head attention with optional sigmoid gating and any number of additive logit biases.

    Sub-layers: `linear_q`, `linear_k`, `linear_v` (no bias), `linear_o`, and `linear_g` when gated.

    Args:
        num_heads: Attention heads.
        head_dim: Channels per head.
        output_dim: Output channels (usually the query's channels).
        gating: Gate the per-head outputs with `sigmoid(linear_g(query))`.

    Call args:
        q_x: [*, Q, C_q] query input.
        kv_x: [*, K, C_k] key/value input.
        biases: Tensors broadcastable to [*, H, Q, K], added to the logits.

    Examples:

    ```python
    >>> import numpy as np
    >>> from tf_esm.folding.primitives import Attention
    >>> x = np.random.rand(2, 5, 8).astype("float32")
    >>> Attention(num_heads=2, head_dim=4, output_dim=8, name="mha")(x, x).shape
    (2, 5, 8)
    ```
    """

    def __init__(self, num_heads, head_dim, output_dim, gating=True, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.output_dim = output_dim
        self.gating = gating
        inner = num_heads * head_dim
        self.linear_q = Linear(inner, use_bias=False, init="glorot", name="linear_q")
        self.linear_k = Linear(inner, use_bias=False, init="glorot", name="linear_k")
        self.linear_v = Linear(inner, use_bias=False, init="glorot", name="linear_v")
        self.linear_o = Linear(output_dim, init="final", name="linear_o")
        self.linear_g = Linear(inner, init="gating", name="linear_g") if gating else None

    def build(self, q_x_shape, kv_x_shape=None):
        q_shape = q_x_shape
        kv_shape = q_x_shape if kv_x_shape is None else kv_x_shape
        inner_shape = tuple(q_shape[:-1]) + (self.num_heads * self.head_dim,)
        self.linear_q.build(q_shape)
        self.linear_k.build(kv_shape)
        self.linear_v.build(kv_shape)
        self.linear_o.build(inner_shape)
        if self.linear_g is not None:
            self.linear_g.build(q_shape)

    def _split_heads(self, x):
        # [*, N, H * C] -> [*, H, N, C]
        x = ops.reshape(x, tuple(ops.shape(x)[:-1]) + (self.num_heads, self.head_dim))
        return ops.swapaxes(x, -2, -3)

    def call(self, q_x, kv_x, biases=()):
        query = self._split_heads(self.linear_q(q_x)) / math.sqrt(self.head_dim)
        key = self._split_heads(self.linear_k(kv_x))
        value = self._split_heads(self.linear_v(kv_x))
        logits = ops.matmul(query, ops.swapaxes(key, -1, -2))
        for bias in biases:
            logits = logits + bias
        weights = ops.softmax(logits, axis=-1)
        output = ops.swapaxes(ops.matmul(weights, value), -2, -3)  # [*, Q, H, C]
        if self.linear_g is not None:
            gate = ops.sigmoid(self.linear_g(q_x))
            output = output * ops.reshape(gate, tuple(ops.shape(gate)[:-1]) + (self.num_heads, self.head_dim))
        output = ops.reshape(output, tuple(ops.shape(output)[:-2]) + (self.num_heads * self.head_dim,))
        return self.linear_o(output)

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, head_dim=self.head_dim, output_dim=self.output_dim,
                      gating=self.gating)
        return config
