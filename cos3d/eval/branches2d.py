"""The 2D-first branch (:mod:`cos3d.query.concept2d`) against the field-only answer, scored on held-out views
(evaluation only: the ground truth is read by the caller and compared here, never on the query path)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from cos3d.eval.metrics import mask_iou
from cos3d.query.concept2d import BRANCHES, ConceptSegmenter, branch_selections

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from cos3d.query.engine import QueryEngine

__all__ = ["compare_branches", "compare_query_branches"]


def _score(engine: "QueryEngine", answers: Iterable[tuple[Sequence[int], dict[str, "Tensor"]]],
           gt_views: Sequence[tuple[Any, np.ndarray]], branches: Sequence[str], protocol: str
           ) -> dict[str, dict[str, float]]:
    """Per branch: mIoU over (present prompt, view) pairs where the object is visible, the share of those pairs
    with IoU > 0.25, and the no-target accuracy (an empty selection is right exactly for absent prompts), from
    ``answers``: ``(ground-truth ids, {branch: selected Gaussian ids})`` per prompt."""
    ious: dict[str, list[float]] = {b: [] for b in branches}
    right: dict[str, list[bool]] = {b: [] for b in branches}
    for ids, sels in answers:
        for b, sel in sels.items():
            right[b].append((sel.numel() == 0) == (len(ids) == 0))
            if not ids:
                continue
            for cam, inst in gt_views:
                gt = np.isin(inst, list(ids))
                if not gt.any():
                    continue
                pred = engine.masks.mask(sel, cam, protocol) if sel.numel() else np.zeros_like(gt)
                ious[b].append(mask_iou(pred, gt))
    return {b: {"mIoU": float(np.mean(ious[b])) if ious[b] else float("nan"),
                "mAcc@0.25": float(np.mean(np.asarray(ious[b]) > 0.25)) if ious[b] else float("nan"),
                "pairs": len(ious[b]), "no_target_accuracy": float(np.mean(right[b])) if right[b] else float("nan")}
            for b in branches}


def compare_branches(engine: "QueryEngine", segmenter: ConceptSegmenter, prompts: Sequence[tuple[str, Sequence[int]]],
                     gt_views: Sequence[tuple[Any, np.ndarray]], *, k: int = 4, protocol: str = "occlusion"
                     ) -> dict[str, dict[str, float]]:
    """Score :data:`BRANCHES` on ``prompts`` (``(text, ground-truth instance ids)``; no ids = an absent thing)
    against ``gt_views`` (``(camera, instance map)`` of held-out views, read by the caller) (:func:`_score`).

    The query paths read no ground truth; ``segmenter`` may be an oracle standing in for SAM 3 (the oracle-2D
    protocol: then this measures the lifting and fusion, not SAM 3)."""
    answers = ((ids, branch_selections(engine, segmenter, text, k=k)) for text, ids in prompts)
    return _score(engine, answers, gt_views, BRANCHES, protocol)


def compare_query_branches(engine: "QueryEngine", prompts: Sequence[tuple[str, Sequence[int]]],
                           gt_views: Sequence[tuple[Any, np.ndarray]], *, branches: Sequence[str] = ("field", "2d", "fused"),
                           protocol: str = "occlusion") -> dict[str, dict[str, float]]:
    """:func:`compare_branches`' scores for the answers of ``engine.query(text, branch=b)`` (the branches every
    surface offers: :data:`cos3d.query.engine.QUERY_BRANCHES`; the 2D ones use the engine's concept segmenter,
    which may be the oracle stand-in), with the branches' own presence decisions."""
    def answer(text: str, b: str) -> "Tensor":
        res = engine.query(text, branch=b, parts=False)
        return res.selected if not res.no_target else res.selected[:0]

    answers = ((ids, {b: answer(text, b) for b in branches}) for text, ids in prompts)
    return _score(engine, answers, gt_views, branches, protocol)
