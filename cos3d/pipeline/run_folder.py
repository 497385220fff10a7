"""The run folder: what ``cos3d train`` writes and everything else (``cos3d.load``, query, view,
eval, export, batch workers) reads. Training and loading both depend on this module; neither owns
the format.

::

    RUN/run.json          the record: format + version, the scene (relative to the run folder, and
                          absolute as the fallback: a run moved with its scene still finds it), the resolved TrainConfig
                          (``config``, round-trips with cos3d.core.config.from_dict), the config files it
                          came from, package versions, per-stage status, timings, counts, metrics
    RUN/gaussians.ply     stage 0 (or the scene imported with --gaussians)
    RUN/recon/            stage 0's work folder while it runs (checkpoint.pt: tensors only)
    RUN/fields.pt         stages 1-2: per level instance [N, d], language [N, D] fp16, anchors,
                          targets, d̄ (:class:`cos3d.pipeline.fields_file.FieldsFile`; weights_only)
    RUN/query_state.pt    per level: the refinement index and the no-target calibration, saved at the
                          end of training (or by the first query), so a new process need not rebuild
                          them; ignored when older than fields.pt or made for other settings
    RUN/checkpoints/      stage 1's resumable checkpoint while it runs (removed when the stage ends)
    RUN/cache/weights/    optional per-view blending weights (--cache-weights)

The per-view masks and embeddings of the training views live in the shared 2D cache (by default
``SCENE/cos3d_masks/<provider>-<embedder>-<key>``, :mod:`cos3d.vision.cache`), which ``cos3d prepare
masks`` fills too; ``run.json`` records its folder (``stages.masks.cache``).

A stage is *finished* when ``run.json`` marks it done and its artefact exists.

One writer at a time: ``cos3d train`` holds :func:`writer_lock` (``RUN/.cos3d-lock``, an OS lock the
kernel releases when the process ends, however it ends) while it writes; readers never need it, and
may ask :func:`lock_holder` whether a training is writing the run (:mod:`cos3d.pipeline.runlock`).

Paths recorded in ``run.json`` are data, not commands: the mask cache it names is used only inside the
run folder or the scene folder (or where ``--mask-cache`` says), :meth:`RunRecord.checked_mask_cache`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cos3d.core.atomic import atomic_path, write_json
from cos3d.core.config import ConfigError, from_dict
from cos3d.core.errors import Cos3dError, SceneFormatError, brief
from cos3d.core.paths import safe_name
from cos3d.pipeline.fields_file import FieldsFile
from cos3d.pipeline.train_config import TrainConfig
from cos3d.pipeline.runlock import LOCK_NAME, RunLockedError, lock_holder, writer_lock

__all__ = ["RUN_FORMAT", "STAGES", "STAGE_TITLES", "RunFolder", "RunLockedError", "RunRecord",
           "latest_run", "lock_holder", "writer_lock"]

RUN_FORMAT = "cos3d-run"
RUN_VERSION = 2
"""2: ``config`` is the nested TrainConfig (``models``, ``recon``, ``instance``, ``ins2lang``) and the
masks live in the shared 2D cache recorded at ``stages.masks.cache``."""
STAGES = ("recon", "masks", "instance", "language")
"""Stage names in order (``--stage``; ``all`` runs every one)."""
STAGE_TITLES = {
    "recon": "stage 0 gaussians",
    "masks": "masks",
    "instance": "stage 1 instance",
    "language": "stage 2 language",
}
ENTRIES = frozenset({"run.json", "gaussians.ply", "fields.pt", "query_state.pt", "checkpoints", "recon", "cache",
                     LOCK_NAME})
"""What a run folder may hold (anything else means the folder is not a run)."""


class RunRecord:
    """``run.json``: read, updated per stage, written atomically."""

    def __init__(self, folder: "RunFolder", data: dict[str, Any]):
        self.folder = folder
        self.data = data

    def save(self) -> None:
        write_json(self.folder.run_json, self.data)

    @property
    def scene(self) -> str | None:
        """The scene folder as recorded (absolute, when it was trained); see :meth:`scene_folder`."""
        return self.data.get("scene")

    def set_scene(self, scene_root: Path) -> None:
        """Record the scene folder relative to the run folder (``scene_rel``: a run copied together with
        its scene, or moved beside it, still finds it) and absolute (``scene``: the fallback)."""
        root = Path(scene_root).resolve()
        self.data["scene"] = str(root)
        try:
            self.data["scene_rel"] = os.path.relpath(root, self.folder.root.resolve())
        except ValueError:  # another drive (Windows): no relative path
            self.data.pop("scene_rel", None)

    def scene_candidates(self) -> list[Path]:
        """Where the scene may be, in order: relative to the run folder, then the absolute path."""
        out: list[Path] = []
        rel = self.data.get("scene_rel")
        if isinstance(rel, str) and rel:
            out.append(Path(os.path.normpath(self.folder.root.absolute() / rel)))
        if self.scene:
            out.append(Path(self.scene))
        return out

    def scene_folder(self) -> Path:
        """The scene folder that exists (:meth:`scene_candidates`), or one :class:`Cos3dError` line naming
        each path tried."""
        tried = self.scene_candidates()
        for p in tried:
            if p.is_dir():
                return p
        where = " and ".join(str(p) for p in tried) or "no path: run.json records none"
        raise Cos3dError(
            f"{self.folder.root}: the run's scene is gone (tried {where}); put the scene folder back, or re-train"
        )

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        return self.data.setdefault("stages", {})

    def done(self, stage: str) -> bool:
        return bool(self.stages.get(stage, {}).get("done"))

    def running(self, stage: str) -> bool:
        """True while ``stage`` is being (re-)computed, or when such a run was interrupted."""
        return bool(self.stages.get(stage, {}).get("running"))

    def begin(self, stage: str) -> None:
        """Record that ``stage`` is being computed; a finished stage keeps ``done`` (its old output is
        still valid) until :meth:`mark` records the new one."""
        self.stages.setdefault(stage, {"done": False})["running"] = True
        self.save()

    def unfinished(self) -> list[str]:
        return [s for s in STAGES if not self.done(s)]

    def mark(self, stage: str, seconds: float, **info: Any) -> None:
        """Mark ``stage`` done with its timing and information, and save."""
        self.stages[stage] = {
            "done": True,
            "time_s": round(seconds, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **info,
        }
        self.save()

    def invalidate_from(self, stage: str) -> None:
        """Mark ``stage`` and every later stage not done, and save."""
        for s in STAGES[STAGES.index(stage) :]:
            if s in self.stages:
                self.stages[s]["done"] = False
        self.save()

    @property
    def mask_cache(self) -> Path | None:
        """The 2D cache folder the masks stage used (None before it ran)."""
        p = self.stages.get("masks", {}).get("cache")
        return Path(p) if p else None

    def checked_mask_cache(self, *allowed: Path | None) -> Path | None:
        """:attr:`mask_cache`, checked to lie inside the run folder, the recorded scene folder or one of
        ``allowed`` (the ``--mask-cache`` given): a run.json from elsewhere must not point cos3d at the
        user's other files. Otherwise one :class:`SceneFormatError` line naming the file, field, value."""
        p = self.mask_cache
        if p is None:
            return None
        roots = [self.folder.root, *(Path(a) for a in allowed if a is not None)]
        roots.extend(self.scene_candidates())
        real = p.resolve()
        if any(real == r.resolve() or real.is_relative_to(r.resolve()) for r in roots):
            return p
        raise SceneFormatError(
            f"{self.folder.run_json}: stages.masks.cache {str(p)!r} lies outside the run folder and the scene "
            "folder; pass that cache with --mask-cache if you trust it, or train into a new folder"
        )

    def train_config(self) -> TrainConfig:
        """The :class:`~cos3d.pipeline.train_config.TrainConfig` the run was trained with (``config`` round-trips)."""
        cfg = self.data.get("config")
        if not isinstance(cfg, dict):
            raise Cos3dError(f"{self.folder.run_json}: no recorded config; re-train this run")
        try:
            return from_dict(TrainConfig, cfg, source=str(self.folder.run_json))
        except ConfigError as e:
            raise Cos3dError(f"{e} (a run.json of another cos3d version? re-train this run)") from None


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder and the readers/writers of its files."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def ply(self) -> Path:
        return self.root / "gaussians.ply"

    @property
    def fields(self) -> Path:
        return self.root / "fields.pt"

    @property
    def recon_dir(self) -> Path:
        return self.root / "recon"

    @property
    def instance_checkpoint(self) -> Path:
        return self.root / "checkpoints" / "instance.pt"

    @property
    def weights_cache(self) -> Path:
        return self.root / "cache" / "weights"

    def weights_file(self, frame_name: str) -> Path:
        """The cached blending weights of frame ``frame_name`` (a name from data: escaped,
        :func:`cos3d.core.paths.safe_name`)."""
        return self.weights_cache / f"{safe_name(frame_name)}.pt"

    def is_foreign(self) -> bool:
        """True when the folder exists, holds files, and is not a cos3d run."""
        if not self.root.is_dir() or self.run_json.is_file():
            return False
        names = {p.name for p in self.root.iterdir()}
        return bool(names) and not names <= ENTRIES

    # ---- run.json
    def read_record(self) -> RunRecord | None:
        """The record, or None when there is none; a corrupt one is a one-line :class:`Cos3dError`."""
        if not self.run_json.is_file():
            return None
        try:
            data = json.loads(self.run_json.read_text())
            if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
                raise ValueError("not a cos3d run.json")
            if int(data.get("version", 1)) != RUN_VERSION:
                raise ValueError(f"format version {data.get('version', 1)}, this cos3d reads {RUN_VERSION}")
            if not isinstance(data.get("scene", ""), str) or not isinstance(data.get("stages", {}), dict):
                raise ValueError("'scene' must be a path string and 'stages' an object")
            if not isinstance(data.get("scene_rel", ""), str) or "\0" in data.get("scene_rel", ""):
                raise ValueError("'scene_rel' must be a path string")
            cache = data.get("stages", {}).get("masks", {}).get("cache") if isinstance(
                data.get("stages", {}).get("masks", {}), dict) else None
            if cache is not None and (not isinstance(cache, str) or "\0" in cache):
                raise ValueError(f"stages.masks.cache must be a path string, got {cache!r}")
        except (OSError, ValueError, TypeError) as e:
            raise Cos3dError(
                f"{self.run_json}: unreadable run record ({e}); re-train into another folder or delete {self.root}"
            ) from None
        return RunRecord(self, data)

    def new_record(self, scene_root: Path) -> RunRecord:
        rec = RunRecord(self, {"format": RUN_FORMAT, "version": RUN_VERSION, "stages": {}})
        rec.set_scene(scene_root)
        return rec

    def finished_record(self) -> RunRecord:
        """The record of a finished run, or a one-line :class:`Cos3dError` saying what to do."""
        if not self.root.is_dir():
            raise Cos3dError(f"{self.root}: no such run folder; train one with `cos3d train --scene S --out {self.root}`")
        rec = self.read_record()
        if rec is None:
            raise Cos3dError(
                f"{self.root}: not a cos3d run (no run.json); train one with `cos3d train --scene S --out {self.root}`"
            )
        if rec.unfinished():
            raise Cos3dError(
                f"{self.root}: training is unfinished (stages not done: {', '.join(rec.unfinished())}); finish it "
                f"with `cos3d train --scene {rec.scene or 'S'} --out {self.root} --resume`"
            )
        return rec

    # ---- fields.pt
    def read_fields(self) -> FieldsFile:
        """``fields.pt`` (:class:`~cos3d.pipeline.fields_file.FieldsFile`; loaded with ``weights_only=True``)."""
        path = self.fields
        if not path.is_file():
            raise Cos3dError(f"{path}: missing; run `cos3d train` (stages instance and language) for this run")
        try:
            # mapped, not read: a level's features are paged in when first used (a query reads one level's)
            return FieldsFile.from_dict(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        except Exception as e:
            raise Cos3dError(
                f"{path}: corrupt fields file ({brief(e)}); delete it and re-run "
                "`cos3d train --resume` to recompute stages 1-2"
            ) from None

    @property
    def query_state(self) -> Path:
        return self.root / "query_state.pt"

    def read_query_state(self) -> dict[str, Any] | None:
        """The saved query state (refinement index + no-target calibration per level), or None when
        it is missing, unreadable or older than ``fields.pt`` (it is then rebuilt, never trusted)."""
        p = self.query_state
        if not p.is_file() or (self.fields.is_file() and p.stat().st_mtime_ns < self.fields.stat().st_mtime_ns):
            return None
        try:
            data = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:
            return None
        return data if isinstance(data, dict) else None

    def write_query_state(self, state: dict[str, Any]) -> None:
        with atomic_path(self.query_state) as tmp:
            torch.save(state, tmp)

    def write_fields(self, fields: FieldsFile) -> None:
        """Write ``fields.pt`` atomically."""
        with atomic_path(self.fields) as tmp:
            torch.save(fields.to_dict(), tmp)


def latest_run(root: Path) -> Path | None:
    """The finished run under ``root`` (its sub-folders) whose training ended last, or None."""
    best: tuple[float, Path] | None = None
    if not root.is_dir():
        return None
    for rj in root.glob("*/run.json"):
        try:
            rec = RunFolder(rj.parent).read_record()
        except Cos3dError:
            continue
        if rec is None or rec.unfinished():
            continue
        t = rj.stat().st_mtime
        if best is None or t > best[0]:
            best = (t, rj.parent)
    return None if best is None else best[1]
