"""Rigid-body maths of `tf_esm.folding.rigid` against the reference's own OpenFold utilities."""

import numpy as np
import pytest
import torch
from transformers.models.esm.openfold_utils import rigid_utils as ref

from tf_esm.folding.rigid import (
    Rigid,
    Rotation,
    quaternion_multiply,
    quaternion_to_rotation_matrix,
    rotation_matrix_to_quaternion,
)

ATOL = 1e-5


@pytest.fixture
def random_frames():
    rng = np.random.default_rng(0)
    quats = rng.normal(size=(3, 5, 4)).astype(np.float32)
    quats /= np.linalg.norm(quats, axis=-1, keepdims=True)
    trans = rng.normal(size=(3, 5, 3)).astype(np.float32) * 5
    points = rng.normal(size=(3, 5, 3)).astype(np.float32) * 5
    return quats, trans, points


def _ref_rigid(quats, trans):
    return ref.Rigid(ref.Rotation(quats=torch.from_numpy(quats)), torch.from_numpy(trans))


def _np(x):
    return np.asarray(x.detach().numpy() if hasattr(x, "detach") else x)


def test_quaternion_to_matrix_matches_reference(random_frames):
    quats, _, _ = random_frames
    ours = _np(quaternion_to_rotation_matrix(quats))
    np.testing.assert_allclose(ours, ref.quat_to_rot(torch.from_numpy(quats)).numpy(), atol=ATOL)
    np.testing.assert_allclose(ours @ np.swapaxes(ours, -1, -2), np.broadcast_to(np.eye(3), ours.shape), atol=ATOL)
    np.testing.assert_allclose(np.linalg.det(ours), 1.0, atol=ATOL)


def test_matrix_to_quaternion_matches_reference_up_to_sign(random_frames):
    quats, _, _ = random_frames
    matrices = ref.quat_to_rot(torch.from_numpy(quats))
    ours = _np(rotation_matrix_to_quaternion(matrices.numpy()))
    theirs = ref.rot_to_quat(matrices).numpy()
    sign = np.sign(np.sum(ours * theirs, axis=-1, keepdims=True))
    np.testing.assert_allclose(ours * sign, theirs, atol=1e-4)
    sign = np.sign(np.sum(ours * quats, axis=-1, keepdims=True))  # round trip
    np.testing.assert_allclose(ours * sign, quats, atol=1e-4)


def test_quaternion_products_match_reference(random_frames):
    quats, trans, _ = random_frames
    other = np.roll(quats, 1, axis=0)
    np.testing.assert_allclose(_np(quaternion_multiply(quats, other)),
                               ref.quat_multiply(torch.from_numpy(quats), torch.from_numpy(other)).numpy(), atol=ATOL)
    update = trans * 0.1
    ours = Rotation(quats=quats).compose_q_update_vec(update).get_quats()
    theirs = ref.Rotation(quats=torch.from_numpy(quats)).compose_q_update_vec(torch.from_numpy(update)).get_quats()
    np.testing.assert_allclose(_np(ours), theirs.numpy(), atol=ATOL)


def test_rigid_operations_match_reference(random_frames):
    quats, trans, points = random_frames
    ours, theirs = Rigid(Rotation(quats=quats), trans), _ref_rigid(quats, trans)
    other_q, other_t = np.roll(quats, 2, axis=1), np.roll(trans, 1, axis=0)
    ours_b, theirs_b = Rigid(Rotation(quats=other_q), other_t), _ref_rigid(other_q, other_t)
    p = torch.from_numpy(points)
    np.testing.assert_allclose(_np(ours.apply(points)), theirs.apply(p).numpy(), atol=ATOL)
    np.testing.assert_allclose(_np(ours.invert_apply(points)), theirs.invert_apply(p).numpy(), atol=ATOL)
    np.testing.assert_allclose(_np(ours.compose(ours_b).to_tensor_4x4()),
                               theirs.compose(theirs_b).to_tensor_4x4().numpy(), atol=ATOL)
    np.testing.assert_allclose(_np(ours.invert().to_tensor_4x4()), theirs.invert().to_tensor_4x4().numpy(), atol=ATOL)
    update = np.concatenate([trans * 0.1, points], axis=-1)
    np.testing.assert_allclose(_np(ours.compose_q_update_vec(update).to_tensor_7()),
                               theirs.compose_q_update_vec(torch.from_numpy(update)).to_tensor_7().numpy(), atol=ATOL)
    a, b, c = points, trans, np.roll(points, 1, axis=1)
    np.testing.assert_allclose(
        _np(Rigid.from_3_points(a, b, c).to_tensor_4x4()),
        ref.Rigid.from_3_points(*(torch.from_numpy(x) for x in (a, b, c))).to_tensor_4x4().numpy(), atol=ATOL)


def test_rigid_identities(random_frames):
    quats, trans, points = random_frames
    frame = Rigid(Rotation(quats=quats), trans)
    other = Rigid(Rotation(quats=np.roll(quats, 1, axis=0)), np.roll(trans, 1, axis=1))
    identity = np.broadcast_to(np.eye(4), (3, 5, 4, 4))
    np.testing.assert_allclose(_np(frame.compose(frame.invert()).to_tensor_4x4()), identity, atol=ATOL)
    np.testing.assert_allclose(_np(frame.invert().compose(frame).to_tensor_4x4()), identity, atol=ATOL)
    np.testing.assert_allclose(_np(frame.compose(other).apply(points)), _np(frame.apply(other.apply(points))),
                               atol=1e-4)
    np.testing.assert_allclose(_np(frame.invert_apply(frame.apply(points))), points, atol=1e-4)
    np.testing.assert_allclose(_np(frame.invert().apply(points)), _np(frame.invert_apply(points)), atol=1e-4)
    as_matrices = Rigid.from_tensor_4x4(_np(frame.to_tensor_4x4()))
    np.testing.assert_allclose(_np(as_matrices.apply(points)), _np(frame.apply(points)), atol=1e-4)
    seven = Rigid.from_tensor_7(_np(frame.to_tensor_7()))
    np.testing.assert_allclose(_np(seven.to_tensor_4x4()), _np(frame.to_tensor_4x4()), atol=ATOL)
    np.testing.assert_allclose(_np(Rigid.identity((3, 5)).apply(points)), points, atol=0)
    assert frame.expand_dims(-1).shape == (3, 5, 1)
