"""Error budget of the tabletop protocol (issue 13): where a query's IoU is lost, step by step.

Every row is scored with :func:`cos3d.eval.tabletop.evaluate` on the same present queries and held-out
views; only the selection rule changes from one row to the next, so the difference between two rows is
what that step costs.

- ``ceiling``: an **oracle selection**: each Gaussian takes the ground-truth instance (part) id that
  carries most of its blending weight over the *training* views' instance (part) maps, and a query
  selects every Gaussian whose id is one of its targets. What the frozen geometry allows a perfect
  field to reach (an evaluation-only rule: it reads ground truth; no query path uses it).
- ``ceiling, selected masks``: the same selection under COS3D's 2D protocol (alpha of the selection
  rendered alone > 0.7) instead of the occlusion-aware one: the cost of the mask protocol.
- ``instance field``: each Gaussian takes the object of its nearest training-mask anchor in instance
  space (the anchor's mask is one dataset object under oracle-2D), and the query selects its targets'
  Gaussians: what the instance field loses with a perfect language side (evaluation only).
- ``instance-only``, ``language-only``, ``collaborative (raw)``, ``collaborative``: the ablation branches
  (:mod:`cos3d.eval.ablation`) with the **presence test forced to "present"**, so these rows measure the
  selection alone: prompt → anchors (instance-only), the per-Gaussian language field (language-only), the
  Lang2Ins refinement (raw) and cos3d's post-filters (object split, weaker objects dropped);
- ``collaborative + frontier presence``: ``collaborative`` where the presence frontier (below) answers present,
  empty elsewhere: the best any presence threshold on the prompt's match with the scene could give this
  selection (evaluation only: the thresholds are chosen in hindsight on the answers);
- ``collaborative + presence``: the engine's answer as users get it: present queries answered "not
  here" score 0 (the false-empty cost).

``presence_frontier`` (:func:`cos3d.eval.presence.presence_frontier`, over every query, present and absent):
the presence trade-off the embedder's text side allows a *perfect* field with a threshold chosen in
hindsight — the presence decision's ceiling, as ``ceiling`` is the selection's.

:func:`diagnose` names, for each present query, why the engine's answer falls short of the ceiling:
answered empty, the wrong object, merged with other objects, a missed instance, or a partial object.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

from cos3d.core.errors import Cos3dError
from cos3d.eval.anchors import anchor_objects
from cos3d.eval.tabletop import Answer, EvalQuery, engine_answer, evaluate

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from cos3d.query.engine import QueryEngine
    from cos3d.pipeline.trained import TrainedScene

ROWS = ("ceiling", "ceiling, selected masks", "instance field", "instance-only", "language-only",
        "collaborative (raw)", "collaborative", "collaborative + frontier presence", "collaborative + presence")


def oracle_labels(engine: "QueryEngine", frames: Sequence[Any], *, parts: bool = False) -> "Tensor":
    """``[N]`` long: the GT instance (``parts``: part) id carrying the most blending weight of each Gaussian
    over ``frames`` (their instance/part maps); -1 for Gaussians no frame sees, or whose heaviest id is 0 (no
    instance; for parts: not a part — it competes with the part ids, so the pixels around a part do not hand
    their Gaussians to it)."""
    n = engine.num_gaussians
    votes: dict[int, torch.Tensor] = {}
    for f in frames:
        m = f.load_part() if parts else f.load_instance()
        if m is None:
            continue
        c = engine.masks.contributions(f.camera)
        ids = torch.from_numpy(np.asarray(m, np.int64).reshape(-1))[c.pixel.cpu()]
        w = c.weight.detach().cpu().double()
        g = c.gaussian.cpu()
        for i in torch.unique(ids).tolist():
            if i < 0:
                continue
            sel = ids == i
            v = votes.setdefault(int(i), torch.zeros(n, dtype=torch.float64))
            v.index_add_(0, g[sel], w[sel])
    if not votes:
        return torch.full((n,), -1, dtype=torch.long)
    keys = sorted(votes)
    V = torch.stack([votes[k] for k in keys], 1)
    best = V.argmax(1)
    out = torch.tensor(keys, dtype=torch.long)[best]
    out[(V.max(1).values <= 0) | (out == 0)] = -1  # id 0 (no instance / not a part) competes, then means none
    return out


class BudgetAnswers:
    """The answer functions of :data:`ROWS` on one run (module docstring)."""

    def __init__(self, ts: "TrainedScene") -> None:
        from cos3d.eval.ablation import BranchAnswers

        self.ts = ts
        self.engine = ts.engine
        self.branches = BranchAnswers(ts)
        train = ts.scene.split("train")
        self.labels = oracle_labels(self.engine, train)
        self.part_labels = oracle_labels(self.engine, train, parts=True) if ts.scene.parts else None
        self._anchor_label: dict[tuple[str, bool], Tensor] = {}

    def oracle(self, q: EvalQuery) -> Answer:
        lab = self.part_labels if q.is_part else self.labels
        if lab is None:
            return Answer(torch.zeros(0, dtype=torch.long), True)
        sel = torch.nonzero(torch.isin(lab, torch.tensor(q.gt_ids, dtype=torch.long))).flatten()
        return Answer(sel, not sel.numel(), 1)

    def instance_oracle(self, q: EvalQuery) -> Answer:
        e = self.engine
        lvl = e.part_level if q.is_part else e.level
        key = (lvl, q.is_part)
        if key not in self._anchor_label:
            self._anchor_label[key] = anchor_objects(self.ts, lvl, parts=q.is_part)[self.branches.nearest_anchor(lvl)]
        lab = self._anchor_label[key]
        sel = torch.nonzero(torch.isin(lab, torch.tensor(q.gt_ids, dtype=torch.long))).flatten()
        return Answer(sel, not sel.numel(), 1)

    def fn(self, row: str):
        if row in ("ceiling", "ceiling, selected masks"):
            return lambda engine, q: self.oracle(q)
        if row == "instance field":
            return lambda engine, q: self.instance_oracle(q)
        if row == "collaborative + presence":
            return engine_answer
        branch = {"instance-only": "instance", "language-only": "language", "collaborative (raw)": "collaborative_raw",
                  "collaborative": "collaborative"}[row]
        return self.branches.fn(branch)


@contextmanager
def presence_forced(engine: "QueryEngine") -> Iterator[None]:
    """Within the block every prompt passes the engine's presence test (the selection alone is measured)."""
    saved = {}
    for name in engine.levels:
        cal = engine.calibration_for(name)
        saved[name] = cal
        engine.set_calibration(name, dataclasses.replace(cal, threshold=-1.0, floor=-1.0, forced=True))
    try:
        yield
    finally:
        for name, cal in saved.items():
            engine.set_calibration(name, cal)


def diagnose(ans: Answer, q: EvalQuery, labels: "Tensor", opacity: "Tensor") -> str:
    """Why an answer falls short, from the oracle labels of its Gaussians (evaluation only)."""
    if ans.no_target or not ans.selected.numel():
        return "answered not here"
    sel = ans.selected.long()
    w = opacity[sel].double()
    lab = labels[sel]
    gt = torch.tensor(q.gt_ids, dtype=torch.long)
    on = torch.isin(lab, gt)
    precision = float(w[on].sum() / w.sum().clamp_min(1e-12))
    valid = opacity > 0.1
    notes = []
    missed = []
    for i in q.gt_ids:
        tgt = (labels == i) & valid
        rec = float(torch.isin(torch.nonzero(tgt).flatten(), sel).double().mean()) if tgt.any() else 1.0
        if rec < 0.25:
            missed.append(i)
    if precision < 0.3:
        others = torch.bincount(lab[(~on) & (lab >= 0)], weights=w[(~on) & (lab >= 0)]) if ((~on) & (lab >= 0)).any() else None
        wrong = int(others.argmax()) if others is not None else -1
        return f"wrong object (id {wrong}; {precision:.0%} of the selection on target)"
    if missed and len(missed) < len(q.gt_ids):
        notes.append(f"missed instance{'s' if len(missed) > 1 else ''} {missed}")
    elif missed:
        notes.append("target barely selected")
    if precision < 0.7:
        notes.append(f"merged with other objects ({precision:.0%} on target)")
    return "; ".join(notes) if notes else "boundary / partial"


def error_budget(ts: "TrainedScene", queries: Sequence[EvalQuery], *, views: Sequence[str] | None = None,
                 rows: Sequence[str] = ROWS) -> dict[str, Any]:
    """Evaluate :data:`ROWS` on the present ``queries``; returns ``{"rows": {row: summary}, "prompts": [...]}``.

    ``prompts`` lists every present query with its ceiling IoU, the engine's IoU and :func:`diagnose`.
    """
    from cos3d.eval.presence import presence_frontier

    present = [q for q in queries if q.present]
    b = BudgetAnswers(ts)
    e = ts.engine
    frontier = presence_frontier(ts, queries)
    decided = set(frontier["decided_present"])
    forced: dict[str, Answer] = {}  # the collaborative answers with presence forced, shared by two rows

    def collaborative(engine: "QueryEngine", q: EvalQuery) -> Answer:
        if q.label not in forced:
            forced[q.label] = b.fn("collaborative")(engine, q)
        return forced[q.label]

    def frontier_answer(engine: "QueryEngine", q: EvalQuery) -> Answer:
        return collaborative(engine, q) if q.label in decided else Answer(torch.zeros(0, dtype=torch.long), True)

    reps = {}
    for row in rows:
        proto = "selected" if row == "ceiling, selected masks" else "occlusion"
        if row in ("instance-only", "language-only", "collaborative (raw)", "collaborative",
                   "collaborative + frontier presence"):
            fn = {"collaborative": collaborative, "collaborative + frontier presence": frontier_answer}.get(row)
            with presence_forced(e):
                reps[row] = evaluate(e, present, views=views, protocol=proto, answer=fn or b.fn(row))
        else:
            reps[row] = evaluate(e, present, views=views, protocol=proto, answer=b.fn(row))
    out_rows = {}
    for row, rep in reps.items():
        out_rows[row] = {**rep.summary, "by_kind": {k: v["mIoU"] for k, v in rep.by_kind.items()},
                         "false_empty": rep.presence["false_empty_rate"]}
    prompts = []
    ceil = {qe.query.label: qe for qe in reps["ceiling"].per_query} if "ceiling" in reps else {}
    final = reps.get("collaborative + presence")
    if final is not None:
        for qe in final.per_query:
            q = qe.query
            lab = b.part_labels if q.is_part else b.labels
            ans = engine_answer(e, q)
            c = ceil.get(q.label)
            prompts.append({"query": q.label, "kind": q.kind, "gt": q.gt_ids, "ceiling": c.miou if c else None,
                            "mIoU": qe.miou if qe.miou is not None else 0.0, "objects": qe.num_objects,
                            "why": diagnose(ans, q, lab, e.opacity) if lab is not None else ""})
    return {"rows": out_rows, "prompts": prompts, "instances": instance_recall(e, present, b.labels, b.part_labels),
            "presence_frontier": frontier,
            "oracle": "ceiling: GT ids voted by blending weight over the training views' instance/part maps"}


FOUND_SHARE = 0.25
"""An instance counts as found when the selection holds at least this share of its (opaque) Gaussians."""


def instance_recall(engine: "QueryEngine", queries: Sequence[EvalQuery], labels: "Tensor",
                    part_labels: "Tensor | None" = None) -> list[dict[str, Any]]:
    """Every present query with several true instances ("cans", "tin", "cup"), answered with the presence
    test forced: how many instances the refinement found (:data:`FOUND_SHARE` of their Gaussians), how many
    the final answer keeps after cos3d's post-filters (object split, fragments, weaker objects), and how
    many of them are the main instance of an object of their own (two cans → two objects). Evaluation only
    (the oracle labels of :func:`oracle_labels`)."""
    out = []
    valid = engine.opacity > 0.1
    for q in queries:
        if len(q.gt_ids) < 2:
            continue
        lab = part_labels if q.is_part else labels
        if lab is None:
            continue
        with presence_forced(engine):
            res = engine.query(q.text, within=q.within) if q.within else engine.query(q.text)

        def found(sel: "Tensor") -> list[int]:
            hit = torch.zeros(engine.num_gaussians, dtype=torch.bool)
            hit[sel.long()] = True
            ids = []
            for i in q.gt_ids:
                tgt = (lab == i) & valid
                if tgt.any() and float(hit[tgt].double().mean()) >= FOUND_SHARE:
                    ids.append(int(i))
            return ids

        refined = res.refine.selected if res.refine is not None else torch.zeros(0, dtype=torch.long)
        final = found(res.selected)
        own = set()
        for o in res.objects:
            ol = lab[o.gaussians.long()]
            ol = ol[ol >= 0]
            if ol.numel():
                top = int(torch.mode(ol).values)
                if top in final:
                    own.add(top)
        pre = found(refined)
        out.append({"query": q.label, "kind": q.kind, "instances": len(q.gt_ids), "found_refined": len(pre),
                    "found_final": len(final), "dropped_by_post_filters": sorted(set(pre) - set(final)),
                    "objects": len(res.objects), "separate": len(own)})
    return out


def geometry_ceiling(scene: Any, gaussians: Any, queries: Sequence[EvalQuery] | None = None, *,
                     protocol: str = "occlusion") -> dict[str, Any]:
    """The ``ceiling`` row from a scene and stage-0 Gaussians alone (no fields needed): what a
    reconstruction allows before any feature is trained. Returns the summary with ``by_kind`` mIoU."""
    from types import SimpleNamespace

    from cos3d.eval.tabletop import tabletop_queries
    from cos3d.query.masks2d import MaskRenderer

    qs = [q for q in (queries if queries is not None else tabletop_queries(scene)) if q.present]
    host = SimpleNamespace(scene=scene, masks=MaskRenderer(gaussians, max_cached_views=64),
                           num_gaussians=int(gaussians.num), held_out_prompts=())
    train = scene.split("train")
    labels = oracle_labels(host, train)
    parts = oracle_labels(host, train, parts=True) if scene.parts else None

    def answer(_e: Any, q: EvalQuery) -> Answer:
        lab = parts if q.is_part else labels
        if lab is None:
            return Answer(torch.zeros(0, dtype=torch.long), True)
        sel = torch.nonzero(torch.isin(lab, torch.tensor(q.gt_ids, dtype=torch.long))).flatten()
        return Answer(sel, not sel.numel(), 1)

    rep = evaluate(host, qs, protocol=protocol, answer=answer)
    return {**rep.summary, "by_kind": {k: v["mIoU"] for k, v in rep.by_kind.items()},
            "per_query": {qe.query.label: qe.miou for qe in rep.per_query}}
