"""3D smoothing of per-Gaussian features: the mean over each Gaussian's nearest neighbours in xyz."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["knn_indices", "smooth_features"]


def knn_indices(xyz: Tensor | np.ndarray, k: int) -> np.ndarray:
    """Indices ``[N, k']`` (``k' = min(k, N)``) of each point's ``k'`` nearest points, itself included."""
    from scipy.spatial import cKDTree

    pts = xyz.detach().cpu().numpy() if isinstance(xyz, Tensor) else np.asarray(xyz)
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
    n = pts.shape[0]
    k = max(1, min(int(k), n))
    _, idx = cKDTree(pts).query(pts, k=k)
    idx = np.asarray(idx, dtype=np.int64).reshape(n, k)
    # Coincident points may push a point out of its own list; put it back in the first slot.
    own = np.arange(n)
    missing = ~(idx == own[:, None]).any(1)
    idx[missing, 0] = own[missing]
    return idx


def smooth_features(xyz: Tensor | np.ndarray, features: Tensor, k: int = 10, *, chunk: int = 65536) -> Tensor:
    """Mean of each Gaussian's ``k`` nearest neighbours' features (self included), re-normalised.

    Args:
        xyz: ``[N, 3]`` Gaussian centres.
        features: ``[N, D]`` per-Gaussian features (any float dtype).
        k: neighbourhood size; ``k <= 1`` returns a normalised copy.

    Returns:
        A new ``[N, D]`` tensor (``features`` is not modified) with the dtype and device of
        ``features`` and unit rows (rows whose mean vanishes keep their own normalised feature).
    """
    n = features.shape[0]
    if (xyz.shape[0] if hasattr(xyz, "shape") else len(xyz)) != n:
        raise ValueError(f"xyz has {xyz.shape[0]} points but features has {n} rows")
    f32 = features.detach().to(torch.float32)
    own = f32 / f32.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if k <= 1 or n == 0:
        return own.to(features.dtype)
    idx = torch.from_numpy(knn_indices(xyz, k)).to(features.device)
    out = torch.empty(n, features.shape[1], dtype=features.dtype, device=features.device)
    step = max(1, chunk // max(1, idx.shape[1]))
    for s in range(0, n, step):
        m = f32[idx[s : s + step]].mean(1)
        nrm = m.norm(dim=-1, keepdim=True)
        m = torch.where(nrm > 1e-6, m / nrm.clamp_min(1e-12), own[s : s + step])
        out[s : s + step] = m.to(features.dtype)
    return out
