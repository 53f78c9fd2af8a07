"""ESM C (ESM Cambrian): its transformer layer and `TFEsmcMainLayer` (token embedding -> layer stack -> final norm).

The architecture of transformers' `EsmcModel` (and of the `esm` package's `ESMC`, whose weights `tf_esm.io.esmc_package`
renames to transformers' names): pre-norm blocks whose attention projects without biases, normalises queries and
keys with a layer norm over the whole hidden size (no bias), rotates them (rotary positions over absolute token
indices), and whose feed-forward is SwiGLU (`down(silu(gate(x)) * up(x))`); each residual branch is divided by
sqrt(layers / 36). Layers are named as the reference's modules (`esmc/layers/stacked-self_attn-q_proj-kernel` is
`esmc.layers.*.self_attn.q_proj.weight`), which is how checkpoints map onto them (`io/names.py`).

Chains: `sequence_id` (batch, length) lets a token attend only to tokens with the same id (-1 for padding), as
transformers' `sequence_id` does for the chains of a complex written with the `|` chain break; positions stay
absolute over the whole row.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tf_esm.backend import matmul_precision
from tf_esm.modeling.attention import fused_attention, fused_attention_runs, masked_fill_value
from tf_esm.modeling.embeddings import apply_rotary, dense_over_tokens, normal_initializer
from tf_esm.modeling.layer_stack import LayerStack
from tf_esm.modeling.normalization import LayerNorm
from tf_esm.modeling.outputs import TFBaseModelOutputWithPoolingAndCrossAttentions


def _layer_norm(config, name, center=True):
    return LayerNorm(epsilon=config.layer_norm_eps, center=center, name=name)


def _projection(config, units, name):
    return keras.layers.Dense(units, use_bias=False, kernel_initializer=normal_initializer(config), name=name)


def rotary_tables(config, positions):
    """(cos, sin), float32, (..., len(positions), head_dim), for integer `positions`: the default RoPE of
    transformers' `EsmcRotaryEmbedding` (inverse frequencies theta^(-2i/d), each angle used for both halves)."""
    head_dim = config.head_dim
    inv_freq = 1.0 / (np.float32(config.rope_theta) ** (np.arange(0, head_dim, 2).astype(np.float32) / head_dim))
    angles = ops.cast(positions, "float32")[..., None] * ops.convert_to_tensor(inv_freq.astype(np.float32))
    angles = ops.concatenate([angles, angles], axis=-1)
    return ops.cos(angles), ops.sin(angles)


class TFEsmcAttention(keras.layers.Layer):
    """Self-attention with layer-normed queries and keys and rotary positions (reference `self_attn`).

    `attention_mask` is boolean, broadcastable to (batch, heads, query_len, key_len), True where a key may be
    attended. Without attention probabilities requested (and without attention dropout), the fused
    `keras.ops.dot_product_attention` runs (TensorFlow on a CPU: attention over blocks of query rows); with them, or
    with `config.attn_implementation="eager"`, the explicit softmax whose probabilities are returned.
    """

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        hidden = config.hidden_size
        self.q_proj = _projection(config, hidden, "q_proj")
        self.k_proj = _projection(config, hidden, "k_proj")
        self.v_proj = _projection(config, hidden, "v_proj")
        self.o_proj = _projection(config, hidden, "o_proj")
        self.q_norm = _layer_norm(config, "q_norm", center=False)
        self.k_norm = _layer_norm(config, "k_norm", center=False)
        self.dropout = keras.layers.Dropout(config.attention_dropout or 0.0)

    def build(self, input_shape=None):
        hidden = (None, None, self.config.hidden_size)
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.o_proj, self.q_norm, self.k_norm):
            layer.build(hidden)
        self.built = True

    def _split_heads(self, x):
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        return ops.transpose(ops.reshape(x, (batch, length, self.num_heads, self.head_dim)), (0, 2, 1, 3))

    def call(self, hidden_states, rotary, attention_mask=None, output_attentions=False, training=False):
        """Returns (output, attention probabilities (batch, heads, L, L) or None)."""
        cos, sin = rotary
        query = apply_rotary(self._split_heads(self.q_norm(dense_over_tokens(self.q_proj, hidden_states))), cos, sin)
        key = apply_rotary(self._split_heads(self.k_norm(dense_over_tokens(self.k_proj, hidden_states))), cos, sin)
        value = self._split_heads(dense_over_tokens(self.v_proj, hidden_states))
        query = query * ops.cast(self.head_dim ** -0.5, query.dtype)

        dropout_active = training and (self.config.attention_dropout or 0.0) > 0
        fused = getattr(self.config, "attn_implementation", None) != "eager"
        if fused and not output_attentions and not dropout_active and fused_attention_runs(query.dtype):
            context, probs = fused_attention(query, key, value, attention_mask, training), None
        else:
            scores = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2)))
            if attention_mask is not None:
                scores = ops.where(attention_mask, scores, masked_fill_value(scores.dtype))
            probs = ops.cast(ops.softmax(ops.cast(scores, "float32"), axis=-1), value.dtype)
            probs = self.dropout(probs, training=training)
            context = ops.transpose(ops.matmul(probs, value), (0, 2, 1, 3))
        batch, length = ops.shape(context)[0], ops.shape(context)[1]
        context = ops.reshape(context, (batch, length, self.config.hidden_size))
        return dense_over_tokens(self.o_proj, context), (probs if output_attentions else None)


class TFEsmcMLP(keras.layers.Layer):
    """SwiGLU feed-forward without biases: `down_proj(silu(gate_proj(x)) * up_proj(x))` (reference `mlp`)."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.gate_proj = _projection(config, config.intermediate_size, "gate_proj")
        self.up_proj = _projection(config, config.intermediate_size, "up_proj")
        self.down_proj = _projection(config, config.hidden_size, "down_proj")

    def build(self, input_shape=None):
        self.gate_proj.build((None, None, self.config.hidden_size))
        self.up_proj.build((None, None, self.config.hidden_size))
        self.down_proj.build((None, None, self.config.intermediate_size))
        self.built = True

    def call(self, x):
        gated = ops.silu(dense_over_tokens(self.gate_proj, x)) * dense_over_tokens(self.up_proj, x)
        return dense_over_tokens(self.down_proj, gated)


class TFEsmcLayer(keras.layers.Layer):
    """One ESM C block: x + attn(norm(x)) / s, then x + mlp(norm(x)) / s, with s = sqrt(layers / 36)."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.input_layernorm = _layer_norm(config, "input_layernorm")
        self.self_attn = TFEsmcAttention(config, name="self_attn")
        self.post_attention_layernorm = _layer_norm(config, "post_attention_layernorm")
        self.mlp = TFEsmcMLP(config, name="mlp")

    def build(self, input_shape=None):
        self.input_layernorm.build((None, None, self.config.hidden_size))
        self.self_attn.build(None)
        self.post_attention_layernorm.build((None, None, self.config.hidden_size))
        self.mlp.build(None)
        self.built = True

    def call(self, hidden_states, rotary, attention_mask=None, output_attentions=False, training=False):
        scale = ops.cast(self.config.residual_scale, hidden_states.dtype)
        attended, probs = self.self_attn(self.input_layernorm(hidden_states), rotary, attention_mask=attention_mask,
                                         output_attentions=output_attentions, training=training)
        hidden_states = hidden_states + attended / scale
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states)) / scale
        return hidden_states, probs


def attention_mask_from(attention_mask=None, sequence_id=None):
    """The boolean mask (broadcastable to batch, heads, L, L) of which keys each token attends: from `sequence_id`
    (same id attends; it takes precedence, as in transformers), else from the (batch, L) padding mask, else None."""
    if sequence_id is not None:
        sequence_id = ops.convert_to_tensor(sequence_id)
        return ops.equal(sequence_id[:, None, :, None], sequence_id[:, None, None, :])
    if attention_mask is not None:
        return ops.cast(ops.convert_to_tensor(attention_mask), "bool")[:, None, None, :]
    return None


class TFEsmcMainLayer(keras.layers.Layer):
    """The ESM C encoder shared by every ESM C model: `embed_tokens` -> `layers` (a `LayerStack`) -> `norm`.

    Args:
        config: An `EsmcConfig`.

    Call arguments:
        input_ids: int (batch, length) token ids, or None when `inputs_embeds` is given.
        attention_mask: (batch, length), 1 for real tokens, 0 for padding (right padding). Defaults to all ones.
        position_ids: (batch, length) rotary positions; default 0..length-1 (absolute over the row, chains too).
        sequence_id: (batch, length) chain ids for chain-aware attention (tokens attend to tokens of the same id;
            -1 for padding); replaces `attention_mask`, as in transformers.
        inputs_embeds: (batch, length, hidden) used instead of looking up `input_ids`.
        output_attentions, output_hidden_states: also return every layer's attention probabilities / the hidden
            states (the embedding output, each layer's output, and last the normed final output, as transformers).

    Examples:

    ```python
    >>> from tf_esm import EsmcConfig
    >>> from tf_esm.modeling.esmc import TFEsmcMainLayer
    >>> layer = TFEsmcMainLayer(EsmcConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                                    num_attention_heads=4))
    >>> layer(keras.ops.convert_to_tensor([[0, 20, 15, 2]])).last_hidden_state.shape
    TensorShape([1, 4, 32])
    ```
    """

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.embed_tokens = keras.layers.Embedding(config.vocab_size, config.hidden_size,
                                                   embeddings_initializer=normal_initializer(config),
                                                   name="embed_tokens")
        self.layers = LayerStack(lambda: TFEsmcLayer(config, name="layers"), config.num_hidden_layers, name="layers")
        self.layers.gradient_checkpointing = bool(getattr(config, "gradient_checkpointing", False))
        self.norm = _layer_norm(config, "norm", center=False)

    def build(self, input_shape=None):
        self.embed_tokens.build(None)
        self.layers.build(None)
        self.norm.build((None, None, self.config.hidden_size))
        self.built = True

    @property
    def padding_idx(self):
        return self.config.pad_token_id if self.config.pad_token_id is not None else 1

    def get_input_embeddings(self):
        return self.embed_tokens

    def __call__(self, *args, **kwargs):
        with matmul_precision():  # true float32 products under JAX on a GPU, as the reference computes them
            return super().__call__(*args, **kwargs)

    def call(self, input_ids=None, attention_mask=None, position_ids=None, sequence_id=None, inputs_embeds=None,
             output_attentions=False, output_hidden_states=False, training=False):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of input_ids and inputs_embeds.")
        if input_ids is not None:
            input_ids = ops.convert_to_tensor(input_ids)
            if len(input_ids.shape) != 2:
                raise ValueError(f"input_ids must have shape (batch, length); got {tuple(input_ids.shape)}.")
            hidden_states = self.embed_tokens(ops.cast(input_ids, "int32"))
        else:
            hidden_states = ops.cast(ops.convert_to_tensor(inputs_embeds), self.compute_dtype)
            if len(hidden_states.shape) != 3:
                raise ValueError(f"inputs_embeds must have shape (batch, length, hidden); got "
                                 f"{tuple(hidden_states.shape)}.")
        length = ops.shape(hidden_states)[1]
        if position_ids is None:
            positions = ops.arange(length, dtype="int32")
        else:
            positions = ops.convert_to_tensor(position_ids)[:, None]  # broadcast over heads
        rotary = rotary_tables(self.config, positions)
        mask = attention_mask_from(attention_mask, sequence_id)

        def run(layer, hidden):
            new, probs = layer(hidden, rotary, attention_mask=mask, output_attentions=output_attentions,
                               training=training)
            return new, (hidden if output_hidden_states else None, probs)

        hidden_states, outputs = self.layers.apply(run, hidden_states, training=training, with_outputs=True)
        inputs, probs = (tuple(column) for column in zip(*outputs))
        hidden_states = self.norm(hidden_states)
        return TFBaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=hidden_states,
            hidden_states=inputs + (hidden_states,) if output_hidden_states else None,
            attentions=probs if output_attentions else None,
        )

    def predict_contacts(self, input_ids, attention_mask=None):
        raise NotImplementedError(
            "ESM C has no contact-prediction head: no released contact regression exists for it. Use "
            "output_attentions=True for its attention maps (batch, heads, L, L per layer).")

    def contacts_from_attentions(self, input_ids, attention_mask, attentions):
        return self.predict_contacts(input_ids, attention_mask)

    def get_config(self):
        base = super().get_config()
        base.update(config=self.config.to_dict())
        return base

    @classmethod
    def from_config(cls, config):
        from tf_esm.configuration import EsmcConfig

        config = dict(config)
        return cls(EsmcConfig.from_dict(config.pop("config")))
