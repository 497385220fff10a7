"""``cos3d train``: stage 0 (Gaussians) → masks → stage 1 (instance field) → stage 2 (Ins2Lang).

Each stage writes its artefacts atomically into the run folder (docs/architecture.md)::

    RUN/run.json        config, package versions, per-stage status + timings, counts, metrics
    RUN/gaussians.ply   stage 0 (or the scene imported with --gaussians)
    RUN/masks/          the per-view mask + embedding cache (cos3d.vision.cache) of the training views
    RUN/fields.pt       per level: instance [N, d], language [N, D] fp16, anchors, targets, d̄
    RUN/checkpoints/    stage 1's resumable checkpoint while it runs (removed when the stage ends)

A stage is *finished* when its artefact exists and ``run.json`` marks it done; ``resume=True`` skips
finished stages, and stage 1 continues from its last checkpoint. Re-running a stage marks every
later stage as not done.

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
from typing import Any, Callable

import torch

from cos3d.atomic import atomic_path, write_json
from cos3d.device import resolve_device
from cos3d.errors import Cos3dError
from cos3d.field.ins2lang import Ins2LangConfig
from cos3d.field.instance import InstanceConfig

__all__ = ["STAGES", "FAST_ITERATIONS", "FULL_ITERATIONS", "TrainConfig", "train", "read_fields", "FIELDS_FORMAT"]

STAGES = ("recon", "masks", "instance", "language")
"""Stage names in order (``--stage``; ``all`` runs every one)."""
STAGE_TITLES = {
    "recon": "stage 0 gaussians",
    "masks": "masks",
    "instance": "stage 1 instance",
    "language": "stage 2 language",
}
FAST_ITERATIONS = (50, 500, 3000)
"""Stage-1 iterations with ``fast=True``: 50 per training view, clamped to [500, 3000] (COS3D's fast
setting, 3k, is the cap; each iteration sees a whole view, so small scenes need fewer)."""
FULL_ITERATIONS = (300, 3000, 30000)
"""Stage-1 iterations otherwise: 300 per training view, clamped to [3000, 30000] (COS3D's 30k cap)."""
FIELDS_FORMAT = "cos3d-fields"
RUN_FORMAT = "cos3d-run"
MASK_PROVIDERS = ("dataset", "sam2", "classical")
EMBEDDERS = ("labels", "openclip", "siglip")


@dataclass
class TrainConfig:
    """What ``cos3d train`` does. Every field is a CLI flag of the same name."""

    scene: str
    """Scene folder, or a name under ``data_root``."""
    out: Path | None = None
    """Run folder (default ``runs/<scene folder name>``)."""
    data_root: Path | None = None
    """Where named scenes live (default ``$COS3D_DATA``, else ``./data``)."""
    masks: str = "dataset"
    """Mask provider: ``dataset`` (the scene's instance maps; oracle-2D), ``sam2``, ``classical``."""
    embedder: str = "labels"
    """Mask embedder: ``labels`` (names → sentence encoder; oracle-2D), ``openclip``, ``siglip``."""
    fast: bool = False
    """Fast presets: stage 0's fast preset, :data:`FAST_ITERATIONS` stage-1 iterations."""
    resume: bool = False
    """Skip finished stages; continue stage 1 from its checkpoint."""
    stage: str = "all"
    """Run one stage (``recon``, ``masks``, ``instance``, ``language``) or ``all``."""
    gaussians: Path | None = None
    """Import a trained scene (.ply: graphdeco/gsplat/splatfacto) instead of running stage 0."""
    levels: tuple[str, ...] = ("l", "s")
    """Mask levels to train a field for (``s``, ``m``, ``l``)."""
    iterations: int | None = None
    """Stage-1 iterations (default: by ``fast``)."""
    seed: int = 0
    """Seed of stage 1 (init, view order) and of stage 2's samplers."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    max_per_pixel: int | None = None
    """Keep at most this many blending weights per pixel in the cached view weights (None: all)."""
    max_pixels_per_view: int | None = None
    """Keep the weights of only a seeded sample of this many pixels per view (bounds memory on large
    scenes; None keeps every covered pixel)."""
    cache_weights: bool = False
    """Also keep the per-view blending weights on disk (``RUN/cache/weights``) for later runs."""
    instance: InstanceConfig = field(default_factory=InstanceConfig)
    """Stage-1 hyperparameters (``iterations`` and ``seed`` above take precedence)."""
    ins2lang: Ins2LangConfig = field(default_factory=Ins2LangConfig)
    """Stage-2 settings (kernel regression / MLP, smoothing)."""
    mask_options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the mask provider (``perturb``, ``checkpoint`` ...)."""
    embedder_options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the embedder (``checkpoint``, ``model`` ...)."""
    recon_options: dict[str, Any] = field(default_factory=dict)
    """Overrides of stage 0's ``ReconConfig`` fields."""
    threads: int | None = None
    """CPU threads for torch while training (None: ``$COS3D_THREADS`` if set, else torch's default). On a
    busy machine 1 thread can be several times faster than an oversubscribed default."""
    progress: bool = True
    """Show progress bars."""
    hook: Callable[[str, int], None] | None = field(default=None, repr=False, compare=False)
    """Called as ``hook(stage, iteration)`` after each stage-1 step (tests simulate kills with it)."""

    def stage1_iterations(self, n_views: int) -> int:
        """``iterations`` if set, else the preset's rule for ``n_views`` training views."""
        if self.iterations is not None:
            return int(self.iterations)
        per_view, lo, hi = FAST_ITERATIONS if self.fast else FULL_ITERATIONS
        return int(min(hi, max(lo, per_view * n_views)))

    def validate(self) -> None:
        if self.masks not in MASK_PROVIDERS:
            raise Cos3dError(f"--masks must be one of {', '.join(MASK_PROVIDERS)}, got {self.masks!r}")
        if self.embedder not in EMBEDDERS:
            raise Cos3dError(f"--embedder must be one of {', '.join(EMBEDDERS)}, got {self.embedder!r}")
        if self.embedder == "labels" and self.masks != "dataset":
            raise Cos3dError(
                "--embedder labels embeds mask names, which only --masks dataset provides (oracle-2D protocol); "
                "use --embedder openclip or siglip with --masks sam2/classical"
            )
        if self.stage not in STAGES + ("all",):
            raise Cos3dError(f"--stage must be one of {', '.join(STAGES)}, all; got {self.stage!r}")
        if not self.levels:
            raise Cos3dError("--levels must name at least one level (s, m, l)")
        for lev in self.levels:
            if lev not in ("s", "m", "l"):
                raise Cos3dError(f"--levels: unknown level {lev!r}; use a comma list of s, m, l (e.g. l,s)")
        if len(set(self.levels)) != len(self.levels):
            raise Cos3dError(f"--levels lists a level twice: {','.join(self.levels)}")
        if self.iterations is not None and self.iterations < 1:
            raise Cos3dError(f"--iterations must be positive, got {self.iterations}")
        if self.max_per_pixel is not None and self.max_per_pixel < 1:
            raise Cos3dError(f"--max-per-pixel must be positive, got {self.max_per_pixel}")
        if self.max_pixels_per_view is not None and self.max_pixels_per_view < 100:
            raise Cos3dError(f"--max-pixels-per-view must be at least 100, got {self.max_pixels_per_view}")
        if self.gaussians is not None and not Path(self.gaussians).is_file():
            raise Cos3dError(f"--gaussians {self.gaussians}: no such file")
        if self.threads is not None and self.threads < 1:
            raise Cos3dError(f"--threads must be positive, got {self.threads}")
        if self.ins2lang.method not in ("kernel", "mlp"):
            raise Cos3dError(f"--ins2lang must be kernel or mlp, got {self.ins2lang.method!r}")

    def to_json(self) -> dict[str, Any]:
        d = {}
        for f in dataclasses.fields(self):
            if f.name == "hook":
                continue
            v = getattr(self, f.name)
            if dataclasses.is_dataclass(v):
                v = dataclasses.asdict(v)
            elif isinstance(v, Path):
                v = str(v)
            elif isinstance(v, tuple):
                v = list(v)
            d[f.name] = v
        return json.loads(json.dumps(d, default=str))


# --------------------------------------------------------------------------------------------------
# Run folder bookkeeping


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


class RunState:
    """``run.json``: read, updated per stage, written atomically."""

    def __init__(self, run_dir: Path, data: dict[str, Any]):
        self.run_dir = run_dir
        self.data = data

    @property
    def path(self) -> Path:
        return self.run_dir / "run.json"

    @classmethod
    def read(cls, run_dir: Path) -> "RunState | None":
        p = run_dir / "run.json"
        if not p.is_file():
            return None
        try:
            data = json.loads(p.read_text())
            if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
                raise ValueError("not a cos3d run.json")
        except (OSError, ValueError) as e:
            raise Cos3dError(f"{p}: unreadable run record ({e}); delete {run_dir} or choose another --out") from None
        return cls(run_dir, data)

    def save(self) -> None:
        write_json(self.path, self.data)

    def done(self, stage: str) -> bool:
        return bool(self.data.get("stages", {}).get(stage, {}).get("done"))

    def mark(self, stage: str, seconds: float, **info: Any) -> None:
        st = self.data.setdefault("stages", {})
        st[stage] = {"done": True, "time_s": round(seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        self.save()

    def invalidate_from(self, stage: str) -> None:
        st = self.data.setdefault("stages", {})
        for s in STAGES[STAGES.index(stage) :]:
            if s in st:
                st[s]["done"] = False
        self.save()


# --------------------------------------------------------------------------------------------------
# fields.pt


def read_fields(path: str | Path) -> dict[str, Any]:
    """Load ``fields.pt``; raises :class:`Cos3dError` naming the file when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise Cos3dError(f"{path}: missing; run `cos3d train` (stages instance and language) for this run")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if (
            not isinstance(data, dict)
            or data.get("format") != FIELDS_FORMAT
            or not isinstance(data.get("levels"), dict)
        ):
            raise ValueError("not a cos3d fields file")
    except Exception as e:
        raise Cos3dError(
            f"{path}: corrupt fields file ({type(e).__name__}: {str(e)[:100]}); delete it and re-run "
            "`cos3d train --resume` to recompute stages 1-2"
        ) from None
    return data


def _write_fields(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


# --------------------------------------------------------------------------------------------------
# The pipeline


def _log(msg: str) -> None:
    print(msg, flush=True)


class _Session:
    """State shared by the stages of one ``train`` call (loaded lazily, kept in memory)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, state: RunState, scene: Any, device: torch.device):
        self.cfg = cfg
        self.run_dir = run_dir
        self.state = state
        self.scene = scene
        self.device = device
        self._gaussians = None
        self._weights = None
        self._masks = None

    # ---- paths
    @property
    def ply(self) -> Path:
        return self.run_dir / "gaussians.ply"

    @property
    def mask_dir(self) -> Path:
        return self.run_dir / "masks"

    @property
    def fields_path(self) -> Path:
        return self.run_dir / "fields.pt"

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "instance.pt"

    def train_frames(self) -> list:
        return list(self.scene.split("train"))

    # ---- artefacts
    def artefact_ok(self, stage: str) -> bool:
        if stage == "recon":
            return self.ply.is_file()
        if stage == "masks":
            man = self.mask_dir / "manifest.json"
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
            data = read_fields(self.fields_path)
            key = "instance" if stage == "instance" else "language"
            return all(key in data["levels"].get(lev, {}) for lev in self.cfg.levels)
        raise AssertionError(stage)

    def gaussians(self):
        if self._gaussians is None:
            from cos3d.ply import read_ply

            if not self.ply.is_file():
                raise Cos3dError(f"{self.ply}: missing; run stage recon first (--stage recon or --stage all)")
            g = read_ply(self.ply, features=False).validate(str(self.ply))
            self._gaussians = g.detach().to(self.device)
        return self._gaussians

    def masks(self) -> list[tuple[Any, Any, Any]]:
        """``[(frame, MaskSet, emb [M, D] fp16)]`` for the training views."""
        if self._masks is None:
            from cos3d.vision import load_view

            self._masks = [(f, *load_view(self.mask_dir, f)) for f in self.train_frames()]
        return self._masks

    def view_weights(self):
        """``[(frame index in masks(), ViewWeights)]`` for training views that see any Gaussian."""
        if self._weights is not None:
            return self._weights
        from cos3d.field.instance import ViewWeights
        from cos3d.render import compute_contributions

        g = self.gaussians()
        frames = self.train_frames()
        cache_dir = self.run_dir / "cache" / "weights" if self.cfg.cache_weights else None
        key = None
        if cache_dir is not None:
            st = self.ply.stat()
            key = (
                f"{st.st_size}:{st.st_mtime_ns}:{self.cfg.max_per_pixel}:{self.cfg.max_pixels_per_view}:"
                f"{self.cfg.instance.n_samples}:{self.cfg.seed}"
            )
        out = []
        bar = _bar(frames, "view weights", self.cfg.progress, unit="view")
        for i, f in enumerate(bar):
            vw = None
            if cache_dir is not None:
                p = cache_dir / f"{f.name}.pt"
                if p.is_file():
                    try:
                        st = torch.load(p, map_location="cpu", weights_only=True)
                        if st.get("key") == key and st.get("camera") == _camera_key(f.camera):
                            vw = ViewWeights.from_state_dict(st["weights"], device=self.device)
                    except Exception:  # a corrupt cache entry is rebuilt
                        vw = None
            if vw is None:
                contrib = compute_contributions(g, f.camera, max_per_pixel=self.cfg.max_per_pixel)
                vw = ViewWeights.from_contributions(
                    contrib,
                    g.num,
                    chunk_size=self.cfg.instance.n_samples,
                    seed=self.cfg.seed,
                    name=f.name,
                    max_pixels=self.cfg.max_pixels_per_view,
                )
                del contrib
                if cache_dir is not None:
                    with atomic_path(cache_dir / f"{f.name}.pt") as tmp:
                        torch.save({"key": key, "camera": _camera_key(f.camera), "weights": vw.state_dict()}, tmp)
            if vw.nnz > 0:
                out.append((i, vw))
        if not out:
            raise Cos3dError(
                f"{self.ply}: no Gaussian is visible in any of the {len(frames)} training views of {self.scene.root}; "
                "the scene and the Gaussians do not match (wrong --gaussians file or coordinate frame?)"
            )
        self._weights = out
        return out


def _camera_key(cam) -> str:
    import hashlib

    return hashlib.sha1(cam.K.tobytes() + cam.c2w.tobytes() + f"{cam.width}x{cam.height}".encode()).hexdigest()[:16]


def _bar(it, desc: str, enabled: bool, **kw):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, dynamic_ncols=True, leave=False, **kw)


# ---- stage 0


def _stage_recon(s: _Session) -> dict[str, Any]:
    cfg = s.cfg
    if cfg.gaussians is not None:
        from cos3d.ply import read_ply

        src = Path(cfg.gaussians)
        try:
            g = read_ply(src)
        except Cos3dError:
            raise
        except Exception as e:
            raise Cos3dError(f"--gaussians {src}: cannot read ({type(e).__name__}: {e})") from None
        g.validate(str(src))
        with atomic_path(s.ply) as tmp:
            shutil.copyfile(src, tmp)
        s._gaussians = None
        _log(f"stage 0: imported {g.num} Gaussians from {src} (no held-out PSNR for an imported scene)")
        return {"source": "import", "path": str(src.resolve()), "n_gaussians": g.num, "psnr_test": None}
    import os

    from cos3d.recon import stage0

    overrides = dict(cfg.recon_options)
    overrides.setdefault("seed", cfg.seed)
    overrides.setdefault("device", str(s.device))
    if cfg.threads:
        overrides.setdefault("threads", cfg.threads)
    work = s.run_dir / "recon"
    g, metrics = stage0(s.scene, work, fast=cfg.fast, resume=cfg.resume, progress=cfg.progress, **overrides)
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
        "fast": cfg.fast,
        "n_gaussians": n,
        "psnr_test": psnr if ok else None,
        "metrics": metrics,
    }


# ---- masks


def _stage_masks(s: _Session) -> dict[str, Any]:
    from cos3d.vision import create_embedder, create_mask_provider, prepare_masks

    cfg = s.cfg
    mopts = dict(cfg.mask_options)
    if cfg.masks == "dataset":
        mopts.setdefault("scene", s.scene)
    if cfg.masks == "sam2":
        mopts.setdefault("device", str(s.device))
    provider = create_mask_provider(cfg.masks, **mopts)
    eopts = dict(cfg.embedder_options)
    eopts.setdefault("device", "cpu" if cfg.embedder == "labels" else str(s.device))
    embedder = create_embedder(cfg.embedder, **eopts)
    frames = s.train_frames()
    stats = prepare_masks(s.scene, frames, provider, embedder, s.mask_dir, progress=cfg.progress)
    s._masks = None
    counts = {lev: 0 for lev in cfg.levels}
    from cos3d.vision import level_index

    for _, ms, _ in s.masks():
        for lev in cfg.levels:
            counts[lev] += int((ms.level == level_index(lev)).sum())
    if sum(counts.values()) == 0:
        raise Cos3dError(
            f"the {cfg.masks!r} mask provider found no masks at levels {','.join(cfg.levels)} in any of the "
            f"{len(frames)} training views of {s.scene.root}; check the images (and instance maps for 'dataset'), "
            "try another provider (--masks sam2|classical|dataset) or other --levels"
        )
    if cfg.masks == "dataset":
        _log(
            "note: dataset masks"
            + (" + labels embeddings" if cfg.embedder == "labels" else "")
            + " follow the oracle-2D protocol; results measure the 3D machinery, not CLIP/SAM"
        )
    return {
        "n_views": len(frames),
        "n_masks": counts,
        "computed": stats.done,
        "cached": stats.skipped,
        "provider": {"name": cfg.masks, "model_id": provider.model_id},
        "embedder": {"name": cfg.embedder, "model_id": embedder.model_id, "dim": int(embedder.dim)},
    }


# ---- stage 1


def _label_tensor(ms, lev: str, vw, device) -> torch.Tensor:
    lm = ms.label_map(lev)
    if lm.shape != (vw.height, vw.width):
        raise Cos3dError(
            f"masks of view {vw.name} are {lm.shape[1]}x{lm.shape[0]} but its camera is {vw.width}x{vw.height}; "
            "the mask cache is stale: delete the run's masks/ folder and re-run"
        )
    return torch.from_numpy(lm.astype("int64")).reshape(-1).to(device)


def _active_levels(s: _Session) -> tuple[list[str], list[str]]:
    from cos3d.vision import level_index

    present, empty = [], []
    for lev in s.cfg.levels:
        n = sum(int((ms.level == level_index(lev)).sum()) for _, ms, _ in s.masks())
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
    masks = s.masks()
    views = [vw for _, vw in weights]
    labels = [{lev: _label_tensor(masks[i][1], lev, vw, s.device) for lev in levels} for i, vw in weights]
    hook = (lambda it: cfg.hook("instance", it)) if cfg.hook is not None else None
    feats, stats = train_instance_field(
        views, labels, levels, icfg, checkpoint=s.checkpoint, hook=hook, progress=cfg.progress, log=_log
    )
    data = {
        "format": FIELDS_FORMAT,
        "version": 1,
        "n_gaussians": g.num,
        "instance_dim": icfg.dim,
        "levels": {lev: {"instance": feats[lev]} for lev in levels},
    }
    _write_fields(s.fields_path, data)
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
    data = read_fields(s.fields_path)
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
    masks = s.masks()

    def rendered_views(lev: str, inst: torch.Tensor):
        """Per view (features [P, d], labels [P], embeddings [M, D], alpha [P]), one view at a time."""
        bar = _bar(weights, f"stage 2 anchors ({lev})", cfg.progress, unit="view")
        with torch.no_grad():
            for i, vw in bar:
                _, ms, emb = masks[i]
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
    _write_fields(s.fields_path, data)
    return info


_STAGE_FN = {"recon": _stage_recon, "masks": _stage_masks, "instance": _stage_instance, "language": _stage_language}


def _prepare_run(cfg: TrainConfig, scene_root: Path) -> tuple[Path, RunState]:
    out = Path(cfg.out) if cfg.out is not None else Path("runs") / scene_root.name
    if out.exists() and not out.is_dir():
        raise Cos3dError(f"--out {out} is a file; choose a folder")
    state = RunState.read(out) if out.is_dir() else None
    if state is None and out.is_dir() and any(out.iterdir()):
        known = {"run.json", "gaussians.ply", "masks", "fields.pt", "checkpoints", "recon", "cache"}
        if not {p.name for p in out.iterdir()} <= known:
            raise Cos3dError(f"--out {out} exists and is not a cos3d run folder; choose another --out or empty it")
    if state is not None:
        recorded = state.data.get("scene")
        if recorded and Path(recorded) != scene_root:
            raise Cos3dError(
                f"--out {out} holds a run of scene {recorded}, not {scene_root}; choose another --out "
                "(or delete the folder)" + ("" if cfg.resume else "; --resume continues a run of the same scene only")
            )
    if state is None:
        state = RunState(out, {"format": RUN_FORMAT, "version": 1, "scene": str(scene_root), "stages": {}})
    state.data["scene"] = str(scene_root)
    state.data["scene_arg"] = cfg.scene
    state.data["config"] = cfg.to_json()
    state.data["versions"] = _versions()
    state.data.setdefault("counts", {})
    state.data.setdefault("timings", {})
    out.mkdir(parents=True, exist_ok=True)
    state.save()
    return out, state


def train(cfg: TrainConfig) -> Path:
    """Run ``cfg.stage`` (or every stage) of ``cos3d train``; returns the run folder.

    Raises :class:`Cos3dError` for bad input (unknown scene, a run folder of another scene, no masks,
    a corrupt ``fields.pt`` or checkpoint), each naming the file or flag to fix.
    """

    cfg.validate()
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
        return _train(cfg)
    finally:
        torch.set_num_threads(old_threads)


def _train(cfg: TrainConfig) -> Path:
    from cos3d.readers import load_scene

    scene = load_scene(cfg.scene, cfg.data_root)
    scene_root = Path(scene.root).resolve()
    device = resolve_device(cfg.device)
    run_dir, state = _prepare_run(cfg, scene_root)
    s = _Session(cfg, run_dir, state, scene, device)
    todo = STAGES if cfg.stage == "all" else (cfg.stage,)
    if cfg.gaussians is not None and "recon" not in todo and not s.ply.is_file():
        todo = ("recon",) + tuple(todo)
    _log(f"cos3d train: scene {scene_root} -> run {run_dir} on {device}")
    t_all = time.perf_counter()
    for stage in todo:
        title = STAGE_TITLES[stage]
        if cfg.resume and state.done(stage) and s.artefact_ok(stage):
            _log(f"{title}: finished earlier, skipped (--resume)")
            continue
        # a stage needs the artefacts of the stages before it
        for prev in STAGES[: STAGES.index(stage)]:
            if prev in todo:
                continue
            if not (state.done(prev) and s.artefact_ok(prev)):
                raise Cos3dError(
                    f"--stage {stage} needs stage {prev}'s output in {run_dir}, which is missing; run --stage {prev} "
                    "first, or --stage all"
                )
        if stage == "recon" and cfg.gaussians is None and cfg.resume is False and s.ply.is_file():
            pass  # re-running stage 0 replaces gaussians.ply
        state.invalidate_from(stage)  # a stage that is re-run (or killed) is not done, nor are its successors
        t0 = time.perf_counter()
        info = _STAGE_FN[stage](s)
        dt = time.perf_counter() - t0
        state.mark(stage, dt, **info)
        state.data["timings"][stage] = round(dt, 3)
        _update_counts(s, stage, info)
        state.save()
        _log(f"{title}: done in {dt:.1f} s")
    state.data["timings"]["total_last_call"] = round(time.perf_counter() - t_all, 3)
    state.save()
    return run_dir


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
