"""Stage 1: the instance field — a unit feature per Gaussian, trained contrastively against 2D masks.

An iteration picks one view and one of its fixed pixel chunks (:class:`~cos3d.field.view_weights.ViewWeights`),
renders the chunk with a sparse product and applies :func:`~cos3d.field.contrastive.cluster_loss` per
level.

Levels are trained jointly as one stacked parameter ``[N, L * dim]``: each level's ``dim``-wide slice
is normalised on its own, rendered in the same sparse product and has its own loss, so the levels do
not interact (Adam is element-wise and the losses touch disjoint slices) — one product per step serves
every level. Training is deterministic given ``seed``; a checkpoint (features, Adam state, RNG state,
iteration) is written atomically every ``checkpoint_every`` iterations and a resumed run reproduces an
uninterrupted one exactly.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from cos3d.core.atomic import atomic_path
from cos3d.core.eta import Eta
from cos3d.core.errors import Cos3dError, brief
from cos3d.field.contrastive import cluster_loss, make_clusters, normalize, unit_rows
from cos3d.field.view_weights import ViewWeights

__all__ = ["InstanceConfig", "load_checkpoint", "train_instance_field"]


@dataclass
class InstanceConfig:
    """Stage-1 hyperparameters (defaults from COS3D's released settings)."""

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
            f"{path}: corrupt stage-1 checkpoint ({brief(e)}); "
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
        raise ValueError("stage 1 needs at least one training view with visible Gaussians")
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
        [[make_clusters(labels[v][lev][c.pixels].long(), cfg.min_cluster) for lev in levels] for c in view.chunks]
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
    eta = Eta("stage 1", cfg.iterations, start)
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
        line = eta.step(it + 1)
        if line is not None:
            if bar is not None:
                bar.write(line)
            elif log is not None:
                log(line)
        if hook is not None:
            hook(it)
    if bar is not None:
        bar.close()
    with torch.no_grad():
        unit = normalize(params.detach().view(N, L, D)).cpu()
    out = {lev: unit[:, i].contiguous() for i, lev in enumerate(levels)}
    stats = {"iterations": cfg.iterations, "resumed_from": start, "time_s": time.perf_counter() - t0, **last}
    return out, stats
