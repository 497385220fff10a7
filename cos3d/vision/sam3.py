"""SAM 3 concept segmentation through ``transformers`` (``Sam3Model`` / ``Sam3Processor``).

SAM 3 segments *every* instance of a concept — a short noun phrase (``"mug"``), image exemplars (boxes
on the image, positive or negative), or both — and has a presence head that says whether the concept
is in the image at all (docs/architecture.md; the seeds' omni-prompt segmenter). :class:`SAM3ConceptSegmenter`
returns a :class:`ConceptMasks`: one mask, box and score per instance, score = sigmoid(instance logit) ×
presence, and the presence itself, so an absent concept is an empty answer with a low presence, not a
forced guess.

Weights: a hub id or a local ``save_pretrained`` folder (``--sam3-model`` / ``$COS3D_SAM3_MODEL``,
default ``facebook/sam3``, gated on the hub). Without them: one :class:`~cos3d.core.errors.MissingWeightsError`
line naming the flag. The SAM 3 *tracker* (SAM2's box/point interface, and automatic s/m/l masks) lives
in :mod:`cos3d.vision.sam2_hf` (registry name ``sam3``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from cos3d.core.errors import Cos3dError
from cos3d.vision.base import check_image, resolve_device
from cos3d.vision.masks import MaskSet, level_index, masks_to_boxes

__all__ = ["ConceptMasks", "SAM3ConceptSegmenter", "DEFAULT_SAM3_MODEL", "CONCEPT_SEGMENTERS", "create_concept_segmenter"]

DEFAULT_SAM3_MODEL = "facebook/sam3"
ENV_SAM3_MODEL = "COS3D_SAM3_MODEL"
CONCEPT_SEGMENTERS = ("sam3", "none")
"""``--concept-segmenter`` choices: the 2D-first query branch's concept segmenter (``cos3d query --branch``)."""


@dataclass(frozen=True)
class ConceptMasks:
    """Every instance of one concept in one image (numpy)."""

    masks: np.ndarray
    """bool ``[K, H, W]``, one per instance, best first."""
    scores: np.ndarray
    """float32 ``[K]``: sigmoid(instance logit) × :attr:`presence`."""
    boxes: np.ndarray
    """float32 ``[K, 4]`` x0, y0, x1, y1 pixels (exclusive ends, from the masks)."""
    presence: float
    """Probability in [0, 1] that the concept is in the image (SAM 3's presence head)."""
    prompt: str
    """The text prompt (``"visual"`` for exemplars only)."""

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def present(self) -> bool:
        """At least one instance passed the score threshold (the answer is not "no target")."""
        return len(self) > 0

    def union(self) -> np.ndarray:
        """bool ``[H, W]``: the pixels of any instance."""
        return self.masks.any(0) if len(self) else np.zeros(self.masks.shape[1:], bool)

    def to_mask_set(self, level: str = "l") -> MaskSet:
        """The instances as a :class:`MaskSet` on one level (whole objects: ``l``)."""
        k = len(self)
        return MaskSet(
            masks=self.masks,
            level=np.full(k, level_index(level), np.int8),
            score=self.scores.astype(np.float32),
            box=self.boxes.astype(np.float32),
            source_id=np.full(k, -1, np.int64),
        )


class SAM3ConceptSegmenter:
    """Text / exemplar concept prompts on one image → all instances with scores and presence (SAM 3)."""

    INPUTS = ("pixel_values", "input_ids", "attention_mask", "input_boxes", "input_boxes_labels")
    """The processor outputs ``Sam3Model.forward`` takes."""

    def __init__(
        self,
        model: Any | str | os.PathLike | None = None,
        *,
        processor: Any | None = None,
        device: str | None = "auto",
        score_thresh: float = 0.5,
        mask_thresh: float = 0.5,
    ) -> None:
        """
        Args:
            model: hub id or local ``save_pretrained`` folder (default ``$COS3D_SAM3_MODEL``, else
                ``facebook/sam3``), or a loaded ``Sam3Model`` with its ``processor``.
            score_thresh: keep instances whose score (instance × presence) is above this.
            mask_thresh: binarise mask probabilities at this value.
        """
        from cos3d.vision.sam2_hf import OFFLINE_ALTERNATIVES, load_pretrained_pair

        if not 0.0 <= score_thresh < 1.0 or not 0.0 < mask_thresh < 1.0:
            raise Cos3dError(f"SAM 3 thresholds must lie in [0, 1), got score {score_thresh}, mask {mask_thresh}")
        self.device = resolve_device(device)
        if processor is None:
            model, processor, _, weights = load_pretrained_pair(
                model,
                title="SAM 3",
                model_cls="Sam3Model",
                processor_cls="Sam3Processor",
                model_types=("sam3",),
                default=DEFAULT_SAM3_MODEL,
                flag="--sam3-model",
                env=ENV_SAM3_MODEL,
                hint=OFFLINE_ALTERNATIVES.replace("--masks dataset", "--masks dataset --embedder labels"),
            )
            self.model_id = f"sam3-concepts:{weights}"
        else:
            self.model_id = f"sam3-concepts:{getattr(model.config, '_name_or_path', '') or 'in-memory'}"
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.score_thresh = float(score_thresh)
        self.mask_thresh = float(mask_thresh)

    def segment(
        self,
        image: np.ndarray,
        text: str | None = None,
        *,
        exemplars: Sequence[Sequence[float]] | np.ndarray | None = None,
        exemplar_labels: Sequence[int] | None = None,
    ) -> ConceptMasks:
        """All instances of a concept in ``image`` (uint8 ``[H, W, 3]``).

        Args:
            text: a short noun phrase (``"red mug"``); None with exemplars only.
            exemplars: ``[E, 4]`` boxes x0, y0, x1, y1 (pixels) of examples of the concept in ``image``.
            exemplar_labels: ``[E]`` 1 = an example, 0 = a counter-example (default all 1).
        """
        import torch

        image = check_image(image)
        h, w = image.shape[:2]
        if (text is None or not str(text).strip()) and exemplars is None:
            raise Cos3dError("a SAM 3 concept prompt needs a text, exemplar boxes, or both")
        kw: dict[str, Any] = {}
        if text is not None and str(text).strip():
            kw["text"] = str(text).strip()
        if exemplars is not None:
            boxes = np.asarray(exemplars, np.float64).reshape(-1, 4)
            if len(boxes) == 0 or not np.all(np.isfinite(boxes)):
                raise Cos3dError(f"exemplars must be [E, 4] finite boxes x0, y0, x1, y1, got shape {boxes.shape}")
            labels = np.ones(len(boxes), np.int64) if exemplar_labels is None else np.asarray(exemplar_labels)
            if labels.reshape(-1).shape[0] != len(boxes) or not np.isin(labels, (0, 1)).all():
                raise Cos3dError(f"exemplar_labels must be {len(boxes)} values in {{0, 1}}, got {exemplar_labels!r}")
            kw["input_boxes"] = [boxes.tolist()]
            kw["input_boxes_labels"] = [[int(x) for x in labels.reshape(-1)]]
        enc = self.processor(images=np.array(image), return_tensors="pt", **kw)  # a writable copy
        dtype = next(self.model.parameters()).dtype
        inputs = {k: v.to(self.device) for k, v in enc.items() if k in self.INPUTS}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        if "input_boxes" in inputs:
            inputs["input_boxes"] = inputs["input_boxes"].to(dtype)
        with torch.inference_mode():
            out = self.model(**inputs)
        presence = 1.0 if out.presence_logits is None else float(out.presence_logits.float().sigmoid().reshape(-1)[0])
        res = self.processor.post_process_instance_segmentation(
            out, threshold=self.score_thresh, mask_threshold=self.mask_thresh, target_sizes=[[h, w]]
        )[0]
        masks = res["masks"].bool().cpu().numpy().reshape(-1, h, w)
        scores = res["scores"].float().cpu().numpy().astype(np.float32).reshape(-1)
        keep = masks.reshape(masks.shape[0], h * w).any(1)
        order = np.argsort(-scores[keep], kind="stable")
        masks, scores = masks[keep][order], scores[keep][order]
        return ConceptMasks(
            masks=masks, scores=scores, boxes=masks_to_boxes(masks), presence=presence, prompt=kw.get("text", "visual")
        )



def create_concept_segmenter(choice: Any = "sam3", model: Any = None, *, device: str = "auto") -> Any:
    """The 2D-first branch's concept segmenter for ``choice``: ``"sam3"`` → :class:`SAM3ConceptSegmenter`
    on ``model`` (a hub id or folder; None: ``$COS3D_SAM3_MODEL``, else ``facebook/sam3``; missing weights raise
    one :class:`~cos3d.core.errors.MissingWeightsError` line naming ``--sam3-model``), ``"none"``/None → None, an
    object with ``segment(image, text, exemplars=...)`` → itself."""
    if choice is None or choice == "none":
        return None
    if not isinstance(choice, str):
        if not hasattr(choice, "segment"):
            raise Cos3dError(f"a concept segmenter needs segment(image, text, exemplars=...); got {type(choice).__name__}")
        return choice
    if choice not in CONCEPT_SEGMENTERS:
        raise Cos3dError(f"unknown --concept-segmenter {choice!r}; choose one of {', '.join(CONCEPT_SEGMENTERS)}")
    return SAM3ConceptSegmenter(model, device=device)
