"""From backbone frames and torsion angles to atoms: rigid-group frames, atom14 and atom37 coordinates.

All functions take AlphaFold residue types (`aatype`, 0..20) and use the tables of `residue_constants`.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from tf_esm.folding import residue_constants as rc
from tf_esm.folding.rigid import Rigid, Rotation


def _table(array, dtype):
    return ops.convert_to_tensor(np.asarray(array), dtype=dtype)


def _gather_residue_table(table, aatype):
    return ops.take(table, ops.cast(aatype, "int32"), axis=0)


def torsion_angles_to_frames(backbone_frames, angles, aatype):
    """Frames of the eight rigid groups of every residue, in global coordinates.

    Args:
        backbone_frames: `Rigid` [*, N] backbone-to-global frames (rotation-matrix form).
        angles: [*, N, 7, 2] (sin, cos) of omega, phi, psi, chi1..chi4.
        aatype: [*, N] residue types.

    Returns:
        `Rigid` [*, N, 8].
    """
    default_frames = Rigid.from_tensor_4x4(
        _gather_residue_table(_table(rc.restype_rigid_group_default_frame, "float32"), aatype)
    )
    angles = ops.cast(angles, "float32")
    # The backbone group gets the zero angle (sin 0, cos 1).
    backbone_angle = ops.broadcast_to(ops.convert_to_tensor([0.0, 1.0]), tuple(ops.shape(angles)[:-2]) + (1, 2))
    angles = ops.concatenate([backbone_angle, angles], axis=-2)
    sin, cos = angles[..., 0], angles[..., 1]
    zeros, ones = ops.zeros_like(sin), ops.ones_like(sin)
    # Rotation about the x axis by the torsion angle.
    rotations = ops.stack(
        [
            ops.stack([ones, zeros, zeros], axis=-1),
            ops.stack([zeros, cos, -sin], axis=-1),
            ops.stack([zeros, sin, cos], axis=-1),
        ],
        axis=-2,
    )
    group_frames = default_frames.compose(Rigid(Rotation(rot_mats=rotations)))

    def group(frames, index):  # the frames of group `index`: [*, N, 8] -> [*, N]
        return Rigid(Rotation(rot_mats=frames.get_rots().get_rot_mats()[..., index, :, :]),
                     frames.get_trans()[..., index, :])

    # chi2..chi4 frames are expressed in the preceding chi frame; chain them back to the backbone.
    chi_to_backbone = [group(group_frames, 4)]
    for index in (5, 6, 7):
        chi_to_backbone.append(chi_to_backbone[-1].compose(group(group_frames, index)))
    groups = [group(group_frames, index) for index in range(4)] + chi_to_backbone
    rots = ops.stack([g.get_rots().get_rot_mats() for g in groups], axis=-3)
    trans = ops.stack([g.get_trans() for g in groups], axis=-2)
    frames_to_backbone = Rigid(Rotation(rot_mats=rots), trans)
    return backbone_frames.expand_dims(-1).compose(frames_to_backbone)


def frames_and_literature_positions_to_atom14_pos(group_frames, aatype):
    """Atom14 coordinates [*, N, 14, 3]: literature positions placed by the frame of each atom's group.

    Args:
        group_frames: `Rigid` [*, N, 8] global frames of the rigid groups.
        aatype: [*, N] residue types.
    """
    group_index = _gather_residue_table(_table(rc.restype_atom14_to_rigid_group, "int32"), aatype)  # [*, N, 14]
    atom_mask = _gather_residue_table(_table(rc.restype_atom14_mask, "float32"), aatype)[..., None]
    positions = _gather_residue_table(_table(rc.restype_atom14_rigid_group_positions, "float32"), aatype)
    # Each atom's group frame, gathered from the whole [*, N, 8, 3, 3] / [*, N, 8, 3] tensors at once.
    group_index = group_index[..., None]  # [*, N, 14, 1]
    atom_rotations = ops.take_along_axis(group_frames.get_rots().get_rot_mats(), group_index[..., None], axis=-3)
    atom_frames = Rigid(Rotation(rot_mats=atom_rotations),
                        ops.take_along_axis(group_frames.get_trans(), group_index, axis=-2))
    return atom_frames.apply(positions) * atom_mask


def make_atom14_masks(aatype):
    """Index maps and existence masks between the atom14 and atom37 layouts for `aatype` [*, N].

    Returns:
        dict with `atom14_atom_exists` (float), `residx_atom14_to_atom37`, `residx_atom37_to_atom14` (int),
        `atom37_atom_exists` (float).
    """
    return {
        "atom14_atom_exists": _gather_residue_table(_table(rc.restype_atom14_mask, "float32"), aatype),
        "residx_atom14_to_atom37": _gather_residue_table(_table(rc.restype_atom14_to_atom37, "int32"), aatype),
        "residx_atom37_to_atom14": _gather_residue_table(_table(rc.restype_atom37_to_atom14, "int32"), aatype),
        "atom37_atom_exists": _gather_residue_table(_table(rc.restype_atom37_mask, "float32"), aatype),
    }


def atom14_to_atom37(atom14_positions, residx_atom37_to_atom14, atom37_atom_exists):
    """Scatter [*, N, 14, 3] atom14 coordinates into the [*, N, 37, 3] atom37 layout (absent atoms at 0).

    Works on numpy arrays and on backend tensors.
    """
    if isinstance(atom14_positions, np.ndarray):
        gathered = np.take_along_axis(atom14_positions, np.asarray(residx_atom37_to_atom14)[..., None], axis=-2)
        return gathered * np.asarray(atom37_atom_exists)[..., None]
    index = ops.cast(residx_atom37_to_atom14, "int32")[..., None]
    gathered = ops.take_along_axis(atom14_positions, ops.broadcast_to(index, tuple(index.shape[:-1]) + (3,)), axis=-2)
    return gathered * ops.cast(atom37_atom_exists, gathered.dtype)[..., None]
