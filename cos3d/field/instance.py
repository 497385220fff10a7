"""Stage 1: the instance field — a unit feature per Gaussian, trained contrastively against 2D masks.

Geometry is frozen after stage 0, so a view's blending weights ``w_i(u) = α_i T_i`` never change and
rendering a feature map is a sparse-matrix product ``F = W @ f`` (DESIGN.md §3). :class:`ViewWeights`
holds, per view, ``W`` as CSR (and its transpose, for the backward pass) for the pixels that any
Gaussian covers, split into fixed pixel chunks of at most ``n_samples`` pixels (a "fixed pixel sample
per view"). An iteration picks one view and one of its chunks, renders the chunk with
:func:`sparse_product`, and applies :func:`contrastive_loss` per level.

Levels are trained jointly as one stacked parameter ``[N, L * dim]``: each level's ``dim``-wide slice
is normalised on its own, rendered in the same sparse product and has its own loss, so the levels do
not interact (Adam is element-wise and the losses touch disjoint slices) — one product per step serves
every level. Training is deterministic given ``seed``; a checkpoint (features, Adam state, RNG state,
iteration) is written atomically every ``checkpoint_every`` iterations and a resumed run reproduces an
uninterrupted one exactly.
"""

from __future__ import annotations

import math
import time
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cos3d.atomic import atomic_path
from cos3d.errors import Cos3dError

__all__ = [
    "InstanceConfig",
    "ViewWeights",
    "Clusters",
    "cluster_loss",
    "contrastive_loss",
    "make_clusters",
    "normalize",
    "sparse_product",
    "train_instance_field",
    "load_checkpoint",
]

EPS = 1e-8


@dataclass
class InstanceConfig:
    """Stage-1 hyperparameters (defaults: DESIGN.md, from COS3D's released settings)."""

    dim: int = 16
    """Width of one level's instance feature."""
    iterations: int = 3000
    """Optimisation steps (one view chunk each). COS3D: 30k; its fast setting 3k."""
    lr: float = 2.5e-3
    """Adam learning rate on the features (geometry is frozen)."""
    n_samples: int = 32768
    """Pixels per step: a view's covered pixels are split into fixed chunks of at most this many."""
    min_cluster: int = 20
    """A mask takes part in a step's loss only with more than this many sampled pixels."""
    norm_weight: float = 100.0
    """Weight of ``mean((|F| - 1)^2)`` on the un-normalised rendered features."""
    balance: float = 0.5
    """Pixel weights ``n_j^-balance`` in the InfoNCE mean (n_j = the pixel's mask size): 0 = a plain
    mean over pixels as COS3D (large masks dominate), 1 = every mask weighs the same."""
    init_std: float = 0.01
    """Std of the random initial features. Features are normalised before use, so this sets the
    angular step of an Adam update (~lr/init_std radians): smaller converges in fewer iterations."""
    seed: int = 0
    checkpoint_every: int = 500
    """Write a resumable checkpoint every this many iterations (0: never)."""


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


# --------------------------------------------------------------------------------------------------
# Sparse product with a stored transpose


class _SparseProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, W: Tensor, Wt: Tensor, f: Tensor) -> Tensor:  # type: ignore[override]
        ctx.Wt = Wt
        return W @ f

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return None, None, ctx.Wt @ grad.contiguous()


def sparse_product(W: Tensor, Wt: Tensor, f: Tensor) -> Tensor:
    """``W @ f`` for a sparse CSR ``W`` ``[P, N]`` and dense ``f`` ``[N, D]``, differentiable in ``f``.

    The backward pass multiplies by the stored transpose ``Wt`` ``[N, P]`` instead of transposing
    ``W`` every step (``torch.sparse.mm``'s own backward does, ~19x slower, DESIGN.md §3).
    """
    if not f.requires_grad:
        return W @ f
    return _SparseProduct.apply(W, Wt, f)


def _csr(rows: Tensor, cols: Tensor, vals: Tensor, nrows: int, ncols: int) -> Tensor:
    """A CSR matrix from (row, col, value) triples (unique pairs), int32 indices when they fit.

    On CPU the triples are only grouped by row (a stable sort, skipped when they already are): the
    products do not need sorted columns within a row. Other devices get canonical (row, col) order.
    """
    rows = rows.to(torch.int64)
    if rows.device.type == "cpu":
        if rows.numel() > 1 and not bool((rows[1:] >= rows[:-1]).all()):
            order = torch.argsort(rows, stable=True)
            cols, vals = cols[order], vals[order]
        cols_s, vals_s = cols, vals.to(torch.float32)
    else:
        order = torch.argsort(rows * ncols + cols.to(torch.int64))
        cols_s, vals_s = cols[order], vals[order].to(torch.float32)
    counts = torch.bincount(rows, minlength=nrows)
    crow = torch.zeros(nrows + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.cumsum(counts, 0)
    idt = torch.int32 if vals.numel() < 2**31 - 1 and max(nrows, ncols) < 2**31 - 1 else torch.int64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow.to(idt), cols_s.to(idt), vals_s, (nrows, ncols), check_invariants=False)


# --------------------------------------------------------------------------------------------------
# Cached per-view weights


@dataclass
class _Chunk:
    pixels: Tensor
    """[p] flat pixel indices (y * W + x) of this chunk's rows."""
    cols: Tensor
    """[n] ids of the Gaussians that touch this chunk (the columns of W, in order)."""
    W: Tensor
    """[p, n] CSR blending weights over the chunk's Gaussians ``cols``."""
    Wt: Tensor
    """[n, p] CSR transpose."""
    alpha: Tensor
    """[p] accumulated opacity (row sums of W)."""

    @classmethod
    def build(cls, pixels: Tensor, rows: Tensor, gaussians: Tensor, weights: Tensor, n_gaussians: int) -> "_Chunk":
        p = int(pixels.numel())
        present = torch.zeros(n_gaussians, dtype=torch.bool, device=gaussians.device)
        present[gaussians] = True
        cols = torch.nonzero(present).flatten()
        local = (torch.cumsum(present, 0) - 1)[gaussians]
        n = int(cols.numel())
        W = _csr(rows, local, weights, p, n)
        Wt = _csr(local, rows, weights, n, p)
        alpha = torch.zeros(p, device=weights.device).index_add_(0, rows, weights)
        return cls(pixels, cols, W, Wt, alpha)

    def to(self, device: torch.device | str) -> "_Chunk":
        return _Chunk(self.pixels.to(device), self.cols.to(device), self.W.to(device), self.Wt.to(device),
                      self.alpha.to(device))  # fmt: skip


class ViewWeights:
    """One view's frozen blending weights, in fixed pixel chunks.

    Build with :meth:`from_triples` (or :meth:`from_contributions` from a
    ``cos3d.render.compute_contributions`` result). Only pixels that some Gaussian covers are kept.
    """

    def __init__(self, name: str, height: int, width: int, n_gaussians: int, chunks: list[_Chunk]):
        self.name = name
        self.height = int(height)
        self.width = int(width)
        self.n_gaussians = int(n_gaussians)
        self.chunks = chunks

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_triples(
        cls,
        pixel: Tensor,
        gaussian: Tensor,
        weight: Tensor,
        height: int,
        width: int,
        n_gaussians: int,
        *,
        chunk_size: int = 32768,
        seed: int = 0,
        name: str = "",
        max_pixels: int | None = None,
    ) -> "ViewWeights":
        """Build from (pixel ``[M]``, gaussian ``[M]``, weight ``[M]``) triples, pixel = y * width + x.

        Covered pixels are split into ``ceil(P / chunk_size)`` balanced chunks by a permutation
        seeded with ``seed`` and ``name`` (one chunk, in pixel order, when ``P <= chunk_size``).
        ``max_pixels`` keeps only a seeded random sample of that many covered pixels (bounds memory
        on large scenes; None keeps all).
        """
        if not (pixel.shape == gaussian.shape == weight.shape and pixel.ndim == 1):
            raise ValueError(
                f"triples must be 1-D and equal-length, got {tuple(pixel.shape)}, {tuple(gaussian.shape)}, "
                f"{tuple(weight.shape)}"
            )
        device = weight.device
        pixel = pixel.to(torch.int64)
        gaussian = gaussian.to(torch.int64)
        keep = weight > 0
        if not bool(keep.all()):
            pixel, gaussian, weight = pixel[keep], gaussian[keep], weight[keep]
        hw = int(height) * int(width)
        seen = torch.zeros(hw, dtype=torch.bool, device=device)
        seen[pixel] = True
        covered = torch.nonzero(seen).flatten()
        P = int(covered.numel())
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
        if max_pixels is not None and P > max_pixels:
            covered = torch.sort(covered[torch.randperm(P, generator=g)[: int(max_pixels)].to(device)]).values
            P = int(covered.numel())
            inside = torch.zeros(hw, dtype=torch.bool, device=device)
            inside[covered] = True
            keep = inside[pixel]
            pixel, gaussian, weight = pixel[keep], gaussian[keep], weight[keep]
        n_chunks = max(1, math.ceil(P / max(1, chunk_size)))
        if n_chunks > 1:
            covered = covered[torch.randperm(P, generator=g).to(device)]
        size = math.ceil(P / n_chunks) if P else 0
        chunk_of = torch.full((hw,), -1, dtype=torch.int64, device=device)
        row_of = torch.full((hw,), -1, dtype=torch.int64, device=device)
        pos = torch.arange(P, device=device)
        if P:
            chunk_of[covered] = pos // size
            row_of[covered] = pos % size
        weight = weight.to(torch.float32)
        if n_chunks == 1:
            return cls(
                name, height, width, n_gaussians, [_Chunk.build(covered, row_of[pixel], gaussian, weight, n_gaussians)]
            )
        cid = chunk_of[pixel]
        order = torch.argsort(cid, stable=True)
        counts = torch.bincount(cid, minlength=n_chunks).tolist()
        chunks: list[_Chunk] = []
        start = 0
        for c in range(n_chunks):
            sel = order[start : start + counts[c]]
            start += counts[c]
            pix = covered[c * size : (c + 1) * size]
            chunks.append(_Chunk.build(pix, row_of[pixel[sel]], gaussian[sel], weight[sel], n_gaussians))
        return cls(name, height, width, n_gaussians, chunks)

    @classmethod
    def from_contributions(
        cls,
        contrib: Any,
        n_gaussians: int | None = None,
        *,
        chunk_size: int = 32768,
        seed: int = 0,
        name: str = "",
        max_pixels: int | None = None,
    ) -> "ViewWeights":
        """From a ``cos3d.render.Contributions`` (``pixel``, ``gaussian``, ``weight``, ``height``, ``width``)."""
        n = int(n_gaussians if n_gaussians is not None else contrib.num_gaussians)
        return cls.from_triples(
            contrib.pixel,
            contrib.gaussian,
            contrib.weight,
            contrib.height,
            contrib.width,
            n,
            chunk_size=chunk_size,
            seed=seed,
            name=name,
            max_pixels=max_pixels,
        )

    # ---- use -----------------------------------------------------------------------------------
    @property
    def nnz(self) -> int:
        return sum(int(c.W.values().numel()) for c in self.chunks)

    @property
    def nbytes(self) -> int:
        """Memory held by ``W`` and ``Wt`` (indices + values)."""
        total = 0
        for c in self.chunks:
            for m in (c.W, c.Wt):
                total += sum(t.numel() * t.element_size() for t in (m.crow_indices(), m.col_indices(), m.values()))
        return total

    def to(self, device: torch.device | str) -> "ViewWeights":
        chunks = [c.to(device) for c in self.chunks]
        return ViewWeights(self.name, self.height, self.width, self.n_gaussians, chunks)

    def render_chunk(self, i: int, features: Tensor, *, local: bool = False) -> Tensor:
        """Rendered features ``[p, D]`` of chunk ``i`` (pixels ``self.chunks[i].pixels``); differentiable.

        ``features`` is ``[N, D]`` (all Gaussians), or with ``local=True`` ``[n, D]``: the rows of the
        chunk's Gaussians ``self.chunks[i].cols`` only (what training uses: it normalises and
        back-propagates through the visible Gaussians alone).
        """
        c = self.chunks[i]
        return sparse_product(c.W, c.Wt, features if local else features[c.cols])

    def render(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Full-view render of ``features`` ``[N, D]``: ``(F [H*W, D], alpha [H*W])``, zeros where uncovered."""
        if features.shape[0] != self.n_gaussians:
            raise ValueError(f"features must be [{self.n_gaussians}, D], got {tuple(features.shape)}")
        hw = self.height * self.width
        out = features.new_zeros(hw, features.shape[1])
        alpha = features.new_zeros(hw)
        rendered = [self.render_chunk(i, features) for i in range(len(self.chunks))]
        out = out.index_put((torch.cat([c.pixels for c in self.chunks]),), torch.cat(rendered))
        for c in self.chunks:
            alpha[c.pixels] = c.alpha.to(alpha.dtype)
        return out, alpha

    # ---- disk cache ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "name": self.name,
            "height": self.height,
            "width": self.width,
            "n_gaussians": self.n_gaussians,
            "chunks": [
                {
                    "pixels": c.pixels.cpu(),
                    "cols": c.cols.cpu(),
                    "crow": c.W.crow_indices().cpu(),
                    "col": c.W.col_indices().cpu(),
                    "val": c.W.values().cpu(),
                }
                for c in self.chunks
            ],
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], device: torch.device | str = "cpu") -> "ViewWeights":
        chunks = []
        n = int(state["n_gaussians"])
        for c in state["chunks"]:
            crow, col, val = c["crow"].to(device), c["col"].to(device), c["val"].to(device)
            p = int(crow.numel() - 1)
            rows = torch.repeat_interleave(torch.arange(p, device=device), (crow[1:] - crow[:-1]).to(torch.int64))
            gaussians = c["cols"].to(device)[col.to(torch.int64)]
            chunks.append(_Chunk.build(c["pixels"].to(device), rows, gaussians, val, n))
        return cls(str(state["name"]), int(state["height"]), int(state["width"]), n, chunks)


# --------------------------------------------------------------------------------------------------
# Loss


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


# --------------------------------------------------------------------------------------------------
# Training


def _fingerprint(n_gaussians: int, levels: Sequence[str], cfg: InstanceConfig, views: Sequence[ViewWeights]) -> dict:
    return {
        "n_gaussians": int(n_gaussians),
        "levels": list(levels),
        "dim": cfg.dim,
        "seed": cfg.seed,
        "lr": cfg.lr,
        "n_samples": cfg.n_samples,
        "min_cluster": cfg.min_cluster,
        "norm_weight": cfg.norm_weight,
        "balance": cfg.balance,
        "init_std": cfg.init_std,
        "views": [v.name for v in views],
        "chunks": [len(v.chunks) for v in views],
    }


def load_checkpoint(path: str | Path) -> dict:
    """Read a stage-1 checkpoint; a corrupt one raises :class:`Cos3dError` naming the file."""
    path = Path(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ck, dict) or ck.get("format") != "cos3d-instance-checkpoint":
            raise ValueError("not a cos3d stage-1 checkpoint")
    except Exception as e:
        raise Cos3dError(
            f"{path}: corrupt stage-1 checkpoint ({type(e).__name__}: {str(e)[:120]}); "
            "delete it and re-run with --resume"
        ) from None
    return ck


def train_instance_field(
    views: Sequence[ViewWeights],
    labels: Sequence[Mapping[str, Tensor]],
    levels: Sequence[str],
    cfg: InstanceConfig | None = None,
    *,
    checkpoint: str | Path | None = None,
    hook: Callable[[int], None] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Train one instance field per level on cached view weights.

    Args:
        views: per-view :class:`ViewWeights` (all on the training device, same ``n_gaussians``).
        labels: per view, ``{level: LongTensor [H*W]}`` flattened mask-id maps (0 = no mask), on
            the views' device.
        levels: the level names to train (keys of each ``labels`` entry).
        cfg: hyperparameters; ``cfg.iterations`` steps in all.
        checkpoint: where to keep the resumable checkpoint. If it exists and matches this problem
            (same Gaussians count, levels, views and hyperparameters but ``iterations``), training
            continues from it; otherwise it starts over.
        hook: called as ``hook(i)`` after step ``i`` (0-based) is done and checkpointed — tests use
            it to simulate a kill.
        progress: show a tqdm bar.

    Returns:
        ``({level: unit features [N, dim] float32 on CPU}, stats)``.
    """
    cfg = cfg or InstanceConfig()
    if not views:
        raise Cos3dError("stage 1 needs at least one training view with visible Gaussians")
    if len(labels) != len(views):
        raise ValueError(f"got {len(views)} views but {len(labels)} label sets")
    N = views[0].n_gaussians
    L = len(levels)
    D = cfg.dim
    device = views[0].chunks[0].W.device
    fp = _fingerprint(N, levels, cfg, views)

    gen = torch.Generator().manual_seed(int(cfg.seed))
    init = torch.randn(N, L * D, generator=gen) * cfg.init_std
    params = torch.nn.Parameter(init.to(device))
    try:  # the fused kernel is ~10x faster on CPU and also deterministic
        opt = torch.optim.Adam([params], lr=cfg.lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.Adam([params], lr=cfg.lr)
    start = 0
    ckpath = Path(checkpoint) if checkpoint is not None else None
    if ckpath is not None and ckpath.exists():
        ck = load_checkpoint(ckpath)
        if ck.get("fingerprint") == fp:
            with torch.no_grad():
                params.copy_(ck["features"].to(device))
            opt.load_state_dict(ck["optimizer"])
            gen.set_state(ck["rng"])
            start = int(ck["iteration"])
            if log:
                log(f"stage 1: resuming from {ckpath} at iteration {start}")
        elif log:
            log(f"stage 1: {ckpath} belongs to other settings; starting over")

    def save(it: int) -> None:
        if ckpath is None:
            return
        state = {
            "format": "cos3d-instance-checkpoint",
            "iteration": it,
            "fingerprint": fp,
            "features": params.detach().cpu(),
            "optimizer": opt.state_dict(),
            "rng": gen.get_state(),
            "config": asdict(cfg),
        }
        with atomic_path(ckpath) as tmp:
            torch.save(state, tmp)

    n_views = len(views)
    # Chunks are fixed, so each (view, chunk, level) has fixed clusters: compute them once.
    clusters = [
        [[make_clusters(labels[v][lev][c.pixels], cfg.min_cluster) for lev in levels] for c in view.chunks]
        for v, view in enumerate(views)
    ]
    last: dict[str, float] = {}
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.iterations,
            initial=min(start, cfg.iterations),
            desc="stage 1 instance",
            unit="it",
            dynamic_ncols=True,
            leave=False,
        )
    for it in range(start, cfg.iterations):
        v = int(torch.randint(n_views, (1,), generator=gen))
        view = views[v]
        c = int(torch.randint(len(view.chunks), (1,), generator=gen)) if len(view.chunks) > 1 else 0
        cols = view.chunks[c].cols
        unit = unit_rows(params[cols].view(-1, L, D)).view(-1, L * D)
        rendered = view.render_chunk(c, unit, local=True)
        loss = rendered.new_zeros(())
        for li, lev in enumerate(levels):
            nce, norm_term, _ = cluster_loss(rendered[:, li * D : (li + 1) * D], clusters[v][c][li], cfg.balance)
            loss = loss + nce + cfg.norm_weight * norm_term
            if it % 50 == 0 or it == cfg.iterations - 1:
                last[f"nce_{lev}"] = float(nce.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 50 == 0 or it == cfg.iterations - 1:
            last["loss"] = float(loss.detach())
        if cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0 and it + 1 < cfg.iterations:
            save(it + 1)
        if bar is not None:
            bar.update(1)
            if it % 50 == 0:
                bar.set_postfix(loss=f"{last['loss']:.3f}")
        if hook is not None:
            hook(it)
    if bar is not None:
        bar.close()
    with torch.no_grad():
        unit = normalize(params.detach().view(N, L, D)).cpu()
    out = {lev: unit[:, i].contiguous() for i, lev in enumerate(levels)}
    stats = {"iterations": cfg.iterations, "resumed_from": start, "time_s": time.perf_counter() - t0, **last}
    return out, stats
