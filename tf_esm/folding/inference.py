"""ESMFold's compiled inference path, backend-neutral: the length buckets the inputs are padded to, the program per
(bucket, chunk size) traced on first use (`compiled_tf.py`, `compiled_jax.py`), and the eager path under TensorFlow
(`TFEsmForProteinFolding` documents the behaviour). PyTorch has no compiled path here: every call runs eagerly."""

from __future__ import annotations

import contextlib
import inspect

import keras
import numpy as np
from keras import ops

from tf_esm.backend import matmul_precision, no_gradients
from tf_esm.folding.structure_module import BLOCK_OUTPUTS
from tf_esm.modeling.buckets import bucket_length

# How outputs are cropped back to the unpadded length: two residue axes (1 and 2), the residue axis after the
# structure-module-block axis (2), none (scalars); every other output has its residue axis at 1.
_PAIR_OUTPUTS = ("s_z", "distogram_logits", "ptm_logits", "aligned_confidence_probs", "predicted_aligned_error")
_PER_BLOCK_OUTPUTS = BLOCK_OUTPUTS + ("lddt_head",)
_SCALAR_OUTPUTS = ("ptm", "max_predicted_aligned_error")


def crop_outputs(outputs, length):
    """Outputs (a dict of tensors or arrays, all computed at a padded length) cropped to `length` residues."""
    cropped = {}
    for key, value in outputs.items():
        if key in _SCALAR_OUTPUTS:
            cropped[key] = value
        elif key in _PER_BLOCK_OUTPUTS:
            cropped[key] = value[:, :, :length]
        elif key in _PAIR_OUTPUTS:
            cropped[key] = value[:, :length, :length]
        else:
            cropped[key] = value[:, :length]
    return cropped


def _pad_residues(array, length):
    return np.pad(array, ((0, 0), (0, length - array.shape[1])))


def compiled_backend():
    """The module of the compiled inference path for the running Keras backend, or None (eager only)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        from tf_esm.folding import compiled_tf

        return compiled_tf
    if backend == "jax":
        from tf_esm.folding import compiled_jax

        return compiled_jax
    return None


class CompiledInference:
    """The `__call__` of `TFEsmForProteinFolding`: non-training calls with concrete inputs take the eager inference
    path or the compiled one (`compiled`, else `compiled_inference`; None: eager under TensorFlow, compiled under
    JAX). The model provides `call`, `trunk`, `config`, `output_type` and the attributes its `__init__` sets
    (`compiled_inference`, `length_buckets`, ...)."""

    def __call__(self, *args, compiled=None, **kwargs):
        compiled = self.compiled_inference if compiled is None else compiled
        if compiled is None:  # the backend's default: eager under TensorFlow, compiled under JAX
            compiled = keras.backend.backend() == "jax"
        if compiled not in (True, False, "auto"):
            raise ValueError(f"compiled must be True, False or 'auto'; got {compiled!r}.")
        arguments = self._compilable_arguments(args, kwargs)
        if arguments is None:  # training, symbolic inputs, or a backend with no compiled path (PyTorch)
            # true float32 products under JAX on a GPU, as the reference; no autograd record of inference under
            # PyTorch (its eager path would otherwise keep every block's activations)
            with matmul_precision(), self._recording(args, kwargs):
                return super().__call__(*args, **kwargs)
        if compiled == "auto":
            compiled = keras.backend.backend() != "tensorflow" or self._compiled_before(arguments)
        if not compiled:
            return self._eager_call(args, kwargs)
        return self._compiled_call(**arguments)

    def _recording(self, args, kwargs):
        """Gradients are recorded for a training call only (`backend.no_gradients` otherwise)."""
        try:
            training = inspect.signature(self.call).bind(*args, **kwargs).arguments.get("training", False)
        except TypeError:
            training = False  # let Keras report it
        return contextlib.nullcontext() if training else no_gradients()

    def _compiled_before(self, arguments):
        """"auto" under TensorFlow: False (fold eagerly) the first time a length bucket is seen, True after."""
        key = self._inference_key(np.shape(arguments["input_ids"])[1], arguments.get("chunk_size"))
        if key in self._inference_functions or key in self._first_calls_done:
            return True
        self._first_calls_done.add(key)
        return False

    def _eager_call(self, args, kwargs):
        """An eager inference call. Under TensorFlow each stack of identical layers (the stem's layers, the trunk's
        blocks) runs through one traced function and the structure module through its one program for any
        length, on this thread: the same path for every call, at the inputs' own length."""
        if keras.backend.backend() != "tensorflow":
            with matmul_precision():
                return super().__call__(*args, **kwargs)
        from tf_esm.folding import compiled_tf
        from tf_esm.modeling import layers_tf

        with layers_tf.traced_in_eager(), compiled_tf.structure_module_traced():
            return super().__call__(*args, **kwargs)

    def _inference_key(self, length, chunk_size):
        jit_compile = bool(self.inference_jit_compile) and keras.backend.backend() == "tensorflow"
        chunk_size = self.trunk.chunk_size if chunk_size is None else chunk_size
        return bucket_length(length, self.length_buckets), chunk_size, jit_compile

    def _compilable_arguments(self, args, kwargs):
        """The bound `call` arguments if this call can take the compiled path, else None."""
        backend = compiled_backend()
        if backend is None:
            return None
        try:
            arguments = inspect.signature(self.call).bind(*args, **kwargs).arguments
        except TypeError:
            return None  # let Keras report it
        if arguments.pop("training", False) or arguments.get("unpadded_length") is not None:
            return None
        arguments.pop("unpadded_length", None)
        if not backend.can_compile(list(arguments.values())):
            return None
        if np.ndim(arguments["input_ids"]) != 2:
            return None
        return arguments

    def _compiled_call(self, input_ids, attention_mask=None, position_ids=None, masking_pattern=None,
                       num_recycles=None, chunk_size=None):
        if not self.built:
            self.build()
        aa = np.asarray(ops.convert_to_numpy(input_ids)).astype(np.int32)
        batch, length = aa.shape

        def as_int32(value, default):
            return default if value is None else np.asarray(ops.convert_to_numpy(value)).astype(np.int32)

        mask = as_int32(attention_mask, np.ones_like(aa))
        residx = as_int32(position_ids, np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)))
        residx = np.broadcast_to(residx, (batch, length))
        masking = as_int32(masking_pattern, np.zeros_like(aa))
        if num_recycles is not None and int(num_recycles) < 0:
            raise ValueError(f"Number of recycles must not be negative, got {num_recycles}.")
        passes = self.config.esmfold_config.trunk.max_recycles if num_recycles is None else int(num_recycles) + 1
        chunk_size = self.trunk.chunk_size if chunk_size is None else chunk_size

        bucket = bucket_length(length, self.length_buckets)
        residx = np.concatenate([residx, residx[:, -1:] + 1 + np.arange(bucket - length, dtype=np.int32)], axis=1)
        inputs = (_pad_residues(aa, bucket), _pad_residues(mask, bucket), residx, _pad_residues(masking, bucket),
                  np.int32(passes - 1), np.int32(length))
        outputs = self._inference_function(bucket, chunk_size)(*inputs)
        if keras.backend.backend() == "jax":  # the program returns bucket-length outputs: crop them here
            outputs = crop_outputs({key: np.asarray(value) for key, value in outputs.items()}, length)
        return self.output_type(**outputs)

    def _inference_function(self, bucket, chunk_size):
        """The compiled forward pass for one (length bucket, chunk size), traced on first use."""
        key = self._inference_key(bucket, chunk_size)
        jit_compile = key[2]
        function = self._inference_functions.get(key)
        if function is None:
            backend = compiled_backend()
            if jit_compile:
                function = backend.inference_function(self, bucket, chunk_size, jit_compile=True)
            else:
                function = backend.inference_function(self, bucket, chunk_size)
            self._inference_functions[key] = function
        return function
