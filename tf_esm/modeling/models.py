"""The public ESM models: `TFEsmModel`, `TFEsmForMaskedLM`, `TFEsmForSequenceClassification`,
`TFEsmForTokenClassification`. They share `TFEsmMainLayer` (attribute `esm`) and load PyTorch checkpoints."""

from __future__ import annotations

from typing import Any, Mapping, Union

import keras
from keras import ops

from tf_esm.backend import matmul_precision
from tf_esm.modeling.embeddings import normal_initializer
from tf_esm.modeling.encoder import TFEsmMainLayer
from tf_esm.modeling.heads import TFEsmClassificationHead, TFEsmLMHead
from tf_esm.modeling.losses import (
    packed_sequence_classification_loss,
    resolve_problem_type,
    sequence_classification_loss,
)
from tf_esm.modeling.outputs import (
    TFBaseModelOutputWithPoolingAndCrossAttentions,
    TFMaskedLMOutput,
    TFSequenceClassifierOutput,
    TFTokenClassifierOutput,
)
from tf_esm.modeling.packing import protein_starts
from tf_esm.modeling.pretrained import EsmPretrainedIO
from tf_esm.modeling.task import EsmKerasTask

# Anything `keras.ops.convert_to_tensor` accepts: a backend tensor, a NumPy array, nested Python lists.
TensorLike = Any
# `input_ids` may also be the whole input dict (`model(tokenizer(...))`).
ModelInputs = Union[TensorLike, Mapping[str, TensorLike]]

# Inputs that may also arrive packed in a dict as the first argument (as `model(tokenizer(...))`).
_INPUT_NAMES = ("input_ids", "attention_mask", "position_ids", "head_mask", "inputs_embeds", "labels",
                "encoder_hidden_states", "encoder_attention_mask", "past_key_values", "sequence_id")


def _sequence_id_of(inputs):
    """The packed rows' `sequence_id` of a Keras batch's inputs, if any."""
    return inputs.get("sequence_id") if isinstance(inputs, dict) else None


def _unpack_inputs(input_ids, kwargs, input_names=_INPUT_NAMES):
    if isinstance(input_ids, dict):
        packed = dict(input_ids)
        unknown = set(packed) - set(input_names) - {"token_type_ids", "special_tokens_mask"}
        if unknown:
            raise ValueError(f"Unknown input names {sorted(unknown)}; expected some of {list(input_names)}.")
        input_ids = packed.pop("input_ids", None)
        for name in input_names[1:]:
            if name in packed and kwargs.get(name) is None:
                kwargs[name] = packed[name]
    return input_ids, kwargs


class TFEsmPreTrainedModel(EsmPretrainedIO, EsmKerasTask, keras.Model):
    """Base class of the encoder models: pretrained I/O (`EsmPretrainedIO`: configuration, building,
    `from_pretrained`, `save_pretrained`) and Keras training (`EsmKerasTask`: losses, the training adapter, LoRA).

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
    >>> from tf_esm.pipelines.data import table_dataset
    >>> model = TFEsmForSequenceClassification.from_pretrained("facebook/esm2_t6_8M_UR50D", num_labels=2)
    >>> train = table_dataset("examples/data/classification_toy.csv", tokenizer="facebook/esm2_t6_8M_UR50D")
    >>> model.compile(optimizer=keras.optimizers.AdamW(1e-4), metrics=["accuracy"])  # built-in loss
    >>> history = model.fit(train, epochs=3)
    >>> logits = model.predict(train)           # (sequences, 2) array, in the dataset's order
    >>> model(next(iter(train))[0]).logits      # calling the model: named outputs
    ```
    """

    supported_dtypes = ("float32", "bfloat16")

    def __call__(self, *args, **kwargs):
        with matmul_precision():  # true float32 products under JAX on a GPU (heads included), as the reference
            return super().__call__(*args, **kwargs)

    def predict_contacts(self, input_ids, attention_mask=None):
        """Contact probabilities (batch, L, L) between residues, as the reference's `predict_contacts`."""
        if not self.built:
            self.build()
        return self.esm.predict_contacts(input_ids, attention_mask=attention_mask)


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

    def call(self, input_ids: ModelInputs | None = None, attention_mask: TensorLike | None = None,
             position_ids: TensorLike | None = None, head_mask: TensorLike | None = None,
             inputs_embeds: TensorLike | None = None, encoder_hidden_states: TensorLike | None = None,
             encoder_attention_mask: TensorLike | None = None, past_key_values: Any = None,
             use_cache: bool | None = None, output_attentions: bool = False, output_hidden_states: bool = False,
             training: bool = False, sequence_id: TensorLike | None = None,
             ) -> TFBaseModelOutputWithPoolingAndCrossAttentions | dict[str, TensorLike]:
        input_ids, kw = _unpack_inputs(input_ids, dict(
            attention_mask=attention_mask, position_ids=position_ids, head_mask=head_mask,
            inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values, sequence_id=sequence_id))
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

    def call(self, input_ids: ModelInputs | None = None, attention_mask: TensorLike | None = None,
             position_ids: TensorLike | None = None, head_mask: TensorLike | None = None,
             inputs_embeds: TensorLike | None = None, encoder_hidden_states: TensorLike | None = None,
             encoder_attention_mask: TensorLike | None = None, labels: TensorLike | None = None,
             output_attentions: bool = False, output_hidden_states: bool = False,
             training: bool = False, sequence_id: TensorLike | None = None) -> TFMaskedLMOutput | TensorLike:
        input_ids, kw = _unpack_inputs(input_ids, dict(
            attention_mask=attention_mask, position_ids=position_ids, head_mask=head_mask,
            inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, labels=labels, sequence_id=sequence_id))
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

    Packed rows (`sequence_id`, modeling/packing.py): the head runs on every token and the logits are
    (batch, length, num_labels), each protein's at its first token (its `<cls>`) and zeros elsewhere
    (`tf_esm.modeling.packing.protein_rows(logits, sequence_id)`: one row per protein). Labels are laid out the
    same way, (batch, length) or (batch, length, num_labels), read at the proteins' first tokens only; the loss
    averages over proteins, so it equals the unpacked batch's.
    """

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.num_labels = self.config.num_labels
        self.esm = TFEsmMainLayer(self.config, add_pooling_layer=False, name="esm")
        self.classifier = TFEsmClassificationHead(self.config, name="classifier")

    def _sublayers(self):
        return [self.esm, self.classifier]

    def hf_compute_loss(self, labels, logits, sequence_id=None):
        """MSE, cross-entropy or binary cross-entropy on logits, by `config.problem_type` (inferred when unset);
        with `sequence_id`, of packed rows (one term per protein)."""
        labels = ops.convert_to_tensor(labels)
        problem_type = resolve_problem_type(self.config, labels)
        if sequence_id is not None:
            return packed_sequence_classification_loss(problem_type, labels, logits, protein_starts(sequence_id),
                                                       self.num_labels)
        return sequence_classification_loss(problem_type, labels, logits, self.num_labels)

    def _built_in_loss(self, x, labels, logits):
        return self.hf_compute_loss(labels, logits, sequence_id=_sequence_id_of(x))

    def call(self, input_ids: ModelInputs | None = None, attention_mask: TensorLike | None = None,
             position_ids: TensorLike | None = None, head_mask: TensorLike | None = None,
             inputs_embeds: TensorLike | None = None, labels: TensorLike | None = None,
             output_attentions: bool = False, output_hidden_states: bool = False,
             training: bool = False,
             sequence_id: TensorLike | None = None) -> TFSequenceClassifierOutput | TensorLike:
        input_ids, kw = _unpack_inputs(input_ids, dict(
            attention_mask=attention_mask, position_ids=position_ids, head_mask=head_mask,
            inputs_embeds=inputs_embeds, labels=labels, sequence_id=sequence_id))
        labels = kw.pop("labels")
        outputs = self.esm(input_ids, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states, training=training, **kw)
        packed = kw["sequence_id"] is not None
        logits = self.classifier(outputs.last_hidden_state, training=training, per_token=packed)
        if packed:
            logits = ops.where(protein_starts(kw["sequence_id"])[..., None], logits, ops.zeros((), logits.dtype))
        if self._in_keras_loop:
            return logits
        loss = self.hf_compute_loss(labels, logits, sequence_id=kw["sequence_id"]) if labels is not None else None
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

    def call(self, input_ids: ModelInputs | None = None, attention_mask: TensorLike | None = None,
             position_ids: TensorLike | None = None, head_mask: TensorLike | None = None,
             inputs_embeds: TensorLike | None = None, labels: TensorLike | None = None,
             output_attentions: bool = False, output_hidden_states: bool = False,
             training: bool = False, sequence_id: TensorLike | None = None) -> TFTokenClassifierOutput | TensorLike:
        input_ids, kw = _unpack_inputs(input_ids, dict(
            attention_mask=attention_mask, position_ids=position_ids, head_mask=head_mask,
            inputs_embeds=inputs_embeds, labels=labels, sequence_id=sequence_id))
        labels = kw.pop("labels")
        outputs = self.esm(input_ids, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states, training=training, **kw)
        logits = self.classifier(self.dropout(outputs.last_hidden_state, training=training))
        if self._in_keras_loop:
            return logits
        loss = self.hf_compute_loss(labels, logits) if labels is not None else None
        return TFTokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                       attentions=outputs.attentions)
