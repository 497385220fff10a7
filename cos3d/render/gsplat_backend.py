"""gsplat backend: CUDA tensors go through ``gsplat.rasterization``.

Colours arrive already evaluated (SH → RGB happens in :mod:`cos3d.render` for both backends) and
concatenated with the feature channels and the depth channel, so one gsplat call renders all of
them; gsplat slices channels wider than ``channel_chunk`` (32) itself.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cos3d.core.errors import Cos3dError


def gsplat_available() -> bool:
    try:
        import gsplat  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def rasterize_gsplat(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near_plane: float,
    far_plane: float,
    eps2d: float,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render ``colors`` [C, N, D] with gsplat; returns (render [C,H,W,D], alpha [C,H,W], meta).

    ``Ks`` use the corner pixel convention (gsplat samples pixel centres at ``i + 0.5``).
    """
    if means.device.type != "cuda":
        raise ValueError(f"backend='gsplat' needs CUDA tensors, got Gaussians on {means.device}; use backend='torch'")
    try:
        from gsplat import rasterization
    except Exception as e:  # pragma: no cover - depends on the install
        raise Cos3dError(f"backend='gsplat' is unavailable ({e}); use backend='torch'") from None
    render, alpha, meta = rasterization(
        means=means.contiguous(),
        quats=quats.contiguous(),
        scales=scales.contiguous(),
        opacities=opacities.contiguous(),
        colors=colors.contiguous(),
        viewmats=viewmats.contiguous(),
        Ks=Ks.contiguous(),
        width=width,
        height=height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
        sh_degree=None,
        packed=False,
        render_mode="RGB",
        rasterize_mode="classic",
    )
    return render, alpha[..., 0], meta
