"""Frames: the scene frame of a trained run ↔ the robot's base frame.

A trained scene lives in its reconstruction's frame (``scene``): metres for RGB-D scans and the
tabletop, an arbitrary scale for a COLMAP reconstruction. The robot works in its base frame (``base``).
``T_base_scene`` is a 4×4 similarity: ``x_base = s R x_scene + t``, stored as
``[[s R, t], [0, 0, 0, 1]]`` (s > 0, R a rotation). For a metric scene s = 1; for a metric-less COLMAP
scene, :func:`transform_from_correspondences` estimates s from a few points known in both frames
(AprilTag corners, table corners, points touched with the gripper).

Everything here is numpy float64; points are ``[..., 3]``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "as_transform",
    "transform_points",
    "transform_directions",
    "transform_pose",
    "transform_scale",
    "transform_from_correspondences",
]


def as_transform(T: np.ndarray | None, *, name: str = "T_base_scene", tol: float = 1e-4) -> np.ndarray:
    """``T`` as a float64 ``[4, 4]`` similarity (identity for None).

    Raises:
        ValueError: naming ``name`` for a wrong shape, non-finite values, a bottom row other than
            ``[0, 0, 0, 1]``, or a top-left block that is not a positive scale times a rotation.
    """
    if T is None:
        return np.eye(4)
    A = np.asarray(T, dtype=np.float64)
    if A.shape != (4, 4):
        raise ValueError(f"{name} must be a 4x4 matrix, got shape {A.shape}")
    if not np.isfinite(A).all():
        raise ValueError(f"{name} has NaN/inf entries")
    if not np.allclose(A[3], [0.0, 0.0, 0.0, 1.0], atol=tol):
        raise ValueError(f"{name}'s bottom row must be [0, 0, 0, 1], got {A[3].tolist()}")
    M = A[:3, :3]
    s = np.cbrt(np.linalg.det(M))
    if not s > 0:
        raise ValueError(f"{name}'s rotation block has determinant {np.linalg.det(M):.3g}; it must be s·R with s > 0")
    R = M / s
    if not np.allclose(R.T @ R, np.eye(3), atol=tol * 10):
        raise ValueError(f"{name}'s top-left 3x3 is not a uniform scale times a rotation")
    return A


def transform_scale(T: np.ndarray) -> float:
    """The scale ``s`` of a similarity ``[[s R, t], [0, 1]]`` (1 for a rigid transform)."""
    return float(np.cbrt(np.linalg.det(np.asarray(T, np.float64)[:3, :3])))


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``[..., 3]`` points mapped by the 4×4 ``T``: ``T[:3, :3] @ p + T[:3, 3]``."""
    T = np.asarray(T, np.float64)
    p = np.asarray(points, np.float64)
    return p @ T[:3, :3].T + T[:3, 3]


def transform_directions(T: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """``[..., 3]`` unit directions rotated by ``T``'s rotation (scale removed)."""
    T = np.asarray(T, np.float64)
    R = T[:3, :3] / transform_scale(T)
    return np.asarray(dirs, np.float64) @ R.T


def transform_pose(T: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """A rigid pose ``T_scene_x`` [4, 4] → ``T_base_x`` (the scale moves the origin, never the axes)."""
    T = np.asarray(T, np.float64)
    s = transform_scale(T)
    out = np.eye(4)
    out[:3, :3] = (T[:3, :3] / s) @ np.asarray(pose, np.float64)[:3, :3]
    out[:3, 3] = transform_points(T, np.asarray(pose, np.float64)[:3, 3])
    return out


def transform_from_correspondences(
    points_scene: np.ndarray, points_base: np.ndarray, *, scale: bool = True
) -> np.ndarray:
    """``T_base_scene`` [4, 4] from ``K ≥ 3`` points known in both frames (least squares, Umeyama 1991).

    Args:
        points_scene: ``[K, 3]`` in the scene (e.g. tag corners picked in the splat, table corners).
        points_base: ``[K, 3]`` the same points in the robot base frame (metres).
        scale: estimate the scale ``s`` too (a COLMAP scene has none of its own); False fixes s = 1.

    Raises:
        ValueError: for mismatched shapes, fewer than 3 points, or points on one line.
    """
    P = np.asarray(points_scene, np.float64)
    Q = np.asarray(points_base, np.float64)
    if P.ndim != 2 or P.shape[1] != 3 or P.shape != Q.shape:
        raise ValueError(f"points_scene and points_base must both be [K, 3], got {P.shape} and {Q.shape}")
    if len(P) < 3:
        raise ValueError(f"need at least 3 correspondences to fix a frame, got {len(P)}")
    mp, mq = P.mean(0), Q.mean(0)
    Pc, Qc = P - mp, Q - mq
    sv = np.linalg.svd(Pc, compute_uv=False)
    if sv[1] < 1e-9 * max(sv[0], 1e-12):
        raise ValueError("the correspondences lie on one line; give at least 3 points not in a line")
    H = Qc.T @ Pc / len(P)
    U, S, Vt = np.linalg.svd(H)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1.0
    R = U @ D @ Vt
    s = float(np.trace(np.diag(S) @ D) / (Pc**2).sum(1).mean()) if scale else 1.0
    T = np.eye(4)
    T[:3, :3] = s * R
    T[:3, 3] = mq - s * R @ mp
    return T
