"""The ESMFold folding trunk: blocks that update a sequence state and a pair state together, relative
position embeddings, recycling, and the hand-off to the structure module.

Layer names follow the PyTorch reference (`trunk/structure_module/ipa/linear_q`, ...); the blocks are one `LayerStack`
(modeling/layer_stack.py) whose weights `trunk.blocks.*.tri_mul_out.linear_z.weight` stack the reference's
`trunk.blocks.{i}.tri_mul_out.linear_z.weight`.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tf_esm.configuration import TrunkConfig
from tf_esm.folding.primitives import ConfiguredLayer, LayerNorm, chunked, in_compiled_graph
from tf_esm.folding.structure_module import StructureModule
from tf_esm.folding.triangular_attention import TriangleAttention
from tf_esm.folding.triangular_multiplicative_update import TriangleMultiplicativeUpdate
from tf_esm.modeling.layer_stack import LayerStack


def _dense(units, name, use_bias=True):
    return keras.layers.Dense(units, use_bias=use_bias, name=name)


@keras.saving.register_keras_serializable(package="tf_esm")
class SequenceSelfAttention(keras.layers.Layer):
    """Gated multi-head self-attention over residues with an external per-head pair bias.

    Sub-layers (PyTorch names): `proj` (fused q/k/v, no bias), `g_proj` (gate), `o_proj`.

    Call args:
        sequence_state: [B, L, C].
        residue_mask: [B, L] (1 = valid residue), or None.
        bias: [B, L, L, H] additive logit bias, or None.
    """

    def __init__(self, embed_dim, num_heads, head_width, **kwargs):
        super().__init__(**kwargs)
        if embed_dim != num_heads * head_width:
            raise ValueError(f"embed_dim={embed_dim} != num_heads={num_heads} x head_width={head_width}.")
        self.embed_dim, self.num_heads, self.head_width = embed_dim, num_heads, head_width
        self.proj = _dense(3 * embed_dim, "proj", use_bias=False)
        self.g_proj = _dense(embed_dim, "g_proj")
        self.o_proj = _dense(embed_dim, "o_proj")

    def build(self, input_shape):
        for layer in (self.proj, self.g_proj, self.o_proj):
            layer.build(input_shape)

    def call(self, sequence_state, residue_mask=None, bias=None):
        batch, length = ops.shape(sequence_state)[0], ops.shape(sequence_state)[1]
        fused = ops.reshape(self.proj(sequence_state), (batch, length, self.num_heads, 3 * self.head_width))
        fused = ops.transpose(fused, (0, 2, 1, 3))  # [B, H, L, 3 * W]: per head, q then k then v
        query, key, value = ops.split(fused, 3, axis=-1)
        logits = ops.einsum("bhqc,bhkc->bhqk", query * self.head_width**-0.5, key)
        if bias is not None:
            logits = logits + ops.transpose(bias, (0, 3, 1, 2))
        if residue_mask is not None:
            logits = ops.where(ops.cast(residue_mask, "bool")[:, None, None, :], logits, -math.inf)
        weights = ops.softmax(logits, axis=-1)
        output = ops.reshape(ops.einsum("bhqk,bhkc->bqhc", weights, value), (batch, length, self.embed_dim))
        output = ops.sigmoid(self.g_proj(sequence_state)) * output
        return self.o_proj(output)

    def get_config(self):
        config = super().get_config()
        config.update(embed_dim=self.embed_dim, num_heads=self.num_heads, head_width=self.head_width)
        return config


@keras.saving.register_keras_serializable(package="tf_esm")
class SequenceToPair(keras.layers.Layer):
    """Outer product and difference of projected residue features -> pair update [B, L, L, C_z].

    Sub-layers (PyTorch names): `layernorm`, `proj`, `o_proj`.
    """

    def __init__(self, inner_dim, pairwise_state_dim, **kwargs):
        super().__init__(**kwargs)
        self.inner_dim, self.pairwise_state_dim = inner_dim, pairwise_state_dim
        self.layernorm = LayerNorm("layernorm")
        self.proj = _dense(2 * inner_dim, "proj")
        self.o_proj = _dense(pairwise_state_dim, "o_proj")

    def build(self, input_shape):
        self.layernorm.build(input_shape)
        self.proj.build(input_shape)
        self.o_proj.build(tuple(input_shape[:-1]) + (None, 2 * self.inner_dim))

    def call(self, sequence_state, chunk_size=None):
        query, key = ops.split(self.proj(self.layernorm(sequence_state)), 2, axis=-1)

        def pair_rows(key_rows):  # entry (i, j) combines query j with key i
            product = query[:, None, :, :] * key_rows[:, :, None, :]
            difference = query[:, None, :, :] - key_rows[:, :, None, :]
            return self.o_proj(ops.concatenate([product, difference], axis=-1))

        return chunked(pair_rows, (key,), chunk_size, axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(inner_dim=self.inner_dim, pairwise_state_dim=self.pairwise_state_dim)
        return config


@keras.saving.register_keras_serializable(package="tf_esm")
class PairToSequence(keras.layers.Layer):
    """Per-head attention bias [B, L, L, H] from the pair state. Sub-layers: `layernorm`, `linear` (no bias)."""

    def __init__(self, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.layernorm = LayerNorm("layernorm")
        self.linear = _dense(num_heads, "linear", use_bias=False)

    def build(self, input_shape):
        self.layernorm.build(input_shape)
        self.linear.build(input_shape)

    def call(self, pairwise_state):
        return self.linear(self.layernorm(pairwise_state))

    def get_config(self):
        config = super().get_config()
        config["num_heads"] = self.num_heads
        return config


@keras.saving.register_keras_serializable(package="tf_esm")
class ResidueMLP(keras.layers.Layer):
    """Residual transition `x + W2 relu(W1 LN(x))`. Sub-layers follow PyTorch's Sequential: `mlp.0`, `mlp.1`,
    `mlp.3`. Applied row by row when `chunk_size` is given (pair states)."""

    def __init__(self, embed_dim, inner_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim, self.inner_dim, self.dropout_rate = embed_dim, inner_dim, dropout
        self.norm = LayerNorm("mlp.0")
        self.linear_in = _dense(inner_dim, "mlp.1")
        self.linear_out = _dense(embed_dim, "mlp.3")
        self.dropout = keras.layers.Dropout(dropout)

    def build(self, input_shape):
        self.norm.build(input_shape)
        self.linear_in.build(input_shape)
        self.linear_out.build(tuple(input_shape[:-1]) + (self.inner_dim,))

    def call(self, x, chunk_size=None, training=False):
        def transition(rows):
            update = self.linear_out(ops.relu(self.linear_in(self.norm(rows))))
            return rows + self.dropout(update, training=training)

        return chunked(transition, (x,), chunk_size, axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(embed_dim=self.embed_dim, inner_dim=self.inner_dim, dropout=self.dropout_rate)
        return config


@keras.saving.register_keras_serializable(package="tf_esm")
class TriangularSelfAttentionBlock(ConfiguredLayer):
    """One folding-trunk block.

    Sequence: pair-biased gated self-attention, then a transition. Pair: sequence-to-pair update,
    triangular multiplication (outgoing, incoming), triangular attention (starting, ending node), transition.

    Args:
        config: A `TrunkConfig`.

    Call args:
        sequence_state: [B, L, sequence_state_dim].
        pairwise_state: [B, L, L, pairwise_state_dim].
        residue_mask: [B, L] (1 = valid residue), or None.
        chunk_size: Row chunk of the O(L^2) pair operations (same result, bounded memory), or None.
        length_mask: [L] 1 inside the unpadded length, 0 for bucket padding hidden from every residue; or None.

    Returns:
        The updated `(sequence_state, pairwise_state)`.
    """

    config_class = TrunkConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        config = self.config
        c_s, c_z = config.sequence_state_dim, config.pairwise_state_dim
        seq_heads = c_s // config.sequence_head_width
        pair_heads = c_z // config.pairwise_head_width
        self.layernorm_1 = LayerNorm("layernorm_1")
        self.sequence_to_pair = SequenceToPair(c_z // 2, c_z, name="sequence_to_pair")
        self.pair_to_sequence = PairToSequence(seq_heads, name="pair_to_sequence")
        self.seq_attention = SequenceSelfAttention(c_s, seq_heads, config.sequence_head_width, name="seq_attention")
        self.tri_mul_out = TriangleMultiplicativeUpdate(c_z, outgoing=True, name="tri_mul_out")
        self.tri_mul_in = TriangleMultiplicativeUpdate(c_z, outgoing=False, name="tri_mul_in")
        self.tri_att_start = TriangleAttention(c_z, pair_heads, config.pairwise_head_width, starting=True,
                                               inf=1e9, name="tri_att_start")
        self.tri_att_end = TriangleAttention(c_z, pair_heads, config.pairwise_head_width, starting=False,
                                             inf=1e9, name="tri_att_end")
        self.mlp_seq = ResidueMLP(c_s, 4 * c_s, dropout=config.dropout, name="mlp_seq")
        self.mlp_pair = ResidueMLP(c_z, 4 * c_z, dropout=config.dropout, name="mlp_pair")
        self.drop = keras.layers.Dropout(config.dropout)
        # Row dropout shares its mask along a row (axis 2), column dropout along a column (axis 1).
        self.row_drop = keras.layers.Dropout(2 * config.dropout, noise_shape=(None, None, 1, None))
        self.col_drop = keras.layers.Dropout(2 * config.dropout, noise_shape=(None, 1, None, None))

    def build(self, sequence_state_shape, pairwise_state_shape=None):
        c_s, c_z = self.config.sequence_state_dim, self.config.pairwise_state_dim
        seq_shape, pair_shape = (None, None, c_s), (None, None, None, c_z)
        self.layernorm_1.build(seq_shape)
        self.pair_to_sequence.build(pair_shape)
        self.seq_attention.build(seq_shape)
        self.mlp_seq.build(seq_shape)
        self.sequence_to_pair.build(seq_shape)
        for layer in (self.tri_mul_out, self.tri_mul_in, self.tri_att_start, self.tri_att_end, self.mlp_pair):
            layer.build(pair_shape)

    def call(self, sequence_state, pairwise_state, residue_mask=None, chunk_size=None, length_mask=None,
             training=False):
        bias = self.pair_to_sequence(pairwise_state)
        update = self.seq_attention(self.layernorm_1(sequence_state), residue_mask=residue_mask, bias=bias)
        sequence_state = sequence_state + self.drop(update, training=training)
        sequence_state = self.mlp_seq(sequence_state, training=training)

        pairwise_state = pairwise_state + self.sequence_to_pair(sequence_state, chunk_size=chunk_size)
        pair_mask = None
        if residue_mask is not None:
            mask = ops.cast(residue_mask, pairwise_state.dtype)
            pair_mask = mask[:, :, None] * mask[:, None, :]
        for layer, dropout in ((self.tri_mul_out, self.row_drop), (self.tri_mul_in, self.col_drop)):
            update = layer(pairwise_state, pair_mask=pair_mask, chunk_size=chunk_size)
            pairwise_state = pairwise_state + dropout(update, training=training)
        for layer, dropout in ((self.tri_att_start, self.row_drop), (self.tri_att_end, self.col_drop)):
            update = layer(pairwise_state, pair_mask=pair_mask, chunk_size=chunk_size, length_mask=length_mask)
            pairwise_state = pairwise_state + dropout(update, training=training)
        pairwise_state = self.mlp_pair(pairwise_state, chunk_size=chunk_size, training=training)
        return sequence_state, pairwise_state


@keras.saving.register_keras_serializable(package="tf_esm")
class RelativePosition(keras.layers.Layer):
    """Embedding of clipped residue-index offsets `r_j - r_i` into the pair state; masked pairs use bin 0.

    Sub-layer: `embedding` with `2 * bins + 2` rows.
    """

    def __init__(self, bins, pairwise_state_dim, **kwargs):
        super().__init__(**kwargs)
        self.bins, self.pairwise_state_dim = bins, pairwise_state_dim
        self.embedding = keras.layers.Embedding(2 * bins + 2, pairwise_state_dim, name="embedding")

    def build(self, input_shape):
        self.embedding.build(input_shape)

    def call(self, residue_index, residue_mask=None):
        residue_index = ops.cast(residue_index, "int32")
        offset = residue_index[:, None, :] - residue_index[:, :, None]
        offset = ops.clip(offset, -self.bins, self.bins) + self.bins + 1  # bin 0 is reserved for masked pairs
        if residue_mask is not None:
            mask = ops.cast(residue_mask, "bool")
            offset = ops.where(ops.logical_and(mask[:, None, :], mask[:, :, None]), offset, 0)
        return self.embedding(offset)

    def get_config(self):
        config = super().get_config()
        config.update(bins=self.bins, pairwise_state_dim=self.pairwise_state_dim)
        return config


def pseudo_beta_distogram(backbone_positions, min_bin=3.375, max_bin=21.375, num_bins=15):
    """Bin indices [*, L, L] of distances between virtual C-beta atoms built from N, CA, C ([*, L, 3, 3])."""
    n, ca, c = backbone_positions[..., 0, :], backbone_positions[..., 1, :], backbone_positions[..., 2, :]
    b = ca - n
    c = c - ca
    # axis=-1 explicitly: Keras' PyTorch backend passes axis=None on as torch.cross(dim=None), which crosses along
    # the FIRST axis of size 3 (a batch of 3 sequences), not the last.
    a = ops.cross(b, c, axis=-1)
    cb = -0.58273431 * a + 0.56802827 * b - 0.54067466 * c + ca
    squared = ops.sum((cb[..., None, :, :] - cb[..., :, None, :]) ** 2, axis=-1, keepdims=True)
    boundaries = ops.linspace(min_bin, max_bin, num_bins - 1) ** 2
    return ops.sum(ops.cast(squared > boundaries, "int32"), axis=-1)


@keras.saving.register_keras_serializable(package="tf_esm")
class FoldingTrunk(ConfiguredLayer):
    """Trunk blocks with recycling, then the structure module.

    Each of the recycling passes adds layer-normed sequence/pair states of the previous pass, and an
    embedding of the distogram of its predicted C-beta atoms, to the initial states.

    Sub-layers (PyTorch names): `pairwise_positional_embedding`, `blocks` (one `LayerStack` of
    `TriangularSelfAttentionBlock`s, weights `blocks.*.<name>` stacked over the blocks), `recycle_s_norm`,
    `recycle_z_norm`, `recycle_disto`, `structure_module`, `trunk2sm_s`, `trunk2sm_z`.

    Args:
        config: A `TrunkConfig`.

    Call args:
        seq_feats: [B, L, sequence_state_dim] initial sequence state.
        pair_feats: [B, L, L, pairwise_state_dim] initial pair state.
        true_aa: [B, L] AlphaFold residue types.
        residx: [B, L] residue indices.
        residue_mask: [B, L] (1 = valid residue).
        no_recycles: Extra passes after the first; None means `max_recycles` passes in total. May be a scalar
            tensor inside a compiled (non-training) graph, where the passes run in a loop op.
        chunk_size: Overrides `self.chunk_size` when given.
        length_mask: [L] 1 inside the unpadded length, 0 for padding appended to reach a length bucket (hidden
            from every residue, so outputs cropped to the unpadded length are unchanged); or None.

    Returns:
        The structure-module outputs plus `s_s` and `s_z`, the final trunk states.
    """

    recycle_bins = 15

    config_class = TrunkConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        config = self.config
        c_z = config.pairwise_state_dim
        sm_config = config.structure_module
        self.pairwise_positional_embedding = RelativePosition(config.position_bins, c_z,
                                                              name="pairwise_positional_embedding")
        # One layer for the blocks, their weights stacked (`trunk.blocks.*.<name>`; modeling/layer_stack.py).
        self.blocks = LayerStack(lambda: TriangularSelfAttentionBlock(config, name="block"), config.num_blocks,
                                 name="blocks")
        self.recycle_s_norm = LayerNorm("recycle_s_norm")
        self.recycle_z_norm = LayerNorm("recycle_z_norm")
        self.recycle_disto = keras.layers.Embedding(self.recycle_bins, c_z, name="recycle_disto")
        self.structure_module = StructureModule(sm_config, name="structure_module")
        self.trunk2sm_s = _dense(sm_config.sequence_dim, "trunk2sm_s")
        self.trunk2sm_z = _dense(sm_config.pairwise_dim, "trunk2sm_z")
        self.chunk_size = config.chunk_size

    def set_chunk_size(self, chunk_size):
        """Row chunk of the pair operations (None: no chunking). Trades speed for O(L) extra memory."""
        self.chunk_size = chunk_size

    def build(self, seq_feats_shape, pair_feats_shape=None):
        c_s, c_z = self.config.sequence_state_dim, self.config.pairwise_state_dim
        seq_shape, pair_shape = (None, None, c_s), (None, None, None, c_z)
        self.pairwise_positional_embedding.build((None, None, None))
        self.blocks.build(seq_shape, pair_shape)
        self.recycle_s_norm.build(seq_shape)
        self.recycle_z_norm.build(pair_shape)
        self.recycle_disto.build((None, None, None))
        self.trunk2sm_s.build(seq_shape)
        self.trunk2sm_z.build(pair_shape)
        sm_config = self.config.structure_module
        self.structure_module.build((None, None, sm_config.sequence_dim), (None, None, None, sm_config.pairwise_dim))

    def call(self, seq_feats, pair_feats, true_aa, residx, residue_mask, no_recycles=None, chunk_size=None,
             length_mask=None, training=False):
        chunk_size = self.chunk_size if chunk_size is None else chunk_size
        if no_recycles is None:
            passes = self.config.max_recycles
        elif not ops.is_tensor(no_recycles) and no_recycles < 0:
            raise ValueError(f"Number of recycles must not be negative, got {no_recycles}.")
        else:
            passes = no_recycles + 1  # the first pass is the ordinary forward pass
        mask_float = ops.cast(residue_mask, seq_feats.dtype)
        relative_positions = self.pairwise_positional_embedding(residx, residue_mask=residue_mask)

        def block_step(training):
            return lambda block, states: block(*states, residue_mask=residue_mask, chunk_size=chunk_size,
                                               length_mask=length_mask, training=training)

        # One step object for every pass that does not train: an eager first call traces it once for all the
        # passes (`layers_tf.apply_stack`), not once per pass.
        inference_step = block_step(False)

        def one_pass(recycle_s, recycle_z, recycle_bins, last):
            recycle_s = self.recycle_s_norm(ops.stop_gradient(recycle_s))
            recycle_z = self.recycle_z_norm(ops.stop_gradient(recycle_z))
            recycle_z = recycle_z + self.recycle_disto(recycle_bins)
            s_s = seq_feats + recycle_s
            s_z = pair_feats + recycle_z + relative_positions
            s_s, s_z = self.blocks.apply(block_step(True) if training and last else inference_step,
                                         (s_s, s_z), training=training and last)
            structure = self.structure_module(self.trunk2sm_s(s_s), self.trunk2sm_z(s_z), true_aa,
                                              residue_mask=mask_float, length_mask=length_mask,
                                              training=training and last)
            recycle_bins = ops.stop_gradient(
                pseudo_beta_distogram(structure["positions"][-1][:, :, :3], num_bins=self.recycle_bins)
            )
            return s_s, s_z, recycle_bins, structure

        recycle_s = ops.zeros_like(seq_feats)
        recycle_z = ops.zeros_like(pair_feats)
        recycle_bins = ops.zeros(ops.shape(pair_feats)[:-1], dtype="int32")
        if in_compiled_graph() and not training:
            # The passes share weights: one traced pass in a loop op (`passes` may then be a tensor).
            initial = (recycle_s, recycle_z, recycle_bins,
                       self.structure_module.zero_outputs(ops.shape(seq_feats)[:-1]))
            s_s, s_z, _, structure = ops.fori_loop(
                0, passes, lambda _, carry: one_pass(*carry[:3], last=True), initial)
        else:
            for recycle_index in range(passes):
                s_s, s_z, recycle_bins, structure = one_pass(recycle_s, recycle_z, recycle_bins,
                                                             last=recycle_index == passes - 1)
                recycle_s, recycle_z = s_s, s_z
        structure["s_s"] = s_s
        structure["s_z"] = s_z
        return structure
