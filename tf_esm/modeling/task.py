"""Keras training for the four encoder task models: the built-in losses, the adapter that lets `fit`, `evaluate`
and `predict` work on plain tensors, and LoRA. ESMFold does not inherit it: it has no loss and is not trained here."""

from __future__ import annotations

import contextlib
import sys

import keras
from keras import ops

from tf_esm import keras_compat
from tf_esm.configuration import IGNORE_INDEX
from tf_esm.modeling.layer_stack import set_gradient_checkpointing
from tf_esm.modeling.losses import masked_sparse_cross_entropy
from tf_esm.modeling.packing import protein_starts


def _labels_of(x, y):
    """Training targets: the dataset's `y`, else `inputs["labels"]` (both styles HF's TF models accepted)."""
    if y is not None:
        return y
    if isinstance(x, dict):
        return x.get("labels")
    return None


def _is_tf_dataset(value):
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(value, tf.data.Dataset)


class EsmKerasTask:
    """Mixin (before `keras.Model` in the bases) for models trained with Keras; see `TFEsmPreTrainedModel`."""

    # Whether labels are per token, with -100 marking positions to ignore.
    _token_level_labels = False
    # How many fit/evaluate/predict calls are running on this model (they may nest, e.g. validation in fit).
    _keras_loop_depth = 0

    # ----------------------------------------------------------------------------------------------------- LoRA
    def enable_lora(self, rank, lora_alpha=None, targets=("query", "value"), freeze_encoder=True):
        """Keras LoRA adapters of rank `rank` on the attention projections `targets` (any of query/key/value)
        of every layer; the rest of the encoder is frozen unless `freeze_encoder=False`, the head stays
        trainable. See `tf_esm.modeling.lora.enable_lora`."""
        from tf_esm.modeling.lora import enable_lora

        return enable_lora(self, rank, lora_alpha=lora_alpha, targets=targets, freeze_encoder=freeze_encoder)

    def save_lora_weights(self, path):
        """Save only the LoRA adapters and the task head (a safetensors file). See `tf_esm.modeling.lora`."""
        from tf_esm.modeling.lora import save_lora_weights

        return save_lora_weights(self, path)

    def load_lora_weights(self, path):
        """Load adapters written by `save_lora_weights`, enabling LoRA with the saved rank if needed."""
        from tf_esm.modeling.lora import load_lora_weights

        return load_lora_weights(self, path)

    # ----------------------------------------------------------------------------------- gradient checkpointing
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        """Recompute each encoder layer in the backward pass of training (transformers' name): the activations of
        one layer at a time are kept instead of all of them, for one more forward pass per step. Every stack of
        identical layers in the model (`LayerStack`) is checkpointed per layer, on every backend; inference is
        unchanged. Sets `config.gradient_checkpointing`, which `save_pretrained` writes. Steps Keras compiled
        before are traced again at the next `fit`. `gradient_checkpointing_kwargs` is accepted for transformers'
        callers: only `use_reentrant` (PyTorch's checkpoint is always the non-reentrant one here) may be in it."""
        unknown = sorted(set(gradient_checkpointing_kwargs or {}) - {"use_reentrant"})
        if unknown:
            raise ValueError(f"gradient_checkpointing_kwargs {unknown} are not supported (only use_reentrant).")
        self._set_gradient_checkpointing(True)

    def gradient_checkpointing_disable(self):
        """Keep every layer's activations for the backward pass again (the default)."""
        self._set_gradient_checkpointing(False)

    @property
    def is_gradient_checkpointing(self):
        return bool(getattr(self.config, "gradient_checkpointing", False))

    def _set_gradient_checkpointing(self, enabled):
        if not set_gradient_checkpointing(self, enabled):
            raise ValueError(f"{type(self).__name__} has no stack of layers to checkpoint.")
        self.config.gradient_checkpointing = bool(enabled)
        for name in ("train_function", "test_function", "predict_function"):
            if getattr(self, name, None) is not None:  # traced with the old setting
                setattr(self, name, None)

    # ------------------------------------------------------------------------------------------- Keras training
    @property
    def _in_keras_loop(self):
        """True while fit/evaluate/predict run: `call` then returns the plain tensors Keras works on."""
        return self._keras_loop_depth > 0

    @contextlib.contextmanager
    def _keras_loop(self):
        self._keras_loop_depth += 1
        try:
            yield
        finally:
            self._keras_loop_depth -= 1

    def fit(self, *args, **kwargs):
        x = args[0] if args else kwargs.get("x")
        if len(args) < 9 and "shuffle" not in kwargs and _is_tf_dataset(x):
            # Keras ignores `shuffle` for a tf.data input (shuffling is the dataset's job) but warns about its
            # default, True, on every call.
            kwargs["shuffle"] = False
        with self._keras_loop():
            return super().fit(*args, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' TensorFlow trainer averages the first batch across replicas to learn its shapes, which fails for
        # nested batches under MultiWorkerMirroredStrategy with several workers: see distribute_tf.py.
        # A private Keras hook (tf_esm/keras_compat.py): without it, Keras' own build runs.
        if (iterator is not None and data_batch is None and keras.backend.backend() == "tensorflow"
                and keras_compat.symbolic_build_hook()):
            from tf_esm.modeling.distribute_tf import is_multi_worker, local_build_batch

            strategy = self.distribute_strategy
            if is_multi_worker(strategy):
                return super()._maybe_symbolic_build(data_batch=local_build_batch(strategy, iterator))
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    # (data) under TensorFlow; (state, data) under JAX, whose steps return (logs, state), passed through as is.
    def train_step(self, *args):
        return self._multi_worker_step_logs(super().train_step(*args))

    def test_step(self, *args):
        return self._multi_worker_step_logs(super().test_step(*args))

    def _multi_worker_step_logs(self, logs):
        # Keras averages each step's logs across workers with a reduction along axis 0, which scalars lack: see
        # distribute_tf.py.
        if keras.backend.backend() != "tensorflow":
            return logs
        from tf_esm.modeling.distribute_tf import is_multi_worker, logs_for_multi_worker_reduce

        if not is_multi_worker(self.distribute_strategy):
            return logs
        return logs_for_multi_worker_reduce(logs)

    def evaluate(self, *args, **kwargs):
        with self._keras_loop():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        with self._keras_loop():
            return super().predict(*args, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        with self._keras_loop():
            return super().train_on_batch(*args, **kwargs)

    def test_on_batch(self, *args, **kwargs):
        with self._keras_loop():
            return super().test_on_batch(*args, **kwargs)

    def predict_on_batch(self, *args, **kwargs):
        with self._keras_loop():
            return super().predict_on_batch(*args, **kwargs)

    def _built_in_loss(self, x, labels, logits):
        """The built-in loss of a Keras batch with inputs `x` (a model whose loss needs more of the inputs, such as
        packed rows' `sequence_id`, overrides it)."""
        return self.hf_compute_loss(labels, logits)

    def hf_compute_loss(self, labels, logits):
        """The built-in loss, as the PyTorch reference computes it from `labels` and `logits`: for the token-level
        models (masked LM, token classification) the mean cross-entropy over tokens whose label is not -100."""
        if self._token_level_labels:
            return masked_sparse_cross_entropy(labels, logits)
        raise ValueError(
            f"{type(self).__name__} has no built-in loss: compile it with a loss, e.g. "
            "model.compile(optimizer, loss=...)."
        )

    def _keras_targets(self, x, y, y_pred):
        """Labels and logits for compiled losses and metrics. Token-level labels of -100 become 0 and are masked
        out through the logits' Keras mask, so Keras losses average over the other tokens (as torch's
        CrossEntropyLoss(ignore_index=-100) does) and metrics skip them."""
        labels = _labels_of(x, y)
        if labels is None:
            return labels, y_pred
        if not self._token_level_labels:
            sequence_id = x.get("sequence_id") if isinstance(x, dict) else None
            if sequence_id is None:
                return labels, y_pred
            # Packed rows: each protein's label and logits sit at its first token; the rest are masked out.
            keep = protein_starts(sequence_id)
            labels = ops.convert_to_tensor(labels)
            if "int" in str(labels.dtype) and len(labels.shape) == 2:
                labels = ops.where(keep, labels, ops.zeros_like(labels))
            return labels, keras_compat.with_keras_mask(y_pred, keep)
        keep = ops.not_equal(labels, IGNORE_INDEX)
        return ops.where(keep, labels, ops.zeros_like(labels)), keras_compat.with_keras_mask(y_pred, keep)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The compiled Keras loss on the logits if `compile` was given one, else the built-in loss."""
        if self.loss is not None:  # compiled with a loss
            labels, y_pred = self._keras_targets(x, y, y_pred)
            return super().compute_loss(x, labels, y_pred, sample_weight, training=training)
        labels = _labels_of(x, y)
        if labels is None:
            raise ValueError(
                f"{type(self).__name__} was compiled without a loss, so it trains on its built-in loss, which "
                "needs labels: give the dataset (inputs, labels) pairs or put them in the inputs as "
                "inputs['labels'] (or compile with loss=...)."
            )
        if sample_weight is not None:
            raise ValueError(
                "sample_weight is not supported by the built-in loss; compile with a Keras loss to weight samples."
            )
        loss = keras_compat.scale_loss_for_replicas(self._built_in_loss(x, labels, y_pred))
        for extra in self.losses:  # e.g. regularisers
            loss = loss + keras_compat.additional_loss(extra)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        labels, y_pred = self._keras_targets(x, y, y_pred)
        return super().compute_metrics(x, labels, y_pred, sample_weight=sample_weight)
