"""Which 2D models a command uses, with which weights and settings: :class:`ModelsConfig`; and which
image-prompt segmenter a query uses: :func:`choose_segmenter`.

One dataclass for ``cos3d prepare masks``, ``cos3d train`` and a loaded run (which re-creates its
embedder from the config recorded in ``run.json``). Its fields are the flags ``--masks``,
``--embedder``, ``--perturb``, ``--sam2-checkpoint``, ``--sam2-model``, ``--sam3-model``, ``--clip-checkpoint`` ... (see
:mod:`cos3d.core.config`); each applies to some providers only. The chosen provider's own small config
(:mod:`cos3d.vision.registry`) reads the fields that apply to it (:meth:`ModelsConfig.provider_config`) and
builds it; :func:`mask_cache_dir` names the per-model cache folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

from cos3d.core.config import ConfigError
from cos3d.vision.base import Embedder, MaskProvider
from cos3d.vision.registry import PROMPT_SEGMENTERS, config_class

if TYPE_CHECKING:
    from cos3d.data.scene import Scene
    from cos3d.vision.prompts import PromptSegmenter
    from cos3d.vision.registry import ProviderConfig

__all__ = ["ModelsConfig", "choose_segmenter", "mask_cache_dir"]

MaskProviderName = Literal["dataset", "sam2", "sam2-hf", "sam3", "classical"]
"""The registry's mask providers (:data:`cos3d.vision.registry.PROVIDERS`; a test keeps them equal)."""
EmbedderName = Literal["labels", "labels-gap", "openclip", "siglip"]
"""The registry's embedders."""
SegmenterChoice = Literal["auto", "none", "sam2", "sam2-hf", "sam3"]
SEGMENTER_CHOICES: tuple[str, ...] = ("auto", "none", *PROMPT_SEGMENTERS)
"""Image-prompt segmenters a query can ask for (:func:`choose_segmenter`)."""


@dataclass(frozen=True)
class ModelsConfig:
    """The 2D models: a mask provider (masks at levels s/m/l) and a mask/text embedder."""

    masks: MaskProviderName = "dataset"
    """Mask provider: dataset (the scene's instance maps; oracle-2D), sam2 (sam2 package, official .pt),
    sam2-hf (SAM2 through transformers), sam3 (SAM 3 tracker through transformers), classical (superpixels)."""
    embedder: EmbedderName = "labels"
    """Mask embedder: labels (sentence embeddings of mask names; oracle-2D), labels-gap (the same with a CLIP-like
    image/text modality gap: oracle-2D + modality-gap stand-in, for tests and benchmarks), openclip, siglip."""
    perturb: float = 0.0
    """Dataset masks: strength in [0, 1] of seeded SAM-like errors (erode/dilate/split/merge/drop)."""
    perturb_seed: int = 0
    """Dataset masks: seed of the perturbation."""
    sam2_checkpoint: Path | None = None
    """Local SAM2 checkpoint (.pt); default $COS3D_SAM2_CHECKPOINT, else the hub model --sam2-hub-id."""
    sam2_config: str | None = None
    """SAM2 config name or YAML path (default $COS3D_SAM2_CONFIG, else inferred from the checkpoint name)."""
    sam2_hub_id: str = "facebook/sam2.1-hiera-large"
    """SAM2 hub model used when no checkpoint is given."""
    sam2_model: str | None = None
    """SAM2 through transformers (masks sam2-hf): hub id or local save_pretrained folder (default
    $COS3D_SAM2_MODEL, else facebook/sam2.1-hiera-large)."""
    sam3_model: str | None = None
    """SAM 3 through transformers (masks sam3, SAM 3 prompts): hub id or local save_pretrained folder
    (default $COS3D_SAM3_MODEL, else facebook/sam3)."""
    points_per_side: int = 32
    """SAM2 / SAM 3 automatic masks: point grid per side."""
    pred_iou_thresh: float = 0.7
    """SAM2: keep masks whose predicted IoU is above this."""
    stability_thresh: float = 0.85
    """SAM2: keep masks whose stability score is at least this."""
    nms_thresh: float = 0.7
    """SAM2: mask-IoU non-maximum suppression within each level."""
    sam2_image_size: int | None = None
    """SAM2 input resolution (released models: 1024); smaller is faster and worse."""
    classical_method: Literal["felzenszwalb", "slic"] = "felzenszwalb"
    """Classical masks: superpixel method."""
    clip_model: str | None = None
    """open_clip architecture or model-config .json (default $COS3D_CLIP_MODEL, else ViT-B-16)."""
    clip_pretrained: str = "laion2b_s34b_b88k"
    """open_clip pretrained tag, used when no checkpoint is given."""
    clip_checkpoint: Path | None = None
    """Local open_clip checkpoint; default $COS3D_CLIP_CHECKPOINT, else the hub weights --clip-pretrained."""
    siglip_model: str | None = None
    """SigLIP hub id or local folder (default $COS3D_SIGLIP_MODEL, else google/siglip-base-patch16-224)."""

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad setting."""
        if not 0.0 <= self.perturb <= 1.0:
            raise ConfigError("perturb", f"must be in [0, 1], got {self.perturb}")
        if self.perturb and self.masks != "dataset":
            raise ConfigError("perturb", "applies to masks=dataset only")
        if getattr(config_class("embedder", self.embedder), "NEEDS_NAMED_MASKS", False) and self.masks != "dataset":
            raise ConfigError(
                "embedder",
                f"{self.embedder} embeds mask names, which only masks=dataset provides (oracle-2D protocol); "
                "use openclip or siglip with masks sam2/sam2-hf/sam3/classical",
            )
        if self.points_per_side < 1:
            raise ConfigError("points_per_side", f"must be positive, got {self.points_per_side}")

    @property
    def oracle_2d(self) -> bool:
        """True when the run follows the oracle-2D protocol (dataset masks)."""
        return self.masks == "dataset"

    def provider_config(self, kind: str, name: str | None = None) -> "ProviderConfig":
        """The small config (:mod:`cos3d.vision.registry`) of the ``kind`` provider ``name`` from these settings:
        ``kind`` ``masks`` / ``embedder`` (default: the chosen one) or ``segmenter`` (default: the one of the
        chosen masks). Each config reads the fields that apply to it (its ``FROM_MODELS``)."""
        if name is None:
            name = self.embedder if kind == "embedder" else self.masks
        return config_class(kind, name).from_models({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    def create_provider(self, scene: "Scene", device: str = "auto") -> MaskProvider:
        """The mask provider these settings describe (``scene`` serves the dataset provider)."""
        return self.provider_config("masks").create(device=device, scene=scene)

    def create_prompt_segmenter(self, device: str = "auto") -> "PromptSegmenter | None":
        """The box/point segmenter of image prompts that goes with these masks (the same SAM model:
        sam2, sam2-hf or the SAM 3 tracker), or None for the offline providers (dataset, classical), whose
        image prompts use the offline rules of :func:`cos3d.vision.prompts.prompt_mask`."""
        if self.masks not in PROMPT_SEGMENTERS:
            return None
        return self.provider_config("segmenter").create(device=device)

    def create_embedder(self, device: str = "auto") -> Embedder:
        """The embedder these settings describe (the small sentence encoder of ``labels`` always runs on
        the CPU, so that a run's embeddings do not depend on the machine's GPU)."""
        return self.provider_config("embedder").create(device=device)

    def replace(self, **changes: object) -> "ModelsConfig":
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def mask_cache_dir(scene_root: str | Path, provider: MaskProvider, embedder: Embedder) -> Path:
    """The default per-view cache folder of a provider + embedder pair: ``SCENE/cos3d_masks/
    <provider>-<embedder>-<key>``, where ``key`` is a short hash of both models' ids and settings, so
    that runs (and ``prepare masks``) with the same models share it and other settings never overwrite it."""
    from cos3d.vision.cache import models_key

    return Path(scene_root) / "cos3d_masks" / f"{provider.name}-{embedder.name}-{models_key(provider, embedder)[:10]}"


def choose_segmenter(
    choice: "str | PromptSegmenter | None",
    models: ModelsConfig,
    overrides: Mapping[str, Any] | None = None,
    *,
    device: str = "auto",
) -> "tuple[PromptSegmenter | None, str]":
    """``(segmenter or None, note)``: the image-prompt segmenter a query uses on a run trained with
    ``models``, and what it is or why there is none. The one place this is decided (``cos3d query``,
    :func:`cos3d.load`, ``cos3d doctor``).

    ``choice``: a :class:`~cos3d.vision.prompts.PromptSegmenter` — that one; None or ``none`` — no segmenter
    (the offline rules); ``sam2`` / ``sam2-hf`` / ``sam3`` — that model, whose missing weights raise
    :class:`~cos3d.core.errors.MissingWeightsError` naming its flag; ``auto`` — the model whose weights
    ``overrides`` names (``sam2_model`` → sam2-hf, ``sam3_model`` → sam3, ``sam2_checkpoint`` → sam2: a model
    named on the command line is the one wanted), else the SAM model the run trained with when its weights
    load, else None with the reason (missing weights, or an offline mask provider: oracle-2D).

    ``overrides``: :class:`ModelsConfig` fields replacing the run's (None values are ignored)."""
    from cos3d.core.errors import Cos3dError
    from cos3d.vision.prompts import describe_segmenter

    if choice is None:
        return None, "no 2D segmenter (segmenter=None)"
    if not isinstance(choice, str):
        return choice, describe_segmenter(choice)
    if choice not in SEGMENTER_CHOICES:
        raise ConfigError("segmenter", f"must be one of {', '.join(SEGMENTER_CHOICES)}, got {choice!r}")
    if choice == "none":
        return None, "no 2D segmenter (--segmenter none)"
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:
        models = models.replace(**given)
    if choice == "auto":
        named = [name for name, cls in PROMPT_SEGMENTERS.items() if getattr(cls, "WEIGHTS", None) in given]
        choice = named[0] if named else "auto"  # the registry's order of preference
    if choice != "auto":
        seg = models.provider_config("segmenter", choice).create(device=device)
        return seg, describe_segmenter(seg)
    if models.masks not in PROMPT_SEGMENTERS:
        return None, (f"no 2D segmenter: the run's masks are {models.masks!r} (offline); for SAM masks give "
                      "--segmenter sam2-hf --sam2-model DIR (or sam3 / sam2)")
    try:
        seg = models.provider_config("segmenter").create(device=device)
    except Cos3dError as e:  # MissingWeightsError included
        return None, f"no 2D segmenter: the run's {models.masks} weights did not load ({e})"
    return seg, describe_segmenter(seg)
