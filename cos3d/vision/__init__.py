"""The 2D multi-modal segmenter: per-view masks at levels s/m/l + one embedding per mask.

- mask providers (``generate(image, frame=None) -> MaskSet``): ``sam2``, ``sam2-hf``, ``sam3``, ``dataset``,
  ``classical``;
- embedders (``embed_masks`` / ``embed_text`` / ``embed_image_prompt``): ``openclip``, ``siglip``, ``labels``;
- :func:`create_mask_provider` / :func:`create_embedder` by name, each provider through its own small config
  (one table: :mod:`.registry`); image prompts in :mod:`.prompts`, their SAM segmenters in the same table;
- the per-view cache: :func:`prepare_masks` fills it, :func:`load_view` reads one view.

Importing this package is cheap: model libraries load when a provider/embedder is created.
"""

from cos3d.vision.base import Embedder, MaskProvider
from cos3d.vision.cache import PrepareStats, load_manifest, load_view, prepare_masks
from cos3d.vision.masks import LEVELS, MaskSet, level_index, mask_iou, masks_to_boxes, nms
from cos3d.vision.prompts import combine_embeddings, embed_image_prompt, prompt_mask
from cos3d.vision.registry import create_embedder, create_mask_provider, list_embedders, list_mask_providers

__all__ = [
    "LEVELS",
    "MaskSet",
    "level_index",
    "mask_iou",
    "masks_to_boxes",
    "nms",
    "MaskProvider",
    "Embedder",
    "create_mask_provider",
    "create_embedder",
    "list_mask_providers",
    "list_embedders",
    "prepare_masks",
    "load_view",
    "load_manifest",
    "PrepareStats",
    "prompt_mask",
    "embed_image_prompt",
    "combine_embeddings",
]
