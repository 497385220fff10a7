"""Frozen-geometry blending weights: render features as a sparse matrix product.

With means, scales, rotations and opacities fixed, a view's blending weights ``w_i(u) = α_i T_i``
never change, so rendering features is ``F = W f`` with a sparse ``W`` [H*W, N] (docs/architecture.md).
:func:`compute_contributions` records W once per view; :meth:`Contributions.render` is the product
(:func:`cos3d.render.sparse.sparse_product`, whose backward reuses the stored ``Wᵀ``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from cos3d.data.gaussians import Gaussians
from cos3d.render import torch_raster
from cos3d.render.cameras import cameras_to_tensors
from cos3d.render.sparse import csr_from_triples, sparse_product
from cos3d.data.scene import Camera


@dataclass
class Contributions:
    """The (pixel, Gaussian, weight) triples of one view, sorted by pixel then by weight (largest first)."""

    pixel: Tensor
    """[M] int64 flat pixel index ``y * width + x``."""
    gaussian: Tensor
    """[M] int64 Gaussian index."""
    weight: Tensor
    """[M] float blending weight ``α_i T_i`` at that pixel."""
    height: int
    width: int
    num_gaussians: int | None = None
    """N, the number of Gaussians of the scene the view was computed for (columns of W); None:
    ``gaussian.max() + 1``. :func:`compute_contributions` always sets it."""
    _W: Tensor | None = field(default=None, repr=False)
    _Wt: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.num_gaussians is None:
            self.num_gaussians = int(self.gaussian.max()) + 1 if self.gaussian.numel() else 0

    @property
    def nnz(self) -> int:
        return int(self.pixel.numel())

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def matrix(self) -> Tensor:
        """W as a sparse CSR tensor [H*W, N] (built once, cached)."""
        if self._W is None:
            self._W = csr_from_triples(self.pixel, self.gaussian, self.weight, self.height * self.width, self.num_gaussians)
        return self._W

    def matrix_t(self) -> Tensor:
        """Wᵀ as a sparse CSR tensor [N, H*W] (built once, cached; used by the backward pass)."""
        if self._Wt is None:
            self._Wt = csr_from_triples(self.gaussian, self.pixel, self.weight, self.num_gaussians, self.height * self.width)
        return self._Wt

    def render(self, features: Tensor) -> Tensor:
        """``W @ features``: [N, D] → [H*W, D], differentiable w.r.t. ``features`` (the backward
        pass builds and reuses ``Wᵀ``). ``features`` is cast to the weights' dtype and device (fp16
        features render in fp32)."""
        if features.ndim != 2 or features.shape[0] != self.num_gaussians:
            raise ValueError(
                f"Contributions.render: features must have shape [N={self.num_gaussians}, D], got {list(features.shape)}"
            )
        f = features.to(device=self.device, dtype=self.weight.dtype).contiguous()
        return sparse_product(self.matrix(), self.matrix_t, f)

    def alpha(self) -> Tensor:
        """[H*W] the sum of the recorded weights per pixel (≈ rendered alpha)."""
        out = self.weight.new_zeros(self.height * self.width)
        return out.index_add_(0, self.pixel, self.weight)

    def to(self, device: torch.device | str) -> "Contributions":
        return Contributions(
            self.pixel.to(device), self.gaussian.to(device), self.weight.to(device), self.height, self.width, self.num_gaussians
        )

    def nbytes(self) -> int:
        """Memory of the triples (the CSR matrices, once built, take about as much again each)."""
        return sum(t.numel() * t.element_size() for t in (self.pixel, self.gaussian, self.weight))


def compute_contributions(
    gaussians: Gaussians,
    camera: Camera,
    *,
    max_per_pixel: int | None = None,
    min_weight: float = 1e-4,
) -> Contributions:
    """Record the blending weights of ``gaussians`` in ``camera`` (any device; no gradients).

    Args:
        max_per_pixel: keep only the largest this-many weights per pixel (None: all).
        min_weight: drop weights at or below this value.

    The triples reproduce ``render(gaussians, camera, features=f).features`` as
    ``contributions.render(f)`` up to the dropped weights (at most ``min_weight`` each).
    """

    if not isinstance(camera, Camera):
        raise TypeError(f"compute_contributions: camera must be a cos3d.data.scene.Camera, got {type(camera).__name__}")
    if max_per_pixel is not None and max_per_pixel < 1:
        raise ValueError(f"compute_contributions: max_per_pixel must be >= 1 or None, got {max_per_pixel}")
    gaussians.validate_shapes()
    g = gaussians.detach()
    viewmats, Ks, width, height = cameras_to_tensors(camera, g.device, g.dtype)
    with torch.no_grad():
        op = g.opacities
        proj = torch_raster.project_gaussians(g.means, g.quats, g.scales, op, viewmats, Ks, width, height)
        pixel, gauss, weight = torch_raster.contributions_from_projection(proj, op, width, height, min_weight=min_weight)
        # sort by pixel, then weight descending: one int64 key (float32 bit patterns of positive
        # numbers order like the numbers)
        wbits = weight.to(torch.float32).view(torch.int32).to(torch.int64)
        order = torch.argsort(pixel * (1 << 31) + (0x7FFFFFFF - wbits))
        pixel, gauss, weight = pixel.index_select(0, order), gauss.index_select(0, order), weight.index_select(0, order)
        if max_per_pixel is not None and pixel.numel():
            counts = torch.bincount(pixel, minlength=height * width)
            start = torch.cumsum(counts, 0) - counts
            rank = torch.arange(pixel.numel(), device=pixel.device) - start.index_select(0, pixel)
            keep = (rank < max_per_pixel).nonzero().squeeze(1)
            pixel, gauss, weight = pixel.index_select(0, keep), gauss.index_select(0, keep), weight.index_select(0, keep)
    return Contributions(pixel, gauss, weight, height, width, g.num)
