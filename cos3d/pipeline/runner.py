"""``cos3d train``: stage 0 (Gaussians) → masks → stage 1 (instance field) → stage 2 (Ins2Lang).

:class:`TrainConfig` is the command line (:mod:`cos3d.core.config` derives ``cos3d train``'s flags from
it; presets such as ``--fast`` are files in ``cos3d/configs/``). Each stage writes its artefacts
atomically into the run folder, whose layout :mod:`cos3d.pipeline.run_folder` owns. A stage is *finished*
when its artefact exists and ``run.json`` marks it done; ``resume=True`` skips finished stages, and
stage 1 continues from its last checkpoint. Re-running a stage marks every later stage as not done.

Fields of several levels are trained jointly, stacked (see :mod:`cos3d.field.instance`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from cos3d.core.atomic import atomic_path, check_writable
from cos3d.core.config import ConfigError, to_dict
from cos3d.core.device import resolve_device
from cos3d.core.errors import Cos3dError, brief
from cos3d.field.ins2lang import Ins2LangConfig
from cos3d.field.instance import InstanceConfig
from cos3d.pipeline.recon import ReconConfig
from cos3d.pipeline.run_folder import STAGE_TITLES, STAGES, RunFolder, RunRecord, writer_lock
from cos3d.data.scene import Scene
from cos3d.pipeline.views import ViewPolicy
from cos3d.vision.models import ModelsConfig

__all__ = ["TrainConfig", "train"]

Level = Literal["s", "m", "l"]


@dataclass
class TrainConfig:
    """What ``cos3d train`` does: every field is a flag (``--max-per-pixel``, ``--recon.iterations``)."""

    scene: str
    """Scene folder, or a name like scannet/scene0000 looked up under --data-root."""
    out: Path | None = None
    """Run folder (default: runs/<scene folder name>)."""
    data_root: Path | None = None
    """Where named scenes live (default: $COS3D_DATA, else ./data)."""
    models: ModelsConfig = field(default_factory=ModelsConfig, metadata={"flatten": True})
    """2D models"""
    views: ViewPolicy = field(default_factory=ViewPolicy, metadata={"flatten": True})
    """views and resolution"""
    mask_cache: Path | None = None
    """Per-view 2D cache folder, shared with `cos3d prepare masks` (default: SCENE/cos3d_masks/<models>)."""
    resume: bool = False
    """Skip finished stages; continue stage 1 from its checkpoint."""
    restart: bool = False
    """Re-run the stages of a run folder that has finished ones (without it, such a folder is refused)."""
    stage: Literal["recon", "masks", "instance", "language", "all"] = "all"
    """Run one stage only (its predecessors must be finished), or all."""
    images: Path | None = None
    """A folder of photos with no poses: `cos3d prepare images` poses it into --capture-out first (also done
    when --scene names a folder that holds only photos)."""
    video: Path | None = None
    """A video file: `cos3d prepare video` chooses and poses its frames into --capture-out first."""
    capture_out: Path | None = None
    """Where --images/--video (or a --scene of photos) is posed (default: beside it, <name>_scene; reused
    when it was made from the same source)."""
    gaussians: Path | None = None
    """Import a trained scene (.ply from graphdeco 3DGS, gsplat, splatfacto) instead of running stage 0."""
    levels: tuple[Level, ...] = ("l", "s")
    """Mask levels to train a field for (a comma list of s, m, l; all three can be trained). Queries answer
    objects on l; part queries on the finest trained level that separates the part (s, then m)."""
    iterations: int | None = None
    """Stage-1 iterations (default: iterations-per-view × training views within [iterations-min, iterations-max])."""
    iterations_per_view: int = 300
    """Stage-1 iterations per training view when --iterations is not given (each step sees a whole view)."""
    iterations_min: int = 3000
    """Lower clamp of the per-view rule."""
    iterations_max: int = 30000
    """Upper clamp of the per-view rule (COS3D trains 30k; its fast setting 3k)."""
    seed: int = 0
    """Seed of every stage (stage-0 init and view order, stage-1 init, stage-2 samplers)."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda, cuda:1 ..."""
    max_per_pixel: int | None = None
    """Keep at most this many blending weights per pixel in the cached view weights (default: all)."""
    max_pixels_per_view: int | None = None
    """Cache the weights of only a seeded sample of this many pixels per view (default: as many as the memory budget allows)."""
    memory_budget_gib: float | None = None
    """Memory for the cached blending weights of stages 1-2; views sample pixels to fit (default: a quarter of the available RAM, half the free GPU memory)."""
    cache_weights: bool = False
    """Also keep the per-view blending weights on disk (RUN/cache/weights) for later runs."""
    threads: int | None = None
    """CPU threads for torch (default: $COS3D_THREADS if set, else torch's); 1 is often faster on a busy machine."""
    progress: bool = True
    """Show progress bars."""
    recon: ReconConfig = field(
        default_factory=ReconConfig, metadata={"exclude": ("seed", "device", "threads", "progress")}
    )
    """stage 0: photometric 3DGS"""
    instance: InstanceConfig = field(default_factory=InstanceConfig, metadata={"exclude": ("iterations", "seed")})
    """stage 1: instance field"""
    ins2lang: Ins2LangConfig = field(default_factory=Ins2LangConfig, metadata={"exclude": ("seed",)})
    """stage 2: instance-to-language mapping"""
    hook: Callable[[str, int], None] | None = field(default=None, repr=False, compare=False, metadata={"cli": False})
    """Called as ``hook(stage, iteration)`` after each stage-1 step (tests simulate kills with it)."""

    def stage1_iterations(self, n_views: int) -> int:
        """``iterations`` if set, else the per-view rule for ``n_views`` training views."""
        if self.iterations is not None:
            return int(self.iterations)
        return int(min(self.iterations_max, max(self.iterations_min, self.iterations_per_view * n_views)))

    def validate(self) -> None:
        """Raise :class:`~cos3d.core.config.ConfigError` naming the first bad setting."""
        try:
            self.models.validate()
        except ConfigError as e:
            raise ConfigError(f"models.{e.key}", e.problem) from None
        if not self.levels:
            raise ConfigError("levels", "must name at least one level (s, m, l)")
        if len(set(self.levels)) != len(self.levels):
            raise ConfigError("levels", f"lists a level twice: {','.join(self.levels)}")
        positive = {
            "iterations": self.iterations,
            "iterations_per_view": self.iterations_per_view,
            "iterations_min": self.iterations_min,
            "iterations_max": self.iterations_max,
            "max_per_pixel": self.max_per_pixel,
            "threads": self.threads,
        }
        for key, v in positive.items():
            if v is not None and v < 1:
                raise ConfigError(key, f"must be positive, got {v}")
        if self.iterations_min > self.iterations_max:
            raise ConfigError("iterations_min", f"{self.iterations_min} exceeds iterations-max {self.iterations_max}")
        if self.memory_budget_gib is not None and not self.memory_budget_gib > 0:
            raise ConfigError("memory_budget_gib", f"must be positive, got {self.memory_budget_gib}")
        for key, v in (("max_views", self.views.max_views), ("max_size", self.views.max_size)):
            if v is not None and v < (16 if key == "max_size" else 1):
                raise ConfigError(f"views.{key}", f"must be at least {16 if key == 'max_size' else 1}, got {v}")
        if self.max_pixels_per_view is not None and self.max_pixels_per_view < 100:
            raise ConfigError("max_pixels_per_view", f"must be at least 100, got {self.max_pixels_per_view}")
        if self.gaussians is not None and not Path(self.gaussians).is_file():
            raise ConfigError("gaussians", f"{self.gaussians}: no such file")
        if self.ins2lang.method not in ("kernel", "mlp"):
            raise ConfigError("ins2lang.method", f"must be kernel or mlp, got {self.ins2lang.method!r}")
        try:
            self.recon.validate()
        except ConfigError as e:
            raise ConfigError(f"recon.{e.key}", e.problem) from None


def _versions() -> dict[str, str]:
    from importlib import metadata

    from cos3d import __version__

    out = {"cos3d": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for pkg in (
        "torch",
        "numpy",
        "scipy",
        "gsplat",
        "sentence-transformers",
        "open_clip_torch",
        "sam2",
        "transformers",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------------------------------
# The pipeline


def _log(msg: str) -> None:
    print(msg, flush=True)


class _Session:
    """State shared by the stages of one ``train`` call (loaded lazily, kept in memory)."""

    def __init__(self, cfg: TrainConfig, state: RunRecord, native: Scene, scene: Scene, device: torch.device):
        self.cfg = cfg
        self.run = state.folder
        self.state = state
        self.native = native
        """The scene as read: the 2D models run on its frames, at their own resolution."""
        self.scene = scene
        """The training views (:func:`cos3d.pipeline.views.training_scene`): selected and rescaled."""
        self.device = device
        self._gaussians = None
        self._weights = None
        self._level_counts: dict[str, int] | None = None
        self.sampled_views = 0
        """Views whose pixels were sampled to fit the memory budget (set when the weights are built)."""
        self._mask_dir: Path | None = None

    # ---- paths
    @property
    def run_dir(self) -> Path:
        return self.run.root

    @property
    def ply(self) -> Path:
        return self.run.ply

    @property
    def mask_dir(self) -> Path:
        """The shared 2D cache of this run's masks: set by the masks stage, else the recorded one."""
        if self._mask_dir is not None:
            return self._mask_dir
        recorded = self.state.checked_mask_cache(self.cfg.mask_cache)
        if recorded is None:
            raise Cos3dError(f"{self.run.run_json}: the masks stage has not run; run --stage masks or --stage all")
        return recorded

    @property
    def fields_path(self) -> Path:
        return self.run.fields

    @property
    def checkpoint(self) -> Path:
        return self.run.instance_checkpoint

    def train_frames(self) -> list:
        return list(self.scene.split("train"))

    # ---- artefacts
    def artefact_ok(self, stage: str) -> bool:
        if stage == "recon":
            return self.ply.is_file()
        if stage == "masks":
            cache = self.state.checked_mask_cache(self.cfg.mask_cache)
            if cache is None:
                return False
            man = cache / "manifest.json"
            if not man.is_file():
                return False
            try:
                views = set(json.loads(man.read_text()).get("views", []))
            except (OSError, ValueError):
                return False
            return all(f.name in views for f in self.train_frames())
        if stage in ("instance", "language"):
            if not self.fields_path.is_file():
                return False
            data = self.run.read_fields()
            key = "instance" if stage == "instance" else "language"
            return all(key in data["levels"].get(lev, {}) for lev in self.cfg.levels)
        raise AssertionError(stage)

    def gaussians(self):
        if self._gaussians is None:
            from cos3d.data.ply import read_ply

            if not self.ply.is_file():
                raise Cos3dError(f"{self.ply}: missing; run stage recon first (--stage recon or --stage all)")
            g = read_ply(self.ply, features=False).validate(str(self.ply))
            self._gaussians = g.detach().to(self.device)
        return self._gaussians

    def mask_view(self, i: int) -> tuple[Any, Any]:
        """``(MaskSet, emb [M, D] fp16)`` of training view ``i``, read from the 2D cache (never all held:
        at a scan's full resolution they would not fit)."""
        from cos3d.vision import load_view

        return load_view(self.mask_dir, self.train_frames()[i].name)

    def level_counts(self) -> dict[str, int]:
        """Masks per level over the training views."""
        if self._level_counts is None:
            from cos3d.vision import level_index

            counts = {lev: 0 for lev in self.cfg.levels}
            for i in range(len(self.train_frames())):
                ms, _ = self.mask_view(i)
                for lev in counts:
                    counts[lev] += int((ms.level == level_index(lev)).sum())
            self._level_counts = counts
        return self._level_counts

    def budget_bytes(self) -> int:
        """Memory for the cached view weights of stages 1-2 (``memory_budget_gib`` or the default)."""
        gib = self.cfg.memory_budget_gib
        return int((gib if gib is not None else default_memory_budget_gib(self.device)) * 2**30)

    def view_weights(self):
        """``[(index in train_frames(), ViewWeights)]`` for training views that see any Gaussian."""
        if self._weights is not None:
            return self._weights
        from cos3d.field.view_weights import ViewWeights
        from cos3d.render import compute_contributions

        g = self.gaussians()
        frames = self.train_frames()
        cache_dir = self.run.weights_cache if self.cfg.cache_weights else None
        key = None
        if cache_dir is not None:
            st = self.ply.stat()
            key = (
                f"{st.st_size}:{st.st_mtime_ns}:{self.cfg.max_per_pixel}:{self.cfg.max_pixels_per_view}:"
                f"{self.cfg.instance.n_samples}:{self.cfg.seed}:{self.budget_bytes()}"
            )
        per_view = self.budget_bytes() / max(1, len(frames))
        self.sampled_views = 0
        out = []
        bar = _bar(frames, "view weights", self.cfg.progress, unit="view")
        for i, f in enumerate(bar):
            vw = None
            if cache_dir is not None:
                p = self.run.weights_file(f.name)  # a frame name is data: escaped, never a path
                if p.is_file():
                    try:
                        st = torch.load(p, map_location="cpu", weights_only=True)
                        if st.get("key") == key and st.get("camera") == f.camera.key():
                            vw = ViewWeights.from_state_dict(st["weights"], device=self.device)
                    except Exception:  # a corrupt cache entry is rebuilt
                        vw = None
            if vw is None:
                contrib = compute_contributions(g, f.camera, max_per_pixel=self.cfg.max_per_pixel)
                max_pixels = pixels_within(per_view, contrib, self.cfg.max_pixels_per_view)
                vw = ViewWeights.from_contributions(
                    contrib,
                    g.num,
                    chunk_size=self.cfg.instance.n_samples,
                    seed=self.cfg.seed,
                    name=f.name,
                    max_pixels=max_pixels,
                )
                if max_pixels is not None and max_pixels != self.cfg.max_pixels_per_view:
                    self.sampled_views += 1
                del contrib
                if cache_dir is not None:
                    with atomic_path(self.run.weights_file(f.name)) as tmp:
                        torch.save({"key": key, "camera": f.camera.key(), "weights": vw.state_dict()}, tmp)
            if vw.nnz > 0:
                out.append((i, vw))
        if not out:
            raise Cos3dError(
                f"{self.ply}: no Gaussian is visible in any of the {len(frames)} training views of {self.scene.root}; "
                "the scene and the Gaussians do not match (wrong --gaussians file or coordinate frame?)"
            )
        self._weights = out
        return out


BYTES_PER_WEIGHT = 16
"""Bytes a cached blending weight costs: column index + value, in W and in its stored transpose."""
BYTES_PER_PIXEL = 16
"""Bytes a cached pixel costs beyond its weights: row pointers, pixel index, accumulated alpha."""
MIN_PIXELS_PER_VIEW = 4096


def default_memory_budget_gib(device: torch.device) -> float:
    """A quarter of the available RAM (CPU), or half the free memory of the GPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2 / 2**30
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return avail / 4 / 2**30


def pixels_within(budget: float, contrib: Any, cap: int | None) -> int | None:
    """How many of a view's covered pixels fit in ``budget`` bytes (None: all of them and ``cap`` is
    None): the weights per covered pixel are measured on the view's own contributions."""
    covered = int(torch.unique(contrib.pixel).numel())
    if covered == 0:
        return cap
    per_pixel = contrib.nnz / covered * BYTES_PER_WEIGHT + BYTES_PER_PIXEL
    fit = int(budget // per_pixel)
    if fit >= covered:
        return cap
    if fit < MIN_PIXELS_PER_VIEW:
        raise ConfigError(
            "memory_budget_gib",
            f"leaves {budget / 2**20:.1f} MiB a view, under {MIN_PIXELS_PER_VIEW} pixels of "
            f"{per_pixel:.0f} bytes; raise it, or train fewer views (--max-views) at a smaller size (--max-size)",
        )
    return fit if cap is None else min(cap, fit)


def _bar(it, desc: str, enabled: bool, **kw):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, dynamic_ncols=True, leave=False, **kw)


# ---- stage 0


def _stage_recon(s: _Session) -> dict[str, Any]:
    cfg = s.cfg
    if cfg.gaussians is not None:
        from cos3d.data.ply import read_gaussians, splat_format, write_ply

        src = Path(cfg.gaussians)
        try:
            g = read_gaussians(src)  # .ply, .compressed.ply, .spz, .splat
        except Cos3dError:
            raise
        except Exception as e:
            raise Cos3dError(f"--gaussians {src}: cannot read ({brief(e)})") from None
        g.validate(str(src))
        if splat_format(src) == "ply":
            with atomic_path(s.ply) as tmp:
                shutil.copyfile(src, tmp)  # as it is: extra columns kept
        else:
            write_ply(s.ply, g)  # atomic
        s._gaussians = None
        _log(f"stage 0: imported {g.num} Gaussians from {src} (no held-out PSNR for an imported scene)")
        return {"source": "import", "path": str(src.resolve()), "n_gaussians": g.num, "psnr_test": None}
    from cos3d.pipeline.recon import reconstruct

    rcfg = dataclasses.replace(cfg.recon, seed=cfg.seed, device=str(s.device), threads=cfg.threads, progress=cfg.progress)
    work = s.run.recon_dir
    g, metrics = reconstruct(s.scene, rcfg, work, resume=cfg.resume, progress=cfg.progress)
    n = int(g.num)
    del g
    os.replace(work / "gaussians.ply", s.ply)  # same folder tree: an atomic rename
    s._gaussians = None
    metrics = json.loads(json.dumps(dict(metrics or {}), default=str))
    metrics.pop("history", None)
    psnr = metrics.get("psnr_test")
    ok = isinstance(psnr, (int, float)) and psnr == psnr
    _log(
        f"stage 0: {n} Gaussians, held-out PSNR {psnr:.2f} dB"
        if ok
        else f"stage 0: {n} Gaussians (no held-out views for PSNR)"
    )
    return {
        "source": "recon",
        "iterations": rcfg.iterations,
        "n_gaussians": n,
        "psnr_test": psnr if ok else None,
        "metrics": metrics,
    }


# ---- masks


def _stage_masks(s: _Session) -> dict[str, Any]:
    from cos3d.vision import prepare_masks
    from cos3d.vision.models import mask_cache_dir

    cfg = s.cfg
    models = cfg.models
    provider = models.create_provider(s.native, device=str(s.device))
    embedder = models.create_embedder(device=str(s.device))
    cache = Path(cfg.mask_cache) if cfg.mask_cache is not None else mask_cache_dir(s.native.root, provider, embedder)
    s._mask_dir = cache
    frames = [s.native.frame(f.name) for f in s.train_frames()]  # the 2D models see full-resolution frames
    stats = prepare_masks(s.native, frames, provider, embedder, cache, progress=cfg.progress)
    s._level_counts = None
    counts = s.level_counts()
    if sum(counts.values()) == 0:
        raise Cos3dError(
            f"the {models.masks!r} mask provider found no masks at levels {','.join(cfg.levels)} in any of the "
            f"{len(frames)} training views of {s.scene.root}; check the images (and instance maps for 'dataset'), "
            "try another provider (--masks sam2|classical|dataset) or other --levels"
        )
    if models.oracle_2d:
        _log(
            "note: dataset masks"
            + (" + labels embeddings" if models.embedder == "labels" else "")
            + " follow the oracle-2D protocol; results measure the 3D machinery, not CLIP/SAM"
        )
    return {
        "n_views": len(frames),
        "n_masks": counts,
        "computed": stats.done,
        "cached": stats.skipped,
        "cache": str(cache.resolve()),
        "provider": {"name": provider.name, "model_id": provider.model_id},
        "embedder": {"name": embedder.name, "model_id": embedder.model_id, "dim": int(embedder.dim)},
    }


# ---- stage 1


def _label_tensor(ms, lev: str, vw, device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """``[H*W]`` mask ids of level ``lev`` at the view's training size (nearest resampling of the
    full-resolution masks when the view trains downscaled)."""
    lm = ms.label_map(lev)
    h, w = lm.shape
    if (h, w) != (vw.height, vw.width):
        if abs(w / h - vw.width / vw.height) > 2.0 / min(vw.width, vw.height):
            raise Cos3dError(
                f"masks of view {vw.name} are {w}x{h} but it trains at {vw.width}x{vw.height} (another aspect); "
                "the 2D cache does not belong to these frames: re-run with --stage masks"
            )
        ys = (np.arange(vw.height) + 0.5) * h / vw.height
        xs = (np.arange(vw.width) + 0.5) * w / vw.width
        lm = lm[np.minimum(ys.astype(np.int64), h - 1)[:, None], np.minimum(xs.astype(np.int64), w - 1)[None, :]]
    return torch.from_numpy(lm.astype("int64")).reshape(-1).to(device, dtype)


def _active_levels(s: _Session) -> tuple[list[str], list[str]]:
    present, empty = [], []
    for lev, n in s.level_counts().items():
        (present if n else empty).append(lev)
    if not present:
        raise Cos3dError(
            f"{s.mask_dir}: no masks at levels {','.join(s.cfg.levels)} in any training view; "
            f"re-run with --stage masks, another --masks provider or other --levels"
        )
    return present, empty


def _instance_cfg(cfg: TrainConfig, n_views: int) -> InstanceConfig:
    return dataclasses.replace(cfg.instance, iterations=cfg.stage1_iterations(n_views), seed=cfg.seed)


def _stage_instance(s: _Session) -> dict[str, Any]:
    from cos3d.field.instance import train_instance_field

    cfg = s.cfg
    if s.checkpoint.exists():
        if cfg.resume:
            from cos3d.field.instance import load_checkpoint

            load_checkpoint(s.checkpoint)  # a corrupt checkpoint fails now, not after the weights are built
        else:
            s.checkpoint.unlink()
    g = s.gaussians()
    levels, empty = _active_levels(s)
    if empty:
        _log(f"stage 1: no masks at level(s) {','.join(empty)}; training only {','.join(levels)}")
    t0 = time.perf_counter()
    weights = s.view_weights()
    t_build = time.perf_counter() - t0
    icfg = _instance_cfg(cfg, len(weights))
    mem = sum(vw.nbytes for _, vw in weights)
    _log(
        f"stage 1: {len(weights)} views, {g.num} Gaussians, weights {mem / 2**20:.0f} MiB built in {t_build:.1f} s; "
        f"{icfg.iterations} iterations"
    )
    views = [vw for _, vw in weights]
    labels = []  # int16 mask ids per view and level (mask counts per view stay far below 32767)
    for i, vw in weights:
        ms, _ = s.mask_view(i)
        labels.append({lev: _label_tensor(ms, lev, vw, s.device, torch.int16) for lev in levels})
    hook = (lambda it: cfg.hook("instance", it)) if cfg.hook is not None else None
    feats, stats = train_instance_field(
        views, labels, levels, icfg, checkpoint=s.checkpoint, hook=hook, progress=cfg.progress, log=_log
    )
    data = {
        "version": 1,
        "n_gaussians": g.num,
        "instance_dim": icfg.dim,
        "levels": {lev: {"instance": feats[lev]} for lev in levels},
    }
    s.run.write_fields(data)
    if s.checkpoint.exists():
        s.checkpoint.unlink()
    with contextlib.suppress(OSError):
        s.checkpoint.parent.rmdir()
    return {
        "levels": levels,
        "iterations": icfg.iterations,
        "resumed_from": stats["resumed_from"],
        "weights_build_s": round(t_build, 3),
        "weights_mib": round(mem / 2**20, 1),
        "memory_budget_gib": round(s.budget_bytes() / 2**30, 2),
        "views_sampled_to_budget": s.sampled_views,
        "nnz_per_pixel": round(
            sum(vw.nnz for vw in views) / max(1, sum(sum(int(c.pixels.numel()) for c in vw.chunks) for vw in views)), 2
        ),
        "n_views": len(views),
        "final_loss": stats.get("loss"),
        "train_s": round(stats["time_s"], 3),
    }


# ---- stage 2


def _stage_language(s: _Session) -> dict[str, Any]:
    from cos3d.field.ins2lang import collect_anchors, map_to_language

    cfg = s.cfg
    icfg2 = dataclasses.replace(cfg.ins2lang, seed=cfg.seed)
    data = s.run.read_fields()
    levels = [lev for lev in cfg.levels if "instance" in data["levels"].get(lev, {})]
    if not levels:
        raise Cos3dError(
            f"{s.fields_path}: no instance field for levels {','.join(cfg.levels)}; run --stage instance first"
        )
    g = s.gaussians()
    if int(data["n_gaussians"]) != g.num:
        raise Cos3dError(
            f"{s.fields_path}: fields are for {data['n_gaussians']} Gaussians but {s.ply} has {g.num}; "
            "re-run --stage instance (or delete fields.pt and run with --resume)"
        )
    weights = s.view_weights()

    def rendered_views(lev: str, inst: torch.Tensor):
        """Per view (features [P, d], labels [P], embeddings [M, D], alpha [P]), one view at a time."""
        bar = _bar(weights, f"stage 2 anchors ({lev})", cfg.progress, unit="view")
        with torch.no_grad():
            for i, vw in bar:
                ms, emb = s.mask_view(i)
                F, alpha = vw.render(inst)
                # label_map(lev) holds k + 1 for masks[k] (an index into the whole set, = emb row k)
                lm = _label_tensor(ms, lev, vw, "cpu")
                yield F.cpu(), lm, torch.from_numpy(emb.astype("float32")), alpha.cpu()

    out_levels = {}
    info: dict[str, Any] = {"n_anchors": {}, "dbar": {}, "method": icfg2.method}
    samples = icfg2.mlp_samples_per_view if icfg2.method == "mlp" else 0
    xyz = g.means.detach()
    for lev in levels:
        inst = data["levels"][lev]["instance"].to(s.device, torch.float32)
        anchors = collect_anchors(
            rendered_views(lev, inst),
            min_pixels=icfg2.min_pixels,
            min_alpha=icfg2.min_alpha,
            samples_per_view=samples,
            seed=cfg.seed,
        )
        if len(anchors) == 0:
            raise Cos3dError(
                f"stage 2: no mask at level {lev} covers {icfg2.min_pixels}+ rendered pixels in any training view; "
                "the Gaussians do not cover the masked objects (check stage 0's PSNR)"
            )
        lang = map_to_language(inst, anchors, icfg2, xyz=xyz, progress=cfg.progress).cpu()
        view_names = [vw.name for _, vw in weights]
        out_levels[lev] = {
            "instance": data["levels"][lev]["instance"],
            "language": lang,
            "anchors": anchors.anchors.cpu(),
            "targets": anchors.targets.cpu(),
            "dbar": float(anchors.dbar),
            "anchor_view": [view_names[int(v)] for v in anchors.view],
            "anchor_mask": anchors.mask.cpu(),
        }
        info["n_anchors"][lev] = len(anchors)
        info["dbar"][lev] = round(float(anchors.dbar), 5)
    data["levels"] = out_levels
    man = json.loads((s.mask_dir / "manifest.json").read_text())
    data["embedder"] = man.get("embedder", {})
    data["language_dim"] = int(next(iter(out_levels.values()))["language"].shape[1])
    data["ins2lang"] = dataclasses.asdict(icfg2)
    s.run.write_fields(data)
    return info


_STAGE_FN = {"recon": _stage_recon, "masks": _stage_masks, "instance": _stage_instance, "language": _stage_language}


def _prepare_run(
    cfg: TrainConfig, out: Path, scene_root: Path, config_files: tuple[str, ...], todo: tuple[str, ...]
) -> RunRecord:
    run = RunFolder(out)
    state = run.read_record()
    if state is not None:
        kept = [p for p in (run.recon_dir / "checkpoint.pt", run.instance_checkpoint) if p.is_file()]
        if kept and not (cfg.resume or cfg.restart):  # a killed run's work is never discarded silently
            raise ConfigError(
                "out",
                f"{out} holds an interrupted run: checkpoint {kept[0]} exists; continue it with --resume, or "
                "start the interrupted stage over with --restart",
            )
        recorded = state.scene
        if recorded and Path(recorded) != scene_root:
            raise ConfigError(
                "out",
                f"{out} holds a run of scene {recorded}, not {scene_root}; choose another folder (or delete it)",
            )
        done = [st for st in todo if state.done(st)]
        if done and not (cfg.resume or cfg.restart):
            raise ConfigError(
                "out",
                f"{out} holds a run whose stages {', '.join(done)} are finished; continue it with --resume, or "
                "re-run them with --restart (finished stages stay valid until their new output replaces them)",
            )
    else:
        state = run.new_record(scene_root)
    state.data["scene"] = str(scene_root)
    state.data["scene_arg"] = cfg.scene
    state.data["config"] = to_dict(cfg)
    state.data["config_files"] = list(config_files)
    state.data["versions"] = _versions()
    state.data.setdefault("counts", {})
    state.data.setdefault("timings", {})
    state.save()
    return state


def train(cfg: TrainConfig, *, config_files: tuple[str, ...] = ()) -> Path:
    """Run ``cfg.stage`` (or every stage) of ``cos3d train``; returns the run folder.

    ``config_files`` (the presets/files the config came from) are recorded in ``run.json``.

    Raises :class:`Cos3dError` for bad input (unknown scene, a run folder of another scene, no masks,
    a corrupt ``fields.pt`` or checkpoint), each naming the file or flag to fix.
    """

    cfg.validate()
    from cos3d.capture import scene_for_training

    cfg = scene_for_training(cfg)
    old_threads = torch.get_num_threads()
    if cfg.threads is None and os.environ.get("COS3D_THREADS"):
        try:
            cfg = dataclasses.replace(cfg, threads=max(1, int(os.environ["COS3D_THREADS"])))
        except ValueError:
            raise Cos3dError(
                f"$COS3D_THREADS must be a positive integer, got {os.environ['COS3D_THREADS']!r}"
            ) from None
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    try:
        return _train(cfg, tuple(config_files))
    finally:
        torch.set_num_threads(old_threads)


def _train(cfg: TrainConfig, config_files: tuple[str, ...]) -> Path:
    from cos3d.readers import resolve_scene_path

    scene_dir = resolve_scene_path(cfg.scene, cfg.data_root)
    out = Path(cfg.out) if cfg.out is not None else Path("runs") / scene_dir.resolve().name
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} is a file; choose a folder")
    if RunFolder(out).is_foreign():  # before the lock writes into it
        raise ConfigError("out", f"{out} exists and is not a cos3d run folder; choose another folder or empty it")
    with writer_lock(out, flag="--out", what="train"):  # one writer per run; checks --out can be written
        return _train_locked(cfg, config_files, out)


def _train_locked(cfg: TrainConfig, config_files: tuple[str, ...], out: Path) -> Path:
    from cos3d.readers import load_scene
    from cos3d.pipeline.views import training_scene

    native = load_scene(cfg.scene, cfg.data_root)
    scene_root = Path(native.root).resolve()
    device = resolve_device(cfg.device)
    scene, views = training_scene(native, cfg.views)
    todo: tuple[str, ...] = STAGES if cfg.stage == "all" else (cfg.stage,)
    if cfg.gaussians is not None and "recon" not in todo and not RunFolder(out).ply.is_file():
        todo = ("recon", *todo)
    state = _prepare_run(cfg, out, scene_root, config_files, todo)
    if "masks" in todo and not (cfg.resume and state.done("masks")):
        # the 2D cache lives in the scene folder by default: a read-only scene fails now, not after stage 0
        check_writable(Path(cfg.mask_cache) if cfg.mask_cache is not None else native.root / "cos3d_masks",
                       "--mask-cache")
    run_dir = state.folder.root
    state.data["views"] = views
    capture = scene_root / "capture.json"
    if capture.is_file():  # poses from structure-from-motion: the scene's units are not metres
        try:
            c = json.loads(capture.read_text())
            keep = ("source", "registered", "frames", "scale", "sfm_to_scene", "units")
            state.data["capture"] = {k: c.get(k) for k in keep}
        except (OSError, ValueError):
            raise Cos3dError(f"{capture}: not a capture.json file; run `cos3d prepare images|video` again") from None
    state.save()
    s = _Session(cfg, state, native, scene, device)
    _log(f"cos3d train: scene {scene_root} -> run {run_dir} on {device}")
    _log(_views_line(views))
    t_all = time.perf_counter()
    for stage in todo:
        title = STAGE_TITLES[stage]
        if cfg.resume and state.done(stage) and not state.running(stage) and s.artefact_ok(stage):
            _log(f"{title}: finished earlier, skipped (--resume)")
            continue
        # a stage needs the artefacts of the stages before it
        for prev in STAGES[: STAGES.index(stage)]:
            if prev in todo:
                continue
            if not (state.done(prev) and s.artefact_ok(prev)):
                raise ConfigError(
                    "stage",
                    f"{stage} needs stage {prev}'s output in {run_dir}, which is missing; run --stage {prev} "
                    "first, or --stage all",
                )
        if state.running(stage) and not cfg.resume:  # killed earlier with no checkpoint (one would be refused)
            _log(f"{title}: interrupted in an earlier run, with no checkpoint to continue from; starting it over")
        state.begin(stage)  # a finished stage stays valid (loadable) until its new output replaces it
        t0 = time.perf_counter()
        info = _STAGE_FN[stage](s)
        dt = time.perf_counter() - t0
        # the stage's new output has replaced the old: later stages were computed from the old one
        if stage != STAGES[-1]:
            state.invalidate_from(STAGES[STAGES.index(stage) + 1])
        state.mark(stage, dt, **info, peak_rss_gib=round(peak_rss_gib(), 3))
        state.data["timings"][stage] = round(dt, 3)
        _update_counts(s, stage, info)
        state.save()
        _log(f"{title}: done in {dt:.1f} s")
    fresh_state = state.folder.read_query_state() is not None
    if "language" in todo and state.done("language") and not state.running("language") and not fresh_state:
        from cos3d.pipeline.trained import load

        t0 = time.perf_counter()
        load(run_dir, device=device).save_query_state()
        state.data["timings"]["query_state"] = round(time.perf_counter() - t0, 3)
        _log(f"query index and no-target calibration saved in {time.perf_counter() - t0:.1f} s")
    state.data["timings"]["total_last_call"] = round(time.perf_counter() - t_all, 3)
    state.data["peak_rss_gib"] = round(peak_rss_gib(), 3)
    state.save()
    return run_dir


def peak_rss_gib() -> float:
    """This process's peak resident memory so far, GiB (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def _views_line(v: dict[str, Any]) -> str:
    size = v["train_size"]
    size_txt = f"{size[0]}x{size[1]}" if isinstance(size[0], int) else "mixed sizes"
    sel = v["selection"]
    picked = (
        f", the sharpest of each of {sel['kept']} even runs of {sel['from']} train frames"
        if sel.get("scored")
        else ""
    )
    return (
        f"views: {v['train']} train + {v['test']} test of {v['frames']} frames, training at {size_txt} "
        f"(frames {v['native_size'][0]}x{v['native_size'][1]}){picked}; --max-views, --max-size to change"
    )


def _update_counts(s: _Session, stage: str, info: dict[str, Any]) -> None:
    c = s.state.data.setdefault("counts", {})
    if stage == "recon":
        c["n_gaussians"] = info.get("n_gaussians")
        s.state.data.setdefault("metrics", {})["psnr_test"] = info.get("psnr_test")
    elif stage == "masks":
        c["n_views"] = info["n_views"]
        c["n_masks"] = info["n_masks"]
        s.state.data["embedder"] = info["embedder"]
        s.state.data["provider"] = info["provider"]
    elif stage == "instance":
        c["n_views_visible"] = info["n_views"]
        c["n_gaussians"] = s.gaussians().num
    elif stage == "language":
        c["n_anchors"] = info["n_anchors"]
        c["dbar"] = info["dbar"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `cos3d train`")
