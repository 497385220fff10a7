"""SAM2 masks: automatic generation with the three multimask levels kept apart, and prompt segmentation.

Thin adapter : configs are looked up in Python (the YAML files shipped inside the
``sam2`` package, or any YAML path) and instantiated with ``hydra.utils.instantiate`` — no Hydra
``compose``, no search-path globals of our own, and nothing from sam2 is imported until a SAM2 model
is asked for (importing ``sam2`` itself still initialises Hydra's global state; that is sam2's own
import-time side effect, sam2 issue #179).

Weights: a local checkpoint (``--sam2-checkpoint`` / ``$COS3D_SAM2_CHECKPOINT``, with ``--sam2-config`` /
``$COS3D_SAM2_CONFIG`` or a config inferred from the official file name) or the hub id
``facebook/sam2.1-hiera-large`` (downloaded with ``huggingface_hub``; fails offline with
:class:`~cos3d.core.errors.MissingWeightsError`).

Automatic generation: a ``points_per_side`` × ``points_per_side`` grid of single positive clicks, each
giving SAM's three multimask outputs; output ``k`` goes to level ``k`` (0 = s, 1 = m, 2 = l). Per level:
drop masks with predicted IoU ≤ ``pred_iou_thresh`` or stability < ``stability_score_thresh`` or area <
``min_area``, score = predicted IoU × stability, then mask-IoU NMS at ``nms_thresh``.
(``SAM2AutomaticMaskGenerator`` mixes the three outputs into one list; we keep them separate.)
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cos3d.core.errors import Cos3dError, MissingWeightsError, brief
from cos3d.vision.base import MaskProvider, check_image, file_fingerprint, resolve_device
from cos3d.vision.masks import LEVELS, MaskSet, masks_to_boxes, nms

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.data.scene import Frame

DEFAULT_SAM2_HUB_ID = "facebook/sam2.1-hiera-large"
ENV_SAM2_CHECKPOINT = "COS3D_SAM2_CHECKPOINT"
ENV_SAM2_CONFIG = "COS3D_SAM2_CONFIG"

OFFLINE_HINT = (
    "pass --sam2-checkpoint PATH (and --sam2-config NAME, e.g. configs/sam2.1/sam2.1_hiera_l.yaml; or set "
    "$COS3D_SAM2_CHECKPOINT / $COS3D_SAM2_CONFIG), or run offline with --masks dataset (the scene's instance "
    "maps, oracle-2D protocol) or --masks classical (superpixels, no weights)"
)

# The settings sam2's own ``build_sam2`` applies on top of the YAML for image prediction.
_POSTPROCESS_OVERRIDES = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}


def _sam2_package_dir() -> Path:
    spec = importlib.util.find_spec("sam2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(
            "the sam2 package is not installed (pip install sam2); or use --masks dataset / classical"
        )
    return Path(list(spec.submodule_search_locations)[0])


def list_sam2_configs() -> list[str]:
    """Config names shipped inside the sam2 package (``configs/sam2.1/sam2.1_hiera_t.yaml``, ...)."""
    root = _sam2_package_dir()
    return sorted(str(p.relative_to(root)) for p in (root / "configs").rglob("*.yaml") if "training" not in str(p))


def resolve_sam2_config(name: str | os.PathLike) -> Path:
    """A YAML path for ``name``: a file path, a path relative to the sam2 package
    (``configs/sam2.1/sam2.1_hiera_t.yaml``), or a bare stem (``sam2.1_hiera_t``)."""
    p = Path(name)
    if p.is_file():
        return p
    root = _sam2_package_dir()
    for cand in (root / p, root / "configs" / p, root / f"{p}.yaml", root / "configs" / f"{p}.yaml"):
        if cand.is_file():
            return cand
    stem = p.name[:-5] if p.name.endswith(".yaml") else p.name
    for sub in ("configs/sam2.1", "configs/sam2"):
        cand = root / sub / f"{stem}.yaml"
        if cand.is_file():
            return cand
    raise Cos3dError(f"SAM2 config {str(name)!r} not found (--sam2-config); known: {', '.join(list_sam2_configs())}")


def _config_for_checkpoint(ckpt: Path) -> str | None:
    """The official config of an official checkpoint file name (``sam2.1_hiera_tiny.pt`` → ``..._t.yaml``)."""
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    for cfg, fname in HF_MODEL_ID_TO_FILENAMES.values():
        if ckpt.name == fname:
            return cfg
    return None


def load_sam2_model(
    checkpoint: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    *,
    hub_id: str = DEFAULT_SAM2_HUB_ID,
    device: str | None = "auto",
    image_size: int | None = None,
) -> tuple[Any, str]:
    """Build a SAM2 model and load its weights. Returns ``(model, model_id)``.

    Args:
        checkpoint: local ``.pt`` (``{"model": state_dict}`` as released, or a bare state dict);
            default ``$COS3D_SAM2_CHECKPOINT``; None → download ``hub_id``.
        config: config name or YAML path; default ``$COS3D_SAM2_CONFIG``, else inferred from the
            official checkpoint file name / the hub id.
        image_size: override the model's input resolution (multiple of 32; the released models use
            1024). Smaller is much faster on CPU and worse; for tests and previews.
    """
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    ckpt = checkpoint if checkpoint is not None else os.environ.get(ENV_SAM2_CHECKPOINT) or None
    cfg_name = config if config is not None else os.environ.get(ENV_SAM2_CONFIG) or None
    if ckpt is not None:
        ckpt = Path(ckpt)
        if not ckpt.is_file():
            raise MissingWeightsError(
                f"SAM2 checkpoint {ckpt} does not exist (--sam2-checkpoint / ${ENV_SAM2_CHECKPOINT})"
            )
        if cfg_name is None:
            cfg_name = _config_for_checkpoint(ckpt)
            if cfg_name is None:
                raise Cos3dError(
                    f"SAM2 checkpoint {ckpt.name} has no official name; say which config it was trained with: "
                    f"--sam2-config NAME (or ${ENV_SAM2_CONFIG}); known: {', '.join(list_sam2_configs())}"
                )
        weights_id = f"ckpt-{file_fingerprint(ckpt)}"
    else:
        from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

        if hub_id not in HF_MODEL_ID_TO_FILENAMES:
            raise Cos3dError(f"unknown SAM2 hub id {hub_id!r}; known: {', '.join(HF_MODEL_ID_TO_FILENAMES)}")
        hub_cfg, fname = HF_MODEL_ID_TO_FILENAMES[hub_id]
        try:
            from huggingface_hub import hf_hub_download

            ckpt = Path(hf_hub_download(repo_id=hub_id, filename=fname))
        except Exception as e:  # offline, no network, gated, ...
            raise MissingWeightsError(
                f"SAM2 weights {hub_id} could not be downloaded ({type(e).__name__}); {OFFLINE_HINT}"
            ) from None
        cfg_name = cfg_name or hub_cfg
        weights_id = hub_id
    cfg_path = resolve_sam2_config(cfg_name)
    cfg = OmegaConf.load(cfg_path)
    if "model" not in cfg:
        raise Cos3dError(f"SAM2 config {cfg_path} has no 'model' section")
    extra = cfg.model.get("sam_mask_decoder_extra_args") or {}
    cfg.model.sam_mask_decoder_extra_args = {**dict(extra), **_POSTPROCESS_OVERRIDES}
    if image_size is not None:
        if image_size % 32 or image_size < 64:
            raise Cos3dError(f"SAM2 image_size must be a multiple of 32 and >= 64, got {image_size}")
        cfg.model.image_size = int(image_size)
    OmegaConf.resolve(cfg)
    model = instantiate(cfg.model, _recursive_=True)
    try:
        sd = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:
        raise Cos3dError(f"SAM2 checkpoint {ckpt} could not be read ({brief(e, 200)})") from None
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches raise even when not strict
        first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)[:200]
        raise Cos3dError(
            f"SAM2 checkpoint {ckpt} does not fit config {cfg_path.name} (--sam2-config): {first}"
        ) from None
    if missing or unexpected:
        raise Cos3dError(
            f"SAM2 checkpoint {ckpt} does not fit config {cfg_path.name} (--sam2-config): "
            f"{len(missing)} missing keys (e.g. {list(missing)[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {list(unexpected)[:3]})"
        )
    model = model.to(resolve_device(device)).eval()
    size = int(cfg.model.get("image_size", 1024))
    return model, f"sam2:{cfg_path.stem}@{size}:{weights_id}"


def _make_predictor(model: Any) -> Any:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    pred = SAM2ImagePredictor(model)
    s = int(model.image_size)
    if s != 1024:  # the predictor's feature sizes are written for 1024 inputs
        pred._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return pred


def _autocast(device: str) -> Any:
    import torch

    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _grid(n: int, width: int, height: int) -> np.ndarray:
    """``[n*n, 2]`` pixel (x, y) at the centres of an n×n grid of cells."""
    t = (np.arange(n) + 0.5) / n
    xs, ys = np.meshgrid(t * width, t * height)
    return np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float32)


class AutoMaskFilters:
    """The automatic-mask settings of every SAM provider (this module's and :mod:`cos3d.vision.sam2_hf`'s):
    the point grid, the filters :func:`keep_per_level` applies, NMS; and their cache-key ``params``."""

    def set_filters(
        self,
        points_per_side: int,
        points_per_batch: int,
        pred_iou_thresh: float,
        stability_score_thresh: float,
        stability_score_offset: float,
        mask_threshold: float,
        nms_thresh: float,
        min_area: int,
    ) -> None:
        if points_per_side < 1 or points_per_batch < 1:
            raise Cos3dError(
                f"points_per_side and points_per_batch must be >= 1, got {points_per_side}, {points_per_batch}"
            )
        self.points_per_side = int(points_per_side)
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.mask_threshold = float(mask_threshold)
        self.nms_thresh = float(nms_thresh)
        self.min_area = int(min_area)

    @property
    def params(self) -> dict[str, Any]:
        return {
            "points_per_side": self.points_per_side,
            "pred_iou_thresh": self.pred_iou_thresh,
            "stability_score_thresh": self.stability_score_thresh,
            "stability_score_offset": self.stability_score_offset,
            "mask_threshold": self.mask_threshold,
            "nms_thresh": self.nms_thresh,
            "min_area": self.min_area,
        }


def keep_per_level(provider: AutoMaskFilters, logits: Any, iou: Any,
                   per_level: list[list[tuple[np.ndarray, np.ndarray]]]) -> None:
    """Filter one batch of SAM outputs (``logits [B, 3, H, W]``, ``iou [B, 3]`` float tensors) by
    predicted IoU, stability and area with ``provider``'s settings, and append the kept masks and their
    scores (IoU × stability) to ``per_level[k]`` for output ``k`` = level s/m/l. Shared by the SAM2
    package provider and the ``transformers`` ones (:func:`keep_upsampled` on the flattened batch)."""
    import torch

    B, K = int(iou.shape[0]), int(iou.shape[1])
    level = torch.arange(K).repeat(B)
    keep_upsampled(provider, logits.reshape(B * K, *logits.shape[-2:]), iou.reshape(B * K), level, per_level)


def keep_upsampled(provider: AutoMaskFilters, logits: Any, iou: Any, level: Any,
                   per_level: list[list[tuple[np.ndarray, np.ndarray]]]) -> None:
    """:func:`keep_per_level` on masks given one by one: ``logits [M, H, W]`` at the image's size, ``iou [M]``,
    ``level [M]`` (the multimask output each came from). The caller may have dropped the masks under the
    predicted-IoU threshold before upsampling them (that test reads no mask); within a level the kept masks
    are appended in the given order."""
    import torch

    if len(iou) == 0:
        return
    hi = (logits > provider.mask_threshold + provider.stability_score_offset).sum((-1, -2)).float()
    lo = (logits > provider.mask_threshold - provider.stability_score_offset).sum((-1, -2)).float()
    stab = torch.where(lo > 0, hi / lo.clamp(min=1), torch.zeros_like(hi))
    binary = logits > provider.mask_threshold
    area = binary.sum((-1, -2))
    keep = (
        (iou > provider.pred_iou_thresh)
        & (stab >= provider.stability_score_thresh)
        & (area >= max(provider.min_area, 1))
    )
    for k in range(len(LEVELS)):
        sel = keep & (level == k)
        if bool(sel.any()):
            per_level[k].append((binary[sel].cpu().numpy(), (iou[sel] * stab[sel]).cpu().numpy().astype(np.float32)))


def levels_to_maskset(per_level: list[list[tuple[np.ndarray, np.ndarray]]], h: int, w: int,
                      nms_thresh: float) -> MaskSet:
    """Mask-IoU NMS within each level, then one :class:`MaskSet` of all levels."""
    sets = []
    for k, chunks in enumerate(per_level):
        if not chunks:
            continue
        masks = np.concatenate([c[0] for c in chunks])
        scores = np.concatenate([c[1] for c in chunks])
        boxes = masks_to_boxes(masks)
        kept = nms(masks, scores, nms_thresh, boxes=boxes, mode="mask")
        sets.append(
            MaskSet(
                masks=masks[kept],
                level=np.full(len(kept), k, np.int8),
                score=scores[kept],
                box=boxes[kept],
                source_id=np.full(len(kept), -1, np.int64),
            )
        )
    return MaskSet.concat(sets) if sets else MaskSet.empty(h, w)


class SAM2MaskProvider(AutoMaskFilters, MaskProvider):
    """SAM2 automatic masks, three levels kept separate (see the module docstring)."""

    name = "sam2"

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        config: str | os.PathLike | None = None,
        *,
        hub_id: str = DEFAULT_SAM2_HUB_ID,
        device: str | None = "auto",
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.7,
        stability_score_thresh: float = 0.85,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        nms_thresh: float = 0.7,
        min_area: int = 0,
        image_size: int | None = None,
    ) -> None:
        self.set_filters(points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh,
                         stability_score_offset, mask_threshold, nms_thresh, min_area)
        self.device = resolve_device(device)
        self.model, self._model_id = load_sam2_model(
            checkpoint, config, hub_id=hub_id, device=self.device, image_size=image_size
        )
        self.predictor = _make_predictor(self.model)

    @property
    def model_id(self) -> str:
        return self._model_id


    def generate(self, image: np.ndarray, frame: "Frame | None" = None) -> MaskSet:
        """Masks of ``image`` (uint8 ``[H, W, 3]``) at levels s/m/l; ``frame`` is ignored."""
        import torch

        image = check_image(image)
        h, w = image.shape[:2]
        pred = self.predictor
        per_level: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in LEVELS]
        with torch.inference_mode(), _autocast(self.device):
            pred.set_image(np.array(image))  # a writable copy (torchvision warns on read-only arrays)
            points = _grid(self.points_per_side, w, h)
            for i in range(0, len(points), self.points_per_batch):
                pts = torch.as_tensor(points[i : i + self.points_per_batch], device=self.device)
                coords = pred._transforms.transform_coords(pts, normalize=True, orig_hw=(h, w))
                labels = torch.ones(coords.shape[0], dtype=torch.int, device=self.device)
                logits, iou, _ = pred._predict(
                    coords[:, None, :], labels[:, None], multimask_output=True, return_logits=True
                )
                keep_per_level(self, logits.float(), iou.float(), per_level)  # [B, 3, H, W], [B, 3]
            pred.reset_predictor()
        return levels_to_maskset(per_level, h, w, self.nms_thresh)

    def prompt_segmenter(self) -> "SAM2PromptSegmenter":
        """A prompt segmenter sharing this provider's model (for image prompts)."""
        return SAM2PromptSegmenter(self.model, device=self.device)


class SAM2PromptSegmenter:
    """Box / point prompts on one reference image → a mask (SAM2 image predictor)."""

    def __init__(self, model: Any, *, device: str | None = "auto") -> None:
        self.model = model
        self.device = resolve_device(device)
        self.predictor = _make_predictor(model)

    @classmethod
    def load(
        cls,
        checkpoint: str | os.PathLike | None = None,
        config: str | os.PathLike | None = None,
        *,
        hub_id: str = DEFAULT_SAM2_HUB_ID,
        device: str | None = "auto",
        image_size: int | None = None,
    ) -> "SAM2PromptSegmenter":
        dev = resolve_device(device)
        model, _ = load_sam2_model(checkpoint, config, hub_id=hub_id, device=dev, image_size=image_size)
        return cls(model, device=dev)

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
        0 = background; ``box`` is ``[4]`` x0, y0, x1, y1. With several outputs, the one with the highest
        predicted IoU wins unless ``level`` (s/m/l) picks one."""
        import torch

        image = check_image(image, "reference image")
        multimask = level is not None or box is None and (points is None or len(points) <= 1)
        with torch.inference_mode(), _autocast(self.device):
            self.predictor.set_image(np.array(image))
            masks, ious, _ = self.predictor.predict(
                point_coords=None if points is None else np.asarray(points, np.float32),
                point_labels=None if points is None else np.asarray(point_labels, np.int32),
                box=None if box is None else np.asarray(box, np.float32),
                multimask_output=multimask,
            )
            self.predictor.reset_predictor()
        masks = np.asarray(masks).reshape(-1, *image.shape[:2]).astype(bool)
        ious = np.asarray(ious, np.float32).reshape(-1)
        k = LEVELS.index(level) if (level is not None and masks.shape[0] == len(LEVELS)) else int(np.argmax(ious))
        return masks[k], float(ious[k])
