"""A trained run, loaded: :func:`load` → :class:`TrainedScene`.

``TrainedScene`` bundles what ``cos3d train`` produced — the Gaussians with their fields attached as
``gaussians.features["instance_<level>"]`` / ``["language_<level>"]``, the per-level fields with
their anchors and compactness ``d̄``, the run's config — and lazily the scene (re-read from the path
recorded in ``run.json``), the embedder (re-created from the run's config through the vision
registry) and a query engine (:mod:`cos3d.query.engine`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cos3d.errors import Cos3dError

__all__ = ["LevelField", "TrainedScene", "load"]


@dataclass
class LevelField:
    """The collaborative field of one mask level."""

    instance: Tensor
    """[N, d] float32 unit instance features (d = 16 by default)."""
    language: Tensor
    """[N, D] float16 unit language features (D = the embedder's width)."""
    anchors: Tensor
    """[J, d] unit anchors (mean rendered instance feature of each training mask)."""
    targets: Tensor
    """[J, D] their mask embeddings."""
    dbar: float
    """Compactness: median ``1 − cos`` of masked pixel features to their mask's anchor."""

    @property
    def num(self) -> int:
        return int(self.instance.shape[0])


class TrainedScene:
    """A loaded run folder. Build with :func:`load`."""

    def __init__(
        self,
        run_dir: Path,
        record: dict[str, Any],
        gaussians: Any,
        fields: dict[str, LevelField],
        device: torch.device,
        fields_meta: dict[str, Any],
    ):
        self.run_dir = run_dir
        self.record = record
        """The whole ``run.json``."""
        self.gaussians = gaussians
        """:class:`cos3d.gaussians.Gaussians` on :attr:`device`, fields attached as features."""
        self.fields = fields
        """``{level: LevelField}``, on :attr:`device`."""
        self.device = device
        self.fields_meta = fields_meta
        """``fields.pt``'s header (embedder identity, dims, Ins2Lang settings)."""
        self._scene = None
        self._embedder = None
        self._engine = None

    # ---- recorded information
    @property
    def config(self) -> dict[str, Any]:
        """The :class:`cos3d.train.TrainConfig` the run was trained with, as a dict."""
        return self.record.get("config", {})

    @property
    def levels(self) -> list[str]:
        return list(self.fields)

    @property
    def scene_path(self) -> Path:
        return Path(self.record["scene"])

    @property
    def embedder_name(self) -> str:
        return str(self.config.get("embedder", "labels"))

    @property
    def embedder_model_id(self) -> str | None:
        return (self.fields_meta.get("embedder") or {}).get("model_id")

    # ---- lazy parts
    @property
    def scene(self):
        """The scene (:class:`cos3d.scene.Scene`), re-read from the path recorded in ``run.json``."""
        if self._scene is None:
            from cos3d.readers import load_scene

            p = self.scene_path
            if not p.is_dir():
                raise Cos3dError(
                    f"{self.run_dir}: the run's scene {p} is gone; move it back or re-train (run.json records the path)"
                )
            self._scene = load_scene(p)
        return self._scene

    @property
    def embedder(self):
        """The run's embedder, created on first use from its config (``cos3d.vision.create_embedder``)."""
        if self._embedder is None:
            from cos3d.vision import create_embedder

            opts = dict(self.config.get("embedder_options") or {})
            if self.embedder_name == "labels":
                opts.setdefault("device", "cpu")
            elif "device" not in opts:
                opts["device"] = str(self.device)
            emb = create_embedder(self.embedder_name, **opts)
            want = self.embedder_model_id
            if want and getattr(emb, "model_id", want) != want:
                raise Cos3dError(
                    f"{self.run_dir}: trained with embedder {want} but {emb.model_id} was loaded; "
                    "configure the same weights (see run.json config.embedder_options)"
                )
            D = next(iter(self.fields.values())).language.shape[1]
            if int(emb.dim) != D:
                raise Cos3dError(f"{self.run_dir}: language features are {D}-d but the embedder gives {emb.dim}-d")
            self._embedder = emb
        return self._embedder

    def field(self, level: str | None = None) -> LevelField:
        """The field of ``level`` (default: ``l`` if trained, else the first level)."""
        if level is None:
            level = "l" if "l" in self.fields else next(iter(self.fields))
        try:
            return self.fields[level]
        except KeyError:
            raise Cos3dError(
                f"{self.run_dir}: no field for level {level!r}; trained levels: {', '.join(self.fields)}"
            ) from None

    def query(self, *args: Any, **kwargs: Any):
        """Answer a prompt: delegates to :class:`cos3d.query.engine.QueryEngine` (created once)."""
        if self._engine is None:
            from cos3d.query.engine import QueryEngine

            self._engine = QueryEngine(self)
        return self._engine.query(*args, **kwargs)

    def __repr__(self) -> str:
        lv = ", ".join(f"{k}: d̄={v.dbar:.3f}, {v.anchors.shape[0]} anchors" for k, v in self.fields.items())
        return f"TrainedScene({self.run_dir}, {self.gaussians.num} Gaussians, levels {{{lv}}}, device={self.device})"


def _bad(run_dir: Path, why: str) -> Cos3dError:
    return Cos3dError(
        f"{run_dir}: not a usable cos3d run ({why}); train one with `cos3d train --scene S --out {run_dir}`"
    )


def load(run: str | Path, *, device: str | torch.device = "auto") -> TrainedScene:
    """Load a run folder written by ``cos3d train``.

    Args:
        run: the run folder (``RUN/run.json``, ``RUN/gaussians.ply``, ``RUN/fields.pt``).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` ...

    Raises:
        Cos3dError: naming the folder, when it is missing, unfinished or corrupt.
    """
    from cos3d.train import RUN_FORMAT, read_fields

    run_dir = Path(run)
    if not run_dir.is_dir():
        raise Cos3dError(f"{run_dir}: no such run folder; train one with `cos3d train --scene S --out {run_dir}`")
    rj = run_dir / "run.json"
    if not rj.is_file():
        raise _bad(run_dir, "no run.json")
    try:
        record = json.loads(rj.read_text())
        if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
            raise ValueError("wrong format")
    except (OSError, ValueError) as e:
        raise _bad(run_dir, f"unreadable run.json: {e}") from None
    stages = record.get("stages", {})
    unfinished = [s for s in ("recon", "masks", "instance", "language") if not stages.get(s, {}).get("done")]
    if unfinished:
        raise Cos3dError(
            f"{run_dir}: training is unfinished (stages not done: {', '.join(unfinished)}); "
            f"finish it with `cos3d train --scene {record.get('scene', 'S')} --out {run_dir} --resume`"
        )
    if device in ("auto", None):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
    ply = run_dir / "gaussians.ply"
    if not ply.is_file():
        raise _bad(run_dir, "gaussians.ply is missing")
    from cos3d.ply import read_ply

    try:
        g = read_ply(ply)
    except Cos3dError as e:
        raise Cos3dError(f"{run_dir}: {e}") from None
    except Exception as e:
        raise _bad(run_dir, f"gaussians.ply is unreadable: {type(e).__name__}: {e}") from None
    data = read_fields(run_dir / "fields.pt")
    fields: dict[str, LevelField] = {}
    for lev, d in data["levels"].items():
        if "language" not in d:
            raise Cos3dError(
                f"{run_dir / 'fields.pt'}: level {lev} has no language field; finish stage 2 with "
                f"`cos3d train --out {run_dir} --resume`"
            )
        if d["instance"].shape[0] != g.num or d["language"].shape[0] != g.num:
            raise Cos3dError(
                f"{run_dir / 'fields.pt'}: fields have {d['instance'].shape[0]} rows but gaussians.ply has {g.num} "
                "Gaussians; delete fields.pt and re-run `cos3d train --resume`"
            )
        fields[lev] = LevelField(
            instance=d["instance"].to(dev, torch.float32),
            language=d["language"].to(dev, torch.float16),
            anchors=d["anchors"].to(dev, torch.float32),
            targets=d["targets"].to(dev, torch.float32),
            dbar=float(d["dbar"]),
        )
    if not fields:
        raise _bad(run_dir, "fields.pt holds no level")
    g = g.detach().to(dev)
    feats = dict(g.features)
    for lev, f in fields.items():
        feats[f"instance_{lev}"] = f.instance
        feats[f"language_{lev}"] = f.language
    g.features = feats
    meta = {k: v for k, v in data.items() if k != "levels"}
    return TrainedScene(run_dir, record, g, fields, dev, meta)
