"""The contrastive instance loss (COS3D, stage 1) and the unit-row maps it is built on.

:func:`make_clusters` groups one sampled pixel set by mask id; :func:`cluster_loss` is the InfoNCE of
each clustered pixel against every cluster prototype with a per-prototype temperature, plus the norm
term on the un-normalised rendered features; :func:`contrastive_loss` does both for one view.
:func:`normalize` / :func:`unit_rows` map rows to unit length (the latter with a cheaper backward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Clusters", "cluster_loss", "contrastive_loss", "make_clusters", "normalize", "unit_rows"]

EPS = 1e-8


def normalize(x: Tensor, dim: int = -1) -> Tensor:
    """``x / |x|`` along ``dim`` (rows of zeros stay zero)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(EPS)


class _UnitRows(torch.autograd.Function):
    """``x / |x|`` over the last axis with a 4-op backward ``(g - u (g·u)) / |x|``."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        n = x.norm(dim=-1, keepdim=True).clamp_min(EPS)
        u = x / n
        ctx.save_for_backward(u, n)
        return u

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        u, n = ctx.saved_tensors
        return (g - u * (g * u).sum(-1, keepdim=True)) / n


def unit_rows(x: Tensor) -> Tensor:
    """Differentiable :func:`normalize` over the last axis (cheaper backward)."""
    return _UnitRows.apply(x) if x.requires_grad else normalize(x)


@dataclass
class Clusters:
    """The clusters of one sampled pixel set (fixed per view chunk and level, so precomputed once)."""

    rows: Tensor
    """[P'] rows (into the sampled pixels) that belong to a kept cluster."""
    cluster: Tensor
    """[P'] cluster index of each of those rows, in 0..K-1."""
    counts: Tensor
    """[K] float pixel count per cluster."""

    @property
    def k(self) -> int:
        return int(self.counts.numel())


def make_clusters(labels: Tensor, min_cluster: int = 20) -> Clusters:
    """Clusters of ``labels`` ``[P]`` (0 = no mask, excluded): ids with more than ``min_cluster`` pixels."""
    valid = torch.nonzero(labels > 0).flatten()
    if valid.numel() == 0:
        e = labels.new_zeros(0, dtype=torch.int64)
        return Clusters(e, e, torch.zeros(0, device=labels.device))
    ids, inverse, counts = torch.unique(labels[valid], return_inverse=True, return_counts=True)
    keep = counts > min_cluster
    remap = torch.full_like(ids, -1)
    remap[keep] = torch.arange(int(keep.sum()), device=ids.device)
    cl = remap[inverse]
    sel = cl >= 0
    return Clusters(valid[sel], cl[sel], counts[keep].to(torch.float32))


def cluster_loss(rendered: Tensor, clusters: Clusters, balance: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """``(nce, norm_term, o)`` for un-normalised rendered features ``[P, D]`` and precomputed clusters.

    ``nce`` is the InfoNCE of each clustered pixel against all prototypes with temperature ``φ``
    (0 when fewer than one cluster); ``norm_term`` is ``mean((|F| - 1)^2)`` over all ``P`` pixels.
    ``balance`` = β weighs each pixel by ``n_j^-β`` (weights normalised to sum 1): β = 0 is the plain
    mean over pixels (COS3D; large masks dominate), β = 1 the mean over masks of each mask's mean.
    """
    norm = rendered.norm(dim=-1)
    norm_term = (norm - 1.0).square().mean() if rendered.shape[0] else rendered.sum() * 0
    if clusters.k == 0:
        return rendered.sum() * 0, norm_term, rendered
    rows = clusters.rows
    all_rows = rows.numel() == rendered.shape[0]
    x = rendered if all_rows else rendered[rows]
    o = x / (norm if all_rows else norm[rows]).clamp_min(EPS)[:, None]
    cl = clusters.cluster
    n = clusters.counts.to(o.dtype)
    mu = o.new_zeros(clusters.k, o.shape[1]).index_add(0, cl, o) / n[:, None]
    with torch.no_grad():
        dist = (o - mu[cl]).norm(dim=-1)
        phi = o.new_zeros(clusters.k).index_add_(0, cl, dist) / (n * torch.log(n + 10.0))
        phi = (10.0 * phi).clamp(0.5, 1.0)
    # [1, K, P] layout: the softmax runs over the short class axis with pixels contiguous (faster on CPU)
    logits = (mu / phi[:, None]) @ o.T
    if not balance:
        return F.cross_entropy(logits[None], cl[None]), norm_term, o
    ce = F.cross_entropy(logits[None], cl[None], reduction="none")[0]
    wk = n.pow(-float(balance))
    wk = wk / (wk * n).sum()
    return (ce * wk[cl]).sum(), norm_term, o


def contrastive_loss(
    rendered: Tensor, labels: Tensor, *, min_cluster: int = 20, norm_weight: float = 100.0, balance: float = 0.0
) -> tuple[Tensor, dict[str, float]]:
    """COS3D's instance loss on one view's sampled pixels.

    Args:
        rendered: ``[P, D]`` un-normalised rendered features ``Σ w_i f_i/|f_i|``.
        labels: ``[P]`` int mask id per pixel, 0 = no mask (excluded from the contrastive term).
        min_cluster: masks with ``<= min_cluster`` sampled pixels are ignored.
        norm_weight: weight of ``mean((|F| - 1)^2)`` over all ``P`` pixels.
        balance: pixel weights ``n_j^-balance`` in the InfoNCE mean (0 = COS3D's plain mean).

    Returns:
        ``(loss, stats)``: InfoNCE of each clustered pixel's normalised feature ``o`` against every
        cluster prototype ``μ_j`` (mean of its pixels' ``o``) with per-prototype temperature
        ``φ_j = clip(10 Σ|o - μ_j| / (n_j log(n_j + 10)), 0.5, 1)`` (detached), plus the norm term.
    """
    if rendered.ndim != 2 or labels.shape != rendered.shape[:1]:
        raise ValueError(f"rendered must be [P, D] and labels [P], got {tuple(rendered.shape)}, {tuple(labels.shape)}")
    cl = make_clusters(labels, min_cluster)
    nce, norm_term, _ = cluster_loss(rendered, cl, balance)
    stats = {"norm": float(norm_term.detach()), "nce": float(nce.detach()), "clusters": float(cl.k)}
    return nce + norm_weight * norm_term, stats
