"""A trained run, loaded: :func:`load` → :class:`TrainedScene`.

``TrainedScene`` bundles what ``cos3d train`` produced — the Gaussians with their fields attached as
``gaussians.features["instance_<level>"]`` / ``["language_<level>"]``, the per-level fields with
their anchors and compactness ``d̄``, the run's config — and lazily the scene (re-read from the path
recorded in ``run.json``), the embedder (re-created from the run's config through the vision
registry) and a query engine (:mod:`cos3d.query.engine`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cos3d.core.errors import Cos3dError
from cos3d.field.level import LevelField
from cos3d.pipeline.run_folder import RunFolder, RunRecord, lock_holder
from cos3d.core.device import resolve_device
from cos3d.data.ply import read_ply
from cos3d.vision.models import ModelsConfig, choose_segmenter
from cos3d.readers import load_scene
from cos3d.query.engine import QueryEngine
from cos3d.vision.sam3 import CONCEPT_SEGMENTERS
from cos3d.vision.sam3 import create_concept_segmenter

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.query.engine import QueryResult
    from cos3d.data.scene import Scene
    from cos3d.pipeline.train_config import TrainConfig
    from cos3d.vision.base import Embedder
    from cos3d.vision.prompts import PromptSegmenter

__all__ = ["TrainedScene", "load"]


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
        """:class:`cos3d.data.gaussians.Gaussians` on :attr:`device`, fields attached as features."""
        self.fields = fields
        """``{level: LevelField}``, on :attr:`device`."""
        self.device = device
        self.fields_meta = fields_meta
        """``fields.pt``'s header (embedder identity, dims, Ins2Lang settings)."""
        self._scene: Scene | None = None
        self._embedder: Embedder | None = None
        self._engine: QueryEngine | None = None
        self.segmenter_choice: Any = "auto"
        """The image-prompt segmenter asked for (:func:`load`'s ``segmenter``)."""
        self.segmenter_models: dict[str, Any] = {}
        """Overrides of the run's model settings for it (``sam2_model``, ``sam3_model``, ``sam2_checkpoint``...)."""
        self.concept_segmenter_choice: Any = "sam3"
        """The 2D-first branch's concept segmenter asked for (:func:`load`'s ``concept_segmenter``)."""
        self.query_state_loaded = False
        """Whether :attr:`engine` adopted the index and calibration saved in the run folder."""

    # ---- recorded information
    @property
    def config(self) -> "TrainConfig":
        """The :class:`cos3d.pipeline.train_config.TrainConfig` the run was trained with."""
        return RunRecord(RunFolder(self.run_dir), self.record).train_config()

    @property
    def levels(self) -> list[str]:
        return list(self.fields)

    @property
    def scene_path(self) -> Path:
        """The scene folder: recorded relative to the run folder, else absolute (one error line naming both
        when neither exists)."""
        return RunRecord(RunFolder(self.run_dir), self.record).scene_folder()

    @property
    def embedder_name(self) -> str:
        return self.config.models.embedder

    @property
    def embedder_model_id(self) -> str | None:
        return (self.fields_meta.get("embedder") or {}).get("model_id")

    # ---- lazy parts
    @property
    def scene(self):
        """The scene (:class:`cos3d.data.scene.Scene`), re-read from the folder recorded in ``run.json`` (:attr:`scene_path`)."""
        if self._scene is None:
            self._scene = load_scene(self.scene_path)
        return self._scene

    @property
    def embedder(self) -> Embedder:
        """The run's embedder, created on first use from its config (``cos3d.vision.create_embedder``)."""
        if self._embedder is None:
            models = self.config.models
            emb = models.create_embedder(device=str(self.device))
            want = self.embedder_model_id
            if want and emb.model_id != want:
                raise Cos3dError(
                    f"{self.run_dir}: trained with embedder {want} but {emb.model_id} was loaded; "
                    "configure the same weights (see run.json config.models)"
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

    @property
    def engine(self) -> QueryEngine:
        """The run's :class:`cos3d.query.engine.QueryEngine`, created on first use (reads the scene and
        the embedder) and then shared: :meth:`query`, ``cos3d query`` and ``cos3d view`` all use it."""
        if self._engine is None:
            self._engine = QueryEngine(self, segmenter=self._segmenter_factory,
                                       concept_segmenter=self._concept_factory)
            saved = RunFolder(self.run_dir).read_query_state()
            self.query_state_loaded = saved is not None and self._engine.load_state_dict(saved)
        return self._engine

    def _segmenter_factory(self) -> "tuple[PromptSegmenter | None, str]":
        """The engine's image-prompt segmenter, built on its first box/points/scribble prompt (SAM loads
        in seconds; text queries never pay for it)."""

        return choose_segmenter(self.segmenter_choice, self.config.models, self.segmenter_models,
                                device=str(self.device))

    def _concept_factory(self) -> Any:
        """The engine's concept segmenter (``query(..., branch="2d"/"fused")``), built on the first such query:
        SAM 3 through transformers on the given ``sam3_model`` (:func:`load`'s ``models``), else the run's."""

        model = self.segmenter_models.get("sam3_model") or self.config.models.sam3_model
        return create_concept_segmenter(self.concept_segmenter_choice, model, device=str(self.device))

    def save_query_state(self) -> None:
        """Build (if needed) and save every level's refinement index and no-target calibration in the
        run folder (``query_state.pt``), for the next process to load instead of rebuilding. A reader
        never writes into a run that a training is writing (:func:`cos3d.pipeline.run_folder.lock_holder`): then
        one :class:`Cos3dError` line, and nothing is saved."""
        holder = lock_holder(self.run_dir)
        if holder is not None and holder != os.getpid():
            raise Cos3dError(
                f"{self.run_dir} is being written by process {holder}; the query index is not saved into it"
            )
        RunFolder(self.run_dir).write_query_state(self.engine.state_dict())
        self.query_state_loaded = True

    def query(self, text: str | None = None, **prompt: Any) -> QueryResult:
        """Answer one prompt with :attr:`engine`: the arguments and their meaning are
        :meth:`cos3d.query.engine.QueryEngine.query`'s (``image=``, ``view=``, ``region=`` or ``box=`` /
        ``mask=`` / ``scribble=`` / ``points=``, ``click=``, ``within=``, ``level=`` ...).

        Raises:
            Cos3dError: for a bad prompt (empty text, a box outside the image, an unknown view...).
        """
        return self.engine.query(text, **prompt)

    def __repr__(self) -> str:
        lv = ", ".join(f"{k}: d̄={v.dbar:.3f}, {v.anchors.shape[0]} anchors" for k, v in self.fields.items())
        return f"TrainedScene({self.run_dir}, {self.gaussians.num} Gaussians, levels {{{lv}}}, device={self.device})"


def _bad(run_dir: Path, why: str) -> Cos3dError:
    return Cos3dError(
        f"{run_dir}: not a usable cos3d run ({why}); train one with `cos3d train --scene S --out {run_dir}`"
    )


def load(run: str | Path, *, device: str | torch.device = "auto", segmenter: "str | PromptSegmenter | None" = "auto",
         models: dict[str, Any] | None = None, concept_segmenter: Any = "sam3") -> TrainedScene:
    """Load a run folder written by ``cos3d train`` (layout: :mod:`cos3d.pipeline.run_folder`).

    Args:
        run: the run folder (``RUN/run.json``, ``RUN/gaussians.ply``, ``RUN/fields.pt``).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` ...
        segmenter: the image prompts' box/point → mask segmenter, built on the first such prompt:
            ``"auto"`` (the run's SAM model when it was trained with one and its weights load; else none,
            and answers say so), ``"none"``/None, ``"sam2"``, ``"sam2-hf"``, ``"sam3"`` (missing weights raise,
            naming the flag), or a :class:`~cos3d.vision.prompts.PromptSegmenter`.
        models: overrides of the run's model settings for the segmenter (:class:`~cos3d.vision.models.ModelsConfig`
            fields, e.g. ``{"sam2_model": "path/to/sam2"}``, ``{"sam3_model": ...}`` for SAM 3 below).
        concept_segmenter: the 2D-first branch's concept segmenter (``query(text, branch="2d"|"fused")``), built
            on the first such query: ``"sam3"`` (SAM 3 through transformers on ``models["sam3_model"]``, else the
            run's; missing weights raise one line naming ``--sam3-model``), ``"none"``/None, or any object with
            ``segment(image, text, exemplars=...)`` (:class:`cos3d.query.concept2d.ConceptSegmenter`).

    Raises:
        Cos3dError: naming the folder, when it is missing, unfinished or corrupt.
    """

    folder = RunFolder(Path(run))
    run_dir = folder.root
    record = folder.finished_record()
    dev = resolve_device(device)
    if not folder.ply.is_file():
        raise _bad(run_dir, "gaussians.ply is missing")
    try:
        g = read_ply(folder.ply)
    except Cos3dError as e:
        raise Cos3dError(f"{run_dir}: {e}") from None
    except Exception as e:
        raise _bad(run_dir, f"gaussians.ply is unreadable: {type(e).__name__}: {e}") from None
    data = folder.read_fields()
    fields: dict[str, LevelField] = {}
    for lev, d in data.levels.items():
        if not d.has_language or d.dbar is None:
            raise Cos3dError(
                f"{folder.fields}: level {lev} has no language field; finish stage 2 with "
                f"`cos3d train --out {run_dir} --resume`"
            )
        assert d.language is not None and d.anchors is not None and d.targets is not None  # has_language
        if d.instance.shape[0] != g.num or d.language.shape[0] != g.num:
            raise Cos3dError(
                f"{folder.fields}: fields have {d.instance.shape[0]} rows but gaussians.ply has {g.num} "
                "Gaussians; delete fields.pt and re-run `cos3d train --resume`"
            )
        fields[lev] = LevelField(
            instance=d.instance.to(dev, torch.float32),
            language=d.language.to(dev, torch.float16),
            anchors=d.anchors.to(dev, torch.float32),
            targets=d.targets.to(dev, torch.float32),
            dbar=float(d.dbar),
        )
    if not fields:
        raise _bad(run_dir, "fields.pt holds no level")
    g = g.detach().to(dev)
    feats = dict(g.features)
    for lev, f in fields.items():
        feats[f"instance_{lev}"] = f.instance
        feats[f"language_{lev}"] = f.language
    g.features = feats
    meta = data.header()
    ts = TrainedScene(run_dir, record.data, g, fields, dev, meta)
    ts.segmenter_choice = "none" if segmenter is None else segmenter

    if isinstance(concept_segmenter, str) and concept_segmenter not in CONCEPT_SEGMENTERS:
        raise Cos3dError(f"concept_segmenter must be one of {', '.join(CONCEPT_SEGMENTERS)} or a segmenter, "
                         f"got {concept_segmenter!r}")
    ts.concept_segmenter_choice = "none" if concept_segmenter is None else concept_segmenter
    if models:
        import dataclasses


        known = {f.name for f in dataclasses.fields(ModelsConfig)}
        bad = sorted(set(models) - known)
        if bad:
            raise Cos3dError(f"models: unknown setting(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        ts.segmenter_models = {k: v for k, v in models.items() if v is not None}
    return ts
