"""Compatibility module: the tabletop protocol lives in :mod:`cos3d.eval.tabletop` (``cos3d eval tabletop``).

What changed (issue 11): paraphrases are the held-out phrasings of ``eval_prompts.json`` (never training
names), absent prompts are :data:`cos3d.eval.heldout.ABSENT_PROMPTS` (disjoint from the no-target
calibration vocabulary, checked), and the report carries the presence baselines.
"""

from __future__ import annotations

import numpy as np

from cos3d.eval.heldout import ABSENT_PROMPTS
from cos3d.eval.tabletop import EvalQuery, EvalReport, QueryEval, evaluate, gt_mask, tabletop_queries

ABSENT_QUERIES = ABSENT_PROMPTS
"""Absent-object prompts (alias of :data:`cos3d.eval.heldout.ABSENT_PROMPTS`)."""

__all__ = ["ABSENT_QUERIES", "EvalQuery", "EvalReport", "QueryEval", "evaluate", "gt_mask", "iou", "tabletop_queries"]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks; 1.0 when both are empty (for per-object checks; the protocols use
    :func:`cos3d.eval.metrics.mask_iou`, which scores an empty union 0)."""
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u)
