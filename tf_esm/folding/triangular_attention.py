"""Triangular self-attention around the starting or ending node (AlphaFold Algorithms 13 and 14)."""

from __future__ import annotations

import keras
from keras import ops

from tf_esm.folding.primitives import Attention, LayerNorm, Linear, absent_position_bias, chunked


@keras.saving.register_keras_serializable(package="tf_esm")
class TriangleAttention(keras.layers.Layer):
    """Axial attention over a pair representation, biased by the third edge of each triangle.

    Around the starting node (`starting=True`) row `i` attends over its entries `(i, j)` with bias `z_jk`;
    around the ending node the same is done on the transposed representation.

    Sub-layers (PyTorch names): `layer_norm`, `linear` (pair -> one bias per head, no bias term), `mha`.

    Args:
        channels: Channels of the pair representation.
        num_heads: Attention heads.
        head_dim: Channels per head.
        starting: Attend along rows (True) or columns (False).
        inf: Magnitude of the logit penalty for masked keys.

    Call args:
        pair_representation: [B, I, J, C] pair representation.
        pair_mask: [B, I, J] pair mask (1 = valid), or None.
        chunk_size: Evaluate at most this many rows at a time (same result, bounded memory).
        length_mask: [J] 1 inside the unpadded length, 0 for bucket padding hidden from every row; or None.

    Examples:

    ```python
    >>> import numpy as np
    >>> from tf_esm.folding.triangular_attention import TriangleAttention
    >>> z = np.random.rand(1, 6, 6, 8).astype("float32")
    >>> TriangleAttention(8, num_heads=2, head_dim=4, starting=False, name="tri_att_end")(z).shape
    (1, 6, 6, 8)
    ```
    """

    def __init__(self, channels, num_heads, head_dim, starting=True, inf=1e9, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.starting = starting
        self.inf = inf
        self.layer_norm = LayerNorm("layer_norm")
        self.linear = Linear(num_heads, use_bias=False, init="normal", name="linear")
        self.mha = Attention(num_heads, head_dim, output_dim=channels, name="mha")

    def build(self, pair_shape):
        self.layer_norm.build(pair_shape)
        self.linear.build(pair_shape)
        self.mha.build(pair_shape, pair_shape)

    def call(self, pair_representation, pair_mask=None, chunk_size=None, length_mask=None):
        z = pair_representation
        mask = pair_mask
        if mask is None:
            mask = ops.ones(ops.shape(z)[:-1], dtype=z.dtype)
        mask = ops.cast(mask, z.dtype)
        if not self.starting:
            z = ops.swapaxes(z, 1, 2)
            mask = ops.swapaxes(mask, 1, 2)
        z = self.layer_norm(z)
        mask_bias = (self.inf * (mask - 1.0))[:, :, None, None, :]  # [B, I, 1, 1, J]
        if length_mask is not None:  # the mask is symmetric, so the same for either orientation
            mask_bias = mask_bias + absent_position_bias(length_mask, mask_bias.dtype)
        triangle_bias = ops.transpose(self.linear(z), (0, 3, 1, 2))[:, None]  # [B, 1, H, J, K]

        def attend(rows, row_mask_bias):
            return self.mha(rows, rows, biases=(row_mask_bias, triangle_bias))

        z = chunked(attend, (z, mask_bias), chunk_size, axis=1)
        if not self.starting:
            z = ops.swapaxes(z, 1, 2)
        return z

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, num_heads=self.num_heads, head_dim=self.head_dim,
                      starting=self.starting, inf=self.inf)
        return config
