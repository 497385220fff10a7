"""The query engine: prompts → selected Gaussians → 3D objects → 2D masks.

``QueryEngine(source).query(...)`` answers on a :class:`QuerySource`: a loaded run
(``cos3d.load(run)``, whose ``.engine`` is one such engine and whose ``.query(...)`` forwards to it) or
:class:`QueryInputs` (fields held in memory). It answers

- **text**: ``query("red mug")``; several at once with :meth:`QueryEngine.query_many`;
- **image**: ``query(image=img_or_path, box=[x0, y0, x1, y1] | mask=m | scribble=s | points=[[x, y]])``:
  the prompt becomes a mask (:func:`cos3d.vision.prompts.prompt_mask`), the mask an embedding through
  :meth:`cos3d.vision.base.Embedder.embed_region`, used like a text embedding. Image embedders embed the
  pixels; the offline ``labels`` embedder (**oracle-2D protocol**) sees none: it resolves a reference image
  that is one of the scene's frames to the dataset instance under the prompt mask and embeds that
  instance's names; any other image raises (real CLIP/SigLIP weights are needed);
- **image on a scene view, without a 2D model**: ``lift("16", ImagePrompt(box=[x0, y0, x1, y1]))`` (or ``mask=`` ...): the
  prompted region of that frame lifted into 3D through its blending weights and answered in instance space
  (:mod:`.lift`); it reads no ground truth, whatever the embedder;
- **text + image**: both given → the normalised sum of the two embeddings;
- **click**: ``query(click=("16", x, y))`` (``Click`` or ``"VIEW:x,y"`` too): the Gaussian with the largest
  blending weight at that pixel, then region growing in instance space (:meth:`QueryEngine.grow`);
- **hierarchical**: ``query("head", within="robot")`` or ``within_object=<object id>``: the parent is selected
  at level ``l``; the part prompt is answered on the part level (``s``) restricted to the parent's Gaussians.

Text/image pipeline (docs/architecture.md "Query"): raw LERF relevancy ``R`` (:mod:`.relevancy`) → presence test on
the prompt's cosine with the field, recovered from ``R`` (:mod:`.notarget`, :func:`~.notarget.decide`; a part
inside its found parent; an absent target gives an empty answer with a reason) → COS3D normalisation (of the
cosine for parts inside a parent, :attr:`QuerySettings.select_parts_on`) →
adaptive Lang2Ins refinement (:mod:`.refine`, :mod:`.refine_compiled`; ``refine="fast"`` by default: the
compiled loop from :data:`COMPILED_MIN_GAUSSIANS`, the numpy waves below; ``"reference"`` for the literal
loop) → objects (:mod:`.objects`). The selection of the answer is the union of its objects' Gaussians.

Click (our definition): the seed is the Gaussian with the largest blending weight at the pixel; the prompt
is the *rendered* language feature of the 3×3 window around it (what the user sees there), snapped to the
closest Ins2Lang target (the embedding of a 2D mask seen in training: an object-level concept); regions are
grown in instance space by the same adaptive Lang2Ins refinement (same thresholds, the click's level; the
seed always counts as a candidate); the grown selection is split into objects and the object carrying
the most blending weight in the window (normally the seed's) is returned. A single ball around the seed
is not enough: with Gaussian features spread far more than the rendered pixels that define ``d̄``, one
ball (cos > 1 − 0.4 d̄) holds only tens of Gaussians. ``within_object=<Gaussian id>`` re-grows that
object the same way, with the mean language feature of the Gaussian's tightest instance ball as prompt.

Objects weaker than the best are dropped (:attr:`QuerySettings.weaker_logit`): the median of 10 × the prompt's
cosine over an object's Gaussians (:attr:`QuerySettings.weaker_on`, or the relevancy logit) must be within that
of the best object's. COS3D's per-query min-max normalisation turns a moderately relevant neighbour (a ketchup
bottle for "lemon") into a selected one; this keeps it out while keeping equally relevant instances ("cans").
Every such setting is chosen on the development prompts (:mod:`cos3d.query.settings`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from cos3d.core.errors import Cos3dError
from cos3d.query.masks2d import MaskRenderer, check_protocol
from cos3d.query.notarget import (
    NEGATIVE_VOCABULARY,
    OPACITY_MIN,
    PRESENCE_STATE_VERSION,
    NoTargetCalibration,
    calibrate,
    decide,
    presence_statistics,
)
from cos3d.query.objects import Object3D, make_object, split_objects
from cos3d.query.prompts import Click, load_rgb_image, parse_click
from cos3d.vision.image_prompt import BinaryInput, ImagePrompt, PointsInput
from cos3d.query.settings import QuerySettings
from cos3d.query.thin_parts import attach_thin_parts
from cos3d.query.refine import InstanceIndex, RefineResult, refine_fast, refine_reference, thresholds
from cos3d.query import refine_compiled
from cos3d.query.relevancy import (
    CANONICAL_NEGATIVES,
    TEMPERATURE,
    PromptCache,
    negative_max,
    normalize_relevancy,
    raw_relevancy,
)
from cos3d.data.scene import Camera, Scene
from cos3d.vision.base import Embedder, ImageRegion
from cos3d.vision.prompts import describe_segmenter

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.data.gaussians import Gaussians
    from cos3d.field.level import LevelField
    from cos3d.query.concept2d import ConceptSegmenter, ConceptVotes
    from cos3d.vision.prompts import PromptSegmenter

REFINERS = ("fast", "compiled", "numpy", "reference")
"""Refinement implementations, all the same selection: ``fast`` picks ``compiled`` (the numba loop,
:mod:`cos3d.query.refine_compiled`) for fields of at least :data:`COMPILED_MIN_GAUSSIANS` when numba is
installed, else ``numpy`` (the vectorised waves, :func:`cos3d.query.refine.refine_fast`); ``reference``
is COS3D's literal loop."""
COMPILED_MIN_GAUSSIANS = 100_000
"""``fast`` refinement uses the compiled loop from this many Gaussians: below it the numpy waves answer in
tens of milliseconds and a fresh process saves numba's import and code loading (~0.3 s)."""
COMBINE_MODES = ("sum", "and")
"""Text + image: ``sum`` of the two embeddings (normalised), or ``and``: the intersection of the two answers."""
SEPARATE_SHARE = 0.9
"""A part answer separates the part when it holds less than this share of its parent's Gaussians."""
NO_SEGMENTER = "no 2D segmenter configured: give one with --segmenter (QueryEngine(segmenter=...))"
QUERY_BRANCHES = ("field", "2d", "fused")
"""How a text prompt is answered (:meth:`QueryEngine.query`'s ``branch``): ``field`` — the language field
alone (the default, COS3D); ``2d`` — the 2D-first branch (:mod:`cos3d.query.concept2d`: a concept segmenter,
SAM 3, segments the text in :data:`BRANCH_VIEWS` training views and its masks are lifted through the
blending weights); ``fused`` — the field's objects cut to the Gaussians the views confirm, with the presence
of :func:`cos3d.query.concept2d.fused_presence`."""
BRANCH_VIEWS = 4
"""Training views (evenly spread) the 2D-first branch segments."""
NO_CONCEPT_SEGMENTER = ("--branch 2d/fused needs a concept segmenter: give --concept-segmenter sam3 "
                        "(weights: --sam3-model DIR) (QueryEngine(concept_segmenter=...))")

ImageInput = np.ndarray | str | Path
"""A reference image: uint8 ``[H, W, 3]`` or a PNG/JPG path."""
ClickInput = Click | str | tuple[str | Camera, float, float]
"""``Click``, ``"VIEW:x,y"`` or ``(view, x, y)`` (view: a frame name or a :class:`Camera`)."""
WithinObject = int | Object3D | Tensor
"""A parent object: an object id (a Gaussian id, as printed), an :class:`Object3D`, or Gaussian ids."""
SegmenterFactory = Callable[[], "tuple[PromptSegmenter | None, str]"]
ConceptFactory = Callable[[], "ConceptSegmenter | None"]
"""Builds the 2D-first branch's concept segmenter on first use (None: there is none; missing weights raise)."""
"""Builds the image-prompt segmenter on first use → ``(segmenter or None, what it is / why there is none)``."""




class QuerySource(Protocol):
    """What a :class:`QueryEngine` answers on: a :class:`cos3d.pipeline.trained.TrainedScene`, or :class:`QueryInputs`."""

    @property
    def scene(self) -> Scene:
        """The scene: frames and their cameras, object and part names."""
        ...

    @property
    def gaussians(self) -> "Gaussians":
        """The Gaussians the fields belong to (``N`` rows)."""
        ...

    @property
    def fields(self) -> "Mapping[str, LevelField]":
        """``{level: LevelField}`` with ``N`` rows each."""
        ...

    @property
    def embedder(self) -> Embedder:
        """The embedder whose space the language fields live in."""
        ...


@dataclass(frozen=True)
class QueryInputs:
    """A :class:`QuerySource` held in memory (fields made without a run folder: synthetic tests, notebooks)."""

    scene: Scene
    gaussians: "Gaussians"
    fields: "Mapping[str, LevelField]"
    embedder: Embedder


@dataclass
class QueryResult:
    """The answer to one prompt."""

    query: str
    """The prompt, as text (``image:ref.png box=[...]``, ``click 16:80,60``, ``head within robot``)."""
    objects: list[Object3D]
    """The objects found, best first (empty for a no-target answer)."""
    selected: Tensor
    """LongTensor ``[S]`` sorted Gaussian ids: the union of the objects' Gaussians."""
    no_target: bool
    """True when the prompt's target is judged absent (then ``objects`` and ``selected`` are empty)."""
    reason: str
    """Why the answer is what it is (one line)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Milliseconds per step (``embed``, ``relevancy``, ``presence``, ``refine``, ``objects``, ``total``;
    ``calibration`` and ``index`` once per engine and level, in the first query that needs them)."""
    kind: str = "text"
    """``text``, ``image``, ``text+image``, ``click``; prefixed ``part:`` for hierarchical queries."""
    level: str = "l"
    """Field level the answer was computed on."""
    score: float | None = None
    """The presence rule's statistic (:func:`cos3d.query.notarget.decide`: the top-k mean cosine by default;
    inside the parent for parts), when the prompt has an embedding."""
    threshold: float | None = None
    """The presence rule's threshold it was compared with."""
    refine: RefineResult | None = field(default=None, repr=False)
    """The refinement's details (regions, seeds), when a refinement ran."""
    engine: "QueryEngine | None" = field(default=None, repr=False, compare=False)
    """The engine that answered: it renders :meth:`mask` (None for a result built by hand)."""
    branch: str = "field"
    """Which branch answered (:data:`QUERY_BRANCHES`)."""

    @property
    def num_gaussians(self) -> int:
        return int(self.selected.numel())

    @property
    def targets(self) -> str:
        """``"none"``, ``"one"`` or ``"many"``: how many targets the answer holds (OmniRIS's no-target /
        single-target / multi-target answers)."""
        if self.no_target or not self.objects:
            return "none"
        return "one" if len(self.objects) == 1 else "many"

    def mask(self, camera: Camera | str, protocol: str = "occlusion") -> np.ndarray:
        """bool ``[H, W]`` mask of the selection in ``camera`` (a :class:`Camera` or a frame name).

        ``protocol``: ``"occlusion"`` (visible pixels mostly covered by the selection) or ``"selected"``
        (the selection rendered alone, alpha > 0.7; the COS3D/OpenGaussian protocol).
        """
        if self.engine is None:
            raise ValueError("this QueryResult has no engine to render it; use QueryEngine.mask(result, camera)")
        return self.engine.mask(self, camera, protocol)

    def to_dict(self, points: bool = False) -> dict:
        """JSON-able summary (objects without their points unless ``points``)."""
        return {
            "query": self.query,
            "kind": self.kind,
            "level": self.level,
            "no_target": bool(self.no_target),
            "targets": self.targets,
            "reason": self.reason,
            "score": None if self.score is None else float(self.score),
            "threshold": None if self.threshold is None else float(self.threshold),
            "num_gaussians": self.num_gaussians,
            "objects": [o.to_dict(points=points) for o in self.objects],
            "timings": {k: round(float(v), 3) for k, v in self.timings.items()},
        } | ({"branch": self.branch} if self.branch != "field" else {})


@dataclass
class LevelState:
    """What the engine answers one level with (:meth:`QueryEngine.level_state`): its features, the Ins2Lang
    targets, and the refinement index and no-target calibration built (or loaded) for it."""

    name: str
    unit: Tensor  # [N, F] float32 unit instance features
    unit_np: np.ndarray  # the same memory as numpy
    language: Tensor  # [N, D] (fp16 as stored)
    targets: Tensor  # [J, D]
    dbar: float
    index: InstanceIndex | None = None
    sorted_field: refine_compiled.SortedField | None = None  # the index's layout for the compiled loop
    calibration: NoTargetCalibration | None = None
    neg_max: Tensor | None = None  # [N] max over the canonical negatives of L·n_k (prompt-independent)


class QueryEngine:
    """Answers prompts on a trained scene (see the module docstring).

    Args:
        source: what to answer on (:class:`QuerySource`): a loaded run or :class:`QueryInputs`; its scene
            and embedder are read once, here.
        level: the object level (``"l"``).
        part_level: the level for parts in hierarchical queries (default ``"s"``, else ``"m"``).
        refine: ``"fast"`` (default) or ``"reference"``.
        segmenter: the box/point → mask segmenter of image prompts (:class:`cos3d.vision.prompts.PromptSegmenter`:
            SAM2, SAM2 / SAM 3 tracker through transformers); None keeps the offline rules of ``prompt_mask``.
        settings: the tunable settings (default: the shipped ones, :meth:`QuerySettings.shipped`).
        concept_segmenter: the 2D-first branch's text → every-instance masks segmenter
            (:class:`cos3d.query.concept2d.ConceptSegmenter`: SAM 3 through transformers), or a factory building
            it on the first ``branch="2d"``/``"fused"`` query; None: those branches raise, naming the flag.
    """

    SNAP_CLICK = True
    """Clicks (and ``within_object``) snap their language prompt to the nearest Ins2Lang target."""
    LANGUAGE_FP32_BYTES = 1 << 29
    """Language features are kept as a float32 copy when it takes at most this many bytes (512 MiB)."""
    held_out_prompts: tuple[str, ...] = ()
    """Evaluation prompts the no-target calibration must not contain (set by an evaluator before the first
    query; :func:`cos3d.query.notarget.check_held_out` raises on overlap)."""

    def __init__(
        self, source: QuerySource, *, level: str = "l", part_level: str | None = None, refine: str = "fast",
        segmenter: "PromptSegmenter | SegmenterFactory | None" = None, settings: QuerySettings | None = None,
        concept_segmenter: "ConceptSegmenter | ConceptFactory | None" = None,
    ) -> None:
        self.settings = QuerySettings.shipped() if settings is None else settings
        """The tunable settings (:class:`cos3d.query.settings.QuerySettings`; shipped: chosen on the development
        prompts, ``cos3d/query/tuned.json``)."""
        self._segmenter: PromptSegmenter | None = None
        self._segmenter_factory: SegmenterFactory | None = None
        self.segmenter_note = NO_SEGMENTER
        """What :attr:`segmenter` is, or why there is none (quoted in image-prompt answers)."""
        if segmenter is not None and not hasattr(segmenter, "segment") and callable(segmenter):
            self._segmenter_factory = segmenter
        else:
            self.segmenter = segmenter
        self._concept: ConceptSegmenter | None = None
        self._concept_factory: ConceptFactory | None = None
        if concept_segmenter is not None and not hasattr(concept_segmenter, "segment") and callable(concept_segmenter):
            self._concept_factory = concept_segmenter
        else:
            self._concept = concept_segmenter
        self._votes: dict[str, ConceptVotes] = {}
        self._frame_paths: dict[Path, str] | None = None
        self.last_region_note = ""
        """How the last image prompt's region was made (:meth:`region_note`)."""
        self._source = source
        self._scene: Scene | None = None
        self.gaussians: Gaussians = source.gaussians
        self.embedder: Embedder = source.embedder
        fields = source.fields
        if level not in fields:
            raise Cos3dError(f"the run has no {level!r}-level field; levels: {sorted(fields)}")
        self.level = level
        if part_level is None:
            part_level = "s" if "s" in fields else ("m" if "m" in fields else level)
        self.part_level = part_level
        self.refine_method = self._check_refine(refine)
        self.cache = PromptCache()
        self.means = self.gaussians.means.detach().float().cpu()
        self.opacity = self.gaussians.opacities.detach().float().cpu()
        self.scales = self.gaussians.scales.detach().float().cpu().amax(1)
        self._levels: dict[str, LevelState] = {}
        for name, f in fields.items():
            unit = torch.nn.functional.normalize(f.instance.detach().cpu().float(), dim=1).contiguous()
            lang = f.language.detach().cpu()
            if lang.dtype != torch.float32 and lang.numel() * 4 <= self.LANGUAGE_FP32_BYTES:
                lang = lang.float()  # a float32 copy makes every relevancy product ~2x faster on CPU
            self._levels[name] = LevelState(
                name=name,
                unit=unit,
                unit_np=unit.numpy(),
                language=lang,
                targets=f.targets.detach().cpu().float(),
                dbar=float(f.dbar),
            )
        self.masks = MaskRenderer(self.gaussians)

    # ------------------------------------------------------------------ helpers
    @property
    def segmenter(self) -> "PromptSegmenter | None":
        """Box/point → mask segmenter of image prompts (SAM2 / SAM 3 tracker); None: the offline rules of
        :func:`cos3d.vision.prompts.prompt_mask`. A factory given to the constructor runs on first use."""
        if self._segmenter_factory is not None:
            factory, self._segmenter_factory = self._segmenter_factory, None
            self._segmenter, self.segmenter_note = factory()
        return self._segmenter

    @segmenter.setter
    def segmenter(self, segmenter: "PromptSegmenter | None") -> None:
        self._segmenter_factory = None
        self._segmenter = segmenter
        self.segmenter_note = NO_SEGMENTER if segmenter is None else describe_segmenter(segmenter)

    @property
    def concept_segmenter(self) -> "ConceptSegmenter | None":
        """The 2D-first branch's concept segmenter (SAM 3); a factory given to the constructor runs on first use."""
        if self._concept_factory is not None:
            factory, self._concept_factory = self._concept_factory, None
            self._concept = factory()
        return self._concept

    @concept_segmenter.setter
    def concept_segmenter(self, segmenter: "ConceptSegmenter | None") -> None:
        self._concept_factory = None
        self._concept = segmenter
        self._votes.clear()

    def concept_votes(self, text: str) -> "ConceptVotes":
        """The 2D-first branch's votes for ``text`` (:func:`cos3d.query.concept2d.concept_votes` on
        :data:`BRANCH_VIEWS` evenly spread training views), kept for the engine's life (``2d`` and ``fused``
        share them)."""
        from cos3d.query.concept2d import concept_votes

        key = " ".join(text.split()).lower()
        if key not in self._votes:
            seg = self.concept_segmenter
            if seg is None:
                raise Cos3dError(NO_CONCEPT_SEGMENTER)
            if len(self._votes) >= 256:
                self._votes.pop(next(iter(self._votes)))
            self._votes[key] = concept_votes(self, seg, text, k=BRANCH_VIEWS)
        return self._votes[key]

    def frame_of(self, image: ImageInput) -> str | None:
        """The name of the scene frame whose colour image file ``image`` is (None for any other image)."""
        if not isinstance(image, (str, Path)):
            return None
        if self._frame_paths is None:
            self._frame_paths = {Path(f.image_path).resolve(): f.name for f in self.scene.frames}
        return self._frame_paths.get(Path(image).resolve())

    def region_note(self, prompt: ImagePrompt, *, fell_back: bool = False) -> str:
        """How an image prompt's region was made: the given mask, the segmenter's mask, or the offline rule."""
        if prompt.mask is not None:
            return "region: the given mask"
        how = prompt.kind
        rule = "the box itself" if how == "box" else f"superpixels around the {how}"
        seg = self.segmenter
        if seg is not None and not fell_back:
            return f"region: {self.segmenter_note} mask from the {how}"
        if seg is not None:
            return f"region: {rule} (offline rule: {self.segmenter_note} returned an empty mask)"
        return f"region: {rule} (offline rule; {self.segmenter_note})"

    @staticmethod
    def _check_refine(refine: str) -> str:
        if refine not in REFINERS:
            raise Cos3dError(f"unknown refinement {refine!r}; choose one of {', '.join(REFINERS)}")
        return refine

    @property
    def scene(self) -> Scene:
        """The scene (frames, cameras, names), read from the source on first use: a text query needs none of
        it, and reading a 1,000-frame scan's frame list takes seconds."""
        if self._scene is None:
            self._scene = self._source.scene
        return self._scene

    def level_state(self, level: str) -> LevelState:
        """The query state of ``level`` (features, targets, index, calibration); one error line naming the
        trained levels when it has none."""
        if level not in self._levels:
            raise Cos3dError(f"the run has no {level!r}-level field; levels: {sorted(self._levels)}")
        return self._levels[level]

    @property
    def levels(self) -> list[str]:
        """The trained levels the engine answers on."""
        return list(self._levels)

    def set_calibration(self, level: str, calibration: NoTargetCalibration) -> None:
        """Replace ``level``'s no-target calibration (evaluation: measuring the selection with presence forced)."""
        self.level_state(level).calibration = calibration

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[0])

    @property
    def negatives(self) -> Tensor:
        """``[4, D]`` embeddings of the canonical negatives."""
        return self.cache.embed(self.embedder, list(CANONICAL_NEGATIVES))

    def negative_max_for(self, level: str | None = None) -> Tensor:
        """``[N]`` the level's ``max_k L·n_k`` over the canonical negatives (computed on first use, saved
        with the query state): the half of the relevancy that no prompt changes."""
        lv = self.level_state(level or self.level)
        if lv.neg_max is None:
            lv.neg_max = negative_max(lv.language, self.negatives)
        return lv.neg_max

    def index(self, level: str | None = None) -> InstanceIndex:
        """The level's :class:`InstanceIndex` (built on first use, ~0.1 s per 50k Gaussians)."""
        lv = self.level_state(level or self.level)
        if lv.index is None:
            lv.index = InstanceIndex(lv.unit)
        return lv.index

    def calibration_for(self, level: str | None = None) -> NoTargetCalibration:
        """The level's no-target calibration (computed on first use, and again when :attr:`settings` ask for
        another top-k; see :mod:`cos3d.query.notarget`)."""
        lv = self.level_state(level or self.level)
        if lv.calibration is None or lv.calibration.top_k != self.settings.presence_top_k:
            vocab = list(NEGATIVE_VOCABULARY)
            lv.calibration = calibrate(
                lv.language, self.opacity, lv.targets, self.negatives, self.cache.embed(self.embedder, vocab), vocab,
                held_out=self.held_out_prompts, top_k=self.settings.presence_top_k,
                positives="targets" if getattr(self.embedder, "mask_embeddings_are_text", False) else "words",
            )
        return lv.calibration

    @property
    def calibration(self) -> NoTargetCalibration:
        """The object level's no-target calibration."""
        return self.calibration_for(self.level)

    # ------------------------------------------------------------------ saved state
    def state_key(self) -> str:
        """What the saved index and calibration depend on besides the fields file: the Gaussians'
        count, each level's ``d̄`` and anchors, the embedder and the calibration vocabularies."""
        import hashlib
        import json

        blob = {
            "n": self.num_gaussians,
            "embedder": self.embedder.model_id,
            "vocabulary": list(NEGATIVE_VOCABULARY),
            "negatives": list(CANONICAL_NEGATIVES),
            "presence": PRESENCE_STATE_VERSION,
            "top_k": self.settings.presence_top_k,
            "levels": {k: [round(v.dbar, 8), int(v.targets.shape[0])] for k, v in sorted(self._levels.items())},
        }
        return hashlib.sha1(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]

    def state_dict(self) -> dict:
        """Every level's refinement index and no-target calibration (computed now if not yet), as
        tensors and plain values: saved in the run folder so that a new process skips building them."""
        return {
            "key": self.state_key(),
            "levels": {
                name: {"index": self.index(name).state_dict(), "calibration": self.calibration_for(name).state_dict(),
                       "negative_max": self.negative_max_for(name).cpu()}
                for name in self._levels
            },
        }

    def load_state_dict(self, state: dict) -> bool:
        """Adopt a saved :meth:`state_dict` when its key matches this engine; returns whether it did."""
        if not isinstance(state, dict) or state.get("key") != self.state_key():
            return False
        levels = state.get("levels", {})
        if set(levels) != set(self._levels):
            return False
        for name, st in levels.items():
            index = InstanceIndex.from_state_dict(st["index"])
            if index.n != self.num_gaussians:
                return False
            self._levels[name].index = index
            self._levels[name].sorted_field = None
            self._levels[name].calibration = NoTargetCalibration.from_state_dict(st["calibration"])
            neg_max = st.get("negative_max")  # absent in states saved before it was kept: computed on first use
            if isinstance(neg_max, Tensor) and neg_max.shape == (self.num_gaussians,):
                self._levels[name].neg_max = neg_max.to(self._levels[name].language.device, torch.float32)
        return True

    def camera(self, view: Camera | str) -> Camera:
        """A :class:`Camera`, or the camera of the scene frame named ``view``."""
        if isinstance(view, Camera):
            return view
        names = [f.name for f in self.scene.frames]
        if str(view) not in names:
            raise Cos3dError(f"unknown view {str(view)!r}; the scene's frames are {names[0]}..{names[-1]} ({len(names)} frames)")
        return self.scene.frame(str(view)).camera

    def mask(self, result: QueryResult, camera: Camera | str, protocol: str = "occlusion") -> np.ndarray:
        """bool ``[H, W]`` mask of ``result``'s selection in ``camera`` under ``protocol``."""
        check_protocol(protocol)
        return self.masks.mask(result.selected, self.camera(camera), protocol)

    # ------------------------------------------------------------------ embeddings
    def embed_text(self, texts: Sequence[str]) -> Tensor:
        """``[T, D]`` unit embeddings (cached per engine)."""
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise Cos3dError("empty text prompt: give a phrase such as \"red mug\"")
        return self.cache.embed(self.embedder, [t.strip() for t in texts])

    def prompt_region(self, image: np.ndarray, prompt: ImagePrompt) -> np.ndarray:
        """bool ``[H, W]``: the region ``prompt`` marks on ``image`` (files and "x,y;..." text read here;
        through the segmenter when one is configured, else :func:`cos3d.vision.prompts.prompt_mask`'s rules)."""
        from cos3d.vision.prompts import prompt_mask

        prompt = prompt.loaded()
        import warnings

        seg = None if prompt.mask is not None else self.segmenter
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            region = prompt_mask(image, prompt, segmenter=seg)
        fell_back = any("empty mask" in str(w.message) for w in caught)
        self.last_region_note = self.region_note(prompt, fell_back=fell_back)
        return region

    def embed_image(
        self,
        image: ImageInput,
        prompt: ImagePrompt,
        *,
        level: str | None = None,
    ) -> tuple[Tensor, str]:
        """``([D] unit embedding, note)`` of an image prompt: the prompted region
        (:func:`cos3d.vision.prompts.prompt_mask`) embedded by :meth:`Embedder.embed_region`; the note says
        how an embedder that sees no pixels named it (module docstring: oracle-2D for ``labels``)."""

        path = None
        if isinstance(image, (str, Path)):
            path = Path(image)
            image = load_rgb_image(path)
        image = np.asarray(image)
        region = self.prompt_region(image, prompt)
        lvl = level or self.level
        part = lvl == self.part_level and lvl != self.level
        return self.embedder.embed_region(
            ImageRegion(image=image, mask=region, path=path, scene=self.scene, part=part)
        )

    # ------------------------------------------------------------------ core steps
    def relevancy(self, embeddings: Tensor, level: str | None = None) -> Tensor:
        """Raw relevancy ``[T, N]`` of every Gaussian to each of ``embeddings [T, D]``."""
        lv = self.level_state(level or self.level)
        return raw_relevancy(lv.language, embeddings, self.negatives, neg_max=self.negative_max_for(lv.name))

    def refine(
        self, r: Tensor, level: str | None = None, *, subset: Tensor | None = None, method: str | None = None
    ) -> RefineResult:
        """Adaptive Lang2Ins refinement of normalised relevancy ``r [N]`` on a level."""
        lv = self.level_state(level or self.level)
        method = self._check_refine(method or self.refine_method)
        if method == "reference":
            return refine_reference(lv.unit, r, self.opacity, lv.dbar, subset=subset)
        if method == "fast":
            big = self.num_gaussians >= COMPILED_MIN_GAUSSIANS
            method = "compiled" if big and refine_compiled.available() else "numpy"
        if method == "compiled":
            if lv.sorted_field is None:
                lv.sorted_field = refine_compiled.sorted_field(self.index(lv.name), lv.unit_np)
            return refine_compiled.refine_compiled(r, self.opacity, lv.dbar, lv.sorted_field, subset=subset)
        return refine_fast(lv.unit, r, self.opacity, lv.dbar, subset=subset, index=self.index(lv.name), unit_instance=lv.unit_np)

    def grow(self, seed: int, level: str | None = None, *, subset: Tensor | None = None,
             prompt: Tensor | None = None, votes: tuple[Tensor, Tensor] | None = None) -> tuple[Object3D, RefineResult]:
        """The object around Gaussian ``seed`` (click semantics, module docstring) → (object, refinement).

        ``prompt``: the language embedding to grow with (a click passes the rendered language feature
        around the clicked pixel); default the mean language feature of the seed's tightest instance ball.
        ``votes``: (Gaussian ids, blending weights) at the clicked pixels; the object holding the most of
        that weight is returned (else the object holding ``seed``).
        """
        lv = self.level_state(level or self.level)
        n = self.num_gaussians
        seed = int(seed)
        if not 0 <= seed < n:
            raise ValueError(f"Gaussian id {seed} is out of range [0, {n})")
        if prompt is None:  # a local consensus: the language features of the seed's tightest instance ball
            core = (lv.unit @ lv.unit[seed]) > thresholds(lv.dbar)[-1]
            if subset is not None:
                core &= subset
            core[seed] = True
            prompt = lv.language[core].float().mean(0)
        p = torch.nn.functional.normalize(prompt.float(), dim=0)
        if self.SNAP_CLICK and len(lv.targets):
            # snap to the training-mask embedding (Ins2Lang target) closest to it: a clean, object-level prompt
            p = torch.nn.functional.normalize(lv.targets[int(torch.argmax(lv.targets @ p))], dim=0)
        R = raw_relevancy(lv.language, p, self.negatives, neg_max=self.negative_max_for(lv.name))
        r = normalize_relevancy(R, subset)
        r[seed] = max(float(r[seed]), 1.0)  # the clicked Gaussian is a candidate whatever its relevancy
        ref = self.refine(r, lv.name, subset=subset)
        cos = lv.unit @ lv.unit[seed]
        objs = split_objects(ref.selected, self.means, lv.unit, self.opacity, cos, lv.dbar, scales=self.scales)
        own = [o for o in objs if bool((o.gaussians == seed).any())]
        if votes is not None and objs:
            vg, vw = votes
            mass = [float(vw[torch.isin(vg, o.gaussians)].sum()) for o in objs]
            if max(mass) > 0:
                own = [objs[int(np.argmax(mass))]]
        if not own and objs:  # the seed fell in a dropped fragment: the object nearest to it
            x = self.means[seed].numpy()
            own = [min(objs, key=lambda o: float(np.min(np.linalg.norm(o.points - x, axis=1))))]
        obj = own[0] if own else make_object(torch.tensor([seed]), self.means, self.opacity, cos)
        return obj, ref

    def lift(self, view: str, region: ImagePrompt, *, level: str | None = None) -> QueryResult:
        """An image prompt on one of the scene's frames, answered with no ground truth: the prompted region
        (the segmenter's mask, or :func:`cos3d.vision.prompts.prompt_mask`'s offline rule) is lifted into 3D
        through the frame's blending weights and answered in instance space (:mod:`cos3d.query.lift`).
        The same as ``query(view=view, region=region)``."""
        return self.query(view=view, region=region, level=level)

    def render_rgb(self, camera: Camera) -> np.ndarray:
        """uint8 ``[H, W, 3]``: the Gaussians' colour image in ``camera`` (any pose and size, e.g. a
        viewer's current view; black background)."""
        from cos3d.render import render

        with torch.no_grad():
            out = render(self.gaussians, camera, background=(0.0, 0.0, 0.0))
        assert out.rgb is not None
        return (out.rgb[0].clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()

    def lift_camera(self, camera: Camera, region: ImagePrompt, *, image: np.ndarray | None = None,
                    level: str | None = None, desc: str | None = None) -> QueryResult:
        """An image prompt on **any** posed view (a novel viewpoint, such as a viewer's current camera),
        answered as :meth:`lift` answers one on a scene frame: the view's colour image (``image``, else
        rendered from the Gaussians: :meth:`render_rgb`) carries the prompt, the region is made by
        :meth:`prompt_region`, lifted into 3D through **this view's** blending weights (computed for the
        camera, :meth:`MaskRenderer.contributions`) and grown from its seed (:meth:`grow`). Reads no
        ground truth. ``desc`` names the prompt in the result (default ``view [box]``)."""
        from cos3d.query.lift import region_prompt

        if not isinstance(camera, Camera):
            raise TypeError(f"camera must be a cos3d Camera, got {type(camera).__name__}")
        if not isinstance(region, ImagePrompt):
            raise TypeError(f"region must be an ImagePrompt, got {type(region).__name__}")
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        lvl = level or self.level
        lvs = self.level_state(lvl)
        ts = time.perf_counter()
        img = self.render_rgb(camera) if image is None else np.asarray(image, np.uint8)
        if img.shape[:2] != (camera.height, camera.width):
            raise Cos3dError(f"the view's image is {img.shape[1]}x{img.shape[0]} but the camera is "
                             f"{camera.width}x{camera.height}")
        timings["render"] = (time.perf_counter() - ts) * 1e3
        ts = time.perf_counter()
        mask2d = self.prompt_region(img, region)
        c = self.masks.contributions(camera)
        timings["contributions"] = (time.perf_counter() - ts) * 1e3
        ts = time.perf_counter()
        seed, lifted, votes = region_prompt(c, lvs.unit, lvs.language, lvs.dbar, mask2d)
        timings["lift"] = (time.perf_counter() - ts) * 1e3
        ts = time.perf_counter()
        obj, ref = self.grow(seed, lvl, prompt=lifted, votes=votes)
        timings["refine"] = (time.perf_counter() - ts) * 1e3
        timings["total"] = (time.perf_counter() - t0) * 1e3
        note = f"{self.last_region_note}, lifted through the view's own blending weights"
        return QueryResult(query=desc or f"view [{region.kind}]", kind="image", level=lvl, objects=[obj],
                           selected=obj.gaussians, no_target=False, reason=f"{note}; seed Gaussian {seed}",
                           timings=timings, refine=ref, engine=self)

    def part_query(self, part: str, parent: str | QueryResult, *, sentence: str | None = None,
                   refine: str | None = None) -> QueryResult:
        """``part`` of ``parent`` (a prompt or an earlier answer) on the finest level that separates it.

        The parent is answered on the object level; then the part, restricted to the parent's Gaussians, on
        each finer level, finest first (``s``, then ``m``); the first answer holding less than
        :data:`SEPARATE_SHARE` of the parent's Gaussians is returned. When every level finds nothing inside
        the parent, the answer is empty (no target). When a level finds the part but it covers the whole
        parent (nothing separates it) and ``sentence`` is given ("bottle of ketchup"), the sentence is
        answered as one name instead."""
        t0 = time.perf_counter()
        par = parent if isinstance(parent, QueryResult) else self.query(parent, parts=False, refine=refine)
        pname = par.query
        if par.no_target or par.num_gaussians == 0:
            if sentence is not None:
                res = self.query(sentence, parts=False, refine=refine)
                res.reason = f"{res.reason}; read as one name (the parent {pname!r} was not found)"
                return res
            return self._empty(f"{part} within {pname}", "part:text", self.part_level,
                               f"no target: the parent {pname!r} was not found ({par.reason})", t0, {})
        order = [lv for lv in ("s", "m", "l") if lv in self._levels and lv != self.level]
        if not order:
            order = [self.part_level]
        tried = []
        covering = None
        for lv in order:
            res = self.query(part, within=par, level=lv, refine=refine)
            share = res.num_gaussians / max(1, par.num_gaussians)
            tried.append(f"{lv}: {'nothing' if res.no_target else f'{share:.0%} of the parent'}")
            if res.no_target:
                continue
            if share < SEPARATE_SHARE:
                res.reason = f"{res.reason}; level {lv}, the finest that separates {part!r} within {pname!r}"
                res.timings["total"] = (time.perf_counter() - t0) * 1e3
                return res
            covering = covering or res
        if covering is not None and sentence is not None:
            res = self.query(sentence, parts=False, refine=refine)
            res.reason = (f"{res.reason}; read as one name: no level separates {part!r} from {pname!r} "
                          f"({', '.join(tried)})")
            return res
        if covering is not None:
            covering.reason = f"{covering.reason}; no level separates {part!r} from {pname!r} ({', '.join(tried)})"
            return covering
        return self._empty(f"{part} within {pname}", "part:text", order[0],
                           f"no target: no level finds {part!r} inside {pname!r} ({', '.join(tried)})", t0, {})

    def _empty(self, query: str, kind: str, level: str, reason: str, t0: float,
               timings: dict[str, float]) -> QueryResult:
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return QueryResult(query=query, kind=kind, level=level, objects=[], selected=torch.zeros(0, dtype=torch.long),
                           no_target=True, reason=reason, timings=timings, engine=self)

    def _parent(self, within: str | QueryResult | None, within_object: WithinObject | QueryResult | None
                ) -> tuple[Tensor | None, str]:
        """Bool ``[N]`` parent selection and its description, or (None, reason) when absent."""
        n = self.num_gaussians
        if within_object is not None:
            if isinstance(within_object, Object3D):
                ids, desc = within_object.gaussians, f"object {within_object.id}"
            elif isinstance(within_object, QueryResult):
                ids, desc = within_object.selected, within_object.query
            elif isinstance(within_object, Tensor) and within_object.numel() > 1:
                ids, desc = within_object.long(), "given Gaussians"
            else:
                try:
                    gid = int(within_object)
                except (TypeError, ValueError):
                    raise Cos3dError(f"--within-object expects an object id (an integer), got {within_object!r}") from None
                if not 0 <= gid < n:
                    raise Cos3dError(f"--within-object {gid}: no such object (object ids are Gaussian ids in [0, {n}))")
                obj, _ = self.grow(gid, self.level)
                ids = obj.gaussians
                desc = f"object {gid}"
            mask = torch.zeros(n, dtype=torch.bool)
            mask[ids] = True
            return mask, desc
        if isinstance(within, QueryResult):
            parent = within
        else:
            parent = self.query(within)
        if parent.no_target or parent.num_gaussians == 0:
            return None, f"the parent {parent.query!r} was not found ({parent.reason})"
        mask = torch.zeros(n, dtype=torch.bool)
        mask[parent.selected] = True
        return mask, parent.query

    # ------------------------------------------------------------------ public API
    def query(
        self,
        text: str | None = None,
        *,
        image: ImageInput | None = None,
        view: str | None = None,
        region: ImagePrompt | None = None,
        box: Sequence[float] | None = None,
        mask: BinaryInput | None = None,
        scribble: BinaryInput | None = None,
        points: PointsInput | None = None,
        point_labels: np.ndarray | Sequence[int] | None = None,
        click: ClickInput | None = None,
        within: str | QueryResult | None = None,
        within_object: WithinObject | QueryResult | None = None,
        level: str | None = None,
        refine: str | None = None,
        lift: bool | None = None,
        combine: str = "sum",
        parts: bool = True,
        branch: str = "field",
    ) -> QueryResult:
        """Answer one prompt (see the module docstring). Raises :class:`Cos3dError` for bad prompts.

        ``region``: where on the reference image (:class:`~cos3d.vision.image_prompt.ImagePrompt`); ``box=``,
        ``mask=``, ``scribble=``, ``points=`` and ``point_labels=`` build one in place (not together with
        ``region``). ``view``: a scene frame whose image is the reference image. ``lift``: None (default) lifts the
        region of a reference image that is a scene frame (``view=``, or ``image=`` that frame's file) into
        3D through the frame's blending weights; False embeds the region instead (with the oracle-2D
        ``labels`` embedder that names the dataset object under it: a ground-truth look-up). ``combine``:
        text + image as ``"sum"`` (normalised sum of the two embeddings) or ``"and"`` (the text answer's
        Gaussians that the image answer holds too). ``parts``: read a text such as "the handle of the red
        mug" / "the robot's head" as a part query (:func:`cos3d.query.prompts.parse_part_sentence`).
        ``branch``: how a text prompt is answered (:data:`QUERY_BRANCHES`): ``"field"`` (default), ``"2d"`` or
        ``"fused"`` (text prompts only; they need :attr:`concept_segmenter`)."""
        if branch != "field":
            if branch not in QUERY_BRANCHES:
                raise Cos3dError(f"unknown --branch {branch!r}; choose one of {', '.join(QUERY_BRANCHES)}")
            if (text is None or image is not None or view is not None or click is not None or within is not None
                    or within_object is not None or region is not None or box is not None or mask is not None
                    or scribble is not None or points is not None):
                raise Cos3dError(f"--branch {branch} answers a text prompt alone (no image, click or --within)")
            return self._branch_query(text, branch, level=level, refine=refine, parts=parts)
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        prompt = ImagePrompt.of(region, box=box, mask=mask, scribble=scribble, points=points,
                                point_labels=point_labels)
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise Cos3dError("empty text prompt: give a phrase such as \"red mug\"")
        if combine not in COMBINE_MODES:
            raise Cos3dError(f"unknown --combine {combine!r}; choose one of {', '.join(COMBINE_MODES)}")
        if view is not None and image is not None:
            raise Cos3dError("give the reference image either as --image or as --view (a scene frame), not both")
        frame = None
        if view is not None:
            self.camera(str(view))  # unknown view → one-line error
            frame = str(view)
            if lift is False:
                image, frame = self.scene.frame(frame).image_path, None
        elif image is not None and lift is not False:
            frame = self.frame_of(image)
        image_given = image is not None or frame is not None
        if not image_given and prompt is not None:
            raise Cos3dError("--box/--mask/--scribble/--points prompt a reference image: also pass --image (or --view)")
        if click is not None and (text is not None or image_given):
            raise Cos3dError("a click is a prompt on its own; do not combine it with text or an image")
        if text is None and not image_given and click is None:
            raise Cos3dError("nothing to query: give a text prompt, an --image prompt or a --click")
        hier = within is not None or within_object is not None
        if parts and text is not None and not hier and not image_given and level is None:
            from cos3d.query.prompts import parse_part_sentence

            split = parse_part_sentence(text)
            if split is not None:
                return self.part_query(split[0], split[1], sentence=text, refine=refine)
        if (text is not None and isinstance(within, str) and within_object is None and not image_given
                and level is None):
            return self.part_query(text.strip(), within, refine=refine)
        lvl = level or (self.part_level if hier else self.level)
        self.level_state(lvl)

        subset = None
        parent_desc = ""
        if hier:
            ts = time.perf_counter()
            subset, parent_desc = self._parent(within, within_object)
            timings["parent"] = (time.perf_counter() - ts) * 1e3
        if click is not None:
            return self._click(click, lvl, subset, parent_desc, t0, timings)

        desc = text.strip() if text is not None else ""
        kind = "text"
        if image_given:
            kind = "text+image" if text is not None else "image"
            src = f"view {frame}" if frame is not None else (
                Path(image).name if isinstance(image, (str, Path)) else "array")
            how = prompt.kind if prompt is not None else "nothing"
            desc = (desc + (" & " if combine == "and" else " + ") if desc else "") + f"image:{src}[{how}]"
        if hier:
            desc = f"{desc} within {parent_desc}"
            kind = "part:" + kind
            if subset is None:
                return self._empty(desc, kind, lvl, parent_desc, t0, timings)
        if image_given and prompt is None:
            prompt = ImagePrompt()  # prompt_mask says what is missing

        # ---- an image prompt on a posed scene frame: the region lifted into 3D
        if frame is not None:
            from cos3d.query.lift import region_prompt

            ts = time.perf_counter()
            cam = self.camera(frame)
            assert prompt is not None
            mask2d = self.prompt_region(self.scene.frame(frame).load_image(), prompt)
            lvs = self.level_state(lvl)
            seed, lifted, votes = region_prompt(self.masks.contributions(cam), lvs.unit, lvs.language, lvs.dbar,
                                                mask2d, subset)
            timings["lift"] = (time.perf_counter() - ts) * 1e3
            note = f"{self.last_region_note}, lifted through view {frame}'s blending weights"
            if text is None or combine == "and":
                ts = time.perf_counter()
                obj, ref = self.grow(seed, lvl, subset=subset, prompt=lifted, votes=votes)
                timings["refine"] = (time.perf_counter() - ts) * 1e3
                timings["total"] = (time.perf_counter() - t0) * 1e3
                img = QueryResult(query=desc, kind=kind, level=lvl, objects=[obj], selected=obj.gaussians,
                                  no_target=False, reason=f"{note}; seed Gaussian {seed}", timings=timings,
                                  refine=ref, engine=self)
                if text is None:
                    return img
                return self._intersect(text, img, desc, kind, lvl, subset, refine, t0)
            ts = time.perf_counter()
            from cos3d.vision.prompts import combine_embeddings

            p = combine_embeddings([self.embed_text([text])[0], torch.nn.functional.normalize(lifted.float(), dim=0)])
            timings["embed"] = (time.perf_counter() - ts) * 1e3
            res = self._answer(p[None], [desc], kind, lvl, subset, refine, t0, timings)[0]
            res.reason = f"{res.reason}; text + the region's rendered language feature ({note})"
            return res

        # ---- the prompt embedding
        ts = time.perf_counter()
        embs, notes = [], []
        if text is not None:
            embs.append(self.embed_text([text])[0])
        if image_given:
            assert prompt is not None and image is not None
            emb, note = self.embed_image(image, prompt, level=lvl)
            embs.append(emb)
            notes.append("; ".join(x for x in (self.last_region_note, note) if x))
        if image_given and text is not None and combine == "and":
            timings["embed"] = (time.perf_counter() - ts) * 1e3
            img = self._answer(embs[1][None], [desc], kind, lvl, subset, refine, t0, dict(timings))[0]
            img.reason = f"{img.reason}; {notes[0]}"
            return self._intersect(text, img, desc, kind, lvl, subset, refine, t0)
        if len(embs) > 1:
            from cos3d.vision.prompts import combine_embeddings

            p = combine_embeddings(embs)
        else:
            p = embs[0]
        timings["embed"] = (time.perf_counter() - ts) * 1e3
        res = self._answer(p[None], [desc], kind, lvl, subset, refine, t0, timings)[0]
        if notes and notes[0]:
            res.reason = f"{res.reason}; {notes[0]}"
        return res

    def _branch_query(self, text: str, branch: str, *, level: str | None, refine: str | None,
                      parts: bool) -> QueryResult:
        """``branch="2d"`` / ``"fused"`` (:data:`QUERY_BRANCHES`; presence: :func:`cos3d.query.concept2d.fused_presence`)."""
        from cos3d.query.concept2d import fused_presence

        if not isinstance(text, str) or not text.strip():
            raise Cos3dError("empty text prompt: give a phrase such as \"red mug\"")
        t0 = time.perf_counter()
        desc = text.strip()
        fld = self.query(text, level=level, refine=refine, parts=parts) if branch == "fused" else None
        lvl = fld.level if fld is not None else (level or self.level)
        ts = time.perf_counter()
        votes = self.concept_votes(text)
        timings = {"concept2d": (time.perf_counter() - ts) * 1e3}
        p = votes.presence_max
        seen = f"{sum(n > 0 for n in votes.instances.values())}/{len(votes.views)} views hold instances"

        def done(objs: list[Object3D], reason: str, present: bool, score: float | None = p,
                 threshold: float | None = None) -> QueryResult:
            timings["total"] = (time.perf_counter() - t0) * 1e3
            if not present or not objs:
                res = self._empty(desc, "text", lvl, reason if not present else f"no target: {reason}", t0, timings)
                res.score, res.threshold = score, threshold
            else:
                objs = sorted(objs, key=lambda o: -o.score)
                sel = torch.sort(torch.cat([o.gaussians for o in objs])).values
                res = QueryResult(query=desc, kind="text", level=lvl, objects=objs, selected=sel, no_target=False,
                                  reason=reason, timings=timings, score=score, threshold=threshold, engine=self)
            res.branch = branch
            return res

        mine = votes.selected()
        R = self.relevancy(self.embed_text([text]), lvl)[0]

        def lifted() -> list[Object3D]:
            lv = self.level_state(lvl)
            return split_objects(mine, self.means, lv.unit, self.opacity, R, lv.dbar, scales=self.scales) if len(mine) else []

        if branch == "2d":
            if not votes.present:
                return done([], f"no target: SAM 3 found no instance of {desc!r} ({seen}; presence {p:.2f})", False)
            objs = lifted()
            n = len(objs)
            return done(objs, f"{n} object{'s' if n != 1 else ''} lifted from the concept masks ({seen})", True)
        assert fld is not None
        present, why = fused_presence(votes, not fld.no_target)
        if not present:
            return done([], f"no target: {why} (field: {fld.reason})", False, fld.score, fld.threshold)
        objs = []
        if not fld.no_target and votes.present:
            for o in fld.objects:
                ids = o.gaussians[torch.isin(o.gaussians, mine)]
                if ids.numel():
                    objs.append(make_object(ids, self.means, self.opacity, R))
        if objs:
            how = "the field's objects cut to the Gaussians the concept masks confirm"
        elif not fld.no_target and not (votes.present and len(mine)):
            objs, how = list(fld.objects), "the field's objects (the views confirm none of them)"
        else:
            objs, how = lifted(), "the objects lifted from the concept masks (the field's answer is not confirmed)"
        n = len(objs)
        return done(objs, f"{n} object{'s' if n != 1 else ''}: {how} ({why}; {seen})", True, fld.score, fld.threshold)

    def _intersect(self, text: str, img: QueryResult, desc: str, kind: str, lvl: str, subset: Tensor | None,
                   refine: str | None, t0: float) -> QueryResult:
        """``--combine and``: the text answer's objects cut to the Gaussians the image answer holds."""
        txt = self._answer(self.embed_text([text]), [text.strip()], "text", lvl, subset, refine, t0, {})[0]
        timings = {"total": (time.perf_counter() - t0) * 1e3}
        both = f"text: {txt.reason}; image: {img.reason}"
        if txt.no_target or img.no_target:
            which = "the text" if txt.no_target else "the image"
            return self._empty(desc, kind, lvl, f"no target: {which} prompt found nothing ({both})", t0, timings)
        R = self.relevancy(self.embed_text([text]), lvl)[0]
        objs = []
        for o in txt.objects:
            ids = o.gaussians[torch.isin(o.gaussians, img.selected)]
            if ids.numel():
                objs.append(make_object(ids, self.means, self.opacity, R))
        if not objs:
            return self._empty(desc, kind, lvl, f"no target: the text and image answers share no Gaussian ({both})",
                               t0, timings)
        objs.sort(key=lambda o: -o.score)
        sel = torch.sort(torch.cat([o.gaussians for o in objs])).values
        return QueryResult(query=desc, kind=kind, level=lvl, objects=objs, selected=sel, no_target=False,
                           reason=f"{len(objs)} object{'s' if len(objs) != 1 else ''} in both answers ({both})",
                           timings=timings, score=txt.score, threshold=txt.threshold, refine=txt.refine, engine=self)

    def query_many(self, texts: Sequence[str], *, level: str | None = None, refine: str | None = None,
                   within: str | QueryResult | None = None) -> list[QueryResult]:
        """Answer several text prompts; embeddings and relevancy are computed in one batch."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        hier = within is not None
        lvl = level or (self.part_level if hier else self.level)
        subset, parent_desc = (None, "")
        if hier:
            subset, parent_desc = self._parent(within, None)
            if subset is None:
                return [self._empty(f"{t} within {within}", "part:text", lvl, parent_desc, t0, dict(timings)) for t in texts]
        ts = time.perf_counter()
        P = self.embed_text(list(texts))
        timings["embed"] = (time.perf_counter() - ts) * 1e3 / max(1, len(texts))
        descs = [t.strip() + (f" within {parent_desc}" if hier else "") for t in texts]
        return self._answer(P, descs, "part:text" if hier else "text", lvl, subset, refine, t0, timings)

    def _answer(self, P: Tensor, descs: list[str], kind: str, lvl: str, subset: Tensor | None,
                refine: str | None, t0: float, timings: dict[str, float]) -> list[QueryResult]:
        lv = self.level_state(lvl)
        ts = time.perf_counter()
        R_all, C_all = raw_relevancy(lv.language, P, self.negatives, neg_max=self.negative_max_for(lvl),
                                     return_cosines=True)  # [T, N] each: relevancy and the cosines behind it
        t_rel = (time.perf_counter() - ts) * 1e3 / len(descs)
        if lv.calibration is None:
            ts = time.perf_counter()
            self.calibration_for(lvl)
            timings = dict(timings, calibration=(time.perf_counter() - ts) * 1e3)  # once per engine and level
        ts = time.perf_counter()
        cal = self.calibration_for(lvl)
        valid = self.opacity > OPACITY_MIN
        stats = presence_statistics(cal, R_all, P, valid, neg_max=self.negative_max_for(lvl), subset=subset,
                                    language=lv.language, cosines=C_all,
                                    relevancy_score=self.settings.presence_rule == "relevancy")
        s = self.settings
        decisions = [decide(st, s.presence_rule, s.presence_margin, part_rule=s.part_rule, part_param=s.part_quantile,
                            words_quantile=s.presence_words_quantile)
                     for st in stats]
        t_pres = (time.perf_counter() - ts) * 1e3
        out = []
        for q, desc in enumerate(descs):
            tq = time.perf_counter()
            tim = dict(timings, relevancy=t_rel, presence=t_pres / len(descs))
            shared = sum(tim.values())
            R = R_all[q]
            present, score, threshold, why = decisions[q]
            reason = "" if present else f"no target: {why} for {desc!r}"
            if reason:
                tim["total"] = shared + (time.perf_counter() - tq) * 1e3
                out.append(QueryResult(query=desc, kind=kind, level=lvl, objects=[],
                                       selected=torch.zeros(0, dtype=torch.long), no_target=True, reason=reason,
                                       timings=tim, score=score, threshold=threshold, engine=self))
                continue
            if lv.index is None and (refine or self.refine_method) in ("fast", "compiled", "numpy"):
                ts = time.perf_counter()
                self.index(lvl)
                tim["index"] = (time.perf_counter() - ts) * 1e3  # once per engine and level
            ts = time.perf_counter()
            on = self.settings.select_parts_on if subset is not None else self.settings.select_objects_on
            cos = C_all[q]
            r = normalize_relevancy(cos if on == "cosine" else R, subset)
            ref = self.refine(r, lvl, subset=subset, method=refine)
            tim["refine"] = (time.perf_counter() - ts) * 1e3
            ts = time.perf_counter()
            objs = split_objects(ref.selected, self.means, lv.unit, self.opacity, R, lv.dbar, scales=self.scales)
            if self.settings.weaker_on != "off":
                objs = self._filter_weaker(objs, R, cos if self.settings.weaker_on == "cosine" else None)
            if self.settings.attach_thin_parts and kind == "text" and subset is None:
                objs = self._attach_thin(objs, R, lv)
            tim["objects"] = (time.perf_counter() - ts) * 1e3
            sel = torch.sort(torch.cat([o.gaussians for o in objs])).values if objs else torch.zeros(0, dtype=torch.long)
            tim["total"] = shared + (time.perf_counter() - tq) * 1e3
            if objs:
                reason = (f"{len(objs)} object{'s' if len(objs) != 1 else ''} ({why}; "
                          f"{len(ref.regions)} region{'s' if len(ref.regions) != 1 else ''} accepted)")
            else:
                reason = f"no region passed the refinement ({why}); no target"
            out.append(QueryResult(query=desc, kind=kind, level=lvl, objects=objs, selected=sel, no_target=not objs,
                                   reason=reason, timings=tim, score=score, threshold=threshold, refine=ref,
                                   engine=self))
        return out

    def _attach_thin(self, objs: list[Object3D], R: Tensor, lv: LevelState) -> list[Object3D]:
        """Each object with the thin parts its refinement left out (:mod:`cos3d.query.thin_parts`); no Gaussian
        moves between the answer's objects."""
        if not objs:
            return objs
        means, scales, opacity = self.means.numpy(), self.scales.numpy(), self.opacity.numpy()
        Rn = R.detach().cpu().double().numpy()
        taken = np.zeros(len(means), bool)
        for o in objs:
            taken[o.gaussians.numpy()] = True
        out = []
        for o in objs:
            mine = np.zeros(len(means), bool)
            mine[o.gaussians.numpy()] = True
            grown = attach_thin_parts(o, relevancy=Rn, unit=lv.unit_np, means=means, scales=scales, opacity=opacity,
                                      taken=taken & ~mine)
            taken[grown.gaussians.numpy()] = True
            out.append(grown)
        return out

    def _filter_weaker(self, objs: list[Object3D], R: Tensor, cos: Tensor | None = None) -> list[Object3D]:
        """Drop objects whose relevancy is clearly below the best object's (module docstring); on ``cos × 10``
        when the cosines are given (:attr:`QuerySettings.weaker_on`)."""
        if len(objs) < 2:
            return objs
        lg = cos.double() * TEMPERATURE if cos is not None else torch.logit(R.double().clamp(1e-7, 1 - 1e-7))
        lv = [float(lg[o.gaussians].median()) for o in objs]
        best = max(lv)
        return [o for o, v in zip(objs, lv) if v >= best - self.settings.weaker_logit]

    def pick(self, camera: Camera | str, x: float, y: float) -> int:
        """The id of the Gaussian with the largest blending weight at pixel ``(x, y)`` of ``camera``."""
        return self._pick(camera, x, y)[0]

    def _pick(self, camera: Camera | str, x: float, y: float, level: str | None = None
              ) -> tuple[int, Tensor, tuple[Tensor, Tensor]]:
        """(Gaussian with the largest weight at the pixel, rendered language feature of the 3×3 window,
        (Gaussian ids, weights) of the window's contributions)."""
        cam = self.camera(camera)
        xi, yi = int(round(float(x))), int(round(float(y)))
        if not (0 <= xi < cam.width and 0 <= yi < cam.height):
            raise Cos3dError(f"click ({x:g}, {y:g}) lies outside the {cam.width}x{cam.height} view")
        c = self.masks.contributions(cam)
        pix = yi * cam.width + xi
        lo, hi = (int(v) for v in torch.searchsorted(c.pixel, torch.tensor([pix, pix + 1])))
        if lo >= hi:
            raise Cos3dError(f"no Gaussian covers pixel ({xi}, {yi}) of that view (empty background); click on an object")
        # entries are sorted by pixel, then weight descending: the first is the largest
        seed = int(c.gaussian[lo])
        win = [(yy * cam.width + xx) for yy in range(max(0, yi - 1), min(cam.height, yi + 2))
               for xx in range(max(0, xi - 1), min(cam.width, xi + 2))]
        bounds = torch.searchsorted(c.pixel, torch.tensor([[p_, p_ + 1] for p_ in win]).flatten()).reshape(-1, 2)
        e = torch.cat([torch.arange(int(a), int(b)) for a, b in bounds])
        lang = self.level_state(level or self.level).language
        feat = (c.weight[e].float()[:, None] * lang[c.gaussian[e]].float()).sum(0)
        return seed, feat, (c.gaussian[e].cpu(), c.weight[e].float().cpu())

    def _click(self, click: ClickInput, lvl: str, subset: Tensor | None, parent_desc: str, t0: float,
               timings: dict[str, float]) -> QueryResult:
        if isinstance(click, str):
            click = parse_click(click)
        elif isinstance(click, tuple):
            if len(click) != 3:
                raise TypeError(f"click must be a (view, x, y) tuple, got {click!r}")
            click = Click(str(click[0]) if not isinstance(click[0], Camera) else click[0], float(click[1]), float(click[2]))
        view = click.view
        desc = f"click {click}" if isinstance(view, str) else f"click ({click.x:g}, {click.y:g})"
        kind = "click"
        if parent_desc:
            desc += f" within {parent_desc}"
            kind = "part:click"
            if subset is None:
                return self._empty(desc, kind, lvl, parent_desc, t0, timings)
        ts = time.perf_counter()
        seed, feat, votes = self._pick(view, click.x, click.y, lvl)
        timings["pick"] = (time.perf_counter() - ts) * 1e3
        if subset is not None and not bool(subset[seed]):
            return self._empty(desc, kind, lvl, f"the clicked Gaussian {seed} is not part of {parent_desc}", t0, timings)
        ts = time.perf_counter()
        obj, ref = self.grow(seed, lvl, subset=subset, prompt=feat, votes=votes)
        timings["refine"] = (time.perf_counter() - ts) * 1e3
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return QueryResult(query=desc, kind=kind, level=lvl, objects=[obj], selected=obj.gaussians, no_target=False,
                           reason=f"clicked Gaussian {seed}; its object ({len(ref.regions)} regions grown)",
                           timings=timings, score=None, threshold=None, refine=ref, engine=self)
