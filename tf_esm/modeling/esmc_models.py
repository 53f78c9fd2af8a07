"""The public ESM C models: `TFEsmcModel`, `TFEsmcForMaskedLM`, `TFEsmcForSequenceClassification`,
`TFEsmcForTokenClassification`. They share `TFEsmcMainLayer` (attribute `esmc`, as transformers' `EsmcModel` is
the `esmc` module of its task models) and load transformers' ESMC directories and the `esm` package's weights."""

from __future__ import annotations

from typing import Any

import keras

from tf_esm.backend import matmul_precision
from tf_esm.configuration import EsmcConfig
from tf_esm.modeling.embeddings import normal_initializer
from tf_esm.modeling.esmc import TFEsmcMainLayer
from tf_esm.modeling.heads import TFEsmClassificationHead, TFEsmcLMHead
from tf_esm.modeling.losses import resolve_problem_type, sequence_classification_loss
from tf_esm.modeling.models import ModelInputs, TensorLike, _unpack_inputs
from tf_esm.modeling.outputs import (
    TFBaseModelOutputWithPoolingAndCrossAttentions,
    TFMaskedLMOutput,
    TFSequenceClassifierOutput,
    TFTokenClassifierOutput,
)
from tf_esm.modeling.pretrained import EsmPretrainedIO
from tf_esm.modeling.task import EsmKerasTask

# Inputs that may also arrive packed in a dict as the first argument (as `model(tokenizer(...))`).
_ESMC_INPUT_NAMES = ("input_ids", "attention_mask", "position_ids", "sequence_id", "inputs_embeds", "labels")


class TFEsmcPreTrainedModel(EsmPretrainedIO, EsmKerasTask, keras.Model):
    """Base class of the ESM C models: pretrained I/O (`from_pretrained` of a transformers ESMC directory, a hub
    id or an `esm`-package `.pth` file; `save_pretrained` writes a directory transformers' `EsmcModel` loads) and
    Keras training (`fit` with the built-in losses, LoRA), as `TFEsmPreTrainedModel` documents for ESM-2.

    Calling the model returns named outputs with transformers' field names (`last_hidden_state`, `logits`,
    `hidden_states`, `attentions`, `loss` when `labels` are given); inside `fit`/`predict` the logits tensor.

    Examples:

    ```python
    >>> from tf_esm import EsmcTokenizer, TFEsmcModel
    >>> tokenizer = EsmcTokenizer.from_pretrained("biohub/ESMC-300M")
    >>> model = TFEsmcModel.from_pretrained("biohub/ESMC-300M")
    >>> out = model(tokenizer(["MLKNVQVQLV"], return_tensors="np"))
    >>> out.last_hidden_state.shape
    TensorShape([1, 12, 960])
    ```
    """

    config_class = EsmcConfig
    base_model_prefix = "esmc"
    supported_dtypes = ("float32", "bfloat16")

    def _sublayers(self):
        return [self.esmc]

    def __call__(self, *args, **kwargs):
        with matmul_precision():  # true float32 products under JAX on a GPU (heads included), as the reference
            return super().__call__(*args, **kwargs)

    def _default_tokenizer(self):
        from tf_esm.tokenization import EsmcTokenizer

        return EsmcTokenizer()

    def predict_contacts(self, input_ids, attention_mask=None):
        """ESM C has no contact head (see `TFEsmcMainLayer.predict_contacts`): raises NotImplementedError."""
        return self.esmc.predict_contacts(input_ids, attention_mask)

    def _encode(self, input_ids, kw, output_attentions, output_hidden_states, training):
        return self.esmc(input_ids, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                         training=training, **kw)


def _inputs(input_ids, attention_mask, position_ids, sequence_id, inputs_embeds, labels=None):
    return _unpack_inputs(input_ids, dict(attention_mask=attention_mask, position_ids=position_ids,
                                          sequence_id=sequence_id, inputs_embeds=inputs_embeds, labels=labels),
                          _ESMC_INPUT_NAMES)


@keras.saving.register_keras_serializable(package="tf_esm")
class TFEsmcModel(TFEsmcPreTrainedModel):
    """The bare ESM C encoder: per-token hidden states after the final layer norm (transformers' `EsmcModel`)."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.esmc = TFEsmcMainLayer(self.config, name="esmc")

    def call(self, input_ids: ModelInputs | None = None, attention_mask: TensorLike | None = None,
             position_ids: TensorLike | None = None, sequence_id: TensorLike | None = None,
             inputs_embeds: TensorLike | None = None, output_attentions: bool = False,
             output_hidden_states: bool = False,
             training: bool = False) -> TFBaseModelOutputWithPoolingAndCrossAttentions | dict[str, Any]:
        input_ids, kw = _inputs(input_ids, attention_mask, position_ids, sequence_id, inputs_embeds)
        kw.pop("labels")
        outputs = self._encode(input_ids, kw, output_attentions, output_hidden_states, training)
        if self._in_keras_loop:
            return {"last_hidden_state": outputs.last_hidden_state}
        return outputs


@keras.saving.register_keras_serializable(package="tf_esm")
class TFEsmcForMaskedLM(TFEsmcPreTrainedModel):
    """ESM C with its masked-language-modelling head (`lm_head`: dense, GELU, layer norm, decoder over 64 ids).

    `labels` (batch, length) with -100 at positions to ignore gives `loss` (mean cross-entropy)."""

    _token_level_labels = True

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.esmc = TFEsmcMainLayer(self.config, name="esmc")
        self.lm_head = TFEsmcLMHead(self.config, name="lm_head")

    def _sublayers(self):
        return [self.esmc, self.lm_head]

    def call(self, input_ids: ModelInputs | None = None, attention_mask: TensorLike | None = None,
             position_ids: TensorLike | None = None, sequence_id: TensorLike | None = None,
             inputs_embeds: TensorLike | None = None, labels: TensorLike | None = None,
             output_attentions: bool = False, output_hidden_states: bool = False,
             training: bool = False) -> TFMaskedLMOutput | TensorLike:
        input_ids, kw = _inputs(input_ids, attention_mask, position_ids, sequence_id, inputs_embeds, labels)
        labels = kw.pop("labels")
        outputs = self._encode(input_ids, kw, output_attentions, output_hidden_states, training)
        logits = self.lm_head(outputs.last_hidden_state)
        if self._in_keras_loop:
            return logits
        loss = self.hf_compute_loss(labels, logits) if labels is not None else None
        return TFMaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                attentions=outputs.attentions)


@keras.saving.register_keras_serializable(package="tf_esm")
class TFEsmcForSequenceClassification(TFEsmcPreTrainedModel):
    """ESM C with a classification/regression head on `<cls>` (dropout, dense, tanh, dropout, out_proj); the loss
    follows `config.problem_type` as for `TFEsmForSequenceClassification`."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.num_labels = self.config.num_labels
        self.esmc = TFEsmcMainLayer(self.config, name="esmc")
        self.classifier = TFEsmClassificationHead(self.config, dropout_rate=self.config.classifier_dropout or 0.0,
                                                  name="classifier")

    def _sublayers(self):
        return [self.esmc, self.classifier]

    def hf_compute_loss(self, labels, logits):
        """MSE, cross-entropy or binary cross-entropy on logits, by `config.problem_type` (inferred when unset)."""
        labels = keras.ops.convert_to_tensor(labels)
        problem_type = resolve_problem_type(self.config, labels)
        return sequence_classification_loss(problem_type, labels, logits, self.num_labels)

    def call(self, input_ids: ModelInputs | None = None, attention_mask: TensorLike | None = None,
             position_ids: TensorLike | None = None, sequence_id: TensorLike | None = None,
             inputs_embeds: TensorLike | None = None, labels: TensorLike | None = None,
             output_attentions: bool = False, output_hidden_states: bool = False,
             training: bool = False) -> TFSequenceClassifierOutput | TensorLike:
        input_ids, kw = _inputs(input_ids, attention_mask, position_ids, sequence_id, inputs_embeds, labels)
        labels = kw.pop("labels")
        outputs = self._encode(input_ids, kw, output_attentions, output_hidden_states, training)
        logits = self.classifier(outputs.last_hidden_state, training=training)
        if self._in_keras_loop:
            return logits
        loss = self.hf_compute_loss(labels, logits) if labels is not None else None
        return TFSequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                          attentions=outputs.attentions)


@keras.saving.register_keras_serializable(package="tf_esm")
class TFEsmcForTokenClassification(TFEsmcPreTrainedModel):
    """ESM C with a per-token head (dropout, then the linear `score`, as transformers' generic token classifier);
    labels of -100 are ignored by the loss."""

    _token_level_labels = True

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.num_labels = self.config.num_labels
        self.esmc = TFEsmcMainLayer(self.config, name="esmc")
        rate = self.config.classifier_dropout if self.config.classifier_dropout is not None else 0.1
        self.dropout = keras.layers.Dropout(rate)
        self.score = keras.layers.Dense(self.config.num_labels, name="score",
                                        kernel_initializer=normal_initializer(self.config))

    def build(self, input_shape=None):
        self.esmc.build(None)
        self.score.build((None, None, self.config.hidden_size))
        self.built = True

    def call(self, input_ids: ModelInputs | None = None, attention_mask: TensorLike | None = None,
             position_ids: TensorLike | None = None, sequence_id: TensorLike | None = None,
             inputs_embeds: TensorLike | None = None, labels: TensorLike | None = None,
             output_attentions: bool = False, output_hidden_states: bool = False,
             training: bool = False) -> TFTokenClassifierOutput | TensorLike:
        input_ids, kw = _inputs(input_ids, attention_mask, position_ids, sequence_id, inputs_embeds, labels)
        labels = kw.pop("labels")
        outputs = self._encode(input_ids, kw, output_attentions, output_hidden_states, training)
        logits = self.score(self.dropout(outputs.last_hidden_state, training=training))
        if self._in_keras_loop:
            return logits
        loss = self.hf_compute_loss(labels, logits) if labels is not None else None
        return TFTokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                       attentions=outputs.attentions)
