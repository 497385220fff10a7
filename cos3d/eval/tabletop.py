"""The tabletop protocol (README "What is measured", ours, oracle-2D): 2D IoU of query masks in held-out views.

Queries (:func:`tabletop_queries`), from the scene's ``labels.json`` / ``parts.json`` (training names)
and ``eval_prompts.json`` (held-out phrasings, written by :mod:`cos3d.tabletop`):

- ``name``: each object's canonical (first) training name — a prompt the training masks were embedded
  with, so it is *not* held out; reported on its own row;
- ``paraphrase``: the held-out phrasings of ``eval_prompts.json`` ("something to sip a latte from" for both
  mugs): never a training name up to case, punctuation, articles, number and word order (checked:
  :func:`cos3d.eval.heldout.check_disjoint`), and, in the tabletop catalogue, sharing no content word with
  their object's training names, the calibration vocabulary or the development prompts
  (:func:`cos3d.eval.heldout.check_eval_phrasings`, a test). A scene without ``eval_prompts.json`` has no
  paraphrase queries (its other names are training names, not held out);
- ``plural``: the plural of a kind word several objects share ("mugs", "cans"): a phrasing no mask was
  embedded with;
- ``absent``: :data:`~cos3d.eval.heldout.ABSENT_PROMPTS` (near-domain and far things); disjoint from the
  no-target calibration vocabulary and from every name of the scene (checked); the right answer is empty;
- ``part``: each part's canonical name within its parent's canonical name ("head" within "toy robot");
- ``part_paraphrase``: a part's held-out phrasing within its parent ("dome" within "toy robot");
- ``absent_part``: :data:`~cos3d.eval.heldout.ABSENT_PART_PROMPTS` within each parent that has parts
  ("propeller" within "toy robot"); disjoint from the calibration vocabulary and the scene's names
  (checked); the right answer is empty;
- ``near_paraphrase`` / ``near_part_paraphrase``: the near-training phrasings of ``eval_prompts.json`` (the
  held-out set before issue 23: "red mug" for a "red coffee mug", "robot toy" for a "toy robot"), a row of
  their own (:attr:`EvalReport.near`) so that the drop from near-copies to held-out phrasings stays visible.

A query's ground truth is every instance (or part) that has the query text among its names of the same
kind (training names for ``name`` / ``plural``, held-out phrasings for ``paraphrase``).

Metrics, per (held-out frame, query) pair where the ground truth is visible (≥ 1 pixel) in that frame:
IoU of the answer's 2D mask (``protocol``: ``occlusion`` by default, or ``selected``) with the GT mask; mIoU,
mAcc@0.25, mAcc@0.5 over pairs (:mod:`cos3d.eval.metrics`). A present query answered as no-target scores 0
on all its pairs. The presence decision of every held-out query (present and absent) gives the no-target
accuracy, reported with the "always present" / "always absent" baselines on the same mix and the
false-empty rate. ``summary`` covers every kind but the near-training rows; ``held_out`` the held-out kinds.

All numbers are oracle-2D when the run used the dataset masks and the ``labels`` embedder: the 2D masks
and embeddings come from the dataset's own instance maps and training names, so they measure the 3D
machinery, not CLIP or SAM.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from cos3d.core.errors import Cos3dError
from cos3d.eval.rows import HELD_OUT_KINDS, KINDS, NEAR_KINDS, EvalQuery
from cos3d.eval.heldout import ABSENT_PART_PROMPTS, ABSENT_PROMPTS, calibration_vocabulary, check_disjoint
from cos3d.eval.metrics import mask_iou, presence_metrics, summarize_ious
from cos3d.core.phrases import normalize
from cos3d.vision.image_prompt import ImagePrompt

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from cos3d.query.engine import QueryEngine
    from cos3d.data.scene import Scene

EVAL_PROMPTS_FILE = "eval_prompts.json"


@dataclass
class Answer:
    """What a query path answered: the selected Gaussians (sorted ids) or a no-target answer."""

    selected: "Tensor"
    no_target: bool
    objects: int = 0


AnswerFn = Callable[["QueryEngine", EvalQuery], Answer]
"""A query path under evaluation (the engine's, or an ablation branch)."""


def engine_answer(engine: "QueryEngine", q: EvalQuery) -> Answer:
    """The engine's own answer (the collaborative query with its defaults)."""
    res = engine.query(q.text, within=q.within) if q.within else engine.query(q.text)
    return Answer(res.selected, bool(res.no_target), len(res.objects))


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
    summary: dict[str, Any]
    """``pairs``, ``mIoU``, ``mAcc@0.25``, ``mAcc@0.5`` over every present query's pairs (near-training rows aside)."""
    held_out: dict[str, Any]
    """The same over the held-out kinds only (:data:`HELD_OUT_KINDS`)."""
    presence: dict[str, Any]
    """:func:`cos3d.eval.metrics.presence_metrics` over the held-out queries (:data:`HELD_OUT_KINDS`)."""
    by_kind: dict[str, dict[str, Any]] = field(default_factory=dict)
    near: dict[str, Any] = field(default_factory=dict)
    """The near-training phrasings' row (:data:`NEAR_KINDS`): pairs, mIoU, mAcc, queries, false-empty answers."""

    @property
    def miou(self) -> float:
        return float(self.summary["mIoU"])

    @property
    def macc25(self) -> float:
        return float(self.summary["mAcc@0.25"])

    @property
    def no_target_accuracy(self) -> float:
        return float(self.presence["accuracy"])

    @property
    def num_pairs(self) -> int:
        return int(self.summary["pairs"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": f"tabletop oracle-2D, {self.protocol} masks",
            "views": self.views,
            **{k: v for k, v in self.summary.items()},
            "held_out": self.held_out,
            "presence": self.presence,
            "near_training": self.near,
            "by_kind": self.by_kind,
            "queries": [
                {"query": q.query.label, "kind": q.query.kind, "gt": q.query.gt_ids, "no_target": q.no_target,
                 "objects": q.num_objects, "mIoU": q.miou, "ious": q.ious, "ms": round(q.ms, 2)}
                for q in self.per_query
            ],
        }


def _plural(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _ids_with_name(table: dict[int, list[str]], text: str) -> list[int]:
    t = text.strip().lower()
    return sorted(i for i, names in table.items() if t in (n.lower() for n in names))


def read_eval_prompts(root: str | Path | None, *, near: bool = False
                      ) -> tuple[dict[int, list[str]], dict[int, list[str]]] | None:
    """``(instances, parts)``: held-out phrasings per id from ``root/eval_prompts.json`` (the near-training
    phrasings when ``near``; empty when the file has none); None without the file."""
    if root is None:
        return None
    path = Path(root) / EVAL_PROMPTS_FILE
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        pre = "near_" if near else ""
        inst = {int(k): [str(x) for x in v] for k, v in d.get(f"{pre}instances", {}).items()}
        parts = {int(k): [str(x) for x in v] for k, v in d.get(f"{pre}parts", {}).items()}
    except (ValueError, TypeError, AttributeError) as e:
        raise Cos3dError(f"{path}: not an eval_prompts.json file ({e})") from None
    return inst, parts


def training_names(scene: "Scene") -> list[str]:
    """Every name a training mask of ``scene`` can carry (instances and parts)."""
    out = [n for ns in scene.labels.values() for n in ns]
    out += [n for p in (scene.parts or {}).values() for n in p.names]
    return out


def tabletop_queries(
    scene: "Scene", *, absent: Sequence[str] = ABSENT_PROMPTS, parts: bool = True,
    vocabulary: Sequence[str] | None = None, absent_parts: Sequence[str] = ABSENT_PART_PROMPTS, near: bool = True,
) -> list[EvalQuery]:
    """The protocol's queries for ``scene`` (module docstring); with ``near``, also the near-training phrasings
    (:data:`NEAR_KINDS`). Raises :class:`Cos3dError` when a held-out prompt overlaps a training name or the
    calibration vocabulary (up to :func:`cos3d.core.phrases.normalize`)."""
    labels = {int(k): list(v) for k, v in scene.labels.items()}
    ptable = {int(k): list(p.names) for k, p in (scene.parts or {}).items()}
    held = read_eval_prompts(getattr(scene, "root", None))
    near_held = read_eval_prompts(getattr(scene, "root", None), near=True) if near else None
    train_names = training_names(scene)
    vocab = calibration_vocabulary() if vocabulary is None else tuple(vocabulary)
    check_disjoint(absent, vocab, what="absent prompts", reserved_as="the no-target calibration vocabulary")
    check_disjoint(absent, train_names, what="absent prompts", reserved_as="names of objects in the scene")
    check_disjoint(absent_parts, vocab, what="absent-part prompts", reserved_as="the no-target calibration vocabulary")
    check_disjoint(absent_parts, train_names, what="absent-part prompts", reserved_as="names in the scene")
    if held is not None:
        inst_h, part_h = held
        check_disjoint([n for ns in list(inst_h.values()) + list(part_h.values()) for n in ns], train_names,
                       what="held-out paraphrases (eval_prompts.json)", reserved_as="training names (labels.json/parts.json)")
        check_disjoint(absent, [n for ns in inst_h.values() for n in ns], what="absent prompts",
                       reserved_as="held-out names of objects in the scene")
        check_disjoint(absent_parts, [n for ns in list(inst_h.values()) + list(part_h.values()) for n in ns],
                       what="absent-part prompts", reserved_as="held-out names in the scene")
    qs: list[EvalQuery] = []
    seen: set[tuple[str, str | None]] = set()

    def add(text: str, kind: str, ids: list[int], within: str | None = None) -> None:
        key = (normalize(text), within, kind in NEAR_KINDS)
        if key in seen or (kind not in ("absent", "absent_part") and not ids):
            return
        seen.add(key)
        qs.append(EvalQuery(text, kind, ids, within))

    for _, names in sorted(labels.items()):
        if names:
            add(names[0], "name", _ids_with_name(labels, names[0]))
    if held is not None:
        for _, names in sorted(held[0].items()):
            for alt in names:
                add(alt, "paraphrase", _ids_with_name(held[0], alt))
    kinds: list[str] = []
    root = getattr(scene, "root", None)
    if root is not None and (Path(root) / "meta.json").is_file():
        try:
            pair = json.loads((Path(root) / "meta.json").read_text()).get("pair") or {}
            if pair.get("kind"):
                kinds.append(str(pair["kind"]))
        except (OSError, ValueError):
            pass
    shared: dict[str, set[int]] = {}
    for i, names in labels.items():
        for nm in set(x.lower() for x in names):
            if " " not in nm:
                shared.setdefault(nm, set()).add(i)
    kinds += sorted(nm for nm, ids in shared.items() if len(ids) > 1)
    for word in dict.fromkeys(kinds):
        add(_plural(word), "plural", _ids_with_name(labels, word))
    if near_held is not None:
        for _, names in sorted(near_held[0].items()):
            for alt in names:
                add(alt, "near_paraphrase", _ids_with_name(near_held[0], alt))
    for a in absent:
        add(a, "absent", [])
    if parts and scene.parts:
        for pid, p in sorted(scene.parts.items()):
            parent = labels.get(int(p.parent), [])
            if p.names and parent:
                add(p.names[0], "part", _ids_with_name(ptable, p.names[0]), within=parent[0])
        for table, kind in ((held, "part_paraphrase"), (near_held, "near_part_paraphrase")):
            for pid, names in sorted(table[1].items()) if table is not None else ():
                p = scene.parts.get(pid)
                parent = labels.get(int(p.parent), []) if p is not None else []
                for alt in names if parent else ():
                    add(alt, kind, _ids_with_name(table[1], alt), within=parent[0])
        parents = dict.fromkeys(labels[int(p.parent)][0] for p in scene.parts.values() if labels.get(int(p.parent)))
        for parent_name in parents:
            for a in absent_parts:
                add(a, "absent_part", [], within=parent_name)
    return qs


def gt_mask(frame: Any, q: EvalQuery) -> np.ndarray | None:
    m = frame.load_part() if q.is_part else frame.load_instance()
    return None if m is None else np.isin(m, q.gt_ids)


def _kind_rows(out: list[QueryEval]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        sub = [qe for qe in out if qe.query.kind == kind]
        if not sub:
            continue
        row = summarize_ious(v for qe in sub for v in qe.ious.values())
        row["queries"] = len(sub)
        row["decision_accuracy"] = float(np.mean([qe.decision_correct for qe in sub]))
        row["held_out"] = kind in HELD_OUT_KINDS
        rows[kind] = row
    return rows


def evaluate(
    engine: "QueryEngine",
    queries: Sequence[EvalQuery] | None = None,
    *,
    views: Sequence[str] | None = None,
    protocol: str = "occlusion",
    answer: AnswerFn = engine_answer,
) -> EvalReport:
    """Run the protocol (module docstring) with the query path ``answer`` (default: the engine's).

    Args:
        views: frame names (default: the scene's test split).
    """
    from cos3d.query.masks2d import check_protocol

    check_protocol(protocol)
    scene = engine.scene
    qs = list(queries) if queries is not None else tabletop_queries(scene)
    frames = [scene.frame(v) for v in views] if views is not None else scene.split("test")
    # held out by construction: no held-out prompt may be a calibration word (checked now, and by the
    # engine's calibration if it has not run yet)
    from cos3d.query.notarget import check_held_out

    held = tuple(q.text for q in qs if q.kind in HELD_OUT_KINDS)
    check_held_out(held)
    engine.held_out_prompts = tuple(dict.fromkeys(tuple(engine.held_out_prompts) + held))
    out: list[QueryEval] = []
    for q in qs:
        t = time.perf_counter()
        ans = answer(engine, q)
        ms = (time.perf_counter() - t) * 1e3
        ious: dict[str, float] = {}
        if q.present:
            for f in frames:
                gt = gt_mask(f, q)
                if gt is None or not gt.any():
                    continue
                pred = (engine.masks.mask(ans.selected, f.camera, protocol) if not ans.no_target and ans.selected.numel()
                        else np.zeros_like(gt))
                ious[f.name] = mask_iou(pred, gt)
        out.append(QueryEval(q, ious, bool(ans.no_target or not ans.selected.numel()), ans.objects, ms))
    main = [qe for qe in out if qe.query.kind not in NEAR_KINDS]
    held = [qe for qe in out if qe.query.kind in HELD_OUT_KINDS]
    near = [qe for qe in out if qe.query.kind in NEAR_KINDS]
    return EvalReport(
        per_query=out,
        protocol=protocol,
        views=[f.name for f in frames],
        summary=summarize_ious(v for qe in main for v in qe.ious.values()),
        held_out=summarize_ious(v for qe in held for v in qe.ious.values()),
        presence=presence_metrics([qe.query.present for qe in held], [qe.no_target for qe in held]),
        by_kind=_kind_rows(out),
        near=(summarize_ious(v for qe in near for v in qe.ious.values())
              | {"queries": len(near), "false_empty": sum(qe.no_target for qe in near)}) if near else {},
    )


# ---------------------------------------------------------------------------------------------------
# image prompts

BACKGROUND_NAMES = ("floor", "table")
MIN_PROMPT_PIXELS = 50


def image_prompts(scene: "Scene", *, max_per_view: int | None = None) -> list[dict[str, Any]]:
    """Box prompts on held-out views: for each held-out view, each object (not floor/table) with at
    least :data:`MIN_PROMPT_PIXELS` visible pixels gets the box of its visible pixels (the user's input;
    the ground truth makes the prompt, the query path never sees it)."""
    labels = {int(k): v for k, v in scene.labels.items()}
    objects = [i for i, n in sorted(labels.items()) if not (n and n[0] in BACKGROUND_NAMES)]
    out = []
    for f in scene.split("test"):
        inst = f.load_instance()
        if inst is None:
            continue
        rows = []
        for i in objects:
            m = inst == i
            if int(m.sum()) < MIN_PROMPT_PIXELS:
                continue
            ys, xs = np.nonzero(m)
            rows.append({"view": f.name, "object": i, "name": labels[i][0], "pixels": int(m.sum()),
                         "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]})
        rows.sort(key=lambda r: -r["pixels"])
        out += rows[:max_per_view] if max_per_view else rows
    return out


def evaluate_image_prompts(engine: "QueryEngine", *, protocol: str = "occlusion", lookup: bool = True,
                           max_per_view: int | None = None) -> dict[str, Any]:
    """Image prompts (box on a held-out view) on two paths, each scored by IoU in the *other* held-out
    views where the object is visible:

    - ``lift`` (held out; reads no ground truth): :meth:`cos3d.query.engine.QueryEngine.lift`;
    - ``lookup`` (only with the oracle-2D ``labels`` embedder): the engine's image path, where the labels
      embedder names the dataset object under the box from the frame's instance map and embeds its
      training names — a name look-up that reads ground truth at query time, reported apart.
    """
    scene = engine.scene
    test = {f.name: f for f in scene.split("test")}
    rows = []
    for p in image_prompts(scene, max_per_view=max_per_view):
        f = test[p["view"]]
        others = [g for n, g in test.items() if n != p["view"]]
        paths: dict[str, Any] = {}
        t = time.perf_counter()
        res = engine.lift(f.name, ImagePrompt(box=p["box"]))
        paths["lift"] = (res.selected, (time.perf_counter() - t) * 1e3)
        if lookup and getattr(engine.embedder, "name", "") == "labels":
            t = time.perf_counter()
            res = engine.query(image=f.image_path, box=p["box"], lift=False)  # a scene frame lifts by default
            paths["lookup"] = (res.selected if not res.no_target else None, (time.perf_counter() - t) * 1e3)
        for path, (sel, ms) in paths.items():
            ious = {}
            for g in others:
                inst = g.load_instance()
                gt = None if inst is None else inst == p["object"]
                if gt is None or not gt.any():
                    continue
                pred = engine.masks.mask(sel, g.camera, protocol) if sel is not None and sel.numel() else np.zeros_like(gt)
                ious[g.name] = mask_iou(pred, gt)
            rows.append({**p, "path": path, "ious": ious, "ms": round(ms, 2)})
    out: dict[str, Any] = {"prompts": rows}
    for path in ("lift", "lookup"):
        sub = [v for r in rows if r["path"] == path for v in r["ious"].values()]
        if any(r["path"] == path for r in rows):
            out[path] = summarize_ious(sub) | {"prompts": sum(r["path"] == path for r in rows)}
    out["note"] = ("lift: the box's Gaussians by blending weight, answered in instance space (no ground truth "
                   "read); lookup: the oracle-2D labels embedder names the object under the box from the "
                   "frame's instance map (reads ground truth; not a measure of image prompting)")
    return out
