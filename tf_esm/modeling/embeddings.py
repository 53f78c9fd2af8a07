"""Token embeddings, absolute and rotary positions, and ESM's token-dropout rescaling."""

from __future__ import annotations

import keras
from keras import ops

from tf_esm.modeling.normalization import LayerNorm
from tf_esm.modeling.packing import same_protein

# All ESM models were trained with 15% of tokens selected, 80% of those replaced by <mask>.
MASK_RATIO_TRAIN = 0.15 * 0.8


def normal_initializer(config):
    return keras.initializers.TruncatedNormal(stddev=config.initializer_range)


def dense_over_tokens(dense, x, activation=None):
    """`activation(dense(x))` for `x` of shape (..., features), computed on a flat (tokens, features) view.

    The same numbers as calling `dense` on `x`. The 2-D form is what TensorFlow's graph optimiser fuses into a
    single oneDNN matmul + bias (+ GELU) kernel on CPU; rank-3 inputs run as separate matmul, bias and GELU passes.
    """
    shape = ops.shape(x)
    features = x.shape[-1] if x.shape[-1] is not None else shape[-1]
    outputs = dense(ops.reshape(x, (-1, features)))
    if activation is not None:
        outputs = activation(outputs)
    return ops.reshape(outputs, (*shape[:-1], dense.units))


def positions_from_input_ids(input_ids, padding_idx):
    """fairseq-style positions: real tokens count up from padding_idx + 1, padding keeps padding_idx."""
    not_pad = ops.cast(ops.not_equal(input_ids, padding_idx), "int32")
    return ops.cumsum(not_pad, axis=1) * not_pad + padding_idx


class TFEsmEmbeddings(keras.layers.Layer):
    """Word embeddings, optional learned absolute positions, token dropout, optional layer norm.

    Token dropout (ESM-2): `<mask>` embeddings are zeroed and the others scaled by
    `(1 - 0.12) / (1 - observed mask ratio)`, the ratio counted over the real (attention-mask) length including
    `<cls>`/`<eos>`. It applies at inference too, exactly as the PyTorch reference does. In packed rows
    (`sequence_id`, modeling/packing.py) the ratio is each protein's own, over its tokens.

    Args:
        config: An `EsmConfig`.

    Examples:

    ```python
    >>> from tf_esm import EsmConfig
    >>> from tf_esm.modeling.embeddings import TFEsmEmbeddings
    >>> config = EsmConfig(vocab_size=33, hidden_size=8, num_attention_heads=2, pad_token_id=1, mask_token_id=32)
    >>> TFEsmEmbeddings(config)(keras.ops.convert_to_tensor([[0, 5, 32, 2]])).shape
    TensorShape([1, 4, 8])
    ```
    """

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        if config.vocab_size is None:
            raise ValueError("EsmConfig.vocab_size is None: set it (33 for every public ESM model).")
        self.config = config
        self.padding_idx = config.pad_token_id if config.pad_token_id is not None else 1
        self.word_embeddings = keras.layers.Embedding(
            config.vocab_size, config.hidden_size, embeddings_initializer=normal_initializer(config),
            name="word_embeddings",
        )
        self.position_embeddings = None
        if config.position_embedding_type == "absolute":
            self.position_embeddings = keras.layers.Embedding(
                config.max_position_embeddings, config.hidden_size,
                embeddings_initializer=normal_initializer(config), name="position_embeddings",
            )
        self.layer_norm = None
        if config.emb_layer_norm_before:
            self.layer_norm = LayerNorm(epsilon=config.layer_norm_eps, name="layer_norm")

    def build(self, input_shape=None):
        self.word_embeddings.build(None)
        if self.position_embeddings is not None:
            self.position_embeddings.build(None)
        if self.layer_norm is not None:
            self.layer_norm.build((None, None, self.config.hidden_size))
        self.built = True

    def call(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, sequence_id=None):
        if inputs_embeds is None:
            embeddings = self.word_embeddings(input_ids)
        else:
            embeddings = ops.cast(inputs_embeds, self.compute_dtype)

        if self.config.token_dropout and input_ids is not None:
            is_mask = ops.expand_dims(ops.equal(input_ids, self.config.mask_token_id), -1)
            embeddings = ops.where(is_mask, ops.zeros_like(embeddings), embeddings)
            if sequence_id is not None:
                # Per protein of a packed row: each token's count of <mask> and of tokens in its own protein.
                same = same_protein(sequence_id)
                mask_count = ops.sum(ops.cast(ops.logical_and(same, ops.transpose(is_mask, (0, 2, 1))), "float32"),
                                     axis=-1)
                lengths = ops.sum(ops.cast(same, "float32"), axis=-1)
            else:
                mask_count = ops.sum(ops.cast(is_mask[..., 0], "float32"), axis=-1)
                if attention_mask is not None:
                    lengths = ops.sum(ops.cast(attention_mask, "float32"), axis=-1)
                else:
                    lengths = ops.cast(ops.shape(input_ids)[1], "float32")
            # Guard all-padding rows (length 0) so they give zeros rather than NaN.
            observed = mask_count / ops.maximum(lengths, 1.0)
            # A row of nothing but <mask> (observed ratio 1) is all zeros anyway: keep its scale finite.
            scale = (1.0 - MASK_RATIO_TRAIN) / ops.maximum(1.0 - observed, 1e-6)
            # (batch,) per row, (batch, length) per token of a packed row.
            scale = scale[:, None, None] if sequence_id is None else scale[:, :, None]
            embeddings = ops.cast(ops.cast(embeddings, "float32") * scale, embeddings.dtype)

        if self.position_embeddings is not None:
            if position_ids is None:
                if input_ids is not None:
                    position_ids = positions_from_input_ids(input_ids, self.padding_idx)
                else:
                    length = ops.shape(embeddings)[1]
                    position_ids = ops.expand_dims(ops.arange(length, dtype="int32") + self.padding_idx + 1, 0)
            embeddings = embeddings + self.position_embeddings(position_ids)

        if self.layer_norm is not None:
            embeddings = self.layer_norm(embeddings)
        if attention_mask is not None:
            embeddings = embeddings * ops.cast(ops.expand_dims(attention_mask, -1), embeddings.dtype)
        return embeddings

    def get_config(self):
        base = super().get_config()
        base["config"] = self.config.to_dict()
        return base

    @classmethod
    def from_config(cls, config):
        from tf_esm.configuration import EsmConfig

        config = dict(config)
        return cls(EsmConfig.from_dict(config.pop("config")), **config)


class TFEsmRotaryEmbedding(keras.layers.Layer):
    """Rotary position embedding tables (cos, sin) from a stored `inv_freq` vector.

    `inv_freq` is a non-trainable weight so that checkpoints' stored values (rounded to fp16 in the released ESM-2
    weights) are used exactly; recomputing it in fp32 moves real-model logits by about 2e-3.
    """

    def __init__(self, head_dim, base=10000.0, **kwargs):
        # Angles reach ~1000 radians: computing the tables in half precision would lose the phase.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.head_dim = head_dim
        self.base = base

    def build(self, input_shape=None):
        exponents = ops.arange(0, self.head_dim, 2, dtype="float32") / self.head_dim
        default = 1.0 / (self.base ** exponents)
        self.inv_freq = self.add_weight(
            name="inv_freq", shape=(self.head_dim // 2,), initializer=lambda shape, dtype=None: default,
            trainable=False, dtype="float32",
        )
        self.built = True

    def call(self, positions):
        """Return (cos, sin), each (..., len(positions), head_dim) in float32, for integer `positions`."""
        angles = ops.cast(positions, "float32")[..., None] * self.inv_freq
        angles = ops.concatenate([angles, angles], axis=-1)
        return ops.cos(angles), ops.sin(angles)

    def get_config(self):
        base = super().get_config()
        base.update(head_dim=self.head_dim, base=self.base)
        return base


def rotate_half(x):
    # A split, not two strided slices: its gradient is one concatenation instead of two zero-filled scatters
    # (StridedSliceGrad was ~5% of a CPU training step).
    first, second = ops.split(x, 2, axis=-1)
    return ops.concatenate([-second, first], axis=-1)


def apply_rotary(x, cos, sin):
    """Rotate the last axis of `x` (batch, heads, length, head_dim) by the (length, head_dim) tables, in float32."""
    x32 = ops.cast(x, "float32")
    return ops.cast(x32 * ops.cast(cos, "float32") + rotate_half(x32) * ops.cast(sin, "float32"), x.dtype)
