"""How far structure-from-motion poses are from known ones, after the best similarity between the two
(images fix poses only up to one): used by ``scripts/bench_capture.py`` and the tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cos3d.robot.frames import transform_from_correspondences


@dataclass
class PoseErrors:
    T_true_est: np.ndarray
    """[4, 4] similarity taking estimated coordinates to true ones (Umeyama on the camera centres)."""
    rotation_deg: np.ndarray
    """[N] angle between each aligned estimated camera rotation and the true one (degrees)."""
    translation: np.ndarray
    """[N] distance between each aligned estimated camera centre and the true one (true units)."""
    extent: float
    """The true cameras' extent: the largest distance between two true camera centres."""

    def summary(self) -> dict[str, float]:
        return {
            "rot_err_deg_median": float(np.median(self.rotation_deg)),
            "rot_err_deg_max": float(np.max(self.rotation_deg)),
            "trans_err_median_pct_extent": float(100 * np.median(self.translation) / self.extent),
            "trans_err_max_pct_extent": float(100 * np.max(self.translation) / self.extent),
        }


def pose_errors(est_c2w: np.ndarray, true_c2w: np.ndarray) -> PoseErrors:
    """Errors of ``est_c2w`` ``[N, 4, 4]`` against ``true_c2w`` ``[N, 4, 4]`` (the same cameras, same order)."""
    est, true = np.asarray(est_c2w, np.float64), np.asarray(true_c2w, np.float64)
    T = transform_from_correspondences(est[:, :3, 3], true[:, :3, 3], scale=True)
    s = np.cbrt(np.linalg.det(T[:3, :3]))
    R = T[:3, :3] / s
    centres = est[:, :3, 3] @ T[:3, :3].T + T[:3, 3]
    trans = np.linalg.norm(centres - true[:, :3, 3], axis=1)
    rot = []
    for e, t in zip(est, true):
        d = (R @ e[:3, :3]).T @ t[:3, :3]
        rot.append(np.degrees(np.arccos(np.clip((np.trace(d) - 1) / 2, -1.0, 1.0))))
    c = true[:, :3, 3]
    extent = float(np.max(np.linalg.norm(c[:, None] - c[None], axis=-1)))
    return PoseErrors(T_true_est=T, rotation_deg=np.asarray(rot), translation=trans, extent=max(extent, 1e-12))
