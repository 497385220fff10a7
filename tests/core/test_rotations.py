"""cos3d.core.rotations.quat_to_rotmat: the one quaternion → rotation matrix map (renderer, viewer, readers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cos3d.core.rotations import quat_to_rotmat


def _random_quats(n: int, seed: int) -> np.ndarray:
    """wxyz quaternions of random lengths (0.01 to 100), both signs of w."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True) * 10 ** rng.uniform(-2, 2, size=(n, 1))


def test_matches_scipy_for_unnormalised_quaternions():
    q = _random_quats(200, seed=0)
    ref = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()  # scipy: scalar-last, normalises
    R = quat_to_rotmat(q)
    assert isinstance(R, np.ndarray) and R.dtype == np.float64 and R.shape == (200, 3, 3)
    np.testing.assert_allclose(R, ref, atol=1e-12)
    Rt = quat_to_rotmat(torch.from_numpy(q))
    assert isinstance(Rt, torch.Tensor) and Rt.dtype == torch.float64
    np.testing.assert_array_equal(Rt.numpy(), R)
    R32 = quat_to_rotmat(torch.from_numpy(q).float())
    assert R32.dtype == torch.float32
    np.testing.assert_allclose(R32.numpy(), ref, atol=1e-5)


def test_q_and_minus_q_give_the_same_rotation_and_batch_dims_are_kept():
    q = _random_quats(24, seed=1)
    np.testing.assert_allclose(quat_to_rotmat(-q), quat_to_rotmat(q), atol=1e-15)
    assert quat_to_rotmat(q.reshape(2, 3, 4, 4)).shape == (2, 3, 4, 3, 3)
    np.testing.assert_allclose(quat_to_rotmat((2.0, 0.0, 0.0, 0.0)), np.eye(3))
    np.testing.assert_allclose(quat_to_rotmat([0.0, 0.0, 0.0, 1.0]), np.diag([-1.0, -1.0, 1.0]), atol=1e-15)


def test_differentiable_and_rejects_bad_shapes():
    q = torch.from_numpy(_random_quats(5, seed=2)).requires_grad_(True)
    assert torch.autograd.gradcheck(quat_to_rotmat, (q,))
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        quat_to_rotmat(torch.zeros(3, 3))
