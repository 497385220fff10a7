"""Stage 2: Ins2Lang — map each Gaussian's instance feature to a language feature.

For every training view and every mask of a level, the **anchor** ``a`` is the mean of the
normalised rendered instance features over the mask's pixels, re-normalised to unit length, and the
**target** ``c`` is the mask's embedding. Distances in instance space are ``d = 1 − cos`` throughout:
the anchors' neighbourhoods here, the compactness ``d̄`` (median over all masked pixels of
``1 − cos(o, a_mask)``) and the query's region-growing thresholds ``cos > 1 − k·d̄`` all use it.

:func:`kernel_regression` (default, training-free): for a Gaussian's unit feature ``f``,
``d_j = 1 − f·a_j`` over its 25 nearest anchors, weights ``softmax(−d²/(2σ²))`` with σ = 0.1 (a
softmax so that far-from-everything features do not underflow to 0/0), ``L = normalise(Σ w_j c_j)``.
:func:`fit_mlp` (option): 16→32→64→128→256→256→D with ReLU and an L2-normalised output, trained on
(pixel feature, mask embedding) samples with MSE + (1 − cos).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cos3d.field.smoothing import smooth_features

__all__ = [
    "Anchors",
    "Ins2LangConfig",
    "InsToLangMLP",
    "collect_anchors",
    "fit_mlp",
    "kernel_regression",
    "map_to_language",
    "view_anchors",
]


@dataclass
class Ins2LangConfig:
    """Stage-2 settings."""

    method: Literal["kernel", "mlp"] = "kernel"
    """``kernel`` (kernel regression over anchors, default) or ``mlp``."""
    k: int = 25
    """Nearest anchors per Gaussian (kernel regression)."""
    sigma: float = 0.1
    """Kernel width in ``1 − cos`` units."""
    min_pixels: int = 20
    """Masks with fewer confidently rendered pixels give no anchor."""
    min_alpha: float = 0.5
    """Pixels whose accumulated opacity is below this are not used for anchors or ``d̄``."""
    smooth_k: int = 10
    """3D smoothing neighbourhood (self included); 0 or 1 disables."""
    chunk: int = 8192
    """Gaussians per batch in kernel regression / MLP inference."""
    mlp_iterations: int = 2000
    """MLP option: Adam steps."""
    mlp_lr: float = 1e-3
    """MLP option: learning rate."""
    mlp_batch: int = 4096
    """MLP option: (pixel feature, mask embedding) pairs per step."""
    mlp_samples_per_view: int = 20000
    """MLP option: pixel features sampled per training view as training pairs."""
    seed: int = 0
    """Seed of the samplers and the MLP's initialisation."""


@dataclass
class Anchors:
    """All (anchor, target) pairs of one level."""

    anchors: Tensor
    """[J, d] unit instance-space anchors."""
    targets: Tensor
    """[J, D] unit mask embeddings (float32)."""
    dbar: float
    """Median ``1 − cos`` of masked pixel features to their mask's anchor."""
    view: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    """[J] index of the view each anchor came from."""
    mask: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    """[J] mask index (0-based, into the view's MaskSet) of each anchor."""
    sample_x: Tensor | None = None
    """[S, d] pixel features sampled for the MLP option (None unless requested)."""
    sample_y: Tensor | None = None
    """[S] anchor index of each sample (its target is ``targets[sample_y]``)."""

    def __len__(self) -> int:
        return int(self.anchors.shape[0])


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def view_anchors(
    features: Tensor,
    labels: Tensor,
    embeddings: Tensor,
    *,
    alpha: Tensor | None = None,
    min_pixels: int = 20,
    min_alpha: float = 0.5,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Anchors of one view.

    Args:
        features: ``[P, d]`` rendered instance features (normalised here).
        labels: ``[P]`` mask id per pixel, ``k + 1`` = mask ``k``, 0 = none.
        embeddings: ``[M, D]`` the view's mask embeddings.
        alpha: ``[P]`` accumulated opacity; pixels below ``min_alpha`` are ignored (None: use all).

    Returns:
        ``(anchors [j, d], targets [j, D], mask_index [j], pixel_dist [n], pixel_anchor [n])``:
        one anchor per mask with ``>= min_pixels`` usable pixels, and for each usable pixel of those
        masks its ``1 − cos`` distance to its own anchor and its anchor's row.
    """
    o = _unit(features.to(torch.float32))
    lab = labels.to(torch.int64)
    ok = lab > 0
    if alpha is not None:
        ok &= alpha >= min_alpha
    ok &= o.norm(dim=-1) > 0.5
    M = int(embeddings.shape[0])
    lab_ok = lab[ok] - 1
    if M == 0 or lab_ok.numel() == 0:
        d = features.shape[1]
        e = torch.zeros(0, dtype=torch.int64)
        return (
            features.new_zeros(0, d),
            embeddings.new_zeros(0, embeddings.shape[1]).float(),
            e,
            features.new_zeros(0),
            e,
        )
    if int(lab_ok.max()) >= M:
        raise ValueError(f"label map refers to mask {int(lab_ok.max())} but only {M} embeddings were given")
    o_ok = o[ok]
    counts = torch.bincount(lab_ok, minlength=M)
    sums = o.new_zeros(M, o.shape[1]).index_add_(0, lab_ok, o_ok)
    good = counts >= min_pixels
    remap = torch.full((M,), -1, dtype=torch.int64)
    remap[good] = torch.arange(int(good.sum()))
    anchors = _unit(sums[good])
    targets = _unit(embeddings[good].to(torch.float32))
    row = remap[lab_ok]
    keep = row >= 0
    row = row[keep]
    dist = 1.0 - (o_ok[keep] * anchors[row]).sum(-1)
    return anchors, targets, torch.nonzero(good).flatten(), dist, row


def collect_anchors(
    per_view: Iterable[tuple[Tensor, Tensor, Tensor, Tensor | None]],
    *,
    min_pixels: int = 20,
    min_alpha: float = 0.5,
    samples_per_view: int = 0,
    seed: int = 0,
    max_dists: int = 4_000_000,
    max_dists_per_view: int = 200_000,
) -> Anchors:
    """Gather the anchors of every view.

    ``per_view`` yields ``(features [P, d], labels [P], embeddings [M, D], alpha [P] | None)``.
    ``samples_per_view > 0`` also keeps up to that many (pixel feature, anchor) samples per view for
    the MLP option. ``d̄`` is the exact median when every view has at most ``max_dists_per_view``
    usable pixels and at most ``max_dists`` were seen in all, else the median of seeded subsamples.
    """
    gen = torch.Generator().manual_seed(int(seed))
    A, C, V, K, dists, sx, sy = [], [], [], [], [], [], []
    offset = 0
    d_feat = None
    d_emb = None
    for vi, (feat, lab, emb, alpha) in enumerate(per_view):
        d_feat, d_emb = feat.shape[1], emb.shape[1]
        a, c, k, dist, row = view_anchors(feat, lab, emb, alpha=alpha, min_pixels=min_pixels, min_alpha=min_alpha)
        if a.shape[0] == 0:
            continue
        A.append(a)
        C.append(c)
        K.append(k)
        V.append(torch.full((a.shape[0],), vi, dtype=torch.int64))
        if dist.numel() > max_dists_per_view:  # bounds memory on large scenes
            dist = dist[torch.randperm(dist.numel(), generator=gen)[:max_dists_per_view]]
        dists.append(dist)
        if samples_per_view > 0:
            o = _unit(feat.to(torch.float32))
            ok = lab.to(torch.int64) > 0
            if alpha is not None:
                ok &= alpha >= min_alpha
            ok &= o.norm(dim=-1) > 0.5
            o_ok = o[ok]
            # Same pixel order as view_anchors' rows.
            remap = torch.full((emb.shape[0],), -1, dtype=torch.int64)
            remap[k] = torch.arange(k.numel())
            r = remap[lab.to(torch.int64)[ok] - 1]
            o_ok, r = o_ok[r >= 0], r[r >= 0]
            if r.numel() > samples_per_view:
                pick = torch.randperm(r.numel(), generator=gen)[:samples_per_view]
                o_ok, r = o_ok[pick], r[pick]
            sx.append(o_ok)
            sy.append(r + offset)
        offset += a.shape[0]
    if not A:
        return Anchors(torch.zeros(0, d_feat or 0), torch.zeros(0, d_emb or 0), float("nan"))
    alld = torch.cat(dists)
    if alld.numel() > max_dists:
        alld = alld[torch.randperm(alld.numel(), generator=gen)[:max_dists]]
    dbar = float(alld.median()) if alld.numel() else float("nan")
    return Anchors(
        torch.cat(A),
        torch.cat(C),
        dbar,
        torch.cat(V),
        torch.cat(K),
        torch.cat(sx) if sx else None,
        torch.cat(sy) if sy else None,
    )


def kernel_regression(
    features: Tensor, anchors: Tensor, targets: Tensor, *, k: int = 25, sigma: float = 0.1, chunk: int = 8192
) -> Tensor:
    """Language features by kernel regression over the ``k`` nearest anchors in ``1 − cos``.

    Args:
        features: ``[N, d]`` per-Gaussian instance features (normalised here).
        anchors: ``[J, d]`` unit anchors.
        targets: ``[J, D]`` their embeddings.

    Returns:
        ``[N, D]`` float32 unit rows. Weights are ``softmax(−d²/(2σ²))`` over the kept anchors, so a
        Gaussian far from every anchor (``d ≈ 2``) still gets a finite, normalised answer; when the
        weighted sum cancels to ~0 the nearest anchor's target is used.
    """
    if anchors.ndim != 2 or targets.ndim != 2 or anchors.shape[0] != targets.shape[0]:
        raise ValueError(
            f"anchors [J, d] and targets [J, D] must match, got {tuple(anchors.shape)}, {tuple(targets.shape)}"
        )
    if features.shape[-1] != anchors.shape[1]:
        raise ValueError(f"features are {features.shape[-1]}-d but anchors are {anchors.shape[1]}-d")
    N, J = features.shape[0], anchors.shape[0]
    D = targets.shape[1]
    device = features.device
    if J == 0:
        raise ValueError("kernel regression needs at least one anchor")
    a = _unit(anchors.to(device, torch.float32))
    c = targets.to(device, torch.float32)
    kk = min(int(k), J)
    out = torch.empty(N, D, dtype=torch.float32, device=device)
    # Bound the [chunk, J] distance block to ~64 Mi floats.
    step = max(1, min(int(chunk), (1 << 26) // max(1, J)))
    inv = 1.0 / (2.0 * sigma * sigma)
    for s in range(0, N, step):
        f = _unit(features[s : s + step].to(torch.float32))
        d = 1.0 - f @ a.T  # [n, J]
        dk, ik = torch.topk(d, kk, dim=1, largest=False)
        w = torch.softmax(-(dk * dk) * inv, dim=1)  # [n, kk]
        L = torch.einsum("nk,nkd->nd", w, c[ik])
        nrm = L.norm(dim=-1, keepdim=True)
        fallback = c[ik[:, 0]]
        L = torch.where(nrm > 1e-6, L / nrm.clamp_min(1e-12), _unit(fallback))
        out[s : s + step] = L
    return out


class InsToLangMLP(nn.Module):
    """16→32→64→128→256→256→D with ReLU; the output is L2-normalised."""

    def __init__(self, in_dim: int = 16, out_dim: int = 384):
        super().__init__()
        widths = [in_dim, 32, 64, 128, 256, 256]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.net(x), dim=-1)


def fit_mlp(
    x: Tensor,
    y: Tensor,
    *,
    iterations: int = 2000,
    lr: float = 1e-3,
    batch: int = 4096,
    seed: int = 0,
    progress: bool = False,
) -> InsToLangMLP:
    """Fit :class:`InsToLangMLP` on samples ``x`` ``[S, d]`` → ``y`` ``[S, D]`` (unit), MSE + (1 − cos)."""
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"need matching, non-empty samples, got {tuple(x.shape)} and {tuple(y.shape)}")
    torch.manual_seed(int(seed))
    gen = torch.Generator().manual_seed(int(seed))
    model = InsToLangMLP(x.shape[1], y.shape[1]).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    y = _unit(y.to(torch.float32))
    it = range(iterations)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="stage 2 mlp", leave=False, dynamic_ncols=True)
    for _ in it:
        idx = torch.randint(x.shape[0], (min(batch, x.shape[0]),), generator=gen).to(x.device)
        pred = model(x[idx])
        t = y[idx]
        loss = F.mse_loss(pred, t) + (1.0 - (pred * t).sum(-1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def map_to_language(
    instance: Tensor,
    anchors: Anchors,
    cfg: Ins2LangConfig | None = None,
    *,
    xyz: Tensor | None = None,
    progress: bool = False,
) -> Tensor:
    """Language features ``[N, D]`` fp16 (unit rows) for unit instance features ``[N, d]``.

    Uses ``cfg.method`` (kernel regression or the MLP), then, when ``xyz`` is given and
    ``cfg.smooth_k > 1``, :func:`cos3d.field.smoothing.smooth_features`.
    """
    cfg = cfg or Ins2LangConfig()
    if len(anchors) == 0:
        raise ValueError("no anchors: no mask had enough rendered pixels")
    if cfg.method == "kernel":
        L = kernel_regression(instance, anchors.anchors, anchors.targets, k=cfg.k, sigma=cfg.sigma, chunk=cfg.chunk)
    elif cfg.method == "mlp":
        if anchors.sample_x is not None and anchors.sample_y is not None and anchors.sample_x.shape[0] > 0:
            x, y = anchors.sample_x, anchors.targets[anchors.sample_y]
        else:
            x, y = anchors.anchors, anchors.targets
        model = fit_mlp(
            x.to(instance.device),
            y.to(instance.device),
            iterations=cfg.mlp_iterations,
            lr=cfg.mlp_lr,
            batch=cfg.mlp_batch,
            seed=cfg.seed,
            progress=progress,
        )
        with torch.no_grad():
            L = torch.cat(
                [model(_unit(instance[s : s + cfg.chunk].float())) for s in range(0, instance.shape[0], cfg.chunk)]
            )
    else:
        raise ValueError(f"unknown Ins2Lang method {cfg.method!r}; choose kernel or mlp")
    if xyz is not None and cfg.smooth_k > 1:
        L = smooth_features(xyz, L, cfg.smooth_k)
    return _unit(L.float()).to(torch.float16)
