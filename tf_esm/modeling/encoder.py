"""The transformer layer, the layer stack, the pooler and `TFEsmMainLayer` (embeddings -> encoder -> pooler)."""

from __future__ import annotations

import math

import keras
from keras import ops

from tf_esm.backend import matmul_precision
from tf_esm.modeling.attention import TFEsmAttention
from tf_esm.modeling.embeddings import (
    TFEsmEmbeddings,
    TFEsmRotaryEmbedding,
    dense_over_tokens,
    normal_initializer,
)
from tf_esm.modeling.heads import TFEsmContactPredictionHead
from tf_esm.modeling.layer_stack import LayerStack
from tf_esm.modeling.normalization import LayerNorm
from tf_esm.modeling.outputs import TFBaseModelOutputWithPoolingAndCrossAttentions
from tf_esm.modeling.packing import positions_in_protein, same_protein


def gelu(x):
    """The exact (erf) GELU that ESM was trained with."""
    return x * 0.5 * (1.0 + ops.erf(x / math.sqrt(2.0)))


class _Linear(keras.layers.Layer):
    """A dense projection (named `dense`, as in the reference) inside a named block, with optional residual."""

    def __init__(self, config, units, input_units, activation=None, residual=False, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.input_units = input_units
        self.activation = activation
        self.residual = residual
        self.dense = keras.layers.Dense(units, kernel_initializer=normal_initializer(config), name="dense")
        self.dropout = keras.layers.Dropout(config.hidden_dropout_prob) if residual else None

    def build(self, input_shape=None):
        self.dense.build((None, None, self.input_units))
        self.built = True

    def call(self, hidden_states, residual=None, training=False):
        hidden_states = dense_over_tokens(self.dense, hidden_states, self.activation)
        if self.residual:
            hidden_states = self.dropout(hidden_states, training=training) + residual
        return hidden_states


class TFEsmLayer(keras.layers.Layer):
    """One pre-norm transformer layer: attention block, optional cross-attention block, feed-forward block."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.attention = TFEsmAttention(config, name="attention")
        self.crossattention = None
        if config.add_cross_attention:
            self.crossattention = TFEsmAttention(config, is_cross_attention=True, name="crossattention")
        self.intermediate = _Linear(config, config.intermediate_size, config.hidden_size, activation=gelu,
                                    name="intermediate")
        self.output_block = _Linear(config, config.hidden_size, config.intermediate_size, residual=True,
                                    name="output")
        self.LayerNorm = LayerNorm(epsilon=config.layer_norm_eps, name="LayerNorm")

    def build(self, input_shape=None):
        self.attention.build(None)
        if self.crossattention is not None:
            self.crossattention.build(None)
        self.intermediate.build(None)
        self.output_block.build(None)
        self.LayerNorm.build((None, None, self.config.hidden_size))
        self.built = True

    def call(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
             encoder_attention_mask=None, rotary=None, cross_rotary=None, past_key_value=None,
             output_attentions=False, training=False):
        self_past = past_key_value[:2] if past_key_value is not None else None
        hidden_states, self_probs, present = self.attention(
            hidden_states, attention_mask=attention_mask, head_mask=head_mask, rotary=rotary,
            past_key_value=self_past, output_attentions=output_attentions, training=training,
        )
        cross_probs = None
        if encoder_hidden_states is not None or (past_key_value is not None and len(past_key_value) == 4):
            if self.crossattention is None:
                raise ValueError(
                    "encoder_hidden_states were given, but this model has no cross-attention layers: "
                    "build it with EsmConfig(is_decoder=True, add_cross_attention=True)."
                )
            cross_past = past_key_value[2:] if past_key_value is not None and len(past_key_value) == 4 else None
            hidden_states, cross_probs, cross_present = self.crossattention(
                hidden_states, attention_mask=encoder_attention_mask, head_mask=head_mask,
                encoder_hidden_states=encoder_hidden_states, rotary=cross_rotary, past_key_value=cross_past,
                output_attentions=output_attentions, training=training,
            )
            if present is not None:
                present = present + cross_present
        intermediate = self.intermediate(self.LayerNorm(hidden_states))
        hidden_states = self.output_block(intermediate, residual=hidden_states, training=training)
        return hidden_states, self_probs, cross_probs, present


class TFEsmEncoder(keras.layers.Layer):
    """The stack of `TFEsmLayer`s followed by the final layer norm (`emb_layer_norm_after`).

    The layers are one `LayerStack` (`layer`, modeling/layer_stack.py): one template `TFEsmLayer` and each of its
    weights stacked over the layers (`encoder/layer/stacked-attention-self-query-kernel`, reference name
    `esm.encoder.layer.*.attention.self.query.weight`; per-layer checkpoints are stacked on loading)."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.layer = LayerStack(lambda: TFEsmLayer(config, name="layer"), config.num_hidden_layers, name="layer")
        self.layer.gradient_checkpointing = bool(getattr(config, "gradient_checkpointing", False))
        self.emb_layer_norm_after = LayerNorm(epsilon=config.layer_norm_eps, name="emb_layer_norm_after")

    def build(self, input_shape=None):
        self.layer.build(None)
        self.emb_layer_norm_after.build((None, None, self.config.hidden_size))
        self.built = True

    def call(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
             encoder_attention_mask=None, rotary=None, cross_rotary=None, past_key_values=None, use_cache=False,
             output_attentions=False, output_hidden_states=False, training=False):
        layer_kwargs = dict(attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states,
                            encoder_attention_mask=encoder_attention_mask, rotary=rotary, cross_rotary=cross_rotary,
                            output_attentions=output_attentions, training=training)

        def run(layer, hidden, layer_head_mask=None, past_key_value=None):
            new, probs, cross_probs, present = layer(hidden, head_mask=layer_head_mask,
                                                     past_key_value=past_key_value, **layer_kwargs)
            return new, (hidden if output_hidden_states else None, probs, cross_probs,
                         present if use_cache else None)

        per_layer = None
        if head_mask is not None or past_key_values is not None:  # per-layer inputs: the Python loop
            per_layer = [(head_mask[index] if head_mask is not None else None,
                          past_key_values[index] if past_key_values is not None else None)
                         for index in range(self.layer.count)]
            hidden_states, outputs = self.layer.apply(lambda layer, hidden, extra: run(layer, hidden, *extra),
                                                      hidden_states, training=training, with_outputs=True,
                                                      per_layer=per_layer)
        else:
            hidden_states, outputs = self.layer.apply(run, hidden_states, training=training, with_outputs=True)
        inputs, probs, cross_probs, presents = (tuple(column) for column in zip(*outputs))
        hidden_states = self.emb_layer_norm_after(hidden_states)
        return TFBaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=hidden_states,
            past_key_values=presents if use_cache else None,
            hidden_states=inputs + (hidden_states,) if output_hidden_states else None,
            attentions=probs if output_attentions else None,
            cross_attentions=cross_probs if output_attentions and cross_probs[0] is not None else None,
        )


class TFEsmPooler(keras.layers.Layer):
    """tanh(dense(hidden state of the first token, `<cls>`))."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.dense = keras.layers.Dense(config.hidden_size, activation="tanh",
                                        kernel_initializer=normal_initializer(config), name="dense")

    def build(self, input_shape=None):
        self.dense.build((None, self.config.hidden_size))
        self.built = True

    def call(self, hidden_states):
        return self.dense(hidden_states[:, 0])


def _broadcast_head_mask(head_mask, num_layers):
    """(heads,) or (layers, heads) -> a per-layer list of (1, heads, 1, 1) multipliers."""
    head_mask = ops.convert_to_tensor(head_mask, dtype="float32")
    if len(head_mask.shape) == 1:
        head_mask = ops.repeat(head_mask[None], num_layers, axis=0)
    if len(head_mask.shape) != 2 or head_mask.shape[0] != num_layers:
        raise ValueError(f"head_mask must have shape (num_heads,) or ({num_layers}, num_heads); got {head_mask.shape}.")
    return [head_mask[i][None, :, None, None] for i in range(num_layers)]


class TFEsmMainLayer(keras.layers.Layer):
    """The ESM encoder shared by every task model: embeddings -> transformer stack -> optional pooler.

    Its sub-layers are named like the PyTorch reference's modules (`embeddings`, `encoder/layer/stacked-attention-
    self-query`: one variable for all layers, `-` for the reference's '.'), which is what lets one mapping rule
    translate checkpoints.

    Args:
        config: An `EsmConfig`.
        add_pooling_layer: Whether to build the `<cls>` pooler.

    Call arguments:
        input_ids: int tensor (batch, length) of token ids, or None when `inputs_embeds` is given.
        attention_mask: (batch, length), 1 for real tokens, 0 for padding. Defaults to all ones.
        position_ids: (batch, length) positions for absolute or rotary embeddings; derived when None.
        head_mask: (heads,) or (layers, heads) multipliers on the attention probabilities.
        inputs_embeds: (batch, length, hidden) embeddings used instead of `input_ids`.
        encoder_hidden_states, encoder_attention_mask: cross-attention inputs (decoder mode).
        past_key_values: per-layer cached (key, value[, cross_key, cross_value]) from an earlier call.
        use_cache: return `past_key_values` for the next step (decoder mode).
        output_attentions, output_hidden_states: also return every layer's attentions / hidden states.
        sequence_id: (batch, length) int, several proteins packed in a row (modeling/packing.py): tokens with the
            same non-negative value attend to each other only, -1 is padding; positions restart at each protein
            and token dropout is per protein. `attention_mask` defaults to `sequence_id >= 0`. Not with a cache,
            cross-attention or `position_ids`. The pooler reads the row's first token only.
    """

    def __init__(self, config, add_pooling_layer=True, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.add_pooling_layer = add_pooling_layer
        self.embeddings = TFEsmEmbeddings(config, name="embeddings")
        self.rotary_embeddings = None
        if config.position_embedding_type == "rotary":
            self.rotary_embeddings = TFEsmRotaryEmbedding(config.head_dim, base=getattr(config, "rope_theta", 1e4),
                                                          name="rotary_embeddings")
        self.encoder = TFEsmEncoder(config, name="encoder")
        self.pooler = TFEsmPooler(config, name="pooler") if add_pooling_layer else None
        self.contact_head = TFEsmContactPredictionHead(
            config.num_hidden_layers * config.num_attention_heads, eos_idx=config.eos_token_id
            if isinstance(config.eos_token_id, int) else 2, name="contact_head",
        )
        # Fitted separately on attention maps; not part of the forward pass, so gradient-free in fit().
        self.contact_head.trainable = False

    def build(self, input_shape=None):
        self.embeddings.build(None)
        if self.rotary_embeddings is not None:
            self.rotary_embeddings.build(None)
        self.encoder.build(None)
        if self.pooler is not None:
            self.pooler.build(None)
        self.contact_head.build(None)
        self.built = True

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def __call__(self, *args, **kwargs):
        with matmul_precision():  # true float32 products under JAX on a GPU, as the reference computes them
            return super().__call__(*args, **kwargs)

    def call(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
             encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None, use_cache=None,
             output_attentions=False, output_hidden_states=False, training=False, sequence_id=None):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of input_ids and inputs_embeds.")
        if input_ids is not None:
            input_ids = ops.convert_to_tensor(input_ids)
            if len(input_ids.shape) != 2:
                raise ValueError(f"input_ids must have shape (batch, length); got {tuple(input_ids.shape)}.")
            input_ids = ops.cast(input_ids, "int32")
            batch, length = ops.shape(input_ids)[0], ops.shape(input_ids)[1]
        else:
            inputs_embeds = ops.convert_to_tensor(inputs_embeds)
            batch, length = ops.shape(inputs_embeds)[0], ops.shape(inputs_embeds)[1]
        same = None
        if sequence_id is not None:
            if (past_key_values is not None or encoder_hidden_states is not None or position_ids is not None
                    or self.config.is_decoder):
                raise ValueError("sequence_id (packed proteins) works with encoder inputs only: not with "
                                 "position_ids, past_key_values, encoder_hidden_states or a decoder.")
            sequence_id = ops.cast(ops.convert_to_tensor(sequence_id), "int32")
            same = same_protein(sequence_id)
            real = ops.cast(ops.greater_equal(sequence_id, 0), "int32")
            attention_mask = real if attention_mask is None else ops.cast(attention_mask, "int32") * real
            in_protein = positions_in_protein(same)
            if self.config.position_embedding_type == "rotary":
                position_ids = in_protein
            elif self.config.position_embedding_type == "absolute":
                padding_idx = self.embeddings.padding_idx
                position_ids = ops.where(ops.greater(real, 0), in_protein + padding_idx + 1, padding_idx)

        input_ids, inputs_embeds = self._check_length(input_ids, inputs_embeds, length, position_ids)
        use_cache = bool(use_cache) and self.config.is_decoder
        past_length = 0
        if past_key_values is not None:
            past_length = ops.shape(past_key_values[0][0])[2]

        padded = attention_mask is not None
        if attention_mask is None:
            attention_mask = ops.ones((batch, past_length + length), dtype="int32")
        attention_mask = ops.convert_to_tensor(attention_mask)
        # The embeddings see only this call's tokens' mask (token-dropout ratio, zeroing of padding).
        step_mask = attention_mask[:, -length:] if past_key_values is not None else attention_mask
        embedding_output = self.embeddings(input_ids=input_ids, attention_mask=step_mask, position_ids=position_ids,
                                           inputs_embeds=inputs_embeds, sequence_id=sequence_id)

        # Without a mask every key is attended: the layers then skip masking (a pass over every score tensor).
        key_mask = ops.cast(attention_mask, "bool")[:, None, None, :] if padded else None
        if same is not None:
            key_mask = same[:, None]  # block-diagonal: (batch, 1, query, key)
        if self.config.is_decoder:
            query_positions = ops.arange(length, dtype="int32") + past_length
            key_positions = ops.arange(past_length + length, dtype="int32")
            causal = (query_positions[:, None] >= key_positions[None, :])[None, None]
            key_mask = causal if key_mask is None else ops.logical_and(key_mask, causal)
        cross_mask = None
        if encoder_hidden_states is not None:
            if encoder_attention_mask is None:
                encoder_attention_mask = ops.ones(ops.shape(encoder_hidden_states)[:2], dtype="int32")
            cross_mask = ops.cast(ops.convert_to_tensor(encoder_attention_mask), "bool")[:, None, None, :]

        rotary = None
        if self.rotary_embeddings is not None:
            if position_ids is None:
                positions = ops.arange(length, dtype="int32") + past_length
            else:
                positions = ops.convert_to_tensor(position_ids)[:, None]  # broadcast over heads
            cos, sin = self.rotary_embeddings(positions)
            rotary = (cos, sin, cos, sin)
        cross_rotary = None
        if rotary is not None and encoder_hidden_states is not None:
            encoder_length = ops.shape(encoder_hidden_states)[1]
            cos_k, sin_k = self.rotary_embeddings(ops.arange(encoder_length, dtype="int32"))
            cross_rotary = (rotary[0], rotary[1], cos_k, sin_k)
        elif rotary is not None and past_key_values is not None and len(past_key_values[0]) == 4:
            cross_rotary = rotary  # cached cross keys are already rotated; only the queries need tables

        encoder_outputs = self.encoder(
            embedding_output, attention_mask=key_mask,
            head_mask=_broadcast_head_mask(head_mask, self.config.num_hidden_layers) if head_mask is not None else None,
            encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=cross_mask, rotary=rotary,
            cross_rotary=cross_rotary,
            past_key_values=past_key_values, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, training=training,
        )
        sequence_output = encoder_outputs.last_hidden_state
        return TFBaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=sequence_output,
            pooler_output=self.pooler(sequence_output) if self.pooler is not None else None,
            past_key_values=encoder_outputs.past_key_values,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
            cross_attentions=encoder_outputs.cross_attentions,
        )

    def _check_length(self, input_ids, inputs_embeds, length, position_ids):
        """Absolute models: refuse rows with more real tokens than the position table holds (padding is free:
        pad tokens keep position padding_idx). Returns `(input_ids, inputs_embeds)`, in a TensorFlow graph made to
        wait for the check, so that it fails before the position lookup does."""
        if self.config.position_embedding_type != "absolute" or position_ids is not None:
            return input_ids, inputs_embeds
        # Positions run from padding_idx + 1, so the table holds max_position_embeddings - padding_idx - 1.
        limit = self.config.max_position_embeddings - (self.embeddings.padding_idx + 1)
        advice = (f"exceeds this model's absolute position table: at most {limit} tokens. Truncate the sequences "
                  f"(e.g. tokenizer(..., truncation=True, max_length={limit})).")
        needed = length
        if input_ids is not None:
            real_tokens = ops.sum(ops.cast(ops.not_equal(input_ids, self.embeddings.padding_idx), "int32"), axis=1)
            needed = ops.max(real_tokens)
        try:
            needed = int(needed)  # a Python int or an eager tensor
        except (TypeError, ValueError):
            pass
        if isinstance(needed, int):
            if needed > limit:
                raise ValueError(f"Input length {needed} (special tokens included) {advice}")
        elif keras.backend.backend() == "tensorflow" and not isinstance(needed, keras.KerasTensor):
            # Known only at run time (tf.function, tf.data): check in the graph. Without it an out-of-range
            # position gather fails obscurely on CPU and silently yields zeros on GPU. (XLA drops asserts.)
            import tensorflow as tf

            check = tf.debugging.assert_less_equal(needed, limit,
                                                   message=f"Input length (special tokens included) {advice}")
            with tf.control_dependencies([check]):
                return (tf.identity(input_ids) if input_ids is not None else None,
                        tf.identity(inputs_embeds) if inputs_embeds is not None else None)
        return input_ids, inputs_embeds

    def predict_contacts(self, input_ids, attention_mask=None):
        """Contact probabilities (batch, L, L) over residues (no `<cls>`/`<eos>`), from APC-corrected attentions."""
        input_ids = ops.cast(ops.convert_to_tensor(input_ids), "int32")
        if attention_mask is None:
            attention_mask = ops.cast(ops.not_equal(input_ids, self.embeddings.padding_idx), "int32")
        with matmul_precision():  # the contact head's regression too
            outputs = self(input_ids, attention_mask=attention_mask, output_attentions=True)
            return self.contacts_from_attentions(input_ids, attention_mask, outputs.attentions)

    def contacts_from_attentions(self, input_ids, attention_mask, attentions):
        """`predict_contacts` from the per-layer attention probabilities of a forward pass already made."""
        attentions = ops.stack(attentions, axis=1)  # batch, layers, heads, L, L
        keep = ops.cast(attention_mask, attentions.dtype)
        attentions = attentions * keep[:, None, None, :, None] * keep[:, None, None, None, :]
        return self.contact_head(input_ids, attentions)

    def get_config(self):
        base = super().get_config()
        base.update(config=self.config.to_dict(), add_pooling_layer=self.add_pooling_layer)
        return base

    @classmethod
    def from_config(cls, config):
        from tf_esm.configuration import EsmConfig

        config = dict(config)
        return cls(EsmConfig.from_dict(config.pop("config")), **config)
