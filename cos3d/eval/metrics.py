"""Metrics shared by the evaluation protocols (README "What is measured"): mask IoU, pair summaries, per-point
semantic metrics and the presence (no-target) decision with its trivial baselines.

Conventions (those of the protocols we compare with):

- **Mask IoU** ``|P ∩ G| / |P ∪ G|``; a pair whose union is empty scores :data:`EMPTY_UNION_IOU` = 0
  (OpenGaussian's LERF script; it never happens on our pairs, which all have a non-empty GT). A
  no-target answer is an empty prediction: IoU 0.
- **mIoU** = mean IoU over (frame, query) pairs; **mAcc@t** = share of pairs with IoU strictly above
  ``t`` (0.25 and 0.5).
- **Per point** (ScanNet): points whose GT label is 0 (unlabelled, not one of the evaluated classes, or
  ignored) count for nothing; per class IoU = TP / (TP + FP + FN) over the counted points, mIoU = mean
  over the classes present in the GT, mAcc = mean over the same classes of TP / |GT of the class|.
- **Presence**: a query is present when its target is in the scene; the answer decides present unless
  it is a no-target answer. Accuracy is reported next to the two trivial answers on the same prompt
  mix ("always present", "always absent"), with the false-empty rate (present targets answered empty)
  and the false-present rate (absent targets answered with something).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

EMPTY_UNION_IOU = 0.0
THRESHOLDS = (0.25, 0.5)


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two bool masks ``[H, W]`` of one shape (:data:`EMPTY_UNION_IOU` when both are empty)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape}, ground truth {gt.shape}")
    union = int(np.logical_or(pred, gt).sum())
    if union == 0:
        return EMPTY_UNION_IOU
    return float(np.logical_and(pred, gt).sum()) / union


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks; 1.0 when both are empty (per-object checks: nothing to find, nothing found). The
    protocols use :func:`mask_iou`, which scores an empty union 0."""
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u)


def summarize_ious(ious: Iterable[float], thresholds: Sequence[float] = THRESHOLDS) -> dict[str, float | int]:
    """``{"pairs", "mIoU", "mAcc@0.25", "mAcc@0.5"}`` of pair IoUs (NaN when there are no pairs)."""
    v = np.asarray(list(ious), np.float64)
    out: dict[str, float | int] = {"pairs": int(v.size), "mIoU": float(v.mean()) if v.size else float("nan")}
    for t in thresholds:
        out[f"mAcc@{t:g}"] = float((v > t).mean()) if v.size else float("nan")
    return out


@dataclass
class SemanticMetrics:
    """Per-point semantic segmentation metrics of one scene (module docstring)."""

    class_iou: np.ndarray
    """``[C]`` IoU per class id 1..C (index 0 unused; NaN for classes absent from the GT)."""
    class_acc: np.ndarray
    """``[C]`` accuracy (recall) per class id (NaN for classes absent from the GT)."""
    present: np.ndarray
    """Class ids present in the GT."""
    miou: float
    macc: float
    accuracy: float
    """Share of counted points labelled right."""
    points: int
    """Counted points (GT label > 0)."""

    def to_dict(self, names: Sequence[str] | None = None) -> dict:
        per = {}
        for c in self.present.tolist():
            key = names[c - 1] if names is not None else str(c)
            per[key] = {"IoU": float(self.class_iou[c]), "Acc": float(self.class_acc[c])}
        return {"mIoU": self.miou, "mAcc": self.macc, "accuracy": self.accuracy, "points": self.points,
                "classes_present": len(self.present), "per_class": per}


def semantic_metrics(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> SemanticMetrics:
    """Metrics of per-point labels ``pred [V]`` against ``gt [V]`` (ints in ``0..num_classes``, 0 = not counted)."""
    gt = np.asarray(gt, np.int64).ravel()
    pred = np.asarray(pred, np.int64).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"label arrays differ in length: gt {gt.shape}, pred {pred.shape}")
    C = int(num_classes)
    if gt.size and (gt.min() < 0 or gt.max() > C or pred.min() < 0 or pred.max() > C):
        raise ValueError(f"labels must lie in 0..{C}")
    counted = gt > 0
    g, p = gt[counted], pred[counted]
    conf = np.bincount(g * (C + 1) + p, minlength=(C + 1) ** 2).reshape(C + 1, C + 1)  # [gt, pred]
    tp = np.diag(conf).astype(np.float64)
    gt_n = conf.sum(1).astype(np.float64)
    pred_n = conf.sum(0).astype(np.float64)
    union = gt_n + pred_n - tp
    present = np.nonzero(gt_n[1:] > 0)[0] + 1
    iou = np.full(C + 1, np.nan)
    acc = np.full(C + 1, np.nan)
    iou[present] = tp[present] / union[present]
    acc[present] = tp[present] / gt_n[present]
    n = int(counted.sum())
    return SemanticMetrics(
        class_iou=iou, class_acc=acc, present=present,
        miou=float(iou[present].mean()) if present.size else float("nan"),
        macc=float(acc[present].mean()) if present.size else float("nan"),
        accuracy=float(tp[1:].sum() / n) if n else float("nan"),
        points=n,
    )


def presence_metrics(present: Sequence[bool], answered_empty: Sequence[bool]) -> dict[str, float | int]:
    """No-target accuracy with its baselines on the same mix (module docstring)."""
    pr = np.asarray(present, bool)
    em = np.asarray(answered_empty, bool)
    if pr.shape != em.shape:
        raise ValueError("present and answered_empty differ in length")
    n = int(pr.size)
    nan = float("nan")
    return {
        "queries": n,
        "present": int(pr.sum()),
        "absent": int((~pr).sum()),
        "accuracy": float(np.mean(pr != em)) if n else nan,
        "always_present_baseline": float(pr.mean()) if n else nan,
        "always_absent_baseline": float((~pr).mean()) if n else nan,
        "balanced_accuracy": float(0.5 * ((~em[pr]).mean() + em[~pr].mean())) if pr.any() and (~pr).any() else nan,
        "false_empty_rate": float(em[pr].mean()) if pr.any() else nan,
        "false_present_rate": float((~em[~pr]).mean()) if (~pr).any() else nan,
    }
