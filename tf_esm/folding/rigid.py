"""Rigid-body transformations as a value type: a rotation (quaternion or 3x3 matrix) plus a translation.

`Rotation` and `Rigid` behave like tensors of transformations: every method works on arbitrary leading
("batch") dimensions and returns a new object. The maths runs through `keras.ops`, so the same code serves the
TensorFlow, JAX and PyTorch backends. Rotations are always kept in float32, as in AlphaFold.

Conventions (AlphaFold/OpenFold): quaternions are `(w, x, y, z)` with the real part first; a rigid maps a
point `p` to `R p + t`; `a.compose(b)` is the transformation "first `b`, then `a`".

Examples:

```python
>>> import numpy as np
>>> from tf_esm.folding.rigid import Rigid, Rotation
>>> quaternion = np.array([[np.cos(0.5), 0.0, 0.0, np.sin(0.5)]], "float32")  # 1 rad about z
>>> frame = Rigid(Rotation(quats=quaternion), np.array([[1.0, 2.0, 3.0]], "float32"))
>>> point = np.array([[0.5, -1.0, 2.0]], "float32")
>>> back = frame.invert_apply(frame.apply(point))
>>> bool(np.allclose(back, point, atol=1e-6))
True
```
"""

from __future__ import annotations

import numpy as np
from keras import ops


def _rotation_matrix_coefficients():
    """[4, 4, 3, 3]: entry (i, j) of the rotation matrix of a unit quaternion q = (w, x, y, z) is
    sum over (a, b) of q_a q_b C[a, b, i, j]."""
    w, x, y, z = range(4)
    terms = {
        (0, 0): ((w, w, 1), (x, x, 1), (y, y, -1), (z, z, -1)),
        (0, 1): ((x, y, 2), (w, z, -2)),
        (0, 2): ((x, z, 2), (w, y, 2)),
        (1, 0): ((x, y, 2), (w, z, 2)),
        (1, 1): ((w, w, 1), (x, x, -1), (y, y, 1), (z, z, -1)),
        (1, 2): ((y, z, 2), (w, x, -2)),
        (2, 0): ((x, z, 2), (w, y, -2)),
        (2, 1): ((y, z, 2), (w, x, 2)),
        (2, 2): ((w, w, 1), (x, x, -1), (y, y, -1), (z, z, 1)),
    }
    coefficients = np.zeros((4, 4, 3, 3), np.float32)
    for (i, j), entry in terms.items():
        for a, b, value in entry:
            coefficients[a, b, i, j] = value
    return coefficients


_ROTATION_MATRIX_COEFFICIENTS = _rotation_matrix_coefficients()


def quaternion_to_rotation_matrix(quaternions):
    """[*, 4] unit quaternions (w, x, y, z) -> [*, 3, 3] rotation matrices.

    The products q_a q_b weighted by a constant table and summed: a handful of operations on whole tensors, where
    entry-by-entry formulas take ~50 small ones (which is what an eager structure module spends its time on).
    Elementwise products and a sum, not a matrix product, so that float32 stays float32 on every device.
    """
    quaternions = ops.convert_to_tensor(quaternions)
    products = quaternions[..., :, None] * quaternions[..., None, :]  # [*, 4, 4]
    coefficients = ops.convert_to_tensor(_ROTATION_MATRIX_COEFFICIENTS, dtype=products.dtype)
    return ops.sum(products[..., None, None] * coefficients, axis=(-4, -3))


def rotation_matrix_to_quaternion(rotation_matrices):
    """[*, 3, 3] rotation matrices -> [*, 4] unit quaternions.

    Uses the eigenvector of the largest eigenvalue of Bar-Itzhack's symmetric 4x4 matrix, which is robust for
    every rotation. A quaternion and its negation are the same rotation; the sign returned is unspecified.
    """
    m = rotation_matrices
    xx, xy, xz = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    yx, yy, yz = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    zx, zy, zz = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    k = [
        [xx + yy + zz, zy - yz, xz - zx, yx - xy],
        [zy - yz, xx - yy - zz, xy + yx, xz + zx],
        [xz - zx, xy + yx, yy - xx - zz, yz + zy],
        [yx - xy, xz + zx, yz + zy, zz - xx - yy],
    ]
    k = ops.stack([ops.stack(row, axis=-1) for row in k], axis=-2) / 3.0
    _, eigenvectors = ops.eigh(k)  # eigenvalues in ascending order
    return eigenvectors[..., -1]


def quaternion_multiply(q1, q2):
    """Hamilton product of [*, 4] quaternions (w, x, y, z)."""
    w1, x1, y1, z1 = ops.unstack(q1, 4, axis=-1)
    w2, x2, y2, z2 = ops.unstack(q2, 4, axis=-1)
    return ops.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        axis=-1,
    )


def rotation_matrix_multiply(a, b):
    """[*, 3, 3] @ [*, 3, 3] with broadcasting over the leading dimensions."""
    return ops.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def rotate_points(rotation_matrices, points):
    """Apply [*, 3, 3] rotations to [*, 3] points (broadcasting)."""
    return ops.sum(rotation_matrices * points[..., None, :], axis=-1)


def _float32(x):
    return ops.cast(ops.convert_to_tensor(x), "float32")


class Rotation:
    """A tensor of 3D rotations stored either as quaternions or as rotation matrices.

    Args:
        rot_mats: [*, 3, 3] rotation matrices. Exclusive with `quats`.
        quats: [*, 4] quaternions (w, x, y, z). Exclusive with `rot_mats`.
        normalize_quats: Divide `quats` by their norm.
    """

    def __init__(self, rot_mats=None, quats=None, normalize_quats=True):
        if (rot_mats is None) == (quats is None):
            raise ValueError("Rotation needs exactly one of `rot_mats` and `quats`.")
        if rot_mats is not None:
            rot_mats = _float32(rot_mats)
            if tuple(rot_mats.shape[-2:]) != (3, 3):
                raise ValueError(f"Rotation matrices must end in (3, 3), got shape {tuple(rot_mats.shape)}.")
        else:
            quats = _float32(quats)
            if quats.shape[-1] != 4:
                raise ValueError(f"Quaternions must end in 4, got shape {tuple(quats.shape)}.")
            if normalize_quats:
                quats = quats / ops.sqrt(ops.sum(quats * quats, axis=-1, keepdims=True))
        self._rot_mats = rot_mats
        self._quats = quats

    @staticmethod
    def identity(shape, fmt="quat"):
        """Identity rotations of batch shape `shape`, stored as quaternions (`fmt="quat"`) or matrices."""
        shape = tuple(shape)
        if fmt == "quat":
            quats = ops.concatenate([ops.ones(shape + (1,)), ops.zeros(shape + (3,))], axis=-1)
            return Rotation(quats=quats, normalize_quats=False)
        if fmt == "rot_mat":
            return Rotation(rot_mats=ops.broadcast_to(ops.eye(3), shape + (3, 3)))
        raise ValueError(f"Unknown rotation format {fmt!r}; expected 'quat' or 'rot_mat'.")

    @property
    def is_quaternion(self):
        return self._quats is not None

    @property
    def shape(self):
        return tuple(self._quats.shape[:-1] if self.is_quaternion else self._rot_mats.shape[:-2])

    def get_rot_mats(self):
        """[*, 3, 3] rotation matrices."""
        return quaternion_to_rotation_matrix(self._quats) if self.is_quaternion else self._rot_mats

    def get_quats(self):
        """[*, 4] quaternions (computed by an eigen-decomposition when stored as matrices)."""
        return self._quats if self.is_quaternion else rotation_matrix_to_quaternion(self._rot_mats)

    def compose_q_update_vec(self, q_update_vec, normalize_quats=True):
        """Right-multiply by the (unnormalised) quaternion (1, x, y, z) given as a [*, 3] update vector."""
        quats = self.get_quats()
        update = ops.concatenate([ops.zeros_like(q_update_vec[..., :1]), q_update_vec], axis=-1)
        return Rotation(quats=quats + quaternion_multiply(quats, update), normalize_quats=normalize_quats)

    def compose_r(self, other):
        """`self` after `other`, as rotation matrices."""
        return Rotation(rot_mats=rotation_matrix_multiply(self.get_rot_mats(), other.get_rot_mats()))

    def compose_q(self, other, normalize_quats=True):
        """`self` after `other`, as quaternions."""
        return Rotation(quats=quaternion_multiply(self.get_quats(), other.get_quats()), normalize_quats=normalize_quats)

    def apply(self, points):
        """Rotate [*, 3] points."""
        return rotate_points(self.get_rot_mats(), points)

    def invert_apply(self, points):
        """Rotate [*, 3] points by the inverse rotation."""
        return rotate_points(ops.swapaxes(self.get_rot_mats(), -1, -2), points)

    def invert(self):
        if self.is_quaternion:
            conjugate = self._quats * ops.convert_to_tensor([1.0, -1.0, -1.0, -1.0])
            return Rotation(quats=conjugate / ops.sum(self._quats**2, axis=-1, keepdims=True), normalize_quats=False)
        return Rotation(rot_mats=ops.swapaxes(self._rot_mats, -1, -2))

    def expand_dims(self, axis):
        """Insert a batch dimension at `axis` (counted over the batch dimensions)."""
        axis = _batch_axis(axis, len(self.shape) + 1)
        if self.is_quaternion:
            return Rotation(quats=ops.expand_dims(self._quats, axis), normalize_quats=False)
        return Rotation(rot_mats=ops.expand_dims(self._rot_mats, axis))

    def stop_gradient(self):
        if self.is_quaternion:
            return Rotation(quats=ops.stop_gradient(self._quats), normalize_quats=False)
        return Rotation(rot_mats=ops.stop_gradient(self._rot_mats))


def _batch_axis(axis, rank):
    """A batch axis as a non-negative index, so that it leaves the trailing component axes alone."""
    if axis < 0:
        axis += rank
    if not 0 <= axis < rank:
        raise ValueError(f"Axis out of range for a transformation of batch rank {rank - 1}.")
    return axis


class Rigid:
    """A tensor of rigid transformations x -> R x + t.

    Args:
        rots: A `Rotation` of batch shape [*].
        trans: [*, 3] translations; None means zero.
    """

    def __init__(self, rots, trans=None):
        if trans is None:
            trans = ops.zeros_like(rots.get_rot_mats()[..., 0])  # [*, 3], also for dynamic shapes
        self._rots = rots
        self._trans = _float32(trans)

    @staticmethod
    def identity(shape, fmt="quat"):
        return Rigid(Rotation.identity(shape, fmt=fmt), ops.zeros(tuple(shape) + (3,)))

    @property
    def shape(self):
        return tuple(self._trans.shape[:-1])

    def get_rots(self):
        return self._rots

    def get_trans(self):
        return self._trans

    def compose(self, other):
        """The transformation "first `other`, then `self`"."""
        return Rigid(self._rots.compose_r(other._rots), self._rots.apply(other._trans) + self._trans)

    def compose_q_update_vec(self, q_update_vec):
        """Apply a [*, 6] backbone update (quaternion vector part, then translation) in the local frame."""
        quaternion_update, translation_update = q_update_vec[..., :3], q_update_vec[..., 3:]
        new_rots = self._rots.compose_q_update_vec(quaternion_update)
        return Rigid(new_rots, self._trans + self._rots.apply(translation_update))

    def apply(self, points):
        """Transform [*, 3] points."""
        return self._rots.apply(points) + self._trans

    def invert_apply(self, points):
        """Transform [*, 3] points by the inverse transformation."""
        return self._rots.invert_apply(points - self._trans)

    def invert(self):
        inverse_rots = self._rots.invert()
        return Rigid(inverse_rots, -inverse_rots.apply(self._trans))

    def expand_dims(self, axis):
        """Insert a batch dimension at `axis` (counted over the batch dimensions)."""
        axis = _batch_axis(axis, len(self.shape) + 1)
        return Rigid(self._rots.expand_dims(axis), ops.expand_dims(self._trans, axis))

    def scale_translation(self, factor):
        return Rigid(self._rots, self._trans * factor)

    def stop_rot_gradient(self):
        return Rigid(self._rots.stop_gradient(), self._trans)

    def to_tensor_4x4(self):
        """[*, 4, 4] homogeneous matrices."""
        top = ops.concatenate([self._rots.get_rot_mats(), self._trans[..., :, None]], axis=-1)
        bottom = ops.broadcast_to(ops.convert_to_tensor([0.0, 0.0, 0.0, 1.0]),
                                  tuple(ops.shape(self._trans)[:-1]) + (1, 4))
        return ops.concatenate([top, bottom], axis=-2)

    @staticmethod
    def from_tensor_4x4(tensor):
        tensor = _float32(tensor)
        if tuple(tensor.shape[-2:]) != (4, 4):
            raise ValueError(f"Homogeneous transforms must end in (4, 4), got shape {tuple(tensor.shape)}.")
        return Rigid(Rotation(rot_mats=tensor[..., :3, :3]), tensor[..., :3, 3])

    def to_tensor_7(self):
        """[*, 7]: quaternion (w, x, y, z) then translation."""
        return ops.concatenate([self._rots.get_quats(), self._trans], axis=-1)

    @staticmethod
    def from_tensor_7(tensor, normalize_quats=False):
        tensor = _float32(tensor)
        if tensor.shape[-1] != 7:
            raise ValueError(f"Expected a [*, 7] tensor, got shape {tuple(tensor.shape)}.")
        return Rigid(Rotation(quats=tensor[..., :4], normalize_quats=normalize_quats), tensor[..., 4:])

    @staticmethod
    def from_3_points(p_neg_x_axis, origin, p_xy_plane, eps=1e-8):
        """Frames by Gram-Schmidt (AlphaFold Algorithm 21): x towards `origin - p_neg_x_axis`, y in the plane."""
        origin = _float32(origin)
        e0 = origin - _float32(p_neg_x_axis)
        e1 = _float32(p_xy_plane) - origin
        e0 = e0 / ops.sqrt(ops.sum(e0 * e0, axis=-1, keepdims=True) + eps)
        e1 = e1 - e0 * ops.sum(e0 * e1, axis=-1, keepdims=True)
        e1 = e1 / ops.sqrt(ops.sum(e1 * e1, axis=-1, keepdims=True) + eps)
        e2 = ops.cross(e0, e1, axis=-1)  # explicit: under PyTorch axis=None is the first axis of size 3
        return Rigid(Rotation(rot_mats=ops.stack([e0, e1, e2], axis=-1)), origin)
