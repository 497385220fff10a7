"""The tabletop evaluation protocol (DESIGN.md §5, oracle-2D): 2D IoU of query masks in held-out views.

Queries (:func:`tabletop_queries`), built from the scene's ``labels.json`` / ``parts.json``:

- ``name``: each object's canonical (first) name;
- ``paraphrase``: each object's second and third names ("mug", "cup" for a blue mug);
- ``plural``: the plural of the same-kind pair's kind word (``meta.json``'s ``pair``: "cans") and of every
  one-word name several objects share ("mugs" for a blue and a red mug);
- ``absent``: names of things not in the scene ("elephant", ...): the right answer is empty;
- ``part``: each part's first name within its parent's canonical name ("head" within "toy robot").

A query's ground truth is every instance (or part) that has the query text among its names, so "mug" is
both mugs and "leg" both legs.

Metrics, per (held-out frame, query) pair where the ground truth is visible (≥ 1 pixel) in that frame:
IoU of the answer's 2D mask (``protocol``: ``occlusion`` by default, or ``selected``) with the GT mask;
**mIoU** = mean over pairs, **mAcc@0.25** = share of pairs with IoU > 0.25. A present query answered as
no-target scores IoU 0 on all its pairs. **No-target accuracy** = share of queries (absent and present)
whose presence decision is right. All numbers are oracle-2D: 2D masks and embeddings come from the
dataset's own instance maps and names, so they measure the 3D machinery, not CLIP or SAM.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.query.engine import QueryEngine

ABSENT_QUERIES: tuple[str, ...] = ("elephant", "bicycle", "laptop", "giraffe", "umbrella")
"""Things no tabletop scene contains."""


@dataclass
class EvalQuery:
    text: str
    kind: str
    """``name``, ``paraphrase``, ``plural``, ``absent`` or ``part``."""
    gt_ids: list[int]
    """Instance ids (part ids for ``part``); empty for ``absent``."""
    within: str | None = None
    """Parent prompt for ``part`` queries."""

    @property
    def present(self) -> bool:
        return bool(self.gt_ids)

    @property
    def label(self) -> str:
        return self.text if self.within is None else f"{self.text} within {self.within}"


@dataclass
class QueryEval:
    query: EvalQuery
    ious: dict[str, float]
    """Frame name → IoU (only frames where the GT is visible)."""
    no_target: bool
    num_objects: int
    ms: float

    @property
    def decision_correct(self) -> bool:
        return self.no_target != self.query.present

    @property
    def miou(self) -> float | None:
        return float(np.mean(list(self.ious.values()))) if self.ious else None


@dataclass
class EvalReport:
    per_query: list[QueryEval]
    protocol: str
    views: list[str]
    miou: float
    macc25: float
    no_target_accuracy: float
    num_pairs: int
    by_kind: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": f"tabletop oracle-2D, {self.protocol} masks",
            "views": self.views,
            "mIoU": self.miou,
            "mAcc@0.25": self.macc25,
            "no_target_accuracy": self.no_target_accuracy,
            "pairs": self.num_pairs,
            "by_kind": self.by_kind,
            "queries": [
                {"query": q.query.label, "kind": q.query.kind, "gt": q.query.gt_ids, "no_target": q.no_target,
                 "objects": q.num_objects, "mIoU": q.miou, "ious": q.ious, "ms": round(q.ms, 2)}
                for q in self.per_query
            ],
        }


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks (1.0 when both are empty)."""
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u)


def _plural(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _ids_with_name(table: dict[int, list[str]], text: str) -> list[int]:
    t = text.strip().lower()
    return sorted(i for i, names in table.items() if t in (n.lower() for n in names))


def tabletop_queries(scene: Any, *, absent: Sequence[str] = ABSENT_QUERIES, parts: bool = True) -> list[EvalQuery]:
    """The protocol's queries for ``scene`` (module docstring)."""
    labels = {int(k): list(v) for k, v in scene.labels.items()}
    qs: list[EvalQuery] = []
    seen: set[tuple[str, str | None]] = set()

    def add(text: str, kind: str, ids: list[int], within: str | None = None) -> None:
        key = (text.lower(), within)
        if key in seen or (kind != "absent" and not ids):
            return
        seen.add(key)
        qs.append(EvalQuery(text, kind, ids, within))

    for i, names in sorted(labels.items()):
        if names:
            add(names[0], "name", _ids_with_name(labels, names[0]))
    for i, names in sorted(labels.items()):
        for alt in names[1:3]:
            add(alt, "paraphrase", _ids_with_name(labels, alt))
    plurals: list[str] = []
    meta_path = getattr(scene, "root", None)
    if meta_path is not None and (meta_path / "meta.json").is_file():
        try:
            pair = json.loads((meta_path / "meta.json").read_text()).get("pair") or {}
            if pair.get("kind"):
                plurals.append(str(pair["kind"]))
        except (OSError, ValueError):
            pass
    # every one-word name shared by several objects ("mug" for a blue and a red mug)
    shared: dict[str, set[int]] = {}
    for i, names in labels.items():
        for nm in set(x.lower() for x in names):
            if " " not in nm:
                shared.setdefault(nm, set()).add(i)
    plurals += sorted(nm for nm, ids in shared.items() if len(ids) > 1)
    for word in dict.fromkeys(plurals):
        add(_plural(word), "plural", _ids_with_name(labels, word))
    for a in absent:
        if not _ids_with_name(labels, a):
            add(a, "absent", [])
    if parts and scene.parts:
        ptable = {int(k): list(p.names) for k, p in scene.parts.items()}
        for pid, p in sorted(scene.parts.items()):
            parent = labels.get(int(p.parent), [])
            if p.names and parent:
                add(p.names[0], "part", _ids_with_name(ptable, p.names[0]), within=parent[0])
    return qs


def gt_mask(frame: Any, q: EvalQuery) -> np.ndarray | None:
    m = frame.load_part() if q.kind == "part" else frame.load_instance()
    return None if m is None else np.isin(m, q.gt_ids)


def evaluate(
    engine: QueryEngine,
    queries: Sequence[EvalQuery] | None = None,
    *,
    views: Sequence[str] | None = None,
    protocol: str = "occlusion",
) -> EvalReport:
    """Run the protocol on a :class:`~cos3d.query.engine.QueryEngine` (module docstring).

    Args:
        views: frame names (default: the scene's test split).
    """
    from cos3d.query.masks2d import check_protocol

    check_protocol(protocol)
    scene = engine.scene
    qs = list(queries) if queries is not None else tabletop_queries(scene)
    frames = [scene.frame(v) for v in views] if views is not None else scene.split("test")
    gts: dict[tuple[str, int], np.ndarray | None] = {}
    out: list[QueryEval] = []
    for q in qs:
        t = time.perf_counter()
        res = engine.query(q.text, within=q.within) if q.within else engine.query(q.text)
        ms = (time.perf_counter() - t) * 1e3
        ious: dict[str, float] = {}
        if q.present:
            for f in frames:
                key = (f.name, id(q))
                if key not in gts:
                    gts[key] = gt_mask(f, q)
                gt = gts[key]
                if gt is None or not gt.any():
                    continue
                pred = engine.mask(res, f.camera, protocol) if not res.no_target else np.zeros_like(gt)
                ious[f.name] = iou(pred, gt)
        out.append(QueryEval(q, ious, bool(res.no_target), len(res.objects), ms))
    pairs = [v for qe in out for v in qe.ious.values()]
    by_kind: dict[str, dict[str, float]] = {}
    for kind in sorted({qe.query.kind for qe in out}):
        sub = [qe for qe in out if qe.query.kind == kind]
        kp = [v for qe in sub for v in qe.ious.values()]
        by_kind[kind] = {
            "queries": len(sub),
            "mIoU": float(np.mean(kp)) if kp else float("nan"),
            "mAcc@0.25": float(np.mean(np.asarray(kp) > 0.25)) if kp else float("nan"),
            "decision_accuracy": float(np.mean([qe.decision_correct for qe in sub])),
        }
    return EvalReport(
        per_query=out,
        protocol=protocol,
        views=[f.name for f in frames],
        miou=float(np.mean(pairs)) if pairs else float("nan"),
        macc25=float(np.mean(np.asarray(pairs) > 0.25)) if pairs else float("nan"),
        no_target_accuracy=float(np.mean([qe.decision_correct for qe in out])) if out else float("nan"),
        num_pairs=len(pairs),
        by_kind=by_kind,
    )
