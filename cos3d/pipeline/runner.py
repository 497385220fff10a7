"""``cos3d train`` end to end: stage 0 (Gaussians) → masks → stage 1 (instance field) → stage 2 (Ins2Lang).

:func:`train` resolves the scene, takes the run's writer lock, prepares ``run.json`` and runs the stage
functions of :mod:`cos3d.pipeline.stages` in order on one :class:`~cos3d.pipeline.session.Session`
(the config: :class:`~cos3d.pipeline.train_config.TrainConfig`). Each stage writes its artefacts
atomically into the run folder, whose layout :mod:`cos3d.pipeline.run_folder` owns. A stage is *finished*
when its artefact exists and ``run.json`` marks it done; ``resume=True`` skips finished stages, and
stage 1 continues from its last checkpoint. Re-running a stage marks every later stage as not done.

Fields of several levels are trained jointly, stacked (see :mod:`cos3d.field.instance`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cos3d.core.atomic import check_writable
from cos3d.core.config import ConfigError, to_dict
from cos3d.core.device import resolve_device
from cos3d.core.errors import Cos3dError
from cos3d.pipeline.run_folder import STAGE_TITLES, STAGES, RunFolder, RunRecord, writer_lock
from cos3d.pipeline.session import Session, log
from cos3d.pipeline.stages import STAGE_FUNCTIONS, StepCallback
from cos3d.pipeline.train_config import TrainConfig
from cos3d import __version__
from cos3d.capture import scene_for_training
from cos3d.readers import resolve_scene_path
from cos3d.readers import load_scene
from cos3d.pipeline.views import training_scene
from cos3d.pipeline.trained import load

__all__ = ["train"]


def _versions() -> dict[str, str]:
    from importlib import metadata


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
        recorded = [p for p in state.scene_candidates() if p.is_dir()]
        if state.scene and scene_root not in {p.resolve() for p in recorded} and Path(state.scene) != scene_root:
            raise ConfigError(
                "out",
                f"{out} holds a run of scene {state.scene}, not {scene_root}; choose another folder (or delete it)",
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
    state.set_scene(scene_root)
    state.data["scene_arg"] = cfg.scene
    state.data["config"] = to_dict(cfg)
    state.data["config_files"] = list(config_files)
    state.data["versions"] = _versions()
    state.data.setdefault("counts", {})
    state.data.setdefault("timings", {})
    state.save()
    return state


def train(cfg: TrainConfig, *, config_files: tuple[str, ...] = (), on_step: StepCallback | None = None) -> Path:
    """Run ``cfg.stage`` (or every stage) of ``cos3d train``; returns the run folder.

    ``config_files`` (the presets/files the config came from) are recorded in ``run.json``; ``on_step`` is
    called as ``on_step(stage, iteration)`` after each checkpointed stage-1 step (progress reporting).

    Raises :class:`Cos3dError` for bad input (unknown scene, a run folder of another scene, no masks,
    a corrupt ``fields.pt`` or checkpoint), each naming the file or flag to fix.
    """

    cfg.validate()

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
        return _train(cfg, tuple(config_files), on_step)
    finally:
        torch.set_num_threads(old_threads)


def _train(cfg: TrainConfig, config_files: tuple[str, ...], on_step: StepCallback | None) -> Path:
    scene_dir = resolve_scene_path(cfg.scene, cfg.data_root)
    out = Path(cfg.out) if cfg.out is not None else Path("runs") / scene_dir.resolve().name
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} is a file; choose a folder")
    if RunFolder(out).is_foreign():  # before the lock writes into it
        raise ConfigError("out", f"{out} exists and is not a cos3d run folder; choose another folder or empty it")
    with writer_lock(out, flag="--out", what="train"):  # one writer per run; checks --out can be written
        return _train_locked(cfg, config_files, out, on_step)


def _train_locked(cfg: TrainConfig, config_files: tuple[str, ...], out: Path, on_step: StepCallback | None) -> Path:
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
    s = Session(cfg, state, native, scene, device)
    log(f"cos3d train: scene {scene_root} -> run {run_dir} on {device}")
    log(_views_line(views))
    t_all = time.perf_counter()
    for stage in todo:
        title = STAGE_TITLES[stage]
        if cfg.resume and state.done(stage) and not state.running(stage) and s.artefact_ok(stage):
            log(f"{title}: finished earlier, skipped (--resume)")
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
            log(f"{title}: interrupted in an earlier run, with no checkpoint to continue from; starting it over")
        state.begin(stage)  # a finished stage stays valid (loadable) until its new output replaces it
        t0 = time.perf_counter()
        info = STAGE_FUNCTIONS[stage](s, on_step)
        dt = time.perf_counter() - t0
        # the stage's new output has replaced the old: later stages were computed from the old one
        if stage != STAGES[-1]:
            state.invalidate_from(STAGES[STAGES.index(stage) + 1])
        state.mark(stage, dt, **info, peak_rss_gib=round(peak_rss_gib(), 3))
        state.data["timings"][stage] = round(dt, 3)
        _update_counts(s, stage, info)
        state.save()
        log(f"{title}: done in {dt:.1f} s")
    fresh_state = state.folder.read_query_state() is not None
    if "language" in todo and state.done("language") and not state.running("language") and not fresh_state:
        t0 = time.perf_counter()
        load(run_dir, device=device).save_query_state()
        state.data["timings"]["query_state"] = round(time.perf_counter() - t0, 3)
        log(f"query index and no-target calibration saved in {time.perf_counter() - t0:.1f} s")
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


def _update_counts(s: Session, stage: str, info: dict[str, Any]) -> None:
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
