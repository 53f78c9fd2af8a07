"""The public ESM models: `TFEsmModel`, `TFEsmForMaskedLM`, `TFEsmForSequenceClassification`,
`TFEsmForTokenClassification`. They share `TFEsmMainLayer` (attribute `esm`) and load PyTorch checkpoints."""

from __future__ import annotations

import contextlib
import os
import sys

import keras
from keras import ops

from tf_esm.configuration import EsmConfig
from tf_esm.modeling.embeddings import normal_initializer
from tf_esm.modeling.encoder import TFEsmMainLayer
from tf_esm.modeling.heads import TFEsmClassificationHead, TFEsmLMHead
from tf_esm.modeling.losses import (
    IGNORE_INDEX,
    masked_sparse_cross_entropy,
    resolve_problem_type,
    sequence_classification_loss,
)
from tf_esm.modeling.outputs import TFMaskedLMOutput, TFSequenceClassifierOutput, TFTokenClassifierOutput

# Inputs that may also arrive packed in a dict as the first argument (as `model(tokenizer(...))`).
_INPUT_NAMES = ("input_ids", "attention_mask", "position_ids", "head_mask", "inputs_embeds", "labels",
                "encoder_hidden_states", "encoder_attention_mask", "past_key_values")


def _unpack_inputs(input_ids, kwargs):
    if isinstance(input_ids, dict):
        packed = dict(input_ids)
        unknown = set(packed) - set(_INPUT_NAMES) - {"token_type_ids", "special_tokens_mask"}
        if unknown:
            raise ValueError(f"Unknown input names {sorted(unknown)}; expected some of {list(_INPUT_NAMES)}.")
        input_ids = packed.pop("input_ids", None)
        for name in _INPUT_NAMES[1:]:
            if name in packed and kwargs.get(name) is None:
                kwargs[name] = packed[name]
    return input_ids, kwargs


def _labels_of(x, y):
    """Training targets: the dataset's `y`, else `inputs["labels"]` (both styles HF's TF models accepted)."""
    if y is not None:
        return y
    if isinstance(x, dict):
        return x.get("labels")
    return None


# Two Keras conventions the built-in training path must follow; Keras exposes no public function for either.
def _scale_for_replicas(loss):
    # Keras divides each replica's loss by the replica count (and undoes it for the logged value); the built-in
    # loss must follow the same convention or tf.distribute would sum, not average, the replicas' gradients.
    from keras.src.losses.loss import scale_loss_for_distribution

    return scale_loss_for_distribution(loss)


def _set_keras_mask(tensor, mask):
    # A tensor's Keras mask is what Keras losses (a mean over unmasked entries) and all compiled metrics
    # (`metrics=` ignores sample weights) honour, as for padded time steps.
    from keras.src.backend.common.masking import set_keras_mask

    set_keras_mask(tensor, mask)


def _tf_data_inputs(args, kwargs, *names):
    """`tf.data` inputs of fit/evaluate/predict passed through `without_autotune_stall` (dataset_tf.py)."""
    if keras.backend.backend() != "tensorflow":
        return args, kwargs
    from tf_esm.modeling.dataset_tf import without_autotune_stall

    args, kwargs = list(args), dict(kwargs)
    if args:
        args[0] = without_autotune_stall(args[0])
    elif "x" in kwargs:
        kwargs["x"] = without_autotune_stall(kwargs["x"])
    if "validation_data" in names and kwargs.get("validation_data") is not None:
        kwargs["validation_data"] = without_autotune_stall(kwargs["validation_data"])
    return tuple(args), kwargs


def _is_tf_dataset(value):
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(value, tf.data.Dataset)


class TFEsmPreTrainedModel(keras.Model):
    """Base class: configuration handling, building, `from_pretrained`, `save_pretrained` and Keras training.

    Calling the model (`model(inputs)`) returns named outputs (`.logits`, `.loss` when `labels` are given, ...).
    Inside `fit`, `evaluate`, `predict` and the `*_on_batch` methods, `call` returns what Keras losses, metrics
    and `predict` work on: the task models' logits tensor, the bare encoder's dict of arrays. So both compile
    styles work:

    * `model.compile(optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=...)`:
      the Keras loss sees the logits;
    * `model.compile(optimizer)` with no loss: the model's built-in loss is used (`hf_compute_loss`: by
      `config.problem_type` for sequence classification, cross-entropy ignoring -100 for tokens), as HF's
      TensorFlow models did.

    Labels come as the dataset's targets (`(inputs, labels)` pairs) or inside the inputs dict as `"labels"`.
    For the token-level models (masked LM, token classification), positions labelled -100 are skipped by the
    built-in loss and by compiled Keras losses and metrics alike (`SparseCategoricalCrossentropy(from_logits=True)`
    then averages over the labelled tokens, as the reference does). A callback that calls the model while `fit`
    runs gets the plain tensors too.

    Examples:

    ```python
    >>> import keras
    >>> from tf_esm import TFEsmForSequenceClassification
    >>> from tf_esm.data import table_dataset
    >>> model = TFEsmForSequenceClassification.from_pretrained("facebook/esm2_t6_8M_UR50D", num_labels=2)
    >>> train = table_dataset("examples/data/classification_toy.csv", tokenizer="facebook/esm2_t6_8M_UR50D")
    >>> model.compile(optimizer=keras.optimizers.AdamW(1e-4), metrics=["accuracy"])  # built-in loss
    >>> history = model.fit(train, epochs=3)
    >>> logits = model.predict(train)           # (sequences, 2) array, in the dataset's order
    >>> model(next(iter(train))[0]).logits      # calling the model: named outputs
    ```
    """

    config_class = EsmConfig
    base_model_prefix = "esm"
    # Whether labels are per token, with -100 marking positions to ignore.
    _token_level_labels = False

    def __init__(self, config, **kwargs):
        if isinstance(config, dict):
            config = EsmConfig.from_dict(config)
        super().__init__(**kwargs)
        self.config = config
        self._keras_loop_depth = 0

    def __call__(self, *args, **kwargs):
        # A tokenizer's BatchEncoding (a dict subclass) is not a structure Keras accepts as a positional input.
        if args and isinstance(args[0], dict) and type(args[0]) is not dict:
            args = (dict(args[0]),) + args[1:]
        return super().__call__(*args, **kwargs)

    def build(self, input_shape=None):
        for layer in self._sublayers():
            layer.build(None)
        self.built = True

    def _sublayers(self):
        return [self.esm]

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(EsmConfig.from_dict(config.pop("config")), **config)

    # ---------------------------------------------------------------------------------------------- checkpoints
    @classmethod
    def from_pretrained(cls, path_or_hub_id, config=None, strict=False, **kwargs):
        """Build the model and load weights from a local directory, a checkpoint file, or a hub id.

        Accepts HF PyTorch directories (`model.safetensors`, `pytorch_model.bin`, sharded with an index json),
        directories written by `save_pretrained`, fair-esm `.pt` files, and hub ids such as
        `facebook/esm2_t6_8M_UR50D` (downloaded when online). Task heads absent from the checkpoint are newly
        initialised (a warning lists them); tensors the model does not use are ignored (a warning lists them).
        A tensor with the wrong shape is an error that names it.

        Args:
            path_or_hub_id: Directory, weight file inside a directory, fair-esm `.pt` file, or hub id.
            config: An `EsmConfig` to use instead of the checkpoint's own.
            strict: Raise instead of warning on missing or unexpected tensors.
            **kwargs: Arguments of the model's constructor (e.g. `add_pooling_layer=False`); every other
                keyword overrides a config attribute (e.g. `num_labels=3`).
        """
        import inspect

        from tf_esm.io.checkpoints import read_checkpoint
        from tf_esm.io.weights import deferred_initialization, finish_initialization, load_state_dict

        constructor_args = set(inspect.signature(cls.__init__).parameters) - {"self", "config", "kwargs"}
        model_kwargs = {name: kwargs.pop(name) for name in list(kwargs) if name in constructor_args}
        config, state_dict, source = read_checkpoint(path_or_hub_id, config)
        for name, value in kwargs.items():
            setattr(config, name, value)
        config.validate()
        with deferred_initialization():  # no random values for the weights the checkpoint replaces
            model = cls(config, **model_kwargs)
            model.build()
        try:
            load_state_dict(model, state_dict, strict=strict, source=source)
        finally:
            finish_initialization(model)
        return model

    def save_pretrained(self, save_directory, format="h5", tokenizer=None, overwrite=False):
        """Write `config.json`, the weights (`tf_esm_model.h5`, or `model.safetensors`, which PyTorch
        transformers loads too) and the vocabulary (the tokenizer's files, or the standard ESM `vocab.txt`).

        Every file is written under a temporary name and all are renamed into place at the end, so an
        interrupted save leaves the directory as it was. A non-empty `save_directory` is only written into with
        `overwrite=True` (which replaces these files and leaves any others alone).
        """
        import tempfile

        from tf_esm.io.atomic import StagedFiles, check_target, write_text_atomic
        from tf_esm.configuration import CONFIG_NAME, ESM2_VOCAB
        from tf_esm.io.weights import (
            H5_WEIGHTS_NAME,
            SAFE_WEIGHTS_NAME,
            model_state_dict,
            save_weights_h5,
            save_weights_safetensors,
        )

        if format not in ("h5", "safetensors"):
            raise ValueError(f"format must be 'h5' or 'safetensors', got {format!r}.")
        if not self.built:
            self.build()
        if any(getattr(layer, "lora_enabled", False) for layer in self._flatten_layers(include_self=False)):
            raise ValueError(
                "This model has LoRA adapters: save them with model.save_lora_weights(path), or save a plain "
                "checkpoint with tf_esm.training.merge_lora(model).save_pretrained(directory)."
            )
        check_target(save_directory, overwrite)
        with StagedFiles(save_directory) as staged:
            write_text_atomic(staged.path(CONFIG_NAME), self.config.to_json_string())
            if format == "h5":
                save_weights_h5(self, staged.path(H5_WEIGHTS_NAME))
            else:
                save_weights_safetensors(model_state_dict(self), staged.path(SAFE_WEIGHTS_NAME))
            if tokenizer is not None:
                with tempfile.TemporaryDirectory(prefix=".tokenizer-", dir=save_directory) as tokenizer_dir:
                    tokenizer.save_pretrained(tokenizer_dir)
                    for name in os.listdir(tokenizer_dir):
                        os.replace(os.path.join(tokenizer_dir, name), staged.path(name))
            elif self.config.vocab_size == len(ESM2_VOCAB):
                vocab = self.config.vocab_list or ESM2_VOCAB
                write_text_atomic(staged.path("vocab.txt"), "\n".join(vocab) + "\n")

    def predict_contacts(self, input_ids, attention_mask=None):
        """Contact probabilities (batch, L, L) between residues, as the reference's `predict_contacts`."""
        if not self.built:
            self.build()
        return self.esm.predict_contacts(input_ids, attention_mask=attention_mask)

    # ----------------------------------------------------------------------------------------------------- LoRA
    def enable_lora(self, rank, lora_alpha=None, targets=("query", "value"), freeze_encoder=True):
        """Keras LoRA adapters of rank `rank` on the attention projections `targets` (any of query/key/value)
        of every layer; the rest of the encoder is frozen unless `freeze_encoder=False`, the head stays
        trainable. See `tf_esm.training.enable_lora`."""
        from tf_esm.modeling.lora import enable_lora

        return enable_lora(self, rank, lora_alpha=lora_alpha, targets=targets, freeze_encoder=freeze_encoder)

    def save_lora_weights(self, path):
        """Save only the LoRA adapters and the task head (a safetensors file). See `tf_esm.training`."""
        from tf_esm.modeling.lora import save_lora_weights

        return save_lora_weights(self, path)

    def load_lora_weights(self, path):
        """Load adapters written by `save_lora_weights`, enabling LoRA with the saved rank if needed."""
        from tf_esm.modeling.lora import load_lora_weights

        return load_lora_weights(self, path)

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
        args, kwargs = _tf_data_inputs(args, kwargs, "x", "validation_data")
        x = args[0] if args else kwargs.get("x")
        if len(args) < 9 and "shuffle" not in kwargs and _is_tf_dataset(x):
            # Keras ignores `shuffle` for a tf.data input (shuffling is the dataset's job) but warns about its
            # default, True, on every call.
            kwargs["shuffle"] = False
        with self._keras_loop():
            return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        args, kwargs = _tf_data_inputs(args, kwargs, "x")
        with self._keras_loop():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        args, kwargs = _tf_data_inputs(args, kwargs, "x")
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

    def hf_compute_loss(self, labels, logits):
        """The built-in loss, as the PyTorch reference computes it from `labels` and `logits`."""
        raise ValueError(
            f"{type(self).__name__} has no built-in loss: compile it with a loss, e.g. "
            "model.compile(optimizer, loss=...)."
        )

    def _keras_targets(self, x, y, y_pred):
        """Labels for compiled losses and metrics. Token-level labels of -100 become 0 and are masked out
        through the logits' Keras mask, so Keras losses average over the other tokens (as torch's
        CrossEntropyLoss(ignore_index=-100) does) and metrics skip them."""
        labels = _labels_of(x, y)
        if labels is None or not self._token_level_labels:
            return labels
        keep = ops.not_equal(labels, IGNORE_INDEX)
        _set_keras_mask(y_pred, keep)
        return ops.where(keep, labels, ops.zeros_like(labels))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The compiled Keras loss on the logits if `compile` was given one, else the built-in loss."""
        if self._compile_loss is not None:
            labels = self._keras_targets(x, y, y_pred)
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
        loss = _scale_for_replicas(self.hf_compute_loss(labels, y_pred))
        for extra in self.losses:  # e.g. regularisers
            loss = loss + self._aggregate_additional_loss(extra)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        labels = self._keras_targets(x, y, y_pred)
        return super().compute_metrics(x, labels, y_pred, sample_weight=sample_weight)


@keras.saving.register_keras_serializable(package="tf_esm")
class TFEsmModel(TFEsmPreTrainedModel):
    """The bare ESM encoder: per-token hidden states and (optionally) a pooled `<cls>` vector.

    Examples:

    ```python
    >>> from tf_esm import EsmTokenizer, TFEsmModel
    >>> tokenizer = EsmTokenizer.from_pretrained("facebook/esm2_t6_8M_UR50D")
    >>> model = TFEsmModel.from_pretrained("facebook/esm2_t6_8M_UR50D")
    >>> out = model(tokenizer(["MKTAYIAKQR"], return_tensors="tf"))
    >>> out.last_hidden_state.shape
    TensorShape([1, 12, 320])
    ```
    """

    def __init__(self, config, add_pooling_layer=True, **kwargs):
        super().__init__(config, **kwargs)
        self.add_pooling_layer = add_pooling_layer
        self.esm = TFEsmMainLayer(self.config, add_pooling_layer=add_pooling_layer, name="esm")

    def get_config(self):
        base = super().get_config()
        base["add_pooling_layer"] = self.add_pooling_layer
        return base

    def call(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
             encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None, use_cache=None,
             output_attentions=False, output_hidden_states=False, training=False):
        input_ids, kw = _unpack_inputs(input_ids, dict(
            attention_mask=attention_mask, position_ids=position_ids, head_mask=head_mask,
            inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values))
        outputs = self.esm(input_ids, use_cache=use_cache, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states, training=training, **kw)
        if self._in_keras_loop:
            return {name: value for name, value in outputs.items() if name in ("last_hidden_state", "pooler_output")}
        return outputs


@keras.saving.register_keras_serializable(package="tf_esm")
class TFEsmForMaskedLM(TFEsmPreTrainedModel):
    """ESM with its masked-language-modelling head (decoder tied to the word embeddings).

    `labels` (batch, length) with -100 at positions to ignore gives `loss` (mean cross-entropy).
    """

    _token_level_labels = True

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.esm = TFEsmMainLayer(self.config, add_pooling_layer=False, name="esm")
        self.lm_head = TFEsmLMHead(self.config, self.esm.embeddings.word_embeddings, name="lm_head")

    def _sublayers(self):
        return [self.esm, self.lm_head]

    def hf_compute_loss(self, labels, logits):
        """Mean cross-entropy over positions whose label is not -100."""
        return masked_sparse_cross_entropy(labels, logits)

    def call(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
             encoder_hidden_states=None, encoder_attention_mask=None, labels=None, output_attentions=False,
             output_hidden_states=False, training=False):
        input_ids, kw = _unpack_inputs(input_ids, dict(
            attention_mask=attention_mask, position_ids=position_ids, head_mask=head_mask,
            inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, labels=labels))
        labels = kw.pop("labels")
        outputs = self.esm(input_ids, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states, training=training, **kw)
        logits = self.lm_head(outputs.last_hidden_state)
        if self._in_keras_loop:
            return logits
        loss = self.hf_compute_loss(labels, logits) if labels is not None else None
        return TFMaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                attentions=outputs.attentions)


@keras.saving.register_keras_serializable(package="tf_esm")
class TFEsmForSequenceClassification(TFEsmPreTrainedModel):
    """ESM with a classification/regression head on `<cls>`.

    The loss follows `config.problem_type` ("regression": MSE, "single_label_classification": cross-entropy,
    "multi_label_classification": binary cross-entropy on logits); when unset it is inferred from `num_labels`
    and the label dtype, as in transformers.
    """

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.num_labels = self.config.num_labels
        self.esm = TFEsmMainLayer(self.config, add_pooling_layer=False, name="esm")
        self.classifier = TFEsmClassificationHead(self.config, name="classifier")

    def _sublayers(self):
        return [self.esm, self.classifier]

    def hf_compute_loss(self, labels, logits):
        """MSE, cross-entropy or binary cross-entropy on logits, by `config.problem_type` (inferred when unset)."""
        labels = ops.convert_to_tensor(labels)
        problem_type = resolve_problem_type(self.config, labels)
        return sequence_classification_loss(problem_type, labels, logits, self.num_labels)

    def call(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
             labels=None, output_attentions=False, output_hidden_states=False, training=False):
        input_ids, kw = _unpack_inputs(input_ids, dict(
            attention_mask=attention_mask, position_ids=position_ids, head_mask=head_mask,
            inputs_embeds=inputs_embeds, labels=labels))
        labels = kw.pop("labels")
        outputs = self.esm(input_ids, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states, training=training, **kw)
        logits = self.classifier(outputs.last_hidden_state, training=training)
        if self._in_keras_loop:
            return logits
        loss = self.hf_compute_loss(labels, logits) if labels is not None else None
        return TFSequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                          attentions=outputs.attentions)


@keras.saving.register_keras_serializable(package="tf_esm")
class TFEsmForTokenClassification(TFEsmPreTrainedModel):
    """ESM with a per-token classification head; labels of -100 are ignored by the loss."""

    _token_level_labels = True

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.num_labels = self.config.num_labels
        self.esm = TFEsmMainLayer(self.config, add_pooling_layer=False, name="esm")
        self.dropout = keras.layers.Dropout(self.config.hidden_dropout_prob)
        self.classifier = keras.layers.Dense(self.config.num_labels, name="classifier",
                                             kernel_initializer=normal_initializer(self.config))

    def build(self, input_shape=None):
        self.esm.build(None)
        self.classifier.build((None, None, self.config.hidden_size))
        self.built = True

    def hf_compute_loss(self, labels, logits):
        """Mean cross-entropy over tokens whose label is not -100."""
        return masked_sparse_cross_entropy(labels, logits)

    def call(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
             labels=None, output_attentions=False, output_hidden_states=False, training=False):
        input_ids, kw = _unpack_inputs(input_ids, dict(
            attention_mask=attention_mask, position_ids=position_ids, head_mask=head_mask,
            inputs_embeds=inputs_embeds, labels=labels))
        labels = kw.pop("labels")
        outputs = self.esm(input_ids, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states, training=training, **kw)
        logits = self.classifier(self.dropout(outputs.last_hidden_state, training=training))
        if self._in_keras_loop:
            return logits
        loss = self.hf_compute_loss(labels, logits) if labels is not None else None
        return TFTokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                       attentions=outputs.attentions)
