"""Multi-head self- and cross-attention with rotary or relative positions, and ESM's pre-norm attention block."""

from __future__ import annotations

import functools

import keras
from keras import ops

from tf_esm.modeling.checkpointing import inside_checkpoint
from tf_esm.modeling.embeddings import apply_rotary, dense_over_tokens, normal_initializer
from tf_esm.modeling.normalization import LayerNorm


@functools.lru_cache(maxsize=None)
def uses_blocked_attention():
    """Inference under TensorFlow on a CPU attends over blocks of query rows (`attention_tf`): less memory, and
    faster there. Elsewhere (GPU, JAX, PyTorch, training) the backend's `dot_product_attention` is used."""
    if keras.backend.backend() != "tensorflow":
        return False
    from tf_esm.modeling import attention_tf

    return attention_tf.cpu_only()


@functools.lru_cache(maxsize=None)
def fused_attention_runs(dtype):
    """Whether `keras.ops.dot_product_attention` can run on `dtype` inputs here.

    Under JAX on a CPU it cannot take float16: JAX's implementation asks XLA for float16 products with float32
    results (the F16_F16_F32 dot algorithm), which the CPU backend refuses to compile inside a jitted program
    (eagerly JAX falls back, so only compiled programs fail). There the explicit path runs instead: float16
    scores, a float32 softmax, float16 probabilities, which is what the reference's eager attention computes.
    """
    if keras.backend.backend() != "jax" or keras.backend.standardize_dtype(dtype) != "float16":
        return True
    import jax

    return jax.default_backend() != "cpu"


def masked_fill_value(dtype):
    """The most negative finite value of `dtype`: masks never overflow to -inf in half precision."""
    import numpy as np

    name = keras.backend.standardize_dtype(dtype)
    if name == "bfloat16":
        return -3.3895313892515355e38
    return float(np.finfo(name).min)


def fused_attention(query, key, value, attention_mask=None, training=False):
    """Softmax attention through a fused kernel: `query` (batch, heads, L, head_dim, already scaled), `key`,
    `value` (batch, heads, S, head_dim), `attention_mask` boolean broadcastable to (batch, heads, L, S) or None.
    Returns the context (batch, L, heads, head_dim). Inference under TensorFlow on a CPU attends over blocks of query
    rows (`attention_tf`); elsewhere `keras.ops.dot_product_attention` (flash/cuDNN on GPUs)."""
    # An additive mask, as the reference adds its extended mask: the same probabilities as filling the masked
    # scores (|score| is far below the fill value's ulp), without a select over the whole score tensor, and a form
    # every backend's fused kernel accepts.
    bias = None
    if attention_mask is not None:
        bias = ops.where(attention_mask, ops.zeros((), query.dtype),
                         ops.full((), masked_fill_value(query.dtype), query.dtype))
    if not training and uses_blocked_attention():
        from tf_esm.modeling import attention_tf

        return attention_tf.blocked_attention(query, key, value, bias=bias)

    def attend(query, key, value):
        return ops.dot_product_attention(ops.transpose(query, (0, 2, 1, 3)), ops.transpose(key, (0, 2, 1, 3)),
                                         ops.transpose(value, (0, 2, 1, 3)), bias=bias, scale=1.0)

    if training and recomputes_probabilities(query.dtype) and not inside_checkpoint():
        # The mask is a constant of the recomputation (no gradient), as it is of the layer.
        return keras.remat(attend)(query, key, value)
    return attend(query, key, value)


def recomputes_probabilities(dtype):
    """Whether a training call's fused attention recomputes its probabilities in the backward pass
    (`keras.remat` over the scores, softmax and weighted sum) instead of keeping them from the forward pass.

    Where the backend's `dot_product_attention` materialises the (batch, heads, L, L) probabilities (TensorFlow;
    JAX's XLA implementation, everywhere but a GPU's cuDNN kernel in half precision), the backward pass keeps one
    such tensor per layer, much of a training step's memory at 512 tokens and more (benchmarks/RESULTS.md).
    Recomputing them costs a second score product per layer in the backward pass and gives the same gradients
    (the same operations run on the same inputs). PyTorch's SDPA kernels keep no probabilities and are left
    alone, and so is a layer that is already checkpointed whole (`checkpointing.py`)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return True
    if backend == "jax":
        import jax

        return not (jax.default_backend() == "gpu"
                    and keras.backend.standardize_dtype(dtype) in ("float16", "bfloat16"))
    return False


class TFEsmSelfAttention(keras.layers.Layer):
    """Scaled dot-product attention as ESM computes it: the query is scaled by head_dim**-0.5 before rotary.

    Keys and values come from `hidden_states` (self-attention) or `encoder_hidden_states` (cross-attention).
    `attention_mask` is a boolean tensor broadcastable to (batch, heads, query_len, key_len), True where a key may
    be attended (a key padding mask, a causal mask, or the block-diagonal mask of packed proteins).

    Which kernel computes it (`config.attn_implementation`):

    * "sdpa" (or None, the default): when no attention probabilities are requested, no relative positions are used, no
      head mask is given and attention dropout is off, the backend's fused `keras.ops.dot_product_attention`
      (flash/cuDNN kernels on GPUs where the backend has them); for TensorFlow inference on a CPU, attention over
      blocks of query rows (`attention_tf`). The numbers are the explicit path's to float32 rounding.
    * "eager", and every call "sdpa" cannot serve: the explicit matmul -> float32 softmax -> matmul, as the
      reference's eager attention computes it.

    Args:
        config: An `EsmConfig`.
        is_cross_attention: Whether this layer attends over encoder states.
    """

    def __init__(self, config, is_cross_attention=False, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.is_cross_attention = is_cross_attention
        self.position_embedding_type = config.position_embedding_type
        init = normal_initializer(config)
        self.query = keras.layers.Dense(config.hidden_size, kernel_initializer=init, name="query")
        self.key = keras.layers.Dense(config.hidden_size, kernel_initializer=init, name="key")
        self.value = keras.layers.Dense(config.hidden_size, kernel_initializer=init, name="value")
        self.dropout = keras.layers.Dropout(config.attention_probs_dropout_prob)
        self.distance_embedding = None
        if self.position_embedding_type in ("relative_key", "relative_key_query"):
            self.distance_embedding = keras.layers.Embedding(
                2 * config.max_position_embeddings - 1, self.head_dim, embeddings_initializer=init,
                name="distance_embedding",
            )

    def build(self, input_shape=None):
        hidden = (None, None, self.config.hidden_size)
        for dense in (self.query, self.key, self.value):
            dense.build(hidden)
        if self.distance_embedding is not None:
            self.distance_embedding.build(None)
        self.built = True

    def _split_heads(self, x):
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        x = ops.reshape(x, (batch, length, self.num_heads, self.head_dim))
        return ops.transpose(x, (0, 2, 1, 3))

    def call(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
             rotary=None, past_key_value=None, output_attentions=False, training=False):
        """Returns (context, attention_probs or None, present_key_value or None).

        `rotary` is (cos_q, sin_q, cos_k, sin_k) for this call's query and key positions.
        `past_key_value` is (key, value) of earlier steps, stored after rotary (for cross-attention: the whole
        encoder sequence's projections).
        """
        query = self._split_heads(dense_over_tokens(self.query, hidden_states))
        query = query * ops.cast(self.head_dim ** -0.5, self.compute_dtype)
        # The reference rotates cross-attention too: queries at their own positions, encoder keys at 0..S-1.
        if rotary is not None:
            cos_q, sin_q, cos_k, sin_k = rotary
            query = apply_rotary(query, cos_q, sin_q)
        if self.is_cross_attention:
            if past_key_value is not None:
                key, value = past_key_value
            else:
                key = self._split_heads(dense_over_tokens(self.key, encoder_hidden_states))
                value = self._split_heads(dense_over_tokens(self.value, encoder_hidden_states))
                if rotary is not None:
                    key = apply_rotary(key, cos_k, sin_k)
        else:
            key = self._split_heads(dense_over_tokens(self.key, hidden_states))
            value = self._split_heads(dense_over_tokens(self.value, hidden_states))
            if rotary is not None:
                key = apply_rotary(key, cos_k, sin_k)
            if past_key_value is not None:
                key = ops.concatenate([past_key_value[0], key], axis=2)
                value = ops.concatenate([past_key_value[1], value], axis=2)
        present = (key, value) if self.config.is_decoder else None

        dropout_active = training and self.config.attention_probs_dropout_prob > 0
        fused = (getattr(self.config, "attn_implementation", None) != "eager" and not output_attentions
                 and head_mask is None and self.distance_embedding is None and not dropout_active
                 and fused_attention_runs(query.dtype))
        if fused:
            context, probs = fused_attention(query, key, value, attention_mask, training), None
        else:
            scores = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2)))
            if self.distance_embedding is not None:
                scores = scores + self._relative_position_scores(query, key)
            if attention_mask is not None:
                scores = ops.where(attention_mask, scores, masked_fill_value(scores.dtype))
            probs = ops.cast(ops.softmax(ops.cast(scores, "float32"), axis=-1), value.dtype)
            probs = self.dropout(probs, training=training)
            if head_mask is not None:
                probs = probs * ops.cast(head_mask, probs.dtype)
            context = ops.transpose(ops.matmul(probs, value), (0, 2, 1, 3))
        batch, length = ops.shape(context)[0], ops.shape(context)[1]
        context = ops.reshape(context, (batch, length, self.config.hidden_size))
        return context, (probs if output_attentions else None), present

    def _relative_position_scores(self, query, key):
        query_len, key_len = ops.shape(query)[2], ops.shape(key)[2]
        # Queries sit at the end of the key sequence (they are the newest tokens when a cache is used).
        query_positions = ops.arange(key_len - query_len, key_len, dtype="int32")
        key_positions = ops.arange(key_len, dtype="int32")
        distance = query_positions[:, None] - key_positions[None, :]
        table = self.distance_embedding(distance + self.config.max_position_embeddings - 1)
        table = ops.cast(table, query.dtype)
        scores = ops.einsum("bhld,lrd->bhlr", query, table)
        if self.position_embedding_type == "relative_key_query":
            scores = scores + ops.einsum("bhrd,lrd->bhlr", key, table)
        return scores

    def get_config(self):
        base = super().get_config()
        base.update(config=self.config.to_dict(), is_cross_attention=self.is_cross_attention)
        return base


class TFEsmSelfOutput(keras.layers.Layer):
    """Output projection of the attention block plus the residual connection."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.dense = keras.layers.Dense(config.hidden_size, kernel_initializer=normal_initializer(config),
                                        name="dense")
        self.dropout = keras.layers.Dropout(config.hidden_dropout_prob)

    def build(self, input_shape=None):
        self.dense.build((None, None, self.config.hidden_size))
        self.built = True

    def call(self, hidden_states, residual, training=False):
        return self.dropout(dense_over_tokens(self.dense, hidden_states), training=training) + residual


class TFEsmAttention(keras.layers.Layer):
    """Pre-norm attention block: LayerNorm -> (self|cross) attention -> dense -> + residual."""

    def __init__(self, config, is_cross_attention=False, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.self_attention = TFEsmSelfAttention(config, is_cross_attention=is_cross_attention, name="self")
        self.output_projection = TFEsmSelfOutput(config, name="output")
        self.LayerNorm = LayerNorm(epsilon=config.layer_norm_eps, name="LayerNorm")

    def build(self, input_shape=None):
        self.LayerNorm.build((None, None, self.config.hidden_size))
        self.self_attention.build(None)
        self.output_projection.build(None)
        self.built = True

    def call(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None, rotary=None,
             past_key_value=None, output_attentions=False, training=False):
        normed = self.LayerNorm(hidden_states)
        context, probs, present = self.self_attention(
            normed, attention_mask=attention_mask, head_mask=head_mask, encoder_hidden_states=encoder_hidden_states,
            rotary=rotary, past_key_value=past_key_value, output_attentions=output_attentions, training=training,
        )
        return self.output_projection(context, hidden_states, training=training), probs, present
