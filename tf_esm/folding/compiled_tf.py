"""TensorFlow-only parts of ESMFold: the `tf.function` of the compiled inference path, the sequential loop op of
chunked evaluation inside a graph, and device queries. The backend-neutral model (`model.py`, `primitives.py`)
imports this module only when `keras.backend.backend() == "tensorflow"`."""

from __future__ import annotations

import contextlib
import threading
import weakref

import keras
import tensorflow as tf


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


# ------------------------------------------------------------------------ the structure module of an eager first call
# Eagerly, the structure module's 8 blocks issue ~4,600 small TensorFlow ops one by one (0.64-0.9 s of Python at
# any length, against ~0.06 s of kernels); traced, the module costs as much once (0.5 s to trace, 0.35 s to
# instantiate) and ~0.06 s per call after. So an eager first call (`CompiledInference`) has the module traced, for
# every length at once, in a background thread while the stem and the trunk run (their kernels release the GIL),
# and calls that program when the trunk is done; later first calls at other lengths reuse it. On 2 cores the
# thread's work comes out of the stem's: where Python is fast (the eager module 0.3 s) the first fold gains
# nothing and later first calls ~0.3 s; where it is slow (0.9 s) the first fold gained ~1 s (benchmarks/RESULTS.md).
_STRUCTURE_PROGRAMS = weakref.WeakKeyDictionary()  # structure module -> its `tf.function` for any batch and length
_PREPARED = weakref.WeakKeyDictionary()  # structure module -> that function's concrete function, instantiated
_AHEAD = threading.local()  # .programs: {structure module: _Ahead} while an eager first call runs in this thread


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


class _Ahead:
    """The structure module's program, traced and instantiated by a background thread."""

    def __init__(self, module, batch, length):
        self.concrete, self.error, self._thread = _PREPARED.get(module), None, None
        if self.concrete is not None:
            return
        self._thread = threading.Thread(target=self._prepare, args=(module, batch, length),
                                        name="tf_esm-structure-module", daemon=True)
        self._thread.start()

    def _prepare(self, module, batch, length):
        try:
            concrete = _structure_program(module).get_concrete_function()
            dtype = module.compute_dtype
            # One call on zeros instantiates the program (the runtime's graph optimisation) off the main thread.
            concrete(tf.zeros((batch, length, module.config.sequence_dim), dtype),
                     tf.zeros((batch, length, length, module.config.pairwise_dim), dtype),
                     tf.zeros((batch, length), tf.int32), tf.ones((batch, length), dtype))
            self.concrete = _PREPARED[module] = concrete
        except Exception as error:  # noqa: BLE001 - the eager module then runs instead; kept for inspection
            self.error = error

    def wait(self):
        if self._thread is not None:
            self._thread.join()
        return self.concrete


@contextlib.contextmanager
def structure_module_ahead(module, batch, length):
    """Within this block (this thread), `ahead_structure_module(module)` is the module's program for any length,
    prepared in the background from the block's start (reused if an earlier block prepared it)."""
    programs = getattr(_AHEAD, "programs", None)
    if programs is None:
        programs = _AHEAD.programs = {}
    previous = programs.get(module)
    ahead = _Ahead(module, batch, length)
    programs[module] = ahead
    try:
        yield ahead
    finally:
        ahead.wait()  # no background work outlives the call
        if previous is None:
            programs.pop(module, None)
        else:
            programs[module] = previous


def ahead_structure_module(module):
    """The concrete function prepared for `module` by an enclosing `structure_module_ahead`, or None (none, or its
    preparation failed: the eager module runs)."""
    ahead = getattr(_AHEAD, "programs", {}).get(module)
    return ahead.wait() if ahead is not None and tf.executing_eagerly() else None
