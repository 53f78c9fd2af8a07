"""Task heads: masked-LM head (decoder tied to the word embeddings), classification heads, contact head."""

from __future__ import annotations

import math

import keras
from keras import ops

from tf_esm.modeling.embeddings import dense_over_tokens, normal_initializer
from tf_esm.modeling.normalization import LayerNorm


def _gelu(x):
    return x * 0.5 * (1.0 + ops.erf(x / math.sqrt(2.0)))


class TFEsmLMHead(keras.layers.Layer):
    """dense -> GELU -> layer norm -> projection onto the (tied) word embeddings + bias.

    Args:
        config: An `EsmConfig`.
        input_embeddings: The `keras.layers.Embedding` whose matrix is the decoder (weight tying).
    """

    def __init__(self, config, input_embeddings, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.input_embeddings = input_embeddings
        self.dense = keras.layers.Dense(config.hidden_size, kernel_initializer=normal_initializer(config),
                                        name="dense")
        self.layer_norm = LayerNorm(epsilon=config.layer_norm_eps, name="layer_norm")

    def build(self, input_shape=None):
        self.dense.build((None, None, self.config.hidden_size))
        self.layer_norm.build((None, None, self.config.hidden_size))
        self.bias = self.add_weight(name="bias", shape=(self.config.vocab_size,), initializer="zeros")
        self.built = True

    def call(self, features):
        x = self.layer_norm(_gelu(self.dense(features)))
        decoder = ops.cast(self.input_embeddings.embeddings, x.dtype)
        return ops.matmul(x, ops.transpose(decoder)) + ops.cast(self.bias, x.dtype)


class TFEsmcLMHead(keras.layers.Layer):
    """ESM C's masked-LM head: dense -> GELU -> layer norm -> decoder (its own weights, not tied), all with biases."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        init = normal_initializer(config)
        self.dense = keras.layers.Dense(config.hidden_size, kernel_initializer=init, name="dense")
        self.layer_norm = LayerNorm(epsilon=config.layer_norm_eps, name="layer_norm")
        self.decoder = keras.layers.Dense(config.vocab_size, kernel_initializer=init, name="decoder")

    def build(self, input_shape=None):
        self.dense.build((None, None, self.config.hidden_size))
        self.layer_norm.build((None, None, self.config.hidden_size))
        self.decoder.build((None, None, self.config.hidden_size))
        self.built = True

    def call(self, features):
        return dense_over_tokens(self.decoder, self.layer_norm(dense_over_tokens(self.dense, features, _gelu)))


class TFEsmClassificationHead(keras.layers.Layer):
    """Sequence-level head on the `<cls>` token: dropout -> dense -> tanh -> dropout -> out_proj.

    Args:
        config: An `EsmConfig` or `EsmcConfig`.
        dropout_rate: The dropout rate (default `config.hidden_dropout_prob`; ESM C's head uses
            `config.classifier_dropout`).
    """

    def __init__(self, config, dropout_rate=None, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        init = normal_initializer(config)
        self.dense = keras.layers.Dense(config.hidden_size, activation="tanh", kernel_initializer=init, name="dense")
        self.out_proj = keras.layers.Dense(config.num_labels, kernel_initializer=init, name="out_proj")
        self.dropout = keras.layers.Dropout(config.hidden_dropout_prob if dropout_rate is None else dropout_rate)

    def build(self, input_shape=None):
        self.dense.build((None, self.config.hidden_size))
        self.out_proj.build((None, self.config.hidden_size))
        self.built = True

    def call(self, features, training=False, per_token=False):
        """Logits (batch, num_labels) from each row's first token, or with `per_token` (packed rows: each protein
        starts with its own `<cls>`) (batch, length, num_labels) from every token."""
        x = self.dropout(features if per_token else features[:, 0, :], training=training)
        x = self.dropout(self.dense(x), training=training)
        return self.out_proj(x)


def symmetrize(x):
    return x + ops.swapaxes(x, -1, -2)


def average_product_correct(x):
    """Subtract the average-product correction (APC) from the last two axes."""
    row = ops.sum(x, axis=-1, keepdims=True)
    col = ops.sum(x, axis=-2, keepdims=True)
    total = ops.sum(x, axis=(-1, -2), keepdims=True)
    return x - row * col / total


class TFEsmContactPredictionHead(keras.layers.Layer):
    """Logistic regression over symmetrised, APC-corrected attention maps of every layer and head."""

    def __init__(self, in_features, eos_idx=2, **kwargs):
        super().__init__(**kwargs)
        self.in_features = in_features
        self.eos_idx = eos_idx
        self.regression = keras.layers.Dense(1, name="regression")

    def build(self, input_shape=None):
        self.regression.build((None, self.in_features))
        self.built = True

    def call(self, input_ids, attentions):
        """`attentions`: (batch, layers, heads, L, L) including `<cls>`/`<eos>`; returns (batch, L-2, L-2)."""
        attentions = ops.cast(attentions, "float32")
        not_eos = ops.cast(ops.not_equal(input_ids, self.eos_idx), attentions.dtype)
        attentions = attentions * (not_eos[:, None, :] * not_eos[:, :, None])[:, None, None]
        attentions = attentions[..., 1:-1, 1:-1]
        shape = ops.shape(attentions)
        features = ops.reshape(attentions, (shape[0], shape[1] * shape[2], shape[3], shape[4]))
        features = average_product_correct(symmetrize(features))
        features = ops.transpose(features, (0, 2, 3, 1))
        kernel = ops.cast(self.regression.kernel, "float32")
        logits = ops.matmul(features, kernel)[..., 0] + ops.cast(self.regression.bias, "float32")
        return ops.sigmoid(logits)

    def get_config(self):
        base = super().get_config()
        base.update(in_features=self.in_features, eos_idx=self.eos_idx)
        return base
