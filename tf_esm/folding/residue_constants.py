"""Residue constants: amino-acid alphabets, atom layouts and the ideal rigid-group geometry of each residue.

The raw physical tables live in `_residue_tables.py`; this module derives the per-residue-type arrays the
structure module needs (default frames of the eight rigid groups, literature atom positions, atom14/atom37
index maps and masks). Everything is plain numpy, computed once at import.

Residue types follow AlphaFold's order `ARNDCQEGHILKMFPSTWYV`, with index 20 for the unknown residue `X`.
"""

from __future__ import annotations

import numpy as np

from tf_esm.folding._residue_tables import (
    ATOM14_NAMES,
    ATOM_TYPES,
    CHI_ANGLES_ATOMS,
    RESTYPE_1TO3,
    RESTYPES,
    RIGID_GROUP_ATOM_POSITIONS,
)

restypes = tuple(RESTYPES)
restypes_with_x = restypes + ("X",)
restype_order = {letter: index for index, letter in enumerate(restypes)}
restype_order_with_x = {letter: index for index, letter in enumerate(restypes_with_x)}
restype_num = len(restypes)  # 20
unk_restype_index = restype_num
restype_1to3 = dict(RESTYPE_1TO3)
restype_3to1 = {three: one for one, three in restype_1to3.items()}
resnames = tuple(restype_1to3[letter] for letter in restypes) + ("UNK",)

atom_types = ATOM_TYPES
atom_order = {name: index for index, name in enumerate(atom_types)}
atom_type_num = len(atom_types)  # 37
num_rigid_groups = 8

# chi_angles_mask[restype, k] = 1 where the residue has a (k+1)-th chi angle.
chi_angles_mask = np.zeros((restype_num + 1, 4), dtype=np.float32)
for _index, _letter in enumerate(restypes):
    chi_angles_mask[_index, : len(CHI_ANGLES_ATOMS[restype_1to3[_letter]])] = 1.0


def _frame_from_two_axes(x_direction, xy_plane_direction, origin):
    """4x4 transform whose x axis points along `x_direction`, with `xy_plane_direction` in its xy plane."""
    e_x = x_direction / np.linalg.norm(x_direction)
    e_y = xy_plane_direction - np.dot(xy_plane_direction, e_x) * e_x
    e_y = e_y / np.linalg.norm(e_y)
    e_z = np.cross(e_x, e_y)
    frame = np.eye(4)
    frame[:3, 0], frame[:3, 1], frame[:3, 2], frame[:3, 3] = e_x, e_y, e_z, origin
    return frame


def _build_tables():
    n = restype_num + 1
    atom14_to_group = np.zeros((n, 14), dtype=np.int32)
    atom14_mask = np.zeros((n, 14), dtype=np.float32)
    atom14_positions = np.zeros((n, 14, 3), dtype=np.float32)
    atom37_mask = np.zeros((n, atom_type_num), dtype=np.float32)
    atom14_to_atom37 = np.zeros((n, 14), dtype=np.int32)
    atom37_to_atom14 = np.zeros((n, atom_type_num), dtype=np.int32)
    # Groups a residue lacks (and every group of the unknown residue) keep all-zero frames, as in AlphaFold.
    default_frames = np.zeros((n, num_rigid_groups, 4, 4), dtype=np.float32)

    for restype, letter in enumerate(restypes):
        resname = restype_1to3[letter]
        slot_names = ATOM14_NAMES[resname]
        slot_of = {name: slot for slot, name in enumerate(slot_names) if name}
        for slot, name in enumerate(slot_names):
            if name:
                atom14_to_atom37[restype, slot] = atom_order[name]
        for atom37_index, name in enumerate(atom_types):
            atom37_to_atom14[restype, atom37_index] = slot_of.get(name, 0)

        positions = {}
        for name, group, xyz in RIGID_GROUP_ATOM_POSITIONS[resname]:
            slot = slot_of[name]
            atom14_to_group[restype, slot] = group
            atom14_mask[restype, slot] = 1.0
            atom14_positions[restype, slot] = xyz
            atom37_mask[restype, atom_order[name]] = 1.0
            positions[name] = np.asarray(xyz, dtype=np.float64)

        # Groups 0 (backbone) and 1 (pre-omega) are the identity; phi and psi hang off the backbone.
        default_frames[restype, 0] = default_frames[restype, 1] = np.eye(4)
        default_frames[restype, 2] = _frame_from_two_axes(
            positions["N"] - positions["CA"], np.array([1.0, 0.0, 0.0]), positions["N"]
        )
        default_frames[restype, 3] = _frame_from_two_axes(
            positions["C"] - positions["CA"], positions["CA"] - positions["N"], positions["C"]
        )
        chis = CHI_ANGLES_ATOMS[resname]
        if chis:
            a, b, c = (positions[name] for name in chis[0][:3])
            default_frames[restype, 4] = _frame_from_two_axes(c - b, a - b, c)
        # chi2..chi4 frames are expressed in the previous chi frame, whose origin is on the rotation axis.
        for chi_index in range(1, len(chis)):
            axis_end = positions[chis[chi_index][2]]
            default_frames[restype, 4 + chi_index] = _frame_from_two_axes(
                axis_end, np.array([-1.0, 0.0, 0.0]), axis_end
            )
    return (atom14_to_group, atom14_mask, atom14_positions, atom37_mask, atom14_to_atom37, atom37_to_atom14,
            default_frames)


(
    restype_atom14_to_rigid_group,  # [21, 14] rigid group of each atom14 slot
    restype_atom14_mask,  # [21, 14] 1 where the slot holds an atom
    restype_atom14_rigid_group_positions,  # [21, 14, 3] literature position in the atom's group frame
    restype_atom37_mask,  # [21, 37] 1 where the residue has that atom
    restype_atom14_to_atom37,  # [21, 14] atom37 index of each atom14 slot (0 for empty slots)
    restype_atom37_to_atom14,  # [21, 37] atom14 slot of each atom37 atom (0 where absent)
    restype_rigid_group_default_frame,  # [21, 8, 4, 4] each group's frame in its parent frame
) = _build_tables()


class InvalidSequenceError(ValueError):
    """A protein sequence contains characters the folding model cannot fold."""


def sequence_to_aatype(sequence: str) -> np.ndarray:
    """AlphaFold residue indices (0..20) of a one-letter sequence; unknown upper-case letters become `X` (20).

    Raises:
        InvalidSequenceError: for characters that are not upper-case letters, naming them and their positions.
    """
    bad = [(position, char) for position, char in enumerate(sequence) if not ("A" <= char <= "Z")]
    if bad:
        shown = ", ".join(f"{char!r} at {position}" for position, char in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise InvalidSequenceError(
            f"Cannot fold sequence: invalid character(s) {shown}{more}. Use upper-case one-letter amino-acid codes "
            "(unknown letters fold as X); separate chains with ':'."
        )
    return np.array([restype_order_with_x.get(char, unk_restype_index) for char in sequence], dtype=np.int32)
