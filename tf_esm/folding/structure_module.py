"""The structure module: invariant point attention (IPA), transitions, backbone frame updates and the angle
resnet, turning the trunk's sequence and pair states into frames, torsion angles and atom coordinates
(AlphaFold Algorithms 20-24).

Layer names follow the PyTorch reference (`ipa/linear_q_points`, `angle_resnet/layers-0/linear_1`, ...: `-` for
the reference's '.', `io/weights.py`).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tf_esm.folding.atoms import frames_and_literature_positions_to_atom14_pos, torsion_angles_to_frames
from tf_esm.configuration import StructureModuleConfig
from tf_esm.folding.primitives import (ConfiguredLayer, LayerNorm, Linear, absent_position_bias, in_compiled_graph,
                                      traced_structure_module)
from tf_esm.folding.rigid import Rigid, Rotation
from tf_esm.io.weights import keras_name

_SOFTPLUS_INVERSE_OF_1 = 0.541324854612918
# The outputs with one entry per structure-module block (a leading block axis).
BLOCK_OUTPUTS = ("frames", "sidechain_frames", "unnormalized_angles", "angles", "positions", "states")


def _points(flat):
    """[*, N, 3 * P] (all x, then all y, then all z) -> [*, N, P, 3]."""
    return ops.stack(ops.split(flat, 3, axis=-1), axis=-1)


@keras.saving.register_keras_serializable(package="tf_esm")
class InvariantPointAttention(ConfiguredLayer):
    """Invariant point attention (AlphaFold Algorithm 22).

    Attention logits combine scalar query/key products, a pair bias and distances between query and key
    points placed in each residue's frame; outputs combine attended values, attended points (brought back
    into the local frame, with their norms) and attended pair features.

    Sub-layers/weights (PyTorch names): `linear_q`, `linear_kv`, `linear_q_points`, `linear_kv_points`,
    `linear_b`, `head_weights` (raw, shape [H]), `linear_out`.

    Args:
        config: A `StructureModuleConfig`.

    Call args:
        s: [B, N, C_s] single representation.
        z: [B, N, N, C_z] pair representation.
        frames: `Rigid` [B, N] backbone frames.
        residue_mask: [B, N] float mask.
        length_mask: [N] 1 inside the unpadded length, 0 for bucket padding hidden from every residue; or None.
    """

    config_class = StructureModuleConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        config = self.config
        heads, c = config.num_heads_ipa, config.ipa_dim
        self.num_heads, self.hidden_dim = heads, c
        self.num_qk_points, self.num_v_points = config.num_qk_points, config.num_v_points
        self.linear_q = Linear(heads * c, name="linear_q")
        self.linear_kv = Linear(2 * heads * c, name="linear_kv")
        self.linear_q_points = Linear(heads * self.num_qk_points * 3, name="linear_q_points")
        self.linear_kv_points = Linear(heads * (self.num_qk_points + self.num_v_points) * 3, name="linear_kv_points")
        self.linear_b = Linear(heads, name="linear_b")
        self.linear_out = Linear(config.sequence_dim, init="final", name="linear_out")

    def build(self, s_shape, z_shape=None):
        s_shape = (None, None, self.config.sequence_dim)
        for layer in (self.linear_q, self.linear_kv, self.linear_q_points, self.linear_kv_points):
            layer.build(s_shape)
        self.linear_b.build((None, None, None, self.config.pairwise_dim))
        concat_dim = self.num_heads * (self.config.pairwise_dim + self.hidden_dim + 4 * self.num_v_points)
        self.linear_out.build((None, None, concat_dim))
        self.head_weights = self.add_weight(
            name="head_weights", shape=(self.num_heads,),
            initializer=keras.initializers.Constant(_SOFTPLUS_INVERSE_OF_1),
        )

    def call(self, s, z, frames, residue_mask, length_mask=None):
        heads, c = self.num_heads, self.hidden_dim
        batch, n = ops.shape(s)[0], ops.shape(s)[1]

        q = ops.reshape(self.linear_q(s), (batch, n, heads, c))
        kv = ops.reshape(self.linear_kv(s), (batch, n, heads, 2 * c))
        k, v = kv[..., :c], kv[..., c:]

        frames_per_point = frames.expand_dims(-1)
        q_pts = frames_per_point.apply(_points(self.linear_q_points(s)))
        q_pts = ops.reshape(q_pts, (batch, n, heads, self.num_qk_points, 3))
        kv_pts = frames_per_point.apply(_points(self.linear_kv_points(s)))
        kv_pts = ops.reshape(kv_pts, (batch, n, heads, self.num_qk_points + self.num_v_points, 3))
        k_pts, v_pts = kv_pts[..., : self.num_qk_points, :], kv_pts[..., self.num_qk_points :, :]

        # Scalar and pair terms: [B, H, N, N].
        logits = ops.einsum("bihc,bjhc->bhij", q, k) * math.sqrt(1.0 / (3 * c))
        logits = logits + math.sqrt(1.0 / 3) * ops.transpose(self.linear_b(z), (0, 3, 1, 2))

        # Point term: weighted squared distances between query and key points.
        squared = ops.sum((q_pts[:, :, None] - k_pts[:, None, :]) ** 2, axis=-1)  # [B, N, N, H, P]
        point_weights = ops.softplus(self.head_weights) * math.sqrt(1.0 / (3 * (self.num_qk_points * 9.0 / 2)))
        point_logits = -0.5 * ops.sum(squared * point_weights[:, None], axis=-1)  # [B, N, N, H]
        logits = logits + ops.transpose(point_logits, (0, 3, 1, 2))

        mask = residue_mask
        square_mask = self.config.inf * (mask[:, :, None] * mask[:, None, :] - 1.0)
        if length_mask is not None:
            square_mask = square_mask + absent_position_bias(length_mask, square_mask.dtype)
        attention = ops.softmax(logits + square_mask[:, None], axis=-1)  # [B, H, N, N]

        out_scalar = ops.reshape(ops.einsum("bhij,bjhc->bihc", attention, v), (batch, n, heads * c))
        out_points = ops.einsum("bhij,bjhpx->bihpx", attention, v_pts)  # global frame
        out_points = frames.expand_dims(-1).expand_dims(-1).invert_apply(out_points)
        out_norm = ops.reshape(ops.sqrt(ops.sum(out_points**2, axis=-1) + self.config.epsilon),
                               (batch, n, heads * self.num_v_points))
        out_points = ops.reshape(out_points, (batch, n, heads * self.num_v_points, 3))
        out_pair = ops.reshape(ops.einsum("bhij,bijc->bihc", attention, z), (batch, n, -1))
        features = [out_scalar, out_points[..., 0], out_points[..., 1], out_points[..., 2], out_norm, out_pair]
        return self.linear_out(ops.concatenate(features, axis=-1))


@keras.saving.register_keras_serializable(package="tf_esm")
class AngleResnetBlock(keras.layers.Layer):
    """Residual block `a + W2 relu(W1 relu(a))`. Sub-layers: `linear_1`, `linear_2`."""

    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.linear_1 = Linear(dim, init="relu", name="linear_1")
        self.linear_2 = Linear(dim, init="final", name="linear_2")

    def build(self, input_shape):
        self.linear_1.build(input_shape)
        self.linear_2.build(input_shape)

    def call(self, a):
        return a + self.linear_2(ops.relu(self.linear_1(ops.relu(a))))

    def get_config(self):
        config = super().get_config()
        config["dim"] = self.dim
        return config


@keras.saving.register_keras_serializable(package="tf_esm")
class AngleResnet(ConfiguredLayer):
    """Predicts the seven torsion angles (omega, phi, psi, chi1..4) as (sin, cos) pairs (Algorithm 20, 11-14).

    Sub-layers: `linear_in`, `linear_initial`, `layers-{i}`, `linear_out`.

    Returns:
        `(unnormalized_angles, angles)`, both [*, 7, 2]; `angles` has unit norm.
    """

    config_class = StructureModuleConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        config = self.config
        self.linear_in = Linear(config.resnet_dim, name="linear_in")
        self.linear_initial = Linear(config.resnet_dim, name="linear_initial")
        self.blocks = [AngleResnetBlock(config.resnet_dim, name=keras_name(f"layers.{i}"))
                       for i in range(config.num_resnet_blocks)]
        self.linear_out = Linear(config.num_angles * 2, name="linear_out")

    def build(self, s_shape, s_initial_shape=None):
        s_shape = (None, None, self.config.sequence_dim)
        hidden_shape = (None, None, self.config.resnet_dim)
        self.linear_in.build(s_shape)
        self.linear_initial.build(s_shape)
        for block in self.blocks:
            block.build(hidden_shape)
        self.linear_out.build(hidden_shape)

    def call(self, s, s_initial):
        a = self.linear_in(ops.relu(s)) + self.linear_initial(ops.relu(s_initial))
        for block in self.blocks:
            a = block(a)
        a = self.linear_out(ops.relu(a))
        unnormalized = ops.reshape(a, tuple(ops.shape(a)[:-1]) + (self.config.num_angles, 2))
        norm = ops.sqrt(ops.maximum(ops.sum(unnormalized**2, axis=-1, keepdims=True), self.config.epsilon))
        return unnormalized, unnormalized / norm


@keras.saving.register_keras_serializable(package="tf_esm")
class StructureModuleTransition(ConfiguredLayer):
    """Residual three-layer MLP(s) then dropout and layer norm. Sub-layers: `layers-{i}` (`linear_1..3`),
    `layer_norm`."""

    config_class = StructureModuleConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        config = self.config
        dim = config.sequence_dim
        self.mlps = [_TransitionLayer(dim, name=keras_name(f"layers.{i}")) for i in range(config.num_transition_layers)]
        self.dropout = keras.layers.Dropout(config.dropout_rate)
        self.layer_norm = LayerNorm("layer_norm")

    def build(self, input_shape):
        for mlp in self.mlps:
            mlp.build(input_shape)
        self.layer_norm.build(input_shape)

    def call(self, s, training=False):
        for mlp in self.mlps:
            s = mlp(s)
        return self.layer_norm(self.dropout(s, training=training))


@keras.saving.register_keras_serializable(package="tf_esm")
class _TransitionLayer(keras.layers.Layer):
    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.linear_1 = Linear(dim, init="relu", name="linear_1")
        self.linear_2 = Linear(dim, init="relu", name="linear_2")
        self.linear_3 = Linear(dim, init="final", name="linear_3")

    def build(self, input_shape):
        for layer in (self.linear_1, self.linear_2, self.linear_3):
            layer.build(input_shape)

    def call(self, s):
        return s + self.linear_3(ops.relu(self.linear_2(ops.relu(self.linear_1(s)))))

    def get_config(self):
        config = super().get_config()
        config["dim"] = self.dim
        return config


@keras.saving.register_keras_serializable(package="tf_esm")
class StructureModule(ConfiguredLayer):
    """Iteratively refines backbone frames from identity with shared-weight IPA blocks (Algorithm 20).

    Sub-layers (PyTorch names): `layer_norm_s`, `layer_norm_z`, `linear_in`, `ipa`, `layer_norm_ipa`,
    `transition`, `bb_update/linear`, `angle_resnet`.

    Args:
        config: A `StructureModuleConfig`.

    Call args:
        single: [B, N, sequence_dim].
        pair: [B, N, N, pairwise_dim].
        aatype: [B, N] residue types.
        residue_mask: [B, N] float mask, or None.
        length_mask: [N] 1 inside the unpadded length, 0 for bucket padding (see `InvariantPointAttention`).

    Returns:
        dict with a leading block axis: `frames` [blocks, B, N, 7] (quaternion, translation in Angstrom),
        `sidechain_frames` [blocks, B, N, 8, 4, 4], `unnormalized_angles` and `angles` [blocks, B, N, 7, 2],
        `positions` [blocks, B, N, 14, 3], `states` [blocks, B, N, C]; and `single` [B, N, C].
    """

    config_class = StructureModuleConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        config = self.config
        self.layer_norm_s = LayerNorm("layer_norm_s")
        self.layer_norm_z = LayerNorm("layer_norm_z")
        self.linear_in = Linear(config.sequence_dim, name="linear_in")
        self.ipa = InvariantPointAttention(config, name="ipa")
        self.ipa_dropout = keras.layers.Dropout(config.dropout_rate)
        self.layer_norm_ipa = LayerNorm("layer_norm_ipa")
        self.transition = StructureModuleTransition(config, name="transition")
        self.bb_update = _BackboneUpdate(name="bb_update")
        self.angle_resnet = AngleResnet(config, name="angle_resnet")

    def build(self, single_shape, pair_shape=None):
        s_shape = (None, None, self.config.sequence_dim)
        z_shape = (None, None, None, self.config.pairwise_dim)
        for layer in (self.layer_norm_s, self.linear_in, self.layer_norm_ipa, self.transition, self.bb_update):
            layer.build(s_shape)
        self.layer_norm_z.build(z_shape)
        self.ipa.build(s_shape, z_shape)
        self.angle_resnet.build(s_shape, s_shape)

    def call(self, single, pair, aatype, residue_mask=None, length_mask=None, training=False):
        config = self.config
        mask = residue_mask
        if mask is None:
            mask = ops.ones(ops.shape(single)[:-1], dtype=single.dtype)
        if not training and length_mask is None:
            program = traced_structure_module(self)
            if program is not None and single.dtype == pair.dtype == mask.dtype == self.compute_dtype:
                return program(single, pair, ops.cast(aatype, "int32"), mask)
        s = self.layer_norm_s(single)
        z = self.layer_norm_z(pair)
        s_initial = s
        s = self.linear_in(s)
        frames = Rigid.identity(tuple(ops.shape(s)[:-1]), fmt="quat")

        def block(s, frames):
            return self._block(s, frames, s_initial, z, aatype, mask, length_mask, training)

        if in_compiled_graph() and not training:
            # One traced block in a loop op instead of `num_blocks` unrolled copies (the weights are shared).
            def step(carry, _):
                s, frames, per_block = block(carry["states"], Rigid.from_tensor_7(carry["frames"]))
                carry = dict(per_block, states=s, frames=frames.to_tensor_7())
                return carry, carry

            initial = {key: value[0] for key, value in self.zero_outputs(ops.shape(s)[:-1]).items()
                       if key != "single"}
            initial.update(states=s, frames=frames.to_tensor_7())
            _, outputs = ops.scan(step, initial, length=config.num_blocks)
            outputs["frames"] = Rigid.from_tensor_7(outputs["frames"]).scale_translation(
                config.trans_scale_factor).to_tensor_7()
            outputs["single"] = outputs["states"][-1]
            return outputs

        outputs = {key: [] for key in BLOCK_OUTPUTS}
        for _ in range(config.num_blocks):
            s, frames, per_block = block(s, frames)
            per_block.update(frames=frames.scale_translation(config.trans_scale_factor).to_tensor_7(), states=s)
            for key, value in per_block.items():
                outputs[key].append(value)
            frames = frames.stop_rot_gradient()
        outputs = {key: ops.stack(values, axis=0) for key, values in outputs.items()}
        outputs["single"] = s
        return outputs

    def _block(self, s, frames, s_initial, z, aatype, mask, length_mask, training):
        """One structure-module block: (s, frames) -> (s, frames, its side-chain frames, angles, atoms)."""
        config = self.config
        s = s + self.ipa(s, z, frames=frames, residue_mask=mask, length_mask=length_mask)
        s = self.layer_norm_ipa(self.ipa_dropout(s, training=training))
        s = self.transition(s, training=training)
        frames = frames.compose_q_update_vec(self.bb_update(s))

        # Side chains are built from rotation matrices, in Angstrom.
        backbone_to_global = Rigid(Rotation(rot_mats=frames.get_rots().get_rot_mats()), frames.get_trans())
        backbone_to_global = backbone_to_global.scale_translation(config.trans_scale_factor)
        unnormalized_angles, angles = self.angle_resnet(s, s_initial)
        group_frames = torsion_angles_to_frames(backbone_to_global, angles, aatype)
        positions = frames_and_literature_positions_to_atom14_pos(group_frames, aatype)
        per_block = dict(sidechain_frames=group_frames.to_tensor_4x4(), unnormalized_angles=unnormalized_angles,
                         angles=angles, positions=positions)
        return s, frames, per_block

    def zero_outputs(self, residue_shape):
        """Zeros shaped like the outputs of `call` for [B, N] residues `residue_shape` (loop-carry templates)."""
        config = self.config
        trailing = {"frames": (7,), "sidechain_frames": (8, 4, 4), "unnormalized_angles": (config.num_angles, 2),
                    "angles": (config.num_angles, 2), "positions": (14, 3), "states": (config.sequence_dim,)}
        residue_shape = tuple(residue_shape)
        outputs = {key: ops.zeros((config.num_blocks,) + residue_shape + shape) for key, shape in trailing.items()}
        outputs["single"] = ops.zeros(residue_shape + (config.sequence_dim,))
        return outputs


@keras.saving.register_keras_serializable(package="tf_esm")
class _BackboneUpdate(keras.layers.Layer):
    """[*, C_s] -> [*, 6] frame update (quaternion vector part, translation). Sub-layer: `linear`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.linear = Linear(6, init="final", name="linear")

    def build(self, input_shape):
        self.linear.build(input_shape)

    def call(self, s):
        return self.linear(s)
