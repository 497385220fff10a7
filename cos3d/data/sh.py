"""Real spherical harmonics up to degree 3, in the basis order and sign convention every 3DGS
exporter uses (graphdeco, gsplat, nerfstudio), so coefficients read from a ``.ply`` render the same.

Colour of a Gaussian seen along the unit direction ``d`` (camera centre → Gaussian mean):
``rgb = max(0, 0.5 + sum_k Y_k(d) * sh[k])``.
"""

from __future__ import annotations

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814  # 1 / (2 sqrt(pi))
_C1 = 0.4886025119029199  # sqrt(3) / (2 sqrt(pi))
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """DC coefficient [..., 3] that renders as ``rgb`` [..., 3]."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    return sh0 * SH_C0 + 0.5


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """Basis values ``[..., (degree+1)^2]`` at unit directions ``dirs`` [..., 3]."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            _C2[0] * x * y,
            _C2[1] * y * z,
            _C2[2] * (2.0 * zz - xx - yy),
            _C2[3] * x * z,
            _C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            _C3[0] * y * (3.0 * xx - yy),
            _C3[1] * x * y * z,
            _C3[2] * y * (4.0 * zz - xx - yy),
            _C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            _C3[4] * x * (4.0 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(sh: Tensor, dirs: Tensor, degree: int | None = None) -> Tensor:
    """Evaluate SH colours (before the +0.5 offset and clamp).

    Args:
        sh: [N, K, 3] coefficients.
        dirs: [..., N, 3] viewing directions (need not be unit length).
        degree: use only the first (degree+1)^2 coefficients (default: all of ``sh``).

    Returns:
        [..., N, 3]
    """
    k_all = sh.shape[-2]
    if degree is None:
        degree = int(round(k_all**0.5)) - 1
    k = (degree + 1) ** 2
    if k > k_all:
        raise ValueError(f"SH degree {degree} needs {k} coefficients, the Gaussians have {k_all}")
    if degree == 0:
        return (SH_C0 * sh[:, 0]).expand(dirs.shape)
    d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(d, degree)  # [..., N, k]
    return (basis.unsqueeze(-1) * sh[:, :k]).sum(dim=-2)


def sh_to_rgb(sh: Tensor, dirs: Tensor, degree: int | None = None) -> Tensor:
    """``max(0, 0.5 + eval_sh(...))``: the colour convention of 3DGS and gsplat. [..., N, 3]."""
    return torch.clamp_min(eval_sh(sh, dirs, degree) + 0.5, 0.0)
