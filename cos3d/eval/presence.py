"""Presence decisions alone: the statistics of every rule, and their trade-off curves (issue 13).

A query's presence decision (present → select; absent → the empty, "not here" answer) is cheap to score
without selecting anything, so every rule of :mod:`cos3d.query.notarget` can be swept over its one
parameter on a fixed set of prompts: the **false-empty rate** (present prompts answered "not here") against
the **no-target accuracy** on absent prompts. :func:`presence_statistics` computes, per prompt, what each
rule reads; :func:`sweep` applies a rule at each parameter value.

Two prompt sets (never mixed):

- ``dev`` (:mod:`cos3d.eval.devprompts`): where a rule's parameter is **chosen**; disjoint from every
  evaluation prompt, training name and calibration word (checked);
- ``eval`` (the tabletop protocol's queries, :func:`cos3d.eval.tabletop.tabletop_queries`): where the
  chosen setting is **reported**, with the whole curve for reference. Nothing here reads ground truth
  beyond which prompts name something in the scene.

:func:`presence_frontier` bounds every rule of that family from the embedder's side: the prompt's best
cosine with the targets a perfect language field would hold (:func:`perfect_field_scores`), thresholded in
hindsight per scene (:func:`frontier`). It reads the dataset's ids and the answers, so it is a measurement
(``cos3d eval tabletop --budget``), never a setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from cos3d.eval.devprompts import DEV_ABSENT_PARTS, dev_tabletop_queries

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.eval.tabletop import EvalQuery
    from cos3d.query.engine import QueryEngine
    from cos3d.data.scene import Scene
    from cos3d.pipeline.trained import TrainedScene


@dataclass(frozen=True)
class PresenceQuery:
    text: str
    present: bool
    kind: str
    within: str | None = None


def dev_queries(scene: "Scene", *, absent_parts: int = DEV_ABSENT_PARTS) -> list[PresenceQuery]:
    """The development prompts for ``scene`` (:func:`cos3d.eval.devprompts.dev_tabletop_queries`) as presence
    queries: the development phrasings of the objects it holds, of its articulated object's parts (within
    its canonical name), every development absent thing, and the first ``absent_parts`` of them as parts."""
    return [PresenceQuery(q.text, q.present, q.kind, q.within)
            for q in dev_tabletop_queries(scene, absent_parts=absent_parts)]


def eval_queries(scene: "Scene") -> list[PresenceQuery]:
    """The tabletop protocol's queries as presence queries."""
    from cos3d.eval.tabletop import tabletop_queries

    return [PresenceQuery(q.text, q.present, q.kind, q.within) for q in tabletop_queries(scene, near=False)]


def presence_statistics(engine: "QueryEngine", queries: Sequence[PresenceQuery]) -> list[dict[str, Any]]:
    """Per query: what every presence rule reads (:func:`cos3d.query.notarget.prompt_statistics`), on the
    object level for whole-object prompts and on the part level (scene-wide and inside the parent's answer)
    for part prompts."""
    from cos3d.query.notarget import OPACITY_MIN, presence_statistics
    from cos3d.query.relevancy import raw_relevancy

    valid = engine.opacity > OPACITY_MIN
    rows: list[dict[str, Any]] = []
    parents: dict[str, torch.Tensor | None] = {}
    for q in queries:
        subset = None
        lvl = engine.level
        if q.within is not None:
            lvl = engine.part_level
            if q.within not in parents:
                par = engine.query(q.within, parts=False)
                m = None
                if not par.no_target:
                    m = torch.zeros(engine.num_gaussians, dtype=torch.bool)
                    m[par.selected] = True
                parents[q.within] = m
            subset = parents[q.within]
        if q.within is not None and subset is None:  # the parent itself is answered "not here"
            rows.append({"text": q.text, "present": q.present, "kind": q.kind, "within": q.within, "level": lvl,
                         "parent_found": False})
            continue
        lv = engine.level_state(lvl)
        P = engine.embed_text([q.text])
        neg_max = engine.negative_max_for(lvl)
        R = raw_relevancy(lv.language, P, engine.negatives, neg_max=neg_max)
        st = presence_statistics(engine.calibration_for(lvl), R, P, valid, neg_max=neg_max, subset=subset,
                                 language=lv.language)[0]
        rows.append({"text": q.text, "present": q.present, "kind": q.kind, "within": q.within, "level": lvl,
                     "parent_found": True, **st})
    return rows


def sweep(rows: Sequence[dict[str, Any]], rule: str, values: Sequence[float]) -> list[dict[str, Any]]:
    """At each parameter value of ``rule`` (:data:`cos3d.query.notarget.RULES`): the false-empty rate over
    the present rows and the no-target accuracy over the absent rows (whole objects and parts apart)."""
    from cos3d.query.notarget import PART_RULES, decide

    out = []
    for v in values:
        if rule in PART_RULES:
            pres = [decide(r, part_rule=rule, part_param=v)[0] if r["parent_found"] else False for r in rows]
        else:
            pres = [decide(r, rule, v)[0] if r["parent_found"] else False for r in rows]
        def rate(sel: list[bool], want: bool) -> tuple[float | None, int]:
            n = sum(sel)
            return (None if n == 0 else float(np.mean([p == want for p, s in zip(pres, sel) if s]))), n
        obj = [r["within"] is None for r in rows]
        fe, n_p = rate([r["present"] for r in rows], False)
        nt, n_a = rate([not r["present"] and o for r, o in zip(rows, obj)], False)
        ntp, n_ap = rate([not r["present"] and not o for r, o in zip(rows, obj)], False)
        out.append({"value": float(v), "false_empty": fe, "present": n_p, "no_target": nt, "absent": n_a,
                    "no_target_parts": ntp, "absent_parts": n_ap})
    return out


def choose(curve: Sequence[dict[str, Any]], *, min_no_target: float = 0.9, parts: bool = False) -> dict[str, Any] | None:
    """The point of ``curve`` with the lowest false-empty rate whose no-target accuracy on absent whole
    objects (``parts``: absent things inside the parent) is at least ``min_no_target`` (ties: the higher
    no-target accuracy, then the lower, i.e. less strict, value)."""
    key = "no_target_parts" if parts else "no_target"
    ok = [c for c in curve if c[key] is not None and c[key] >= min_no_target]
    if not ok:
        return None
    return min(ok, key=lambda c: (c["false_empty"], -c[key], c["value"]))


# ---------------------------------------------------------------------------------------------------
# the perfect-field presence frontier: what the embedder itself allows

FRONTIER_NO_TARGET = 0.9
FRONTIER_FALSE_EMPTY = 0.05
"""Issue 13's bars: the frontier reports the fewest false-empty answers at no-target ≥ 0.9, and the best
no-target accuracy at false-empty ≤ 5 %."""


def perfect_field_scores(ts: "TrainedScene", queries: Sequence["EvalQuery"]) -> list[dict[str, Any]]:
    """Per tabletop query (:class:`cos3d.eval.tabletop.EvalQuery`): ``score`` = the prompt's best cosine with
    the targets a **perfect** language field would hold where the engine looks: for a whole object, every
    Ins2Lang target of the object level (the embeddings of the training masks: under oracle-2D, the mean
    embedding of an object's training names); for a part, the part level's targets whose training mask is a
    part of the query's parent (:func:`cos3d.eval.anchors.anchor_objects`: reads the dataset's ids, so
    evaluation only). A field whose every Gaussian carried its mask's target exactly would give the engine's
    top-k cosine statistic this value (for any object of at least ``k`` opaque Gaussians), so no per-scene
    threshold on that statistic can separate present from absent prompts better than a threshold on it."""
    from cos3d.eval.anchors import anchor_objects

    e = ts.engine
    scene = e.scene
    obj_T = torch.nn.functional.normalize(e.level_state(e.level).targets.float(), dim=1)
    part_T = None
    if any(q.within is not None for q in queries) and scene.parts:
        lv = e.level_state(e.part_level)
        part_T = (torch.nn.functional.normalize(lv.targets.float(), dim=1), anchor_objects(ts, e.part_level, parts=True))
    names = {int(i): [n.lower() for n in v] for i, v in scene.labels.items()}
    rows = []
    for q in queries:
        p = e.embed_text([q.text]).float()[0]
        if q.within is None:
            T = obj_T
        else:
            parents = {i for i, v in names.items() if q.within.lower() in v}
            ids = [int(k) for k, info in scene.parts.items() if int(info.parent) in parents]
            T = (part_T[0][torch.isin(part_T[1], torch.tensor(ids, dtype=torch.long))] if part_T is not None and ids
                 else torch.zeros(0, obj_T.shape[1]))
        score = float((T @ p).max()) if len(T) else -1.0
        rows.append({"query": q.label, "kind": q.kind, "present": q.present, "part": q.within is not None,
                     "score": score})
    return rows


def frontier(rows: Sequence[dict[str, Any]], *, min_no_target: float = FRONTIER_NO_TARGET,
             max_false_empty: float = FRONTIER_FALSE_EMPTY) -> dict[str, Any]:
    """The presence trade-off a threshold on ``score`` allows, chosen **in hindsight** on these very rows
    (so a bound, not a setting): ``at_no_target`` = the fewest false-empty answers among thresholds with
    no-target accuracy ≥ ``min_no_target``; ``at_false_empty`` = the best no-target accuracy among thresholds
    with false-empty ≤ ``max_false_empty``. Counts included; None where the rows hold no present or no absent
    prompt."""
    s = np.array([r["score"] for r in rows], np.float64)
    pr = np.array([bool(r["present"]) for r in rows], dtype=bool)
    n_p, n_a = int(pr.sum()), int((~pr).sum())
    out: dict[str, Any] = {"present": n_p, "absent": n_a, "at_no_target": None, "at_false_empty": None}
    if n_p == 0 or n_a == 0:
        return out
    cuts = np.unique(np.concatenate([s, s + 1e-9, [s.max() + 1.0]]))
    fe = np.array([(s[pr] < c).sum() for c in cuts])  # present answered "not here" at threshold c
    nt = np.array([(s[~pr] < c).sum() for c in cuts])  # absent answered "not here"
    ok = nt >= min_no_target * n_a - 1e-9
    if ok.any():
        j = np.flatnonzero(ok)
        i = int(j[fe[j] == fe[j].min()][0])  # ties: the most lenient such threshold
        out["at_no_target"] = {"threshold": float(cuts[i]), "false_empty": int(fe[i]) / n_p,
                               "false_empty_n": int(fe[i]), "no_target": int(nt[i]) / n_a}
    ok = fe <= max_false_empty * n_p + 1e-9
    if ok.any():
        j = np.flatnonzero(ok)
        i = int(j[nt[j] == nt[j].max()][-1])  # ties: the strictest such threshold
        out["at_false_empty"] = {"threshold": float(cuts[i]), "false_empty": int(fe[i]) / n_p,
                                 "no_target": int(nt[i]) / n_a, "no_target_n": int(nt[i])}
    return out


def presence_frontier(ts: "TrainedScene", queries: Sequence["EvalQuery"]) -> dict[str, Any]:
    """:func:`frontier` of :func:`perfect_field_scores`, whole objects and parts apart (the engine decides them
    with separate rules), and both together (``all``: each at its own hindsight threshold, false-empty over
    every present query): what the embedder's text side allows whatever the 3D side does. ``decided_present``
    lists the queries (labels) its thresholds answer as present (the budget's ``collaborative + frontier
    presence`` row). Only the held-out kinds (:data:`cos3d.eval.tabletop.HELD_OUT_KINDS`) take part, as in the
    protocol's presence numbers; the other present queries (training names, near-training phrasings) count
    as decided present."""
    from cos3d.eval.tabletop import HELD_OUT_KINDS

    rows = perfect_field_scores(ts, [q for q in queries if q.kind in HELD_OUT_KINDS])
    others = [q.label for q in queries if q.present and q.kind not in HELD_OUT_KINDS]
    obj = frontier([r for r in rows if not r["part"]])
    par = frontier([r for r in rows if r["part"]])
    both: dict[str, Any] = {"present": obj["present"] + par["present"]}
    a, b = obj["at_no_target"], par["at_no_target"]
    if a is not None and (b is not None or par["present"] == 0):
        n = a["false_empty_n"] + (b["false_empty_n"] if b else 0)
        both["false_empty_at_no_target"] = n / max(both["present"], 1)
        both["false_empty_n"] = n
    thr = {}
    for key, f in (("objects", obj), ("parts", par)):
        a = f["at_no_target"]
        # no absent prompt to answer: every prompt of the group counts as present
        thr[key] = a["threshold"] if a is not None else (-math.inf if f["absent"] == 0 else math.inf)
    decided = [r["query"] for r in rows if r["score"] >= thr["parts" if r["part"] else "objects"]] + others
    lowest = sorted((r for r in rows if r["present"]), key=lambda r: r["score"])[:6]
    highest = sorted((r for r in rows if not r["present"]), key=lambda r: -r["score"])[:6]
    return {"objects": obj, "parts": par, "all": both, "rows": rows, "decided_present": decided,
            "lowest_present": [(r["query"], round(r["score"], 3)) for r in lowest],
            "highest_absent": [(r["query"], round(r["score"], 3)) for r in highest]}
