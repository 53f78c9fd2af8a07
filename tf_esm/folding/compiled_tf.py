"""TensorFlow-only parts of ESMFold: the `tf.function` of the compiled inference path, the sequential loop op of
chunked evaluation inside a graph, and device queries. The backend-neutral model (`model.py`, `primitives.py`)
imports this module only when `keras.backend.backend() == "tensorflow"`."""

from __future__ import annotations

import weakref

import keras
import tensorflow as tf

from tf_esm._switch import ThreadSwitch


def gpu_available():
    return bool(tf.config.list_physical_devices("GPU"))


def in_graph():
    """True while a `tf.function` is being traced (Python loops would be unrolled there)."""
    return not tf.executing_eagerly()


def can_compile(values):
    """Whether a call with these argument values may take the compiled path: eager, with concrete values."""
    if not tf.executing_eagerly():
        return False
    return not any(isinstance(value, keras.KerasTensor) or (tf.is_tensor(value) and not hasattr(value, "numpy"))
                   for value in values)


def map_sequential(step, pieces, dtype):
    """`step` over the leading axis of the tensors `pieces`, one element at a time (a loop op).

    keras.ops.map (tf.map_fn's default) would keep ten iterations in flight; one at a time is what bounds the
    memory of chunked evaluation."""
    return tf.map_fn(step, pieces, fn_output_signature=dtype, parallel_iterations=1)


def inference_function(model, bucket, chunk_size, jit_compile=False):
    """A `tf.function` of `model`'s call on inputs padded to `bucket` residues: one graph serves every batch size
    and number of recycles (the recycling passes and the structure-module blocks run as loop ops). Its outputs
    are cropped, in the graph, to `unpadded_length`. Counts its traces in `model.inference_trace_count`."""

    def forward(input_ids, attention_mask, position_ids, masking_pattern, num_recycles, unpadded_length):
        model.inference_trace_count += 1  # runs only while tracing
        output = keras.Model.__call__(model, input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                      masking_pattern=masking_pattern, num_recycles=num_recycles,
                                      chunk_size=chunk_size, unpadded_length=unpadded_length)
        return dict(output.items())

    residues = tf.TensorSpec((None, bucket), tf.int32)
    scalar = tf.TensorSpec((), tf.int32)
    return tf.function(forward, input_signature=(residues,) * 4 + (scalar, scalar), jit_compile=bool(jit_compile))


# ------------------------------------------------------------------------------ the structure module of an eager call
# Eagerly, the structure module's 8 blocks issue thousands of small TensorFlow ops one by one (Python-bound at any
# length); traced once for any batch and length, the module costs one trace per model and a fraction of that per
# call. Eager inference (`CompiledInference`) runs it through that one program, on the calling thread, so every call
# takes the same path and returns the same numbers.
_STRUCTURE_PROGRAMS = weakref.WeakKeyDictionary()  # structure module -> its `tf.function` for any batch and length
_TRACED = ThreadSwitch()


def _structure_program(module):
    function = _STRUCTURE_PROGRAMS.get(module)
    if function is None:
        config, dtype = module.config, module.compute_dtype

        def forward(single, pair, aatype, residue_mask):
            return dict(module(single, pair, aatype, residue_mask=residue_mask))

        function = tf.function(forward, autograph=False, input_signature=(
            tf.TensorSpec((None, None, config.sequence_dim), dtype),
            tf.TensorSpec((None, None, None, config.pairwise_dim), dtype),
            tf.TensorSpec((None, None), tf.int32),
            tf.TensorSpec((None, None), dtype)))
        _STRUCTURE_PROGRAMS[module] = function
    return function


def structure_module_traced():
    """Within this block (this thread), eager calls of a structure module run through its one traced program
    (`traced_structure_module`)."""
    return _TRACED.on()


def traced_structure_module(module):
    """The program of `module` for any batch and length inside `structure_module_traced()` while executing
    eagerly, else None (the module runs as it is)."""
    if not _TRACED or not tf.executing_eagerly():
        return None
    return _structure_program(module)
