"""Masks of one view: :class:`MaskSet`, boxes, mask IoU, NMS, packing for the cache.

Conventions:

- ``masks`` are numpy bool ``[M, H, W]``; a mask's *level* is ``0 = s`` (small / parts),
  ``1 = m`` (medium), ``2 = l`` (large / whole objects), SAM's multimask outputs 0/1/2;
- a *box* is ``[x0, y0, x1, y1]`` float32 in pixel-edge coordinates with exclusive ends: the mask
  covers columns ``x0 .. x1-1`` and rows ``y0 .. y1-1`` (so ``x1 - x0`` is the box width in pixels);
  an empty mask has the box ``[0, 0, 0, 0]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cos3d.core.errors import Cos3dError

LEVELS = ("s", "m", "l")
"""Granularity levels, index = the ``level`` code: small (parts), medium, large (objects)."""


def level_index(level: str | int) -> int:
    """``"s"|"m"|"l"`` (or 0/1/2) → 0/1/2; anything else raises :class:`Cos3dError`."""
    if isinstance(level, (int, np.integer)) and 0 <= int(level) < len(LEVELS):
        return int(level)
    if isinstance(level, str) and level in LEVELS:
        return LEVELS.index(level)
    raise Cos3dError(f"unknown mask level {level!r}; choose one of {', '.join(LEVELS)}")


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """``[M, H, W]`` bool → ``[M, 4]`` float32 boxes ``x0, y0, x1, y1`` (exclusive ends; empty → zeros)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [M, H, W], got shape {masks.shape}")
    m = masks.shape[0]
    boxes = np.zeros((m, 4), dtype=np.float32)
    if m == 0:
        return boxes
    cols = masks.any(axis=1)  # [M, W]
    rows = masks.any(axis=2)  # [M, H]
    nonempty = cols.any(axis=1)
    w, h = masks.shape[2], masks.shape[1]
    x0 = cols.argmax(axis=1)
    x1 = w - cols[:, ::-1].argmax(axis=1)
    y0 = rows.argmax(axis=1)
    y1 = h - rows[:, ::-1].argmax(axis=1)
    boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3] = x0, y0, x1, y1
    boxes[~nonempty] = 0
    return boxes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``[A, 4]`` × ``[B, 4]`` → ``[A, B]`` (exclusive-end convention)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact IoU of bool masks ``[A, H, W]`` × ``[B, H, W]`` → ``[A, B]`` float64 (0 for two empty masks)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    fa = a.reshape(a.shape[0], -1).astype(np.float32)
    fb = b.reshape(b.shape[0], -1).astype(np.float32)
    inter = (fa @ fb.T).astype(np.float64)
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def nms(
    masks: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float = 0.7,
    *,
    boxes: np.ndarray | None = None,
    mode: str = "mask",
) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, highest score first.

    A mask is dropped when its IoU with an already kept (higher-scoring) mask is **greater than**
    ``iou_threshold``. ``mode="mask"`` compares the masks themselves (exact; pairs whose boxes do not
    overlap are skipped), ``mode="box"`` compares boxes (SAM's automatic generator does this).
    Ties in score keep the earlier index. Empty masks are always dropped.

    Args:
        masks: ``[M, H, W]`` bool.
        scores: ``[M]``.
        boxes: ``[M, 4]`` (computed when not given).
    """
    masks = np.asarray(masks, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if masks.ndim != 3 or masks.shape[0] != scores.shape[0]:
        raise ValueError(f"nms: masks [M, H, W] and scores [M] disagree: {masks.shape} vs {scores.shape}")
    if mode not in ("mask", "box"):
        raise ValueError(f"nms mode must be 'mask' or 'box', got {mode!r}")
    if boxes is None:
        boxes = masks_to_boxes(masks)
    boxes = np.asarray(boxes, dtype=np.float64)
    areas = masks.reshape(masks.shape[0], -1).sum(1)
    order = np.argsort(-scores, kind="stable")
    order = order[areas[order] > 0]
    kept: list[int] = []
    for i in order:
        if kept:
            kb = boxes[kept]
            biou = box_iou(boxes[i : i + 1], kb)[0]
            if mode == "box":
                if np.any(biou > iou_threshold):
                    continue
            else:
                # box-intersecting candidates only; exact IoU inside the box intersection
                x0i, y0i, x1i, y1i = boxes[i].astype(int)
                suppressed = False
                touch = _boxes_touch(boxes[i], kb)
                for j, kbj in zip(np.asarray(kept)[touch], kb[touch]):
                    x0 = max(x0i, int(kbj[0]))
                    y0 = max(y0i, int(kbj[1]))
                    x1 = min(x1i, int(kbj[2]))
                    y1 = min(y1i, int(kbj[3]))
                    inter = np.count_nonzero(masks[i, y0:y1, x0:x1] & masks[j, y0:y1, x0:x1])
                    union = areas[i] + areas[j] - inter
                    if union > 0 and inter / union > iou_threshold:
                        suppressed = True
                        break
                if suppressed:
                    continue
        kept.append(int(i))
    return np.asarray(kept, dtype=np.int64)


def _boxes_touch(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    return (np.minimum(box[2], boxes[:, 2]) > np.maximum(box[0], boxes[:, 0])) & (
        np.minimum(box[3], boxes[:, 3]) > np.maximum(box[1], boxes[:, 1])
    )


@dataclass
class MaskSet:
    """The masks of one view, at three levels; numpy throughout.

    ``names`` is only set by the ``dataset`` provider (the ``labels`` embedder needs it);
    ``source_id`` is the dataset id a mask came from (-1 when unknown) and is for evaluation/debugging
    only; ``is_part[k]`` says whether ``source_id[k]`` is a *part* id (``scene.parts``) rather than an
    instance id (``scene.labels``) — the two id spaces may overlap.
    """

    masks: np.ndarray
    """[M, H, W] bool."""
    level: np.ndarray
    """[M] int8: 0 = s, 1 = m, 2 = l."""
    score: np.ndarray
    """[M] float32 (SAM2: predicted IoU × stability)."""
    box: np.ndarray
    """[M, 4] float32 x0, y0, x1, y1 (exclusive ends)."""
    names: list[list[str]] | None = None
    """Per mask, its names (first = canonical); only from the dataset provider."""
    source_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """[M] int64 dataset instance/part id, -1 when unknown (eval/debug only)."""
    is_part: np.ndarray | None = None
    """[M] bool, True where ``source_id`` is a part id; None = all False."""

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, dtype=bool)
        if self.masks.ndim != 3:
            raise ValueError(f"MaskSet.masks must be [M, H, W], got shape {self.masks.shape}")
        m = self.masks.shape[0]
        self.level = np.asarray(self.level, dtype=np.int8).reshape(-1)
        self.score = np.asarray(self.score, dtype=np.float32).reshape(-1)
        self.box = np.asarray(self.box, dtype=np.float32).reshape(-1, 4)
        if self.source_id is None or np.asarray(self.source_id).size == 0 and m > 0:
            self.source_id = np.full(m, -1, np.int64)
        self.source_id = np.asarray(self.source_id, dtype=np.int64).reshape(-1)
        if self.is_part is None:
            self.is_part = np.zeros(m, dtype=bool)
        self.is_part = np.asarray(self.is_part, dtype=bool).reshape(-1)
        for name, arr in (
            ("level", self.level),
            ("score", self.score),
            ("box", self.box),
            ("source_id", self.source_id),
            ("is_part", self.is_part),
        ):
            if arr.shape[0] != m:
                raise ValueError(f"MaskSet.{name} has {arr.shape[0]} rows for {m} masks")
        if m and (self.level.min() < 0 or self.level.max() >= len(LEVELS)):
            raise ValueError(f"MaskSet.level must be in 0..{len(LEVELS) - 1}, got {np.unique(self.level)}")
        if self.names is not None and len(self.names) != m:
            raise ValueError(f"MaskSet.names has {len(self.names)} entries for {m} masks")

    # construction ------------------------------------------------------------------------------
    @classmethod
    def from_masks(
        cls,
        masks: np.ndarray,
        level: np.ndarray | int | str,
        score: np.ndarray | float = 1.0,
        *,
        names: list[list[str]] | None = None,
        source_id: np.ndarray | None = None,
        is_part: np.ndarray | None = None,
    ) -> "MaskSet":
        """Build a set from bool masks, computing the boxes; ``level``/``score`` may be scalars."""
        masks = np.asarray(masks, dtype=bool)
        m = masks.shape[0]
        lv = np.full(m, level_index(level), np.int8) if np.ndim(level) == 0 else np.asarray(level, np.int8)
        sc = np.full(m, float(score), np.float32) if np.ndim(score) == 0 else np.asarray(score, np.float32)
        sid = np.full(m, -1, np.int64) if source_id is None else np.asarray(source_id, np.int64)
        return cls(
            masks=masks, level=lv, score=sc, box=masks_to_boxes(masks), names=names, source_id=sid, is_part=is_part
        )

    @classmethod
    def empty(cls, height: int, width: int, with_names: bool = False) -> "MaskSet":
        return cls(
            masks=np.zeros((0, height, width), bool),
            level=np.zeros(0, np.int8),
            score=np.zeros(0, np.float32),
            box=np.zeros((0, 4), np.float32),
            names=[] if with_names else None,
            source_id=np.zeros(0, np.int64),
        )

    @staticmethod
    def concat(sets: list["MaskSet"]) -> "MaskSet":
        """Concatenate sets of the same image size; names survive only if every set has them."""
        if not sets:
            raise ValueError("MaskSet.concat needs at least one set")
        h, w = sets[0].shape
        for s in sets:
            if s.shape != (h, w):
                raise ValueError(f"MaskSet.concat: image sizes differ: {s.shape} vs {(h, w)}")
        names = None
        if all(s.names is not None for s in sets):
            names = [n for s in sets for n in s.names]  # type: ignore[union-attr]
        return MaskSet(
            masks=np.concatenate([s.masks for s in sets]),
            level=np.concatenate([s.level for s in sets]),
            score=np.concatenate([s.score for s in sets]),
            box=np.concatenate([s.box for s in sets]),
            names=names,
            source_id=np.concatenate([s.source_id for s in sets]),
            is_part=np.concatenate([s.is_part for s in sets]),
        )

    # views -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    @property
    def area(self) -> np.ndarray:
        """[M] int64 pixel counts."""
        return self.masks.reshape(len(self), -1).sum(1).astype(np.int64)

    def subset(self, idx: np.ndarray | list[int]) -> "MaskSet":
        """The masks at ``idx`` (indices or a bool selector), in that order."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.nonzero(idx)[0]
        idx = idx.astype(np.int64)
        return MaskSet(
            masks=self.masks[idx],
            level=self.level[idx],
            score=self.score[idx],
            box=self.box[idx],
            names=None if self.names is None else [self.names[i] for i in idx],
            source_id=self.source_id[idx],
            is_part=self.is_part[idx],  # type: ignore[index]
        )

    def indices(self, level: str | int) -> np.ndarray:
        """Indices of the masks at ``level``."""
        return np.nonzero(self.level == level_index(level))[0]

    def at_level(self, level: str | int) -> "MaskSet":
        return self.subset(self.indices(level))

    def label_map(self, level: str | int) -> np.ndarray:
        """``[H, W]`` int64 map of one level: value ``k + 1`` = ``masks[k]`` (index in this set), 0 = none.

        Overlaps go to the higher score; equal scores go to the smaller mask (so parts stay visible).
        """
        h, w = self.shape
        out = np.zeros((h, w), np.int64)
        idx = self.indices(level)
        if idx.size == 0:
            return out
        area = self.area[idx]
        # paint low priority first: ascending score, then descending area
        order = np.lexsort((-area, self.score[idx]))
        for k in idx[order]:
            out[self.masks[k]] = k + 1
        return out


# ---- cache encoding -------------------------------------------------------------------------------
def pack_masks(masks: np.ndarray) -> np.ndarray:
    """``[M, H, W]`` bool → packed uint8 bits (row-major; see :func:`unpack_masks`)."""
    masks = np.asarray(masks, dtype=bool)
    return np.packbits(masks.reshape(-1))


def unpack_masks(packed: np.ndarray, m: int, h: int, w: int) -> np.ndarray:
    """Inverse of :func:`pack_masks`."""
    n = m * h * w
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), count=n)
    if bits.size != n:
        raise ValueError(f"packed masks hold {bits.size} bits, expected {n}")
    return bits.reshape(m, h, w).astype(bool)
