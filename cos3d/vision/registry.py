"""Mask providers and embedders by name (STYLE.md habit 6: a registry, with loud weights).

``create_*`` imports the implementation on demand, so ``import cos3d.vision`` stays light. Every
weights-backed model raises :class:`~cos3d.core.errors.MissingWeightsError` when its weights cannot be had,
naming the flag/env var to set and the offline alternative (``dataset`` masks, ``labels`` embedder).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cos3d.core.errors import Cos3dError
from cos3d.vision.base import Embedder, MaskProvider

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.vision.prompts import PromptSegmenter

MASK_PROVIDERS: dict[str, tuple[str, str, str]] = {
    "sam2": (
        "cos3d.vision.sam2_masks",
        "SAM2MaskProvider",
        "SAM2 automatic masks, levels s/m/l (hub facebook/sam2.1-hiera-large or --sam2-checkpoint)",
    ),
    "sam2-hf": (
        "cos3d.vision.sam2_hf",
        "HFSamMaskProvider",
        "SAM2 automatic masks through transformers, levels s/m/l (hub facebook/sam2.1-hiera-large or --sam2-model DIR)",
    ),
    "sam3": (
        "cos3d.vision.sam2_hf",
        "SAM3TrackerMaskProvider",
        "SAM 3 tracker automatic masks through transformers, levels s/m/l (hub facebook/sam3 or --sam3-model DIR)",
    ),
    "dataset": (
        "cos3d.vision.dataset_masks",
        "DatasetMaskProvider",
        "the scene's instance/part maps, optionally perturbed (offline, oracle-2D protocol; needs scene=)",
    ),
    "classical": (
        "cos3d.vision.classical_masks",
        "ClassicalMaskProvider",
        "superpixels merged into masks (offline, no weights)",
    ),
}
EMBEDDERS: dict[str, tuple[str, str, str]] = {
    "openclip": (
        "cos3d.vision.openclip_embedder",
        "OpenCLIPEmbedder",
        "OpenCLIP ViT-B-16 laion2b_s34b_b88k mask crops, 512-d (or --clip-model/--clip-checkpoint)",
    ),
    "siglip": (
        "cos3d.vision.siglip_embedder",
        "SiglipEmbedder",
        "SigLIP (transformers) mask crops (hub id or --siglip-model DIR)",
    ),
    "labels": (
        "cos3d.vision.labels_embedder",
        "LabelsEmbedder",
        "all-MiniLM-L6-v2 sentence embeddings of mask names, 384-d (offline, oracle-2D; needs dataset masks)",
    ),
}

PROMPT_SEGMENTERS: dict[str, tuple[str, str, str]] = {
    "sam2": (
        "cos3d.vision.sam2_masks",
        "SAM2PromptSegmenter.load",
        "SAM2 image predictor, sam2 package (--sam2-checkpoint / --sam2-config)",
    ),
    "sam2-hf": (
        "cos3d.vision.sam2_hf",
        "HFSamPromptSegmenter",
        "SAM2 box/point prompts through transformers (--sam2-model)",
    ),
    "sam3": (
        "cos3d.vision.sam2_hf",
        "SAM3TrackerPromptSegmenter",
        "SAM 3 tracker box/point prompts through transformers (--sam3-model)",
    ),
}
"""Box/point → mask segmenters for image prompts (:class:`cos3d.vision.prompts.PromptSegmenter`)."""


def list_mask_providers() -> list[str]:
    """Registered mask provider names."""
    return list(MASK_PROVIDERS)


def list_embedders() -> list[str]:
    """Registered embedder names."""
    return list(EMBEDDERS)


def _create(table: dict[str, tuple[str, str, str]], kind: str, name: str, kw: dict[str, Any]) -> Any:
    if name not in table:
        raise Cos3dError(f"unknown {kind} {name!r}; choose one of {', '.join(table)}")
    mod, attr, _ = table[name]
    obj: Any = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj(**kw)


def create_mask_provider(name: str, **kw: Any) -> MaskProvider:
    """``create_mask_provider("sam2", checkpoint=..., config=..., points_per_side=32, ...)``,
    ``create_mask_provider("dataset", scene=scene, perturb=0.3, seed=0)``,
    ``create_mask_provider("classical", method="felzenszwalb")``,
    ``create_mask_provider("sam2-hf", model="facebook/sam2.1-hiera-large" | DIR, points_per_side=32, ...)``,
    ``create_mask_provider("sam3", model="facebook/sam3" | DIR, ...)``."""
    return _create(MASK_PROVIDERS, "mask provider", name, kw)


def list_prompt_segmenters() -> list[str]:
    """Registered prompt segmenter names."""
    return list(PROMPT_SEGMENTERS)


def create_prompt_segmenter(name: str, **kw: Any) -> "PromptSegmenter":
    """``create_prompt_segmenter("sam2-hf", model=DIR)``, ``create_prompt_segmenter("sam3", model=DIR)``,
    ``create_prompt_segmenter("sam2", checkpoint=..., config=...)``: the box/point segmenter of image prompts."""
    return _create(PROMPT_SEGMENTERS, "prompt segmenter", name, kw)


def create_embedder(name: str, **kw: Any) -> Embedder:
    """``create_embedder("openclip", model="ViT-B-16", pretrained="laion2b_s34b_b88k", checkpoint=None)``,
    ``create_embedder("siglip", model="google/siglip-base-patch16-224")``, ``create_embedder("labels")``."""
    return _create(EMBEDDERS, "embedder", name, kw)
