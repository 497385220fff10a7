"""Every 2D provider by name, in one table, each with its own small config (a registry,
with loud weights).

:data:`PROVIDERS` maps a kind (``masks``: mask providers, ``embedder``: mask/text embedders, ``segmenter``:
the box/point segmenters of image prompts) and a name to the provider's config: a frozen dataclass that
holds only the settings that apply to that provider and whose ``create(device=..., scene=...)`` builds
it. ``create`` imports the implementation then, so ``import cos3d.vision`` (and ``cos3d --help``) stays
light.

The commands' flat :class:`~cos3d.vision.models.ModelsConfig` (the ``--masks``, ``--sam2-model``,
``--clip-checkpoint`` ... flags, and ``run.json``'s ``config.models``) derives the chosen provider's config
with :meth:`ProviderConfig.from_models`: each config names the ``ModelsConfig`` fields it reads
(``FROM_MODELS``), so no code outside this table branches on a provider's name to build it.

Every weights-backed model raises :class:`~cos3d.core.errors.MissingWeightsError` when its weights cannot
be had, naming the flag/env var to set and the offline alternative (``dataset`` masks, ``labels`` embedder).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, TypeVar

from cos3d.core.errors import Cos3dError

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.data.scene import Scene
    from cos3d.vision.base import Embedder, MaskProvider
    from cos3d.vision.prompts import PromptSegmenter

__all__ = [
    "PROVIDERS",
    "ProviderConfig",
    "config_class",
    "provider_config",
    "create",
    "create_mask_provider",
    "create_embedder",
    "create_prompt_segmenter",
    "list_mask_providers",
    "list_embedders",
    "list_prompt_segmenters",
]

Kind = Literal["masks", "embedder", "segmenter"]
KIND_TITLES: dict[str, str] = {"masks": "mask provider", "embedder": "embedder", "segmenter": "prompt segmenter"}
"""The kinds of :data:`PROVIDERS`, as error messages name them."""

SAM2_HUB_ID = "facebook/sam2.1-hiera-large"
"""SAM2's default hub model (:data:`cos3d.vision.sam2_masks.DEFAULT_SAM2_HUB_ID`, repeated here to stay light)."""
CLIP_PRETRAINED = "laion2b_s34b_b88k"
"""open_clip's default pretrained tag (:data:`cos3d.vision.openclip_embedder.DEFAULT_CLIP_PRETRAINED`)."""

P = TypeVar("P", bound="ProviderConfig")


@dataclass(frozen=True, kw_only=True)
class ProviderConfig:
    """One provider's settings; :meth:`create` builds it."""

    summary: ClassVar[str] = ""
    """What the provider is, in one line (``cos3d --help`` texts, docs)."""
    PROTOCOL: ClassVar[str] = ""
    """The protocol a run with dataset masks and this embedder follows (``oracle-2D``...); empty: real models."""
    NEEDS_NAMED_MASKS: ClassVar[bool] = False
    """Whether this embedder reads mask names (only dataset masks have them)."""
    FROM_MODELS: ClassVar[Mapping[str, str]] = {}
    """The fields a :class:`~cos3d.vision.models.ModelsConfig` sets: ``{this config's field: ModelsConfig field}``.
    The others keep their defaults (the Python API sets them: ``create_mask_provider("sam2", min_area=50)``)."""

    @classmethod
    def from_models(cls: type[P], settings: Mapping[str, Any]) -> P:
        """This provider's config from a command's settings (:class:`~cos3d.vision.models.ModelsConfig` as a
        ``{field: value}`` mapping; the registry sits below that config and does not import it)."""
        return cls(**{mine: settings[theirs] for mine, theirs in cls.FROM_MODELS.items()})

    def create(self, device: str | None = "auto", scene: "Scene | None" = None) -> Any:
        """Build the provider on ``device`` (``scene``: for the providers that read the scene's own maps)."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- mask providers
@dataclass(frozen=True, kw_only=True)
class _AutoMasks(ProviderConfig):
    """SAM's automatic-mask settings (:class:`cos3d.vision.sam2_masks.AutoMaskFilters`), shared by every SAM."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.7
    stability_score_thresh: float = 0.85
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    nms_thresh: float = 0.7
    min_area: int = 0

    FROM_MODELS: ClassVar[Mapping[str, str]] = {
        "points_per_side": "points_per_side",
        "pred_iou_thresh": "pred_iou_thresh",
        "stability_score_thresh": "stability_thresh",
        "nms_thresh": "nms_thresh",
    }

    def filters(self) -> dict[str, Any]:
        """The automatic-mask keyword arguments of every SAM provider."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(_AutoMasks)}


@dataclass(frozen=True, kw_only=True)
class SAM2Masks(_AutoMasks):
    """``sam2``: SAM2 automatic masks through the ``sam2`` package (official ``.pt`` checkpoints)."""

    checkpoint: str | Path | None = None
    config: str | Path | None = None
    hub_id: str = SAM2_HUB_ID
    image_size: int | None = None

    summary = "SAM2 automatic masks, levels s/m/l (hub facebook/sam2.1-hiera-large or --sam2-checkpoint)"
    FROM_MODELS = {**_AutoMasks.FROM_MODELS, "checkpoint": "sam2_checkpoint", "config": "sam2_config",
                   "hub_id": "sam2_hub_id", "image_size": "sam2_image_size"}

    def create(self, device: str | None = "auto", scene: "Scene | None" = None) -> "MaskProvider":
        from cos3d.vision.sam2_masks import SAM2MaskProvider

        return SAM2MaskProvider(self.checkpoint, self.config, hub_id=self.hub_id, device=device,
                                image_size=self.image_size, **self.filters())


@dataclass(frozen=True, kw_only=True)
class SAM2HFMasks(_AutoMasks):
    """``sam2-hf``: SAM2 automatic masks through ``transformers``."""

    model: str | Path | None = None

    summary = ("SAM2 automatic masks through transformers, levels s/m/l (hub facebook/sam2.1-hiera-large or "
               "--sam2-model DIR)")
    FROM_MODELS = {**_AutoMasks.FROM_MODELS, "model": "sam2_model"}

    def create(self, device: str | None = "auto", scene: "Scene | None" = None) -> "MaskProvider":
        from cos3d.vision.sam2_hf import HFSamMaskProvider

        return HFSamMaskProvider(self.model, family="sam2", device=device, **self.filters())


@dataclass(frozen=True, kw_only=True)
class SAM3Masks(_AutoMasks):
    """``sam3``: the SAM 3 tracker's automatic masks through ``transformers``."""

    model: str | Path | None = None

    summary = "SAM 3 tracker automatic masks through transformers, levels s/m/l (hub facebook/sam3 or --sam3-model DIR)"
    FROM_MODELS = {**_AutoMasks.FROM_MODELS, "model": "sam3_model"}

    def create(self, device: str | None = "auto", scene: "Scene | None" = None) -> "MaskProvider":
        from cos3d.vision.sam2_hf import SAM3TrackerMaskProvider

        return SAM3TrackerMaskProvider(self.model, device=device, **self.filters())


@dataclass(frozen=True, kw_only=True)
class DatasetMasks(ProviderConfig):
    """``dataset``: the scene's instance/part maps as masks, optionally perturbed (oracle-2D protocol)."""

    perturb: float = 0.0
    seed: int = 0
    min_area: int = 10

    summary = "the scene's instance/part maps, optionally perturbed (offline, oracle-2D protocol; needs scene=)"
    FROM_MODELS = {"perturb": "perturb", "seed": "perturb_seed"}

    def create(self, device: str | None = "auto", scene: "Scene | None" = None) -> "MaskProvider":
        from cos3d.vision.dataset_masks import DatasetMaskProvider

        if scene is None:
            raise Cos3dError("the dataset mask provider reads the scene's instance maps: give it the scene (scene=)")
        return DatasetMaskProvider(scene, perturb=self.perturb, seed=self.seed, min_area=self.min_area)


@dataclass(frozen=True, kw_only=True)
class ClassicalMasks(ProviderConfig):
    """``classical``: superpixels merged into masks (no weights)."""

    method: str = "felzenszwalb"
    thresholds: tuple[float, float, float] = (10.0, 25.0, 45.0)
    scale: float = 50.0
    sigma: float = 0.5
    min_area_frac: float = 0.001
    max_area_frac: float = 0.6

    summary = "superpixels merged into masks (offline, no weights)"
    FROM_MODELS = {"method": "classical_method"}

    def create(self, device: str | None = "auto", scene: "Scene | None" = None) -> "MaskProvider":
        from cos3d.vision.classical_masks import ClassicalMaskProvider

        return ClassicalMaskProvider(self.method, thresholds=self.thresholds, scale=self.scale, sigma=self.sigma,
                                     min_area_frac=self.min_area_frac, max_area_frac=self.max_area_frac)


# ---------------------------------------------------------------------------------------------- embedders
@dataclass(frozen=True, kw_only=True)
class OpenCLIPEmbedding(ProviderConfig):
    """``openclip``: OpenCLIP embeddings of mask crops and texts."""

    model: str | None = None
    pretrained: str | None = CLIP_PRETRAINED
    checkpoint: str | Path | None = None
    batch_size: int = 64
    fp16: bool | None = None

    summary = "OpenCLIP ViT-B-16 laion2b_s34b_b88k mask crops, 512-d (or --clip-model/--clip-checkpoint)"
    FROM_MODELS = {"model": "clip_model", "pretrained": "clip_pretrained", "checkpoint": "clip_checkpoint"}

    def create(self, device: str | None = "auto", scene: "Scene | None" = None) -> "Embedder":
        from cos3d.vision.openclip_embedder import OpenCLIPEmbedder

        return OpenCLIPEmbedder(self.model, self.pretrained, self.checkpoint, device=device,
                                batch_size=self.batch_size, fp16=self.fp16)


@dataclass(frozen=True, kw_only=True)
class SiglipEmbedding(ProviderConfig):
    """``siglip``: SigLIP (``transformers``) embeddings of mask crops and texts."""

    model: str | Path | None = None
    batch_size: int = 64
    fp16: bool | None = None

    summary = "SigLIP (transformers) mask crops (hub id or --siglip-model DIR)"
    FROM_MODELS = {"model": "siglip_model"}

    def create(self, device: str | None = "auto", scene: "Scene | None" = None) -> "Embedder":
        from cos3d.vision.siglip_embedder import SiglipEmbedder

        return SiglipEmbedder(self.model, device=device, batch_size=self.batch_size, fp16=self.fp16)


@dataclass(frozen=True, kw_only=True)
class LabelsEmbedding(ProviderConfig):
    """``labels``: sentence embeddings of the dataset masks' names (oracle-2D protocol).

    The small sentence encoder always runs on the CPU (``create`` ignores ``device``), so that a run's
    embeddings do not depend on the machine's GPU."""

    model_dir: str | Path | None = None
    batch_size: int = 256

    NEEDS_NAMED_MASKS: ClassVar[bool] = True
    """It embeds mask names: only ``dataset`` masks have them (:meth:`cos3d.vision.models.ModelsConfig.validate`)."""
    PROTOCOL: ClassVar[str] = "oracle-2D"
    """How results of runs with this embedder are labelled (:func:`protocol_label`)."""
    summary = "all-MiniLM-L6-v2 sentence embeddings of mask names, 384-d (offline, oracle-2D; needs dataset masks)"

    def create(self, device: str | None = "auto", scene: "Scene | None" = None) -> "Embedder":
        from cos3d.vision.labels_embedder import LabelsEmbedder

        return LabelsEmbedder(self.model_dir, device="cpu", batch_size=self.batch_size)


@dataclass(frozen=True, kw_only=True)
class LabelsGapEmbedding(LabelsEmbedding):
    """``labels-gap``: the **modality-gap stand-in** (:mod:`cos3d.vision.gap_standin`): the oracle-2D ``labels``
    embedder whose mask (image) side sits in a CLIP-like cone apart from its text side. For tests and
    benchmarks of the query rules under a modality gap; not a model."""

    profile: str = "clip-vit-b16"
    seed: int = 0

    PROTOCOL: ClassVar[str] = "oracle-2D + modality-gap stand-in"

    summary = ("modality-gap stand-in: labels embeddings with a CLIP-like image/text gap (offline, oracle-2D "
               "+ modality-gap stand-in; needs dataset masks)")

    def create(self, device: str | None = "auto", scene: "Scene | None" = None) -> "Embedder":
        from cos3d.vision.gap_standin import ModalityGapStandIn

        return ModalityGapStandIn(None if self.model_dir is None else str(self.model_dir), batch_size=self.batch_size, profile=self.profile, seed=self.seed)


# ---------------------------------------------------------------------------------------------- prompt segmenters
@dataclass(frozen=True, kw_only=True)
class _Segmenter(ProviderConfig):
    WEIGHTS: ClassVar[str] = ""
    """The :class:`~cos3d.vision.models.ModelsConfig` field that names this model's weights: a value given for
    it picks this segmenter under ``--segmenter auto`` (:func:`cos3d.vision.models.choose_segmenter`)."""


@dataclass(frozen=True, kw_only=True)
class SAM2HFSegmenter(_Segmenter):
    """``sam2-hf``: SAM2's box/point prompts through ``transformers``."""

    model: str | Path | None = None

    summary = "SAM2 box/point prompts through transformers (--sam2-model)"
    FROM_MODELS = {"model": "sam2_model"}
    WEIGHTS = "sam2_model"

    def create(self, device: str | None = "auto", scene: "Scene | None" = None) -> "PromptSegmenter":
        from cos3d.vision.sam2_hf import HFSamPromptSegmenter

        return HFSamPromptSegmenter(self.model, family="sam2", device=device)


@dataclass(frozen=True, kw_only=True)
class SAM3Segmenter(_Segmenter):
    """``sam3``: the SAM 3 tracker's box/point prompts through ``transformers``."""

    model: str | Path | None = None

    summary = "SAM 3 tracker box/point prompts through transformers (--sam3-model)"
    FROM_MODELS = {"model": "sam3_model"}
    WEIGHTS = "sam3_model"

    def create(self, device: str | None = "auto", scene: "Scene | None" = None) -> "PromptSegmenter":
        from cos3d.vision.sam2_hf import SAM3TrackerPromptSegmenter

        return SAM3TrackerPromptSegmenter(self.model, device=device)


@dataclass(frozen=True, kw_only=True)
class SAM2Segmenter(_Segmenter):
    """``sam2``: SAM2's image predictor (``sam2`` package, official ``.pt`` checkpoints)."""

    checkpoint: str | Path | None = None
    config: str | Path | None = None
    hub_id: str = SAM2_HUB_ID
    image_size: int | None = None

    summary = "SAM2 image predictor, sam2 package (--sam2-checkpoint / --sam2-config)"
    FROM_MODELS = {"checkpoint": "sam2_checkpoint", "config": "sam2_config", "hub_id": "sam2_hub_id",
                   "image_size": "sam2_image_size"}
    WEIGHTS = "sam2_checkpoint"

    def create(self, device: str | None = "auto", scene: "Scene | None" = None) -> "PromptSegmenter":
        from cos3d.vision.sam2_masks import SAM2PromptSegmenter

        return SAM2PromptSegmenter.load(self.checkpoint, self.config, hub_id=self.hub_id, device=device,
                                        image_size=self.image_size)


# ---------------------------------------------------------------------------------------------- the table
PROVIDERS: dict[str, dict[str, type[ProviderConfig]]] = {
    "masks": {
        "sam2": SAM2Masks,
        "sam2-hf": SAM2HFMasks,
        "sam3": SAM3Masks,
        "dataset": DatasetMasks,
        "classical": ClassicalMasks,
    },
    "embedder": {
        "openclip": OpenCLIPEmbedding,
        "siglip": SiglipEmbedding,
        "labels": LabelsEmbedding,
        "labels-gap": LabelsGapEmbedding,
    },
    "segmenter": {  # in order of preference (--segmenter auto with several models named picks the first)
        "sam2-hf": SAM2HFSegmenter,
        "sam3": SAM3Segmenter,
        "sam2": SAM2Segmenter,
    },
}
"""``{kind: {name: config class}}``: every 2D provider. A mask provider whose name is also a segmenter's
(the SAM models) has that segmenter for its image prompts."""

MASK_PROVIDERS = PROVIDERS["masks"]
EMBEDDERS = PROVIDERS["embedder"]
PROMPT_SEGMENTERS = PROVIDERS["segmenter"]
"""Box/point → mask segmenters for image prompts (:class:`cos3d.vision.prompts.PromptSegmenter`)."""


def config_class(kind: str, name: str) -> type[ProviderConfig]:
    """The config class of ``kind`` provider ``name``; an unknown one raises :class:`Cos3dError` listing the names."""
    if kind not in PROVIDERS:
        raise Cos3dError(f"unknown provider kind {kind!r}; choose one of {', '.join(PROVIDERS)}")
    table = PROVIDERS[kind]
    if name not in table:
        raise Cos3dError(f"unknown {KIND_TITLES[kind]} {name!r}; choose one of {', '.join(table)}")
    return table[name]


def provider_config(kind: str, name: str, **settings: Any) -> ProviderConfig:
    """``provider_config("masks", "sam2", checkpoint=..., points_per_side=16)``: that provider's config; a
    setting it does not have raises :class:`Cos3dError` naming it and the ones it has."""
    cls = config_class(kind, name)
    known = [f.name for f in dataclasses.fields(cls)]
    bad = sorted(set(settings) - set(known))
    if bad:
        raise Cos3dError(f"{KIND_TITLES[kind]} {name}: unknown setting(s) {', '.join(bad)}; known: {', '.join(known)}")
    return cls(**settings)


def create(kind: str, name: str, *, device: str | None = "auto", scene: "Scene | None" = None, **settings: Any) -> Any:
    """Build ``kind`` provider ``name`` from ``settings`` (its config's fields) on ``device``."""
    return provider_config(kind, name, **settings).create(device=device, scene=scene)


def protocol_label(masks: str | None, embedder: str | None) -> str:
    """How a run's results are labelled: ``oracle-2D`` (dataset masks + ``labels``), ``oracle-2D + modality-gap
    stand-in`` (dataset masks + ``labels-gap``), else ``real 2D models``."""
    cls = PROVIDERS["embedder"].get(embedder or "")
    protocol = cls.PROTOCOL if cls is not None else ""
    if masks == "dataset" and protocol:
        return protocol
    return "real 2D models"


def list_mask_providers() -> list[str]:
    """Registered mask provider names."""
    return list(PROVIDERS["masks"])


def list_embedders() -> list[str]:
    """Registered embedder names."""
    return list(PROVIDERS["embedder"])


def list_prompt_segmenters() -> list[str]:
    """Registered prompt segmenter names, in order of preference."""
    return list(PROVIDERS["segmenter"])


def create_mask_provider(name: str, **kw: Any) -> "MaskProvider":
    """``create_mask_provider("sam2", checkpoint=..., config=..., points_per_side=32, ...)``,
    ``create_mask_provider("dataset", scene=scene, perturb=0.3, seed=0)``,
    ``create_mask_provider("classical", method="felzenszwalb")``,
    ``create_mask_provider("sam2-hf", model="facebook/sam2.1-hiera-large" | DIR, points_per_side=32, ...)``,
    ``create_mask_provider("sam3", model="facebook/sam3" | DIR, ...)``; ``device=`` and ``scene=`` go to
    ``create``, the rest are the provider config's fields."""
    return create("masks", name, **kw)


def create_embedder(name: str, **kw: Any) -> "Embedder":
    """``create_embedder("openclip", model="ViT-B-16", pretrained="laion2b_s34b_b88k", checkpoint=None)``,
    ``create_embedder("siglip", model="google/siglip-base-patch16-224")``, ``create_embedder("labels")``."""
    return create("embedder", name, **kw)


def create_prompt_segmenter(name: str, **kw: Any) -> "PromptSegmenter":
    """``create_prompt_segmenter("sam2-hf", model=DIR)``, ``create_prompt_segmenter("sam3", model=DIR)``,
    ``create_prompt_segmenter("sam2", checkpoint=..., config=...)``: the box/point segmenter of image prompts."""
    return create("segmenter", name, **kw)
