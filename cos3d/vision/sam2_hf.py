"""SAM2 and the SAM 3 tracker through ``transformers``: automatic masks at levels s/m/l and box/point prompts.

The ``transformers`` classes are plain PyTorch (no CUDA extension, no Hydra), one dependency already
used by the SigLIP embedder. Two model families share SAM2's promptable interface, so one adapter serves
both:

========  =============================================  ==========================  ====================
registry  model / processor                              default weights             flag / env var
========  =============================================  ==========================  ====================
sam2-hf   ``Sam2Model`` / ``Sam2Processor``              facebook/sam2.1-hiera-large  --sam2-model / $COS3D_SAM2_MODEL
sam3      ``Sam3TrackerModel`` / ``Sam3TrackerProcessor`` facebook/sam3               --sam3-model / $COS3D_SAM3_MODEL
========  =============================================  ==========================  ====================

Weights are a hub id or a local folder written by ``save_pretrained`` (a ``facebook/sam3`` folder holds
the detector and the tracker; the tracker part is read here, the detector by :mod:`cos3d.vision.sam3`).
Without them: one :class:`~cos3d.core.errors.MissingWeightsError` line naming the flag and the offline
alternatives. The ``sam2`` package provider (:mod:`cos3d.vision.sam2_masks`) stays the alternative for
the official ``.pt`` checkpoints.

Automatic generation follows :mod:`cos3d.vision.sam2_masks` exactly: a ``points_per_side`` grid of single
positive clicks, each giving the three multimask outputs; output ``k`` goes to level ``k`` (0 = s, 1 = m,
2 = l); per level keep predicted IoU > ``pred_iou_thresh``, stability ≥ ``stability_score_thresh`` and
area ≥ ``min_area``; score = predicted IoU × stability; mask-IoU NMS at ``nms_thresh``. The image is
encoded once per view (``get_image_embeddings``) and the clicks are decoded in batches. The predicted-IoU
test reads no mask, so it runs on the decoder's low-resolution output and only the candidates that pass are
upsampled to the view and scored (the same masks as upsampling all first; it saves the upsampling and the
stability statistics of the rejected ones).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cos3d.core.errors import Cos3dError, MissingWeightsError, brief
from cos3d.vision.base import MaskProvider, check_image, file_fingerprint, resolve_device
from cos3d.vision.masks import LEVELS, MaskSet
from cos3d.vision.sam2_masks import AutoMaskFilters, _grid, keep_upsampled, levels_to_maskset

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from cos3d.data.scene import Frame

__all__ = [
    "FAMILIES",
    "HFSamMaskProvider",
    "HFSamPromptSegmenter",
    "SAM3TrackerMaskProvider",
    "SAM3TrackerPromptSegmenter",
    "load_hf_sam",
]

OFFLINE_ALTERNATIVES = (
    "or run offline with --masks dataset (the scene's instance maps, oracle-2D protocol) "
    "or --masks classical (superpixels, no weights)"
)

FAMILIES: dict[str, dict[str, Any]] = {
    "sam2": {
        "title": "SAM2",
        "model": "Sam2Model",
        "processor": "Sam2Processor",
        "model_types": ("sam2",),
        "default": "facebook/sam2.1-hiera-large",
        "flag": "--sam2-model",
        "env": "COS3D_SAM2_MODEL",
    },
    "sam3": {
        "title": "SAM 3 tracker",
        "model": "Sam3TrackerModel",
        "processor": "Sam3TrackerProcessor",
        "model_types": ("sam3_tracker", "sam3"),
        "default": "facebook/sam3",
        "flag": "--sam3-model",
        "env": "COS3D_SAM3_MODEL",
    },
}
"""The SAM2-interface families: ``transformers`` classes, accepted ``config.model_type``s, default hub id,
and the flag / env var that name the weights."""


def _looks_local(src: str) -> bool:
    """A path rather than a hub id (``org/name``): absolute, relative with ``./``, deeper, or a weights file."""
    return (
        src.startswith(("/", ".", "~"))
        or src.strip("/").count("/") > 1
        or src.endswith((".pt", ".pth", ".bin", ".safetensors"))
    )


def load_pretrained_pair(
    src: str | os.PathLike | None,
    *,
    title: str,
    model_cls: str,
    processor_cls: str,
    model_types: tuple[str, ...],
    default: str,
    flag: str,
    env: str,
    hint: str = OFFLINE_ALTERNATIVES,
) -> tuple[Any, Any, str, str]:
    """Load ``(model, processor, source, weights_id)`` of a ``transformers`` model from a hub id or a local
    ``save_pretrained`` folder, with one-line errors (shared by this module and :mod:`cos3d.vision.sam3`).

    ``src`` None → ``$env``, else ``default``. A missing folder or unreachable hub id raises
    :class:`MissingWeightsError` naming ``flag``; a folder of another model raises :class:`Cos3dError`."""
    import transformers
    from transformers import AutoConfig

    source = str(src if src is not None else (os.environ.get(env) or default))
    path = Path(source).expanduser()
    local = path.is_dir()
    fix = f"pass {flag} DIR (or set ${env}) to a local folder written by save_pretrained, {hint}"
    if not local and (path.exists() or _looks_local(source)):
        what = "is a file, not a save_pretrained folder" if path.exists() else "does not exist"
        raise MissingWeightsError(f"{title} model folder {source} {what} ({flag}); {fix}")
    where = str(path) if local else source
    try:
        cfg = AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as e:
        if local:
            raise Cos3dError(f"{title} folder {source} could not be loaded ({brief(e, 200)}); {fix}") from None
        raise MissingWeightsError(
            f"{title} weights {source!r} are not available: no such folder, and not in the hub cache (no hub access?); "
            f"{fix}"
        ) from None
    if cfg.model_type not in model_types:
        raise Cos3dError(
            f"{source} holds a {cfg.model_type!r} model, not {title} ({' / '.join(model_types)}) ({flag})"
        )
    try:
        model, info = getattr(transformers, model_cls).from_pretrained(where, output_loading_info=True)
        processor = getattr(transformers, processor_cls).from_pretrained(where)
    except (OSError, ValueError, KeyError) as e:
        if local:
            raise Cos3dError(f"{title} folder {source} could not be loaded ({brief(e, 200)}); {fix}") from None
        raise MissingWeightsError(
            f"{title} weights {source!r}: its config is in the hub cache but its weights could not be loaded (an "
            f"interrupted download? hf download {source}); {fix}"
        ) from None
    params = dict(model.named_parameters())
    missing = [k for k in info.get("missing_keys") or () if k in params]
    if missing:  # loud, not a silently half-random model (open_clip #168)
        raise Cos3dError(
            f"{source} lacks {len(missing)} of the {title} weights (e.g. {', '.join(sorted(missing)[:2])}): "
            f"not a {title} checkpoint ({flag})"
        )
    weights_id = f"local-{file_fingerprint(path)}" if local else source
    return model, processor, source, weights_id


def load_hf_sam(
    family: str, model: str | os.PathLike | None = None, *, device: str | None = "auto"
) -> tuple[Any, Any, str]:
    """``(model, processor, model_id)`` of a SAM2-interface family (``"sam2"`` or ``"sam3"``, see
    :data:`FAMILIES`) from a hub id or local folder, in eval mode on ``device``."""
    if family not in FAMILIES:
        raise Cos3dError(f"unknown SAM family {family!r}; choose one of {', '.join(FAMILIES)}")
    f = FAMILIES[family]
    net, proc, _, weights = load_pretrained_pair(
        model,
        title=f["title"],
        model_cls=f["model"],
        processor_cls=f["processor"],
        model_types=f["model_types"],
        default=f["default"],
        flag=f["flag"],
        env=f["env"],
    )
    net = net.to(resolve_device(device)).eval()
    size = int(proc.target_size)
    return net, proc, f"{family}-hf:{weights}@{size}"


class _Encoded:
    """One image encoded by a SAM2-interface model: embeddings + original size (reused across prompts)."""

    def __init__(self, key: str, embeddings: list, hw: tuple[int, int]) -> None:
        self.key, self.embeddings, self.hw = key, embeddings, hw


class _HFSam:
    """Shared state: the model, its processor, and the last encoded image."""

    model: Any
    processor: Any
    device: str
    _last: _Encoded | None = None

    def _encode(self, image: np.ndarray) -> _Encoded:
        import torch

        key = hashlib.sha1(image.tobytes()).hexdigest() + str(image.shape)
        if self._last is not None and self._last.key == key:
            return self._last
        inputs = self.processor(images=np.array(image), return_tensors="pt")  # a writable copy
        dtype = next(self.model.parameters()).dtype
        with torch.inference_mode():
            emb = self.model.get_image_embeddings(inputs["pixel_values"].to(self.device, dtype))
        self._last = _Encoded(key, emb, (int(image.shape[0]), int(image.shape[1])))
        return self._last

    def _decode(
        self,
        enc: _Encoded,
        *,
        points: list | None = None,
        labels: list | None = None,
        boxes: list | None = None,
        multimask: bool = True,
        keep_iou: float | None = None,
    ) -> "tuple[torch.Tensor, torch.Tensor]":
        """Decode prompts on an encoded image → (logits ``[B, K, H, W]`` at the image's size, IoU ``[B, K]``).

        ``points``: ``[B][P][2]`` pixel (x, y) per object, ``labels`` ``[B][P]``, ``boxes`` ``[B][4]``. With
        ``keep_iou`` the logits are returned at the decoder's low resolution (``[B, K, h, w]``): the caller
        upsamples only what it keeps (:meth:`_upsample`)."""
        import torch

        h, w = enc.hw
        kw: dict[str, Any] = {}
        if points is not None:
            kw["input_points"] = [points]
            kw["input_labels"] = [labels]
        if boxes is not None:
            kw["input_boxes"] = [boxes]
        prompts = self.processor(original_sizes=[[h, w]], return_tensors="pt", **kw)
        dev = {k: v.to(self.device) for k, v in prompts.items() if k in ("input_points", "input_labels", "input_boxes")}
        if "input_points" in dev:
            dev["input_points"] = dev["input_points"].to(enc.embeddings[0].dtype)
        if "input_boxes" in dev:
            dev["input_boxes"] = dev["input_boxes"].to(enc.embeddings[0].dtype)
        with torch.inference_mode():
            out = self.model(image_embeddings=enc.embeddings, multimask_output=multimask, **dev)
            if keep_iou is not None:
                return out.pred_masks[0].float().cpu(), out.iou_scores[0].float().cpu()
            logits = self.processor.post_process_masks(
                out.pred_masks.float().cpu(), [[h, w]], binarize=False
            )[0]
        return logits, out.iou_scores[0].float().cpu()

    def _upsample(self, low: "torch.Tensor", hw: tuple[int, int]) -> "torch.Tensor":
        """Low-resolution mask logits ``[M, h, w]`` → ``[M, H, W]`` at the image's size (the processor's own
        post-processing, mask by mask: the same values as when decoded with the batch)."""
        if len(low) == 0:
            return low.new_zeros((0, *hw))
        return self.processor.post_process_masks(low[None, :, None], [list(hw)], binarize=False)[0][:, 0]


class HFSamMaskProvider(_HFSam, AutoMaskFilters, MaskProvider):
    """Automatic masks at levels s/m/l from SAM2 (``sam2-hf``) or the SAM 3 tracker (``sam3``) through
    ``transformers`` (module docstring)."""

    name = "sam2-hf"

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        family: str = "sam2",
        device: str | None = "auto",
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.7,
        stability_score_thresh: float = 0.85,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        nms_thresh: float = 0.7,
        min_area: int = 0,
    ) -> None:
        """
        Args:
            model: hub id or local ``save_pretrained`` folder; default ``$COS3D_SAM2_MODEL`` /
                ``$COS3D_SAM3_MODEL``, else the family's released model (:data:`FAMILIES`).
            family: ``"sam2"`` (registry ``sam2-hf``) or ``"sam3"`` (the SAM 3 tracker; registry ``sam3``).
        """
        self.set_filters(points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh,
                         stability_score_offset, mask_threshold, nms_thresh, min_area)
        self.family = family
        self.name = "sam2-hf" if family == "sam2" else "sam3"  # the registry name (cache folder)
        self.device = resolve_device(device)
        self.model, self.processor, self._model_id = load_hf_sam(family, model, device=self.device)

    @property
    def model_id(self) -> str:
        return self._model_id


    def generate(self, image: np.ndarray, frame: "Frame | None" = None) -> MaskSet:
        """Masks of ``image`` (uint8 ``[H, W, 3]``) at levels s/m/l; ``frame`` is ignored."""
        image = check_image(image)
        h, w = image.shape[:2]
        enc = self._encode(image)
        per_level: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in LEVELS]
        points = _grid(self.points_per_side, w, h)
        for i in range(0, len(points), self.points_per_batch):
            batch = points[i : i + self.points_per_batch]
            low, iou = self._decode(
                enc, points=[[p.tolist()] for p in batch], labels=[[1] for _ in batch], multimask=True,
                keep_iou=self.pred_iou_thresh,
            )  # [B, 3, h, w] low resolution, [B, 3]
            # the predicted-IoU filter does not depend on the masks: apply it before upsampling, and upsample
            # only the masks that pass (upsampling every candidate to the image's size was most of the time)
            passed = iou > self.pred_iou_thresh
            b_idx, k_idx = passed.nonzero(as_tuple=True)
            keep_upsampled(self, self._upsample(low[b_idx, k_idx], (h, w)), iou[b_idx, k_idx], k_idx, per_level)
        return levels_to_maskset(per_level, h, w, self.nms_thresh)

    def prompt_segmenter(self) -> "HFSamPromptSegmenter":
        """A prompt segmenter sharing this provider's model (for image prompts)."""
        return HFSamPromptSegmenter(model=self.model, processor=self.processor, device=self.device)


class SAM3TrackerMaskProvider(HFSamMaskProvider):
    """Automatic masks at levels s/m/l from the SAM 3 tracker (SAM2's interface on SAM 3's backbone)."""

    name = "sam3"

    def __init__(self, model: str | os.PathLike | None = None, **kw: Any) -> None:
        kw.pop("family", None)
        super().__init__(model, family="sam3", **kw)


class HFSamPromptSegmenter(_HFSam):
    """Box / point prompts on one reference image → a mask (SAM2 or SAM 3 tracker through ``transformers``).

    A :class:`cos3d.vision.prompts.PromptSegmenter`; the image's embeddings are kept for the next prompt
    on the same image."""

    def __init__(
        self,
        model: Any | str | os.PathLike | None = None,
        *,
        processor: Any | None = None,
        family: str = "sam2",
        device: str | None = "auto",
    ) -> None:
        """
        Args:
            model: a loaded model (with ``processor``), or a hub id / local folder (None: the family's
                default, see :data:`FAMILIES`).
            family: ``"sam2"`` or ``"sam3"`` when ``model`` is a name.
        """
        self.device = resolve_device(device)
        self.model_id = f"{family}-hf:{type(model).__name__}"
        """What answers quote as the region's source (``sam2-hf:<weights>@<size>`` when loaded by name)."""
        if processor is None:
            model, processor, self.model_id = load_hf_sam(family, model, device=self.device)
        self.model = model
        self.processor = processor
        self._last = None

    def segment(
        self,
        image: np.ndarray,
        *,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        level: str | None = None,
    ) -> tuple[np.ndarray, float]:
        """``(mask bool [H, W], predicted IoU)``. Points are pixel ``[K, 2]`` (x, y), labels 1 = foreground,
        0 = background; ``box`` is ``[4]`` x0, y0, x1, y1. With several outputs (one click, no box), the one
        with the highest predicted IoU wins unless ``level`` (s/m/l) picks one."""
        image = check_image(image, "reference image")
        if points is None and box is None:
            raise Cos3dError("a SAM prompt needs points or a box")
        multimask = level is not None or box is None and (points is None or len(points) <= 1)
        kw: dict[str, Any] = {}
        if points is not None:
            pts = np.asarray(points, np.float64).reshape(-1, 2)
            lab = np.ones(len(pts), np.int64) if point_labels is None else np.asarray(point_labels).reshape(-1)
            kw.update(points=[pts.tolist()], labels=[[int(x) for x in lab]])
        if box is not None:
            kw.update(boxes=[np.asarray(box, np.float64).reshape(4).tolist()])
        logits, iou = self._decode(self._encode(image), multimask=multimask, **kw)
        masks = (logits[0] > 0).numpy()
        ious = iou[0].numpy().astype(np.float32)
        k = LEVELS.index(level) if (level is not None and masks.shape[0] == len(LEVELS)) else int(np.argmax(ious))
        return masks[k], float(ious[k])


class SAM3TrackerPromptSegmenter(HFSamPromptSegmenter):
    """Box / point prompts through the SAM 3 tracker (``--sam3-model``)."""

    def __init__(self, model: Any | str | os.PathLike | None = None, **kw: Any) -> None:
        kw.pop("family", None)
        super().__init__(model, family="sam3", **kw)
