"""Stage 0: photometric 3D Gaussian splatting of a posed image set (stage 0 of the pipeline, docs/architecture.md).

``reconstruct(scene, cfg, out_dir)`` initialises Gaussians (RGB-D back-projection + voxel
downsampling when the scene has depth, else the scene's points, else random points in the cameras'
volume), optimises L1 + λ·D-SSIM with Adam (one optimiser per parameter, gsplat's learning rates),
densifies with gsplat's ``DefaultStrategy`` (pure torch: it runs on CPU tensors too), checkpoints
atomically and resumes, and writes ``gaussians.ply`` and ``metrics.json`` to ``out_dir``. The
held-out PSNR on the scene's test split is returned in the metrics (``psnr_test``).

Renders go through :func:`cos3d.render.render`: gsplat on CUDA, our torch rasterizer on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cos3d.core.atomic import atomic_open, write_json
from cos3d.core.device import resolve_device
from cos3d.core.eta import Eta
from cos3d.core.config import ConfigError
from cos3d.core.errors import Cos3dError
from cos3d.data.gaussians import Gaussians
from cos3d.render import render
from cos3d.data.scene import Frame, Scene
from cos3d.core.config import from_dict, load_config_file
from cos3d.data.ply import write_ply

__all__ = ["ReconConfig", "reconstruct", "init_gaussians", "init_mode", "sparse_schedule", "evaluate_psnr", "ssim", "psnr"]

INIT_MODES = ("auto", "depth", "points", "random")
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
"""Version of the stage-0 checkpoint layout (tensors and plain values only)."""


@dataclass
class ReconConfig:
    """Stage-0 settings. Learning rates follow gsplat's ``simple_trainer`` defaults."""

    iterations: int = 7000
    """Optimisation steps (one training view per step)."""
    sh_degree: int = 3
    """Final SH degree of the colours (0-3)."""
    sh_degree_interval: int = 1000
    """Raise the active SH degree by one every this many steps."""
    init: Literal["auto", "depth", "points", "random"] = "auto"
    """Initial points: ``depth`` (back-project the RGB-D training views), ``points`` (the scene's
    sparse points, e.g. COLMAP), ``random`` (uniform in the cameras' volume) or ``auto`` (the first
    available, in that order)."""
    voxel_size: float | None = None
    """Voxel edge (metres) for downsampling back-projected points; None: the median pixel
    footprint (depth / focal) of the training views, enlarged until at most ``init_max_points`` remain."""
    init_max_points: int = 100_000
    """Upper bound on the number of initial Gaussians (depth and points init)."""
    init_focus: float = 0.0
    """Depth init: spend the point budget on what the cameras look at. Points farther from the cameras'
    common focus (the point nearest to every optical axis) than this × the median camera distance to it
    get voxels enlarged by ``(distance / radius)²`` (a contraction of the background, as unbounded-scene
    methods do), so a vast floor seen at grazing angles no longer takes most of the budget from the
    objects. 0 disables."""
    init_detail: float = 1.0
    """Depth init: voxel edge multiplier for pixels on locally planar, uniformly coloured surfaces
    (table tops, floors); 1 disables. Boundaries, depth edges and textured or curved pixels keep
    the fine edge, so the budget goes to object boundaries."""
    init_random_points: int = 20_000
    """Number of Gaussians of the ``random`` initialisation."""
    init_opacity: float = 0.1
    """Initial opacity of every Gaussian."""
    init_scale: float = 1.0
    """Initial scale = this × the mean distance to the 3 nearest initial points."""
    max_gaussians: int = 300_000
    """Cap on the number of Gaussians: after a densification step the least opaque extras are pruned."""
    lr_means: float = 1.6e-4
    """Learning rate of the means, × the scene scale; decays exponentially to ``lr_means_final`` × it."""
    lr_means_final: float = 0.01
    """Final learning rate of the means as a fraction of the initial one."""
    lr_scales: float = 5e-3
    """Learning rate of the log-scales."""
    lr_quats: float = 1e-3
    """Learning rate of the quaternions."""
    lr_opacities: float = 5e-2
    """Learning rate of the opacity logits."""
    lr_sh0: float = 2.5e-3
    """Learning rate of the SH DC term."""
    lr_shN: float = 2.5e-3 / 20
    """Learning rate of the higher SH bands."""
    ssim_weight: float = 0.2
    """λ of the loss (1 - λ)·L1 + λ·(1 - SSIM)."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Colour composited behind the Gaussians while training and evaluating."""
    densify: bool = True
    """Grow, split and prune with gsplat's ``DefaultStrategy``."""
    refine_start: int = 500
    """First step of densification."""
    refine_stop: int = 15_000
    """Last step of densification."""
    refine_every: int = 100
    """Densify every this many steps."""
    reset_every: int = 3000
    """Reset opacities every this many steps (gsplat's ``reset_every``)."""
    grow_grad2d: float = 2e-4
    """Image-plane gradient above which Gaussians are duplicated or split."""
    prune_opa: float = 0.005
    """Opacity below which Gaussians are pruned."""
    sparse_densify: bool = True
    """A scene without depth that starts from its sparse points (a capture posed by structure-from-motion:
    ~1.5k points where depth gives ~25k) while densification is off (the fast preset) is densified anyway:
    at least ``sparse_iterations`` steps, gsplat's densification every ``sparse_refine_every`` steps from
    that step to 80 % of the schedule. Scenes with depth, and settings that already densify, are unchanged.
    Measured in docs/benchmarks.md, "From a phone capture" (confirmed on development seed 1)."""
    sparse_iterations: int = 1000
    """Steps of the sparse-start schedule of ``sparse_densify``."""
    sparse_refine_every: int = 100
    """Densification interval (and first step) of the sparse-start schedule of ``sparse_densify``."""
    eval_every: int = 0
    """Evaluate the held-out PSNR every this many steps (0: only at the end)."""
    checkpoint_every: int = 1000
    """Write a resumable checkpoint every this many steps (0: never)."""
    seed: int = 0
    """Seed of the initialisation, the view order and the densification noise."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda[:i]``."""
    threads: int | None = None
    """CPU threads for torch while training (None: leave torch's setting)."""
    progress: bool = True
    """Show a progress bar."""

    @classmethod
    def fast(cls, **overrides: Any) -> "ReconConfig":
        """The ``recon`` section of the ``fast`` preset (``cos3d/configs/fast.yaml``, where its choices are
        explained: a short schedule from RGB-D initialisation), with ``overrides`` applied."""

        preset = load_config_file("fast")[0].get("recon", {})
        return dataclasses.replace(from_dict(cls, preset, source="cos3d/configs/fast.yaml"), **overrides)

    def validate(self) -> None:
        """Raise :class:`~cos3d.core.config.ConfigError` naming the first bad setting."""
        if self.iterations < 0:
            raise ConfigError("iterations", f"must be >= 0, got {self.iterations}")
        if not 0 <= self.sh_degree <= 3:
            raise ConfigError("sh_degree", f"must be 0..3, got {self.sh_degree}")
        if self.init not in INIT_MODES:
            raise ConfigError("init", f"must be one of {INIT_MODES}, got {self.init!r}")
        if self.voxel_size is not None and not self.voxel_size > 0:
            raise ConfigError("voxel_size", f"must be positive or None, got {self.voxel_size}")
        if not 0.0 <= self.ssim_weight <= 1.0:
            raise ConfigError("ssim_weight", f"must be in [0, 1], got {self.ssim_weight}")
        if not 0.0 < self.init_opacity < 1.0:
            raise ConfigError("init_opacity", f"must be in (0, 1), got {self.init_opacity}")
        if self.max_gaussians < 1:
            raise ConfigError("max_gaussians", f"must be >= 1, got {self.max_gaussians}")
        if self.sparse_iterations < 0:
            raise ConfigError("sparse_iterations", f"must be >= 0, got {self.sparse_iterations}")
        if self.sparse_refine_every < 1:
            raise ConfigError("sparse_refine_every", f"must be >= 1, got {self.sparse_refine_every}")


# --------------------------------------------------------------------------- metrics
def _gaussian_taps(size: int, sigma: float, dtype, device) -> Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def ssim(a: Tensor, b: Tensor, *, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean structural similarity of images ``a``, ``b`` [..., H, W, C] in [0, 1] (Gaussian window,
    zero padding, C1 = 0.01², C2 = 0.03²). Differentiable."""
    x = a.reshape((-1,) + a.shape[-3:]).permute(0, 3, 1, 2)
    y = b.reshape((-1,) + b.shape[-3:]).permute(0, 3, 1, 2)
    n, c = x.shape[:2]
    taps = _gaussian_taps(window, sigma, x.dtype, x.device)
    wy = taps.reshape(1, 1, window, 1).expand(5 * c, 1, window, 1)
    wx = taps.reshape(1, 1, 1, window).expand(5 * c, 1, 1, window)
    pad = window // 2
    # the five blurred maps in one separable (column, then row) convolution
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    blurred = F.conv2d(F.conv2d(stack, wy, padding=(pad, 0), groups=5 * c), wx, padding=(0, pad), groups=5 * c)
    mx, my, exx, eyy, exy = blurred.split(c, dim=1)
    sxx = exx - mx * mx
    syy = eyy - my * my
    sxy = exy - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean()


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR (dB) of two images in [0, 1]."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def _image_tensor(frame: Frame, device) -> Tensor:
    return torch.from_numpy(np.array(frame.load_image())).to(device=device, dtype=torch.float32) / 255.0


@torch.no_grad()
def evaluate_psnr(
    gaussians: Gaussians,
    frames: Sequence[Frame],
    *,
    background: Sequence[float] | Tensor | None = None,
    sh_degree: int | None = None,
) -> float:
    """Mean per-image PSNR (dB) of ``gaussians`` rendered into ``frames`` against their images
    (NaN for no frames)."""
    if not frames:
        return float("nan")
    g = gaussians.detach()
    vals = []
    for fr in frames:
        out = render(g, fr.camera, sh_degree=sh_degree, background=background)
        vals.append(psnr(out.rgb[0].clamp(0, 1), _image_tensor(fr, g.device).to(out.rgb.dtype)))
    return float(np.mean(vals))


# --------------------------------------------------------------------------- initialisation
def _voxel_downsample(points: np.ndarray, colors: np.ndarray, voxel: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Average points and colours per voxel; ``voxel`` is one edge length or one per point (points
    with different edge lengths never share a voxel)."""
    v = np.broadcast_to(np.asarray(voxel, np.float64), points.shape[:1])
    keys = np.concatenate([np.floor(points / v[:, None]).astype(np.int64), np.round(np.log2(v) * 8).astype(np.int64)[:, None]], 1)
    keys -= keys.min(axis=0)
    span = keys.max(axis=0) + 1
    if float(np.prod(span.astype(np.float64))) < 2**62:  # one int64 key per voxel: much faster than rows
        flat = np.zeros(len(keys), np.int64)
        for j in range(keys.shape[1]):
            flat = flat * span[j] + keys[:, j]
        _, inv, counts = np.unique(flat, return_inverse=True, return_counts=True)
    else:
        _, inv, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    n = counts.shape[0]
    p = np.zeros((n, 3))
    c = np.zeros((n, 3))
    np.add.at(p, inv, points)
    np.add.at(c, inv, colors)
    return (p / counts[:, None]).astype(np.float32), (c / counts[:, None]).astype(np.float32)


def cameras_focus(frames: Sequence[Frame]) -> tuple[np.ndarray, float]:
    """(the point nearest to every camera's optical axis in the least-squares sense, the median camera
    distance to it). Cameras that do not converge (all axes parallel) fall back to the mean centre."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    centres = []
    for fr in frames:
        c = fr.camera.center
        d = fr.camera.c2w[:3, 2] / max(np.linalg.norm(fr.camera.c2w[:3, 2]), 1e-12)
        M = np.eye(3) - np.outer(d, d)
        A += M
        b += M @ c
        centres.append(c)
    C = np.stack(centres)
    if np.linalg.cond(A) > 1e6:
        focus = C.mean(0)
    else:
        focus = np.linalg.solve(A, b)
    return focus, float(np.median(np.linalg.norm(C - focus, axis=1)))


def _planar_pixels(world: np.ndarray, image: np.ndarray, valid: np.ndarray, foot: np.ndarray,
                   win: int = 7) -> np.ndarray:
    """bool ``[H, W]``: pixels on locally planar, uniformly coloured surfaces. Surface variation of the
    back-projected points in a ``win``² window (smallest covariance eigenvalue over the trace: 0 on a plane)
    below 0.01 and its plane residual under a quarter of the pixel footprint, colour spread under 0.04,
    and no depth edge (every window pixel valid)."""
    from scipy.ndimage import uniform_filter

    f = lambda x: uniform_filter(x, size=win, mode="nearest")  # noqa: E731
    X = np.where(valid[..., None], world, 0.0)
    m = f(valid.astype(np.float64))
    mu = np.stack([f(X[..., i]) for i in range(3)], -1)
    cov = np.empty(X.shape[:2] + (3, 3))
    for i in range(3):
        for j in range(i, 3):
            cov[..., i, j] = cov[..., j, i] = f(X[..., i] * X[..., j]) - mu[..., i] * mu[..., j]
    ev = np.linalg.eigvalsh(cov)
    tr = ev.sum(-1).clip(1e-18)
    flat = (ev[..., 0] / tr < 0.01) & (np.sqrt(ev[..., 0].clip(0)) < 0.25 * foot)
    rgb = image.astype(np.float64) / 255.0
    spread = sum(f(rgb[..., i] ** 2) - f(rgb[..., i]) ** 2 for i in range(3))
    return flat & (spread < 0.04**2 * 3) & (m > 0.999) & valid


def _depth_points(frames: Sequence[Frame], voxel: float | None, max_points: int, *, focus: float = 0.0,
                  detail: float = 1.0) -> tuple[np.ndarray, np.ndarray, float]:
    """Back-project the frames' valid depth pixels and downsample them.

    With ``voxel`` None the voxel edge follows each point's pixel footprint (depth / focal, rounded
    to a power of two of the smallest footprint), so near surfaces keep their detail and far ones
    merge across views; the edges grow by 1.25× until at most ``max_points`` remain. ``focus`` and
    ``detail``: :attr:`ReconConfig.init_focus` and :attr:`ReconConfig.init_detail`. Returns
    (points, colours, smallest voxel edge).
    """
    pts, cols, foot, coarse = [], [], [], []
    for fr in frames:
        depth = fr.load_depth()
        if depth is None:
            continue
        valid = depth > 0
        if not valid.any():
            continue
        world = fr.camera.backproject(depth)
        image = fr.load_image()
        fp = depth.astype(np.float64) / (0.5 * (fr.camera.K[0, 0] + fr.camera.K[1, 1]))
        pts.append(world[valid])
        cols.append(image[valid].astype(np.float64) / 255.0)
        foot.append(fp[valid])
        if detail != 1.0 and voxel is None:
            coarse.append(_planar_pixels(world, image, valid, fp)[valid])
    if not pts:
        raise Cos3dError("init='depth': the training views have no valid depth; use init='points' or 'random'")
    P, C = np.concatenate(pts), np.concatenate(cols)
    if voxel is not None:
        p, c = _voxel_downsample(P, C, voxel)
        if p.shape[0] > max_points:
            idx = np.random.default_rng(0).choice(p.shape[0], max_points, replace=False)
            p, c = p[idx], c[idx]
        return p, c, float(voxel)
    fp = np.concatenate(foot)
    base = float(np.percentile(fp, 1))
    grow = np.ones_like(fp)
    if focus > 0:
        centre, dist = cameras_focus(frames)
        radius = focus * dist
        grow *= np.maximum(np.linalg.norm(P - centre, axis=1) / radius, 1.0) ** 2
    if coarse:
        grow *= np.where(np.concatenate(coarse), float(detail), 1.0)
    level = np.floor(np.log2(np.maximum(fp * grow / base, 1.0)))
    mult = 1.0
    while True:
        p, c = _voxel_downsample(P, C, base * mult * np.exp2(level))
        if p.shape[0] <= max_points:
            return p, c, base * mult
        mult *= 1.25


def _knn_scale(points: np.ndarray) -> np.ndarray:
    """Mean distance to the 3 nearest neighbours [N] (3DGS's initial scale)."""
    from scipy.spatial import cKDTree

    if points.shape[0] < 2:
        return np.full(points.shape[0], 0.01)
    k = min(4, points.shape[0])
    d, _ = cKDTree(points).query(points, k=k)
    d = d[:, 1:]
    m = d.mean(axis=1)
    pos = m[m > 0]
    floor = np.percentile(pos, 1) if pos.size else 1e-3
    return np.clip(m, floor, None)


def _camera_bounds(scene: Scene) -> tuple[np.ndarray, float]:
    centres = np.stack([f.camera.center for f in scene.frames])
    c = centres.mean(axis=0)
    return c, float(np.linalg.norm(centres - c, axis=1).max())


def scene_scale(scene: Scene) -> float:
    """gsplat's scene scale: 1.1 × the largest distance of a camera centre from their mean (≥ 1e-3)."""
    return max(1.1 * _camera_bounds(scene)[1], 1e-3)


def init_mode(scene: Scene, cfg: ReconConfig) -> str:
    """The initialisation ``cfg.init`` resolves to for ``scene`` (``auto``: depth, else points, else random)."""
    if cfg.init != "auto":
        return cfg.init
    if scene.has_depth:
        return "depth"
    if scene.points is not None and len(scene.points) > 0:
        return "points"
    return "random"


def sparse_schedule(scene: Scene, cfg: ReconConfig) -> tuple[ReconConfig, dict[str, Any] | None]:
    """``cfg`` as stage 0 runs it on ``scene``: with :attr:`ReconConfig.sparse_densify`, a scene without depth that
    starts from sparse points while densification is off gets the densifying sparse-start schedule. Returns
    the settings and what was changed (None when nothing was)."""
    if not cfg.sparse_densify or cfg.densify or scene.has_depth or init_mode(scene, cfg) != "points":
        return cfg, None
    n = max(cfg.iterations, cfg.sparse_iterations)
    every = cfg.sparse_refine_every
    new = dataclasses.replace(cfg, densify=True, iterations=n, refine_start=every, refine_every=every,
                              refine_stop=int(0.8 * n), checkpoint_every=cfg.checkpoint_every)
    return new, {"why": "no depth: densifying from the sparse points", "iterations": n, "refine_start": every,
                 "refine_every": every, "refine_stop": int(0.8 * n)}


def init_gaussians(scene: Scene, cfg: ReconConfig | None = None) -> tuple[Gaussians, dict[str, Any]]:
    """Initial Gaussians of ``scene`` per ``cfg.init`` (see :class:`ReconConfig`), on the CPU.

    Returns the Gaussians and a dict describing what was done (mode, points, voxel size).
    """
    cfg = cfg or ReconConfig()
    mode = init_mode(scene, cfg)
    train = scene.split("train")
    info: dict[str, Any] = {"mode": mode}
    rng = np.random.default_rng(cfg.seed)
    if mode == "depth":
        if not all(f.depth_path is not None for f in train):
            raise Cos3dError(f"{scene.root}: init='depth' but the scene has no depth maps; use init='points' or 'random'")
        p, c, v = _depth_points(train, cfg.voxel_size, cfg.init_max_points, focus=cfg.init_focus,
                                detail=cfg.init_detail)
        info["voxel_size"] = v
    elif mode == "points":
        if scene.points is None or len(scene.points) == 0:
            raise Cos3dError(f"{scene.root}: init='points' but the scene has no sparse points; use init='random'")
        p = np.asarray(scene.points, np.float32)
        c = (np.asarray(scene.point_colors, np.float32) / 255.0) if scene.point_colors is not None else np.full_like(p, 0.5)
        if p.shape[0] > cfg.init_max_points:
            idx = rng.choice(p.shape[0], cfg.init_max_points, replace=False)
            p, c = p[idx], c[idx]
    else:
        centre, radius = _camera_bounds(scene)
        radius = max(radius, 1e-2)
        n = cfg.init_random_points
        p = (centre + (rng.random((n, 3)) * 2 - 1) * radius).astype(np.float32)
        c = rng.random((n, 3)).astype(np.float32)
    scales = _knn_scale(p) * cfg.init_scale
    g = Gaussians.from_points(
        torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32)),
        scales=torch.from_numpy(scales.astype(np.float32)),
        opacity=cfg.init_opacity,
        sh_degree=cfg.sh_degree,
    )
    info["points"] = g.num
    return g, info


# --------------------------------------------------------------------------- training
def _make_optimizers(params: dict[str, torch.nn.Parameter], cfg: ReconConfig, scale: float) -> dict[str, torch.optim.Optimizer]:
    lrs = {
        "means": cfg.lr_means * scale,
        "scales": cfg.lr_scales,
        "quats": cfg.lr_quats,
        "opacities": cfg.lr_opacities,
        "sh0": cfg.lr_sh0,
        "shN": cfg.lr_shN,
    }
    return {k: torch.optim.Adam([{"params": [p], "lr": lrs[k], "name": k}], eps=1e-15) for k, p in params.items()}


def _cap(params, optimizers, state, cap: int) -> int:
    from gsplat.strategy.ops import remove

    n = params["means"].shape[0]
    if n <= cap:
        return 0
    order = torch.argsort(params["opacities"].detach().reshape(-1))
    mask = torch.zeros(n, dtype=torch.bool, device=order.device)
    mask[order[: n - cap]] = True
    remove(params=params, optimizers=optimizers, state=state, mask=mask)
    return n - cap


class _Images:
    """Training images kept in memory as uint8 (converted per step)."""

    def __init__(self, frames: Sequence[Frame], device: torch.device):
        self.frames = list(frames)
        self.device = device
        self._cache: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.frames)

    def get(self, i: int) -> Tensor:
        if i not in self._cache:
            self._cache[i] = torch.from_numpy(np.array(self.frames[i].load_image())).to(self.device)
        return self._cache[i].float() / 255.0


def _plain(x: Any, where: str) -> Any:
    """``x`` as tensors and plain values only (dict/list/tuple/str/int/float/bool/None), what
    ``torch.load(weights_only=True)`` accepts: numpy arrays become tensors, numpy scalars Python ones."""
    if isinstance(x, Tensor):
        return x.detach().cpu()
    if isinstance(x, np.generic):  # before float: np.float64 is a float subclass, but not loadable
        return x.item()
    if x is None or type(x) in (bool, int, float, str):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.array(x))
    if isinstance(x, dict):
        return {k if isinstance(k, (str, int)) else str(k): _plain(v, f"{where}[{k!r}]") for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v, f"{where}[{i}]") for i, v in enumerate(x))
    raise TypeError(f"stage-0 checkpoint: {where} is a {type(x).__name__}, not a tensor or plain value")


def _save_checkpoint(path: Path, step: int, params, optimizers, strategy_state, info: dict) -> None:
    """Write the stage-0 checkpoint atomically. It holds tensors and plain values only, so that
    :func:`_load_checkpoint` can read it with ``weights_only=True`` (nothing executable is ever
    loaded from a run folder)."""
    blob = {
        "format": CHECKPOINT_FORMAT,
        "step": int(step),
        "params": {k: v.detach().cpu() for k, v in params.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "strategy_state": dict(strategy_state),
        "info": info,
        "torch_rng": torch.get_rng_state(),
    }
    blob = _plain(blob, "checkpoint")
    with atomic_open(path, "wb") as f:  # a file object: write errors come back as OSError
        torch.save(blob, f)


def _bad_checkpoint(path: Path, why: str) -> Cos3dError:
    return Cos3dError(
        f"{path}: {why}; delete it and run again with --resume "
        "(stage 0 restarts from its first step; finished stages are kept)"
    )


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a stage-0 checkpoint with ``weights_only=True``; raise one :class:`Cos3dError` line (what to
    delete, how to resume) for a file that is truncated, garbage, or holds anything but tensors and
    plain values (a crafted pickle is refused before any of it runs)."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols before refusing them
            warnings.simplefilter("ignore")
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # garbage, or a pickle of objects other than tensors: refused unrun
        raise _bad_checkpoint(
            path, "not a cos3d stage-0 checkpoint (damaged, or it holds objects other than tensors; nothing in it was run)"
        ) from None
    except OSError as e:
        raise Cos3dError(f"{path}: cannot read the stage-0 checkpoint ({e.strerror or type(e).__name__})") from None
    except Exception as e:  # truncated zip, garbage bytes, ...
        raise _bad_checkpoint(path, f"corrupt stage-0 checkpoint ({type(e).__name__})") from None
    need = {"step": int, "params": dict, "optimizers": dict, "strategy_state": dict, "info": dict, "torch_rng": Tensor}
    if not isinstance(blob, dict) or any(not isinstance(blob.get(k), t) for k, t in need.items()):
        raise _bad_checkpoint(path, "not a cos3d stage-0 checkpoint (missing or malformed entries)")
    return blob


def reconstruct(
    scene: Scene,
    cfg: ReconConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool | None = None,
) -> tuple[Gaussians, dict[str, Any]]:
    """Train stage-0 Gaussians for ``scene``.

    Writes ``out_dir/gaussians.ply``, ``out_dir/metrics.json`` and (while running) a checkpoint
    ``out_dir/checkpoint.pt``; with ``resume`` an existing checkpoint is continued. Returns the
    Gaussians (on the training device, detached) and the metrics: ``psnr_test`` (mean held-out
    PSNR, dB; NaN without test views), ``psnr_train``, ``n_gaussians``, ``iterations``, ``time_s``,
    ``init`` (what the initialisation did), ``history`` (step, loss, n_gaussians, psnr_test).
    """
    from gsplat.strategy import DefaultStrategy
    from tqdm.auto import tqdm

    cfg = cfg or ReconConfig()
    cfg.validate()
    show = cfg.progress if progress is None else progress
    out = Path(out_dir) if out_dir is not None else None
    device = resolve_device(cfg.device)
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    try:
        return _reconstruct(scene, cfg, out, device, resume, show, tqdm, DefaultStrategy)
    finally:
        torch.set_num_threads(old_threads)


def _reconstruct(scene, cfg: ReconConfig, out: Path | None, device, resume: bool, show: bool, tqdm, DefaultStrategy):
    t0 = time.perf_counter()
    train = scene.split("train")
    test = scene.split("test")
    if not train:
        raise Cos3dError(f"{scene.root}: the train split is empty; nothing to reconstruct from")
    cfg, sparse = sparse_schedule(scene, cfg)
    if sparse is not None:  # shown with or without progress bars: it changes the schedule
        print(f"stage 0: no depth, {len(scene.points)} sparse points: densifying over {cfg.iterations} steps "
              "(--no-recon.sparse-densify keeps the preset's schedule)", flush=True)
    scale = scene_scale(scene)
    ckpt_path = out / CHECKPOINT if out is not None else None
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    strategy = DefaultStrategy(
        prune_opa=cfg.prune_opa,
        grow_grad2d=cfg.grow_grad2d,
        refine_start_iter=cfg.refine_start,
        refine_stop_iter=cfg.refine_stop if cfg.densify else 0,
        refine_every=cfg.refine_every,
        reset_every=cfg.reset_every,
    )
    start = 0
    history: list[dict[str, Any]] = []
    if resume and ckpt_path is not None and ckpt_path.is_file():
        blob = _load_checkpoint(ckpt_path)
        try:
            params = {k: torch.nn.Parameter(v.to(device)) for k, v in blob["params"].items()}
            optimizers = _make_optimizers(params, cfg, scale)
            for k, o in optimizers.items():
                o.load_state_dict(blob["optimizers"][k])
            torch.set_rng_state(blob["torch_rng"])
        except (KeyError, ValueError, RuntimeError, TypeError, AttributeError) as e:
            raise _bad_checkpoint(
                ckpt_path, f"does not match these stage-0 settings or is damaged ({type(e).__name__})"
            ) from None
        state = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in blob["strategy_state"].items()}
        start = int(blob["step"])
        init_info = blob["info"].get("init", {})
        history = blob["info"].get("history", [])
        gen.manual_seed(cfg.seed + start)
    else:
        g0, init_info = init_gaussians(scene, cfg)
        if sparse is not None:
            init_info["sparse_schedule"] = sparse
        params = g0.to(device).params()
        optimizers = _make_optimizers(params, cfg, scale)
        state = strategy.initialize_state(scene_scale=scale)
    images = _Images(train, device)
    bg = torch.tensor(cfg.background, dtype=torch.float32, device=device)
    gamma = cfg.lr_means_final ** (1.0 / max(cfg.iterations, 1))
    base_lr = cfg.lr_means * scale
    order: list[int] = []
    last_loss = float("nan")
    bar = tqdm(total=cfg.iterations, initial=start, desc="stage 0", disable=not show, dynamic_ncols=True)
    eta = Eta("stage 0", cfg.iterations, start,
              note=" (densification grows the cloud: later steps are slower)" if cfg.densify else "")
    try:
        for step in range(start, cfg.iterations):
            if not order:
                order = torch.randperm(len(images), generator=gen).tolist()
            i = order.pop()
            for group in optimizers["means"].param_groups:
                group["lr"] = base_lr * gamma**step
            degree = min(step // max(cfg.sh_degree_interval, 1), cfg.sh_degree)
            g = Gaussians.from_params(params)
            res = render(g, train[i].camera, sh_degree=degree, background=bg)
            strategy.step_pre_backward(params, optimizers, state, step, res.meta)
            target = images.get(i)
            pred = res.rgb[0]
            l1 = (pred - target).abs().mean()
            loss = l1
            if cfg.ssim_weight > 0:
                loss = (1 - cfg.ssim_weight) * l1 + cfg.ssim_weight * (1 - ssim(pred, target))
            loss.backward()
            for o in optimizers.values():
                o.step()
                o.zero_grad(set_to_none=True)
            strategy.step_post_backward(params, optimizers, state, step, res.meta, packed=False)
            if cfg.densify and step % cfg.refine_every == 0:
                _cap(params, optimizers, state, cfg.max_gaussians)
            last_loss = float(loss.detach())
            done = step + 1
            bar.update(1)
            line = eta.step(done)
            if line is not None:
                if show:
                    bar.write(line)
                else:
                    print(line, flush=True)
            if done % 50 == 0 or done == cfg.iterations:
                bar.set_postfix(loss=f"{last_loss:.4f}", n=params["means"].shape[0])
            entry = None
            if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.iterations:
                entry = {"step": done, "loss": last_loss, "n_gaussians": int(params["means"].shape[0]),
                         "psnr_test": evaluate_psnr(Gaussians.from_params(params), test, background=bg, sh_degree=degree)}  # fmt: skip
                bar.write(f"stage 0 step {done}: held-out PSNR {entry['psnr_test']:.2f} dB, {entry['n_gaussians']} Gaussians")
                history.append(entry)
            if ckpt_path is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.iterations:
                _save_checkpoint(ckpt_path, done, params, optimizers, state, {"init": init_info, "history": history})
    finally:
        bar.close()
    g = Gaussians.from_params({k: v.detach() for k, v in params.items()})
    g.validate("stage 0 result")
    degree = min(cfg.iterations // max(cfg.sh_degree_interval, 1), cfg.sh_degree) if cfg.iterations else cfg.sh_degree
    metrics: dict[str, Any] = {
        "psnr_test": evaluate_psnr(g, test, background=bg, sh_degree=degree),
        "psnr_train": evaluate_psnr(g, train[:: max(1, len(train) // 8)], background=bg, sh_degree=degree),
        "n_gaussians": g.num,
        "iterations": cfg.iterations,
        "final_loss": last_loss,
        "time_s": time.perf_counter() - t0,
        "device": str(device),
        "init": init_info,
        "n_train_views": len(train),
        "n_test_views": len(test),
        "history": history,
    }
    if show:
        print(f"stage 0: {g.num} Gaussians, held-out PSNR {metrics['psnr_test']:.2f} dB "
              f"({len(test)} test views), {metrics['time_s']:.1f} s")  # fmt: skip
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_ply(out / "gaussians.ply", g)
        write_json(out / "metrics.json", json.loads(json.dumps(metrics, default=str)))
        if ckpt_path is not None and ckpt_path.exists():
            ckpt_path.unlink()
    return g, metrics
