"""Rendering 3D Gaussians: one function, two backends.

``render(gaussians, cameras, ...)`` rasterizes colour (SH), arbitrary-width per-Gaussian features,
expected depth and alpha in one pass:

- CUDA tensors → gsplat (``backend="gsplat"``),
- anything else → our pure-torch tile rasterizer (``backend="torch"``, :mod:`.torch_raster`).

Both follow the same conventions (EWA projection with the 0.3 low-pass, 16×16 tiles, alpha clamped
at 0.999, skipped below 1/255, stop before T <= 1e-4, near plane 0.01) so they agree to float error.
Cameras use :mod:`cos3d.data.scene`'s OpenCV pixel convention (pixel (0, 0)'s *centre* is at (0, 0)):
both backends are handed ``K`` shifted by +0.5 in cx, cy and sample pixel centres at ``i + 0.5``.

Features render as ``F(u) = Σ_i w_i(u) f_i`` with ``w_i = α_i T_i`` (no normalisation by alpha), so
they are linear in ``f``; for frozen geometry see :func:`compute_contributions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from cos3d.data.gaussians import Gaussians
from cos3d.render import torch_raster
from cos3d.render.cameras import cameras_to_tensors
from cos3d.data.sh import sh_to_rgb
from cos3d.data.scene import Camera

__all__ = [
    "RenderOutput",
    "render",
    "cameras_to_tensors",
    "compute_contributions",
    "Contributions",
]

BACKENDS = ("auto", "torch", "gsplat")


@dataclass
class RenderOutput:
    """What :func:`render` returns. ``C`` cameras of one size ``H × W``."""

    rgb: Tensor | None
    """[C, H, W, 3] colour with the background composited, or None (``render_rgb=False``)."""
    features: Tensor | None
    """[C, H, W, D] ``Σ w_i f_i`` (not normalised), or None when no features were given."""
    depth: Tensor
    """[C, H, W] expected depth ``Σ w_i z_i / alpha`` (camera z, metres; 0 where alpha is 0)."""
    alpha: Tensor
    """[C, H, W] accumulated opacity ``1 - T_final``."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Backend details for densification (gsplat's keys): ``means2d`` [C, N, 2] (retain_grad-able),
    ``radii`` [C, N, 2], ``width``, ``height``, ``n_cameras``, ``gaussian_ids`` (None), ``backend``."""


def _resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"render: unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        if device.type == "cuda" and dtype == torch.float32:
            from cos3d.render.gsplat_backend import gsplat_available

            if gsplat_available():
                return "gsplat"
        return "torch"
    return backend


def _background(background, C: int, device, dtype) -> Tensor | None:
    if background is None:
        return None
    bg = torch.as_tensor(background, dtype=dtype, device=device)
    if bg.shape == (3,):
        bg = bg.expand(C, 3)
    if bg.shape != (C, 3):
        raise ValueError(f"render: background must have shape [3] or [C={C}, 3], got {list(bg.shape)}")
    return bg


def render(
    gaussians: Gaussians,
    cameras: Camera | Sequence[Camera],
    *,
    features: Tensor | None = None,
    render_rgb: bool = True,
    sh_degree: int | None = None,
    background: Tensor | Sequence[float] | None = None,
    backend: str = "auto",
    near_plane: float = torch_raster.NEAR_PLANE,
    far_plane: float = torch_raster.FAR_PLANE,
    eps2d: float = torch_raster.EPS2D,
) -> RenderOutput:
    """Render ``gaussians`` into one or more cameras of one size.

    Args:
        gaussians: the scene (its tensors may require grad: the result is differentiable w.r.t.
            means, quats, log-scales, opacity logits, SH and ``features``).
        cameras: one :class:`~cos3d.data.scene.Camera` or a list sharing (width, height).
        features: [N, D] per-Gaussian values to render (any D, any float dtype; computed in the
            Gaussians' dtype). ``None``: no feature image.
        render_rgb: evaluate and render the SH colours.
        sh_degree: use SH bands up to this degree (default: all the Gaussians have).
        background: [3] or [C, 3] colour composited behind ``rgb`` (features and depth get none).
        backend: ``"auto"`` (gsplat for float32 CUDA tensors, else torch), ``"torch"`` or ``"gsplat"``.

    Returns:
        :class:`RenderOutput`.

    Example:
        >>> out = render(g, scene.frames[0].camera, features=g.features["instance_l"])
        >>> out.rgb.shape, out.features.shape   # [1, H, W, 3], [1, H, W, 16]
    """
    gaussians.validate_shapes()
    means = gaussians.means
    dev, dtype = means.device, means.dtype
    viewmats, Ks, width, height = cameras_to_tensors(cameras, dev, dtype)
    C, N = viewmats.shape[0], gaussians.num
    if features is not None:
        if features.ndim != 2 or features.shape[0] != N:
            raise ValueError(f"render: features must have shape [N={N}, D], got {list(features.shape)}")
        if not features.is_floating_point():
            raise TypeError(f"render: features must be a float tensor, got {features.dtype}")
    if sh_degree is not None and not 0 <= sh_degree <= gaussians.sh_degree:
        raise ValueError(f"render: sh_degree={sh_degree} but the Gaussians have SH degree {gaussians.sh_degree}")
    which = _resolve_backend(backend, dev, dtype)

    opacities = gaussians.opacities
    means_v, quats_v, lsc_v, op_v, sh_v, feat_v = means, gaussians.quats, gaussians.log_scales, opacities, gaussians.sh, features
    idx = None
    if which == "torch":
        # skip Gaussians that cannot reach any image (same result, less work)
        vis = torch_raster.visible_mask(
            means.detach(), gaussians.log_scales.detach(), opacities.detach(), viewmats, Ks, width, height,
            eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
        )  # fmt: skip
        if not bool(vis.all()):
            idx = vis.nonzero().squeeze(1)
            take = lambda t: t.index_select(0, idx)  # noqa: E731
            means_v, quats_v, lsc_v, op_v, sh_v = take(means), take(quats_v), take(lsc_v), take(opacities), take(sh_v)
            feat_v = take(features) if features is not None else None
    n_v = means_v.shape[0]

    blocks: list[Tensor] = []
    if render_rgb:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
        dirs = means_v[None] - campos[:, None]  # [C, N, 3]
        blocks.append(sh_to_rgb(sh_v, dirs, sh_degree))
    n_feat = 0
    if feat_v is not None:
        n_feat = feat_v.shape[1]
        blocks.append(feat_v.to(dtype)[None].expand(C, n_v, n_feat))
    depths = torch.einsum("cj,nj->cn", viewmats[:, 2, :3], means_v) + viewmats[:, 2, 3:4]
    blocks.append(depths[..., None])
    colors = torch.cat(blocks, dim=-1) if len(blocks) > 1 else blocks[0]

    scales_v = torch.exp(lsc_v)
    if which == "gsplat":
        from cos3d.render.gsplat_backend import rasterize_gsplat

        # the torch rasterizer's one departure from gsplat, applied here too: a Gaussian around a camera, seen
        # from the side, is not splatted (torch_raster.around_camera); with several cameras, one culled in any
        # of them is left out of all
        cull = torch_raster.around_camera(means_v, quats_v, scales_v, viewmats, Ks, width, height).any(0)
        if bool(cull.any()):
            op_v = op_v.masked_fill(cull, 0.0)

        img, alpha, gmeta = rasterize_gsplat(
            means_v, quats_v, scales_v, op_v, colors, viewmats, Ks, width, height,
            near_plane=near_plane, far_plane=far_plane, eps2d=eps2d,
        )  # fmt: skip
        meta = {
            "means2d": gmeta["means2d"],
            "radii": gmeta["radii"],
            "gaussian_ids": gmeta.get("gaussian_ids"),
        }
    else:
        proj = torch_raster.project_gaussians(
            means_v, quats_v, scales_v, op_v, viewmats, Ks, width, height,
            eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
        )  # fmt: skip
        radii = proj.radii
        if idx is not None:
            # full-size [C, N, 2] means2d in the graph, so densification sees every Gaussian's gradient
            full = proj.means2d.new_zeros(C, N, 2).index_copy(1, idx, proj.means2d)
            proj.means2d = full.index_select(1, idx)
            radii = radii.new_zeros(C, N, 2).index_copy_(1, idx, radii)
        else:
            full = proj.means2d
        img, alpha, _ = torch_raster.rasterize(proj, op_v, colors, width, height)
        meta = {"means2d": full, "radii": radii, "gaussian_ids": None}
    meta.update(width=width, height=height, n_cameras=C, backend=which)

    rgb = feats = None
    off = 0
    if render_rgb:
        rgb = img[..., 0:3]
        bg = _background(background, C, dev, dtype)
        if bg is not None:
            rgb = rgb + (1.0 - alpha)[..., None] * bg[:, None, None, :]
        off = 3
    if features is not None:
        feats = img[..., off : off + n_feat]
    depth = img[..., -1] / alpha.clamp_min(1e-10)
    return RenderOutput(rgb=rgb, features=feats, depth=depth, alpha=alpha, meta=meta)


from cos3d.render.contributions import Contributions, compute_contributions  # noqa: E402
