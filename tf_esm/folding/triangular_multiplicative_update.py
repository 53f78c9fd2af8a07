"""Triangular multiplicative updates with outgoing and incoming edges (AlphaFold Algorithms 11 and 12)."""

from __future__ import annotations

import keras
from keras import ops

from tf_esm.folding.primitives import LayerNorm, Linear, chunked


@keras.saving.register_keras_serializable(package="tf_esm")
class TriangleMultiplicativeUpdate(keras.layers.Layer):
    """Update edge (i, j) from the two other edges of every triangle (i, j, k).

    Outgoing: `x_ij = sum_k a_ik * b_jk`; incoming: `x_ij = sum_k a_ki * b_kj`, where `a` and `b` are gated
    projections of the layer-normed pair representation. Returns the update (not added to the input).

    Sub-layers (PyTorch names): `layer_norm_in`, `linear_a_p`, `linear_a_g`, `linear_b_p`, `linear_b_g`,
    `layer_norm_out`, `linear_z`, `linear_g`.

    Args:
        channels: Channels of the pair representation.
        outgoing: Use outgoing (True) or incoming (False) edges.

    Call args:
        pair_representation: [B, N, N, C].
        pair_mask: [B, N, N] pair mask (1 = valid), or None.
        chunk_size: Compute at most this many output rows at a time (same result, bounded memory).

    Examples:

    ```python
    >>> import numpy as np
    >>> from tf_esm.folding.triangular_multiplicative_update import TriangleMultiplicativeUpdate
    >>> z = np.random.rand(1, 5, 5, 8).astype("float32")
    >>> TriangleMultiplicativeUpdate(8, outgoing=True, name="tri_mul_out")(z).shape
    (1, 5, 5, 8)
    ```
    """

    def __init__(self, channels, outgoing=True, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.outgoing = outgoing
        self.layer_norm_in = LayerNorm("layer_norm_in")
        self.linear_a_p = Linear(channels, name="linear_a_p")
        self.linear_a_g = Linear(channels, init="gating", name="linear_a_g")
        self.linear_b_p = Linear(channels, name="linear_b_p")
        self.linear_b_g = Linear(channels, init="gating", name="linear_b_g")
        self.linear_g = Linear(channels, init="gating", name="linear_g")
        self.linear_z = Linear(channels, init="final", name="linear_z")
        self.layer_norm_out = LayerNorm("layer_norm_out")

    def build(self, pair_shape):
        for layer in (self.layer_norm_in, self.linear_a_p, self.linear_a_g, self.linear_b_p, self.linear_b_g,
                      self.linear_g, self.linear_z):
            layer.build(pair_shape)
        self.layer_norm_out.build(pair_shape)

    def call(self, pair_representation, pair_mask=None, chunk_size=None):
        z = pair_representation
        mask = pair_mask
        if mask is None:
            mask = ops.ones(ops.shape(z)[:-1], dtype=z.dtype)
        mask = ops.cast(mask, z.dtype)[..., None]
        z = self.layer_norm_in(z)
        a = mask * ops.sigmoid(self.linear_a_g(z)) * self.linear_a_p(z)
        b = mask * ops.sigmoid(self.linear_b_g(z)) * self.linear_b_p(z)

        if self.outgoing:
            def combine(a_rows):  # a_rows: [B, i, K, C]
                return ops.einsum("bikc,bjkc->bijc", a_rows, b)
            rows = a
        else:
            a = ops.swapaxes(a, 1, 2)  # [B, i, K, C] holding a_ki

            def combine(a_rows):
                return ops.einsum("bikc,bkjc->bijc", a_rows, b)
            rows = a

        def finish(a_rows, z_rows):
            update = self.linear_z(self.layer_norm_out(combine(a_rows)))
            return update * ops.sigmoid(self.linear_g(z_rows))

        return chunked(finish, (rows, z), chunk_size, axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, outgoing=self.outgoing)
        return config
