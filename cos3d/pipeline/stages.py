"""The four stages of ``cos3d train``, one function each: ``Session -> info`` (what ``run.json`` records).

- :func:`stage_recon` — stage 0: the Gaussians (:mod:`cos3d.pipeline.recon`), or an imported splat file;
- :func:`stage_masks` — the 2D masks and their embeddings into the shared cache (:mod:`cos3d.vision.cache`);
- :func:`stage_instance` — stage 1: the instance field (:mod:`cos3d.field.instance`);
- :func:`stage_language` — stage 2: instance-to-language mapping (:mod:`cos3d.field.ins2lang`).

Each writes its artefact atomically through the run folder; :mod:`cos3d.pipeline.runner` orders them,
records their status and decides what ``--resume`` skips.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cos3d.core.atomic import atomic_path
from cos3d.core.errors import Cos3dError, brief
from cos3d.field.instance import InstanceConfig
from cos3d.field.view_weights import ViewWeights
from cos3d.pipeline.fields_file import FieldsFile, LevelRecord
from cos3d.pipeline.session import Session, log, progress_bar
from cos3d.pipeline.train_config import TrainConfig
from cos3d.vision.masks import MaskSet
from cos3d.pipeline.recon import reconstruct
from cos3d.vision import prepare_masks
from cos3d.vision.models import mask_cache_dir
from cos3d.vision.registry import protocol_label
from cos3d.field.ins2lang import collect_anchors, map_to_language
from cos3d.data.ply import read_gaussians, splat_format, write_ply
from cos3d.field.instance import load_checkpoint, train_instance_field

__all__ = ["STAGE_FUNCTIONS", "StepCallback", "label_tensor", "stage_instance", "stage_language", "stage_masks",
           "stage_recon"]

StepCallback = Callable[[str, int], None]
"""Called as ``on_step(stage, iteration)`` after each checkpointed stage-1 step (progress reporting)."""


# ---- stage 0


def stage_recon(s: Session, on_step: StepCallback | None = None) -> dict[str, Any]:
    cfg = s.cfg
    if cfg.gaussians is not None:
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
        log(f"stage 0: imported {g.num} Gaussians from {src} (no held-out PSNR for an imported scene)")
        return {"source": "import", "path": str(src.resolve()), "n_gaussians": g.num, "psnr_test": None}

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
    log(
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


def stage_masks(s: Session, on_step: StepCallback | None = None) -> dict[str, Any]:
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
        label = protocol_label(models.masks, models.embedder)
        label = "oracle-2D masks with a real embedder" if label == "real 2D models" else f"the {label} protocol"
        log(f"note: dataset masks + {models.embedder} embeddings follow {label}; results measure the 3D machinery, "
            "not SAM" + ("" if label.endswith("real embedder") else "/CLIP"))
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


def label_tensor(ms: MaskSet, lev: str, vw: ViewWeights, device: str | torch.device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
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


def _active_levels(s: Session) -> tuple[list[str], list[str]]:
    present: list[str] = []
    empty: list[str] = []
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


def stage_instance(s: Session, on_step: StepCallback | None = None) -> dict[str, Any]:
    cfg = s.cfg
    if s.checkpoint.exists():
        if cfg.resume:
            load_checkpoint(s.checkpoint)  # a corrupt checkpoint fails now, not after the weights are built
        else:
            s.checkpoint.unlink()
    g = s.gaussians()
    levels, empty = _active_levels(s)
    if empty:
        log(f"stage 1: no masks at level(s) {','.join(empty)}; training only {','.join(levels)}")
    t0 = time.perf_counter()
    weights = s.view_weights()
    t_build = time.perf_counter() - t0
    icfg = _instance_cfg(cfg, len(weights))
    mem = sum(vw.nbytes for _, vw in weights)
    log(
        f"stage 1: {len(weights)} views, {g.num} Gaussians, weights {mem / 2**20:.0f} MiB built in {t_build:.1f} s; "
        f"{icfg.iterations} iterations"
    )
    views = [vw for _, vw in weights]
    labels = []  # int16 mask ids per view and level (mask counts per view stay far below 32767)
    for i, vw in weights:
        ms, _ = s.mask_view(i)
        labels.append({lev: label_tensor(ms, lev, vw, s.device, torch.int16) for lev in levels})
    hook = (lambda it: on_step("instance", it)) if on_step is not None else None
    feats, stats = train_instance_field(
        views, labels, levels, icfg, checkpoint=s.checkpoint, hook=hook, progress=cfg.progress, log=log
    )
    s.run.write_fields(FieldsFile(
        n_gaussians=g.num, instance_dim=icfg.dim, levels={lev: LevelRecord(instance=feats[lev]) for lev in levels}
    ))
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


def stage_language(s: Session, on_step: StepCallback | None = None) -> dict[str, Any]:
    cfg = s.cfg
    icfg2 = dataclasses.replace(cfg.ins2lang, seed=cfg.seed)
    data = s.run.read_fields()
    levels = [lev for lev in cfg.levels if lev in data.levels]
    if not levels:
        raise Cos3dError(
            f"{s.fields_path}: no instance field for levels {','.join(cfg.levels)}; run --stage instance first"
        )
    g = s.gaussians()
    if data.n_gaussians != g.num:
        raise Cos3dError(
            f"{s.fields_path}: fields are for {data.n_gaussians} Gaussians but {s.ply} has {g.num}; "
            "re-run --stage instance (or delete fields.pt and run with --resume)"
        )
    weights = s.view_weights()

    def rendered_views(lev: str, inst: torch.Tensor):
        """Per view (features [P, d], labels [P], embeddings [M, D], alpha [P]), one view at a time."""
        bar = progress_bar(weights, f"stage 2 anchors ({lev})", cfg.progress, unit="view")
        with torch.no_grad():
            for i, vw in bar:
                ms, emb = s.mask_view(i)
                F, alpha = vw.render(inst)
                # label_map(lev) holds k + 1 for masks[k] (an index into the whole set, = emb row k)
                lm = label_tensor(ms, lev, vw, "cpu")
                yield F.cpu(), lm, torch.from_numpy(emb.astype("float32")), alpha.cpu()

    out_levels: dict[str, LevelRecord] = {}
    info: dict[str, Any] = {"n_anchors": {}, "dbar": {}, "method": icfg2.method}
    samples = icfg2.mlp_samples_per_view if icfg2.method == "mlp" else 0
    xyz = g.means.detach()
    for lev in levels:
        inst = data.levels[lev].instance.to(s.device, torch.float32)
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
        out_levels[lev] = LevelRecord(
            instance=data.levels[lev].instance,
            language=lang,
            anchors=anchors.anchors.cpu(),
            targets=anchors.targets.cpu(),
            dbar=float(anchors.dbar),
            anchor_view=[view_names[int(v)] for v in anchors.view],
            anchor_mask=anchors.mask.cpu(),
        )
        info["n_anchors"][lev] = len(anchors)
        info["dbar"][lev] = round(float(anchors.dbar), 5)
    man = json.loads((s.mask_dir / "manifest.json").read_text())
    lang_dim = int(next(iter(out_levels.values())).language.shape[1])  # type: ignore[union-attr]
    s.run.write_fields(dataclasses.replace(
        data, levels=out_levels, embedder=man.get("embedder", {}), language_dim=lang_dim,
        ins2lang=dataclasses.asdict(icfg2),
    ))
    return info


STAGE_FUNCTIONS: dict[str, Callable[[Session, StepCallback | None], dict[str, Any]]] = {
    "recon": stage_recon, "masks": stage_masks, "instance": stage_instance, "language": stage_language,
}
"""The stage functions by name, in :data:`cos3d.pipeline.run_folder.STAGES` order."""
