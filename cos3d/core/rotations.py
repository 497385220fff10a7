"""Quaternions to rotation matrices: the one implementation the renderer, the viewer and the readers use.

Quaternions are scalar-first ``(w, x, y, z)`` (3DGS, gsplat, COLMAP). pybullet's scalar-last
``(x, y, z, w)`` callers reorder before calling.
"""

from __future__ import annotations

from typing import overload

import numpy as np
import torch
from torch import Tensor

__all__ = ["quat_to_rotmat"]


@overload
def quat_to_rotmat(quats: Tensor) -> Tensor: ...
@overload
def quat_to_rotmat(quats: np.ndarray | tuple | list) -> np.ndarray: ...
def quat_to_rotmat(quats):
    """``[..., 4]`` wxyz quaternions of any non-zero length → ``[..., 3, 3]`` rotation matrices.

    A quaternion is normalised first (its length is ignored). A tensor gives a tensor of the same
    dtype and device (differentiable); anything else (numpy array, tuple) is read as float64 and
    gives a float64 numpy array.
    """
    if not isinstance(quats, Tensor):
        return quat_to_rotmat(torch.from_numpy(np.asarray(quats, dtype=np.float64))).numpy()
    if quats.shape[-1:] != (4,):
        raise ValueError(f"quaternions must have shape [..., 4], got {list(quats.shape)}")
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    rows = [
        1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy),
        2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx),
        2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (3, 3))
