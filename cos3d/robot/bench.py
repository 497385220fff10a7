"""The pick benchmark (``scripts/bench_pick.py``), grounded like a user: every rigid object of a tabletop is
asked for by its held-out phrasings (the catalogue's ``eval_names``, never training names), the robot API's
first target is executed — by the free-floating gripper of :func:`cos3d.robot.sim.simulate_pick` and, with
``T_world_arm``, by a Panda arm (:func:`cos3d.robot.arm.simulate_arm_pick`) — and ground truth only scores the
outcome (:func:`score_pick`: grounding, grasp given grounding, end to end; :func:`summarize_trials`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cos3d.robot import arm as arm_mod
from cos3d.robot import sim
from cos3d.robot import targets as targets_mod
from cos3d.robot.grasp import GripperSpec


PROMPT_SETS = ("evaluation", "training")
"""What :func:`evaluate_tabletop` asks with: ``"evaluation"``, the held-out phrasings of each object's
catalogue entry (``CATALOG[key].eval_names``, never training names); ``"training"``, each object's
canonical training name (``meta.json`` ``names[0]``: not held out, kept to show the drop)."""


@dataclass
class PickTrial:
    """One prompt on a tabletop scene: the robot API's first target, executed and scored.

    Ground truth (``meta.json`` boxes, the simulator's object heights) only scores the pick; it never
    chooses what is executed.
    """

    scene: str
    prompt: str
    prompt_set: str
    """``"evaluation"`` or ``"training"`` (:data:`PROMPT_SETS`)."""
    kind: str
    """The intended objects' catalogue keys, ``+``-joined when a phrasing names objects of several keys."""
    intended: list[int]
    """Instance ids the prompt names (every rigid object with this phrasing: a shared kind names several)."""
    answered: bool
    """``pick_targets`` returned a target (an empty answer is a grounding failure)."""
    in_box: list[int]
    """Instance ids whose true box holds the executed target's centroid (scoring only)."""
    approach: str | None
    width: float | None
    flags: list[str]
    lifted: dict[int, float]
    """Instance id → rise (metres) of every rigid object after the hold; empty when nothing was executed."""
    grounded: bool
    """The right object was chosen: the target's centroid lies in an intended object's true box, or the
    lift raised an intended object >= :data:`cos3d.robot.sim.LIFT_SUCCESS`."""
    end_to_end: bool
    """An intended object rose >= :data:`cos3d.robot.sim.LIFT_SUCCESS` and no other object did."""
    note: str
    arm: dict | None = None
    """The same target executed by a Panda arm (:func:`cos3d.robot.arm.simulate_arm_pick`'s outcome as a
    dict: ``status``, ``reason``, ``reachable``, ``lifted``...), None when the arm was not asked or there was
    no grasp to execute."""
    arm_end_to_end: bool = False
    """The arm lifted an intended object > :data:`cos3d.robot.arm.LIFT_SUCCESS`, held it, and no other
    object rose that far."""

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["lifted"] = {str(k): round(v, 4) for k, v in self.lifted.items()}
        return d


def score_pick(intended, in_box, lifted: dict[int, float], *, answered: bool = True,
               reason: str = "") -> tuple[bool, bool, str]:
    """``(grounded, end_to_end, note)`` of one executed pick, from ground truth (scoring only).

    Args:
        intended: instance ids the prompt names.
        in_box: instance ids whose true box holds the executed target's centroid.
        lifted: instance id → rise (metres) of every rigid object (empty: nothing was executed).
        answered: False when the API returned no target (``reason`` says why): a grounding failure.

    Grounded: an intended object's box holds the target's centroid, or an intended object rose
    >= :data:`cos3d.robot.sim.LIFT_SUCCESS`. End to end: exactly one object rose that far and it is an intended one
    (lifting a wrong object, or two at once, is no success). A wrong object chosen is a grounding
    failure even if it lifts.
    """
    intended = {int(i) for i in intended}
    if not answered:
        if not reason:
            return False, False, "no target"
        return False, False, reason if reason.startswith("no target") else f"no target: {reason}"
    risen = {int(i) for i, r in lifted.items() if r >= sim.LIFT_SUCCESS}
    grounded = bool(intended & {int(i) for i in in_box}) or bool(intended & risen)
    e2e = len(risen) == 1 and risen <= intended
    if not grounded:
        where = f"objects {sorted(in_box)}" if in_box else "no object's true box"
        note = f"wrong object: the target's centroid lies in {where}, not in {sorted(intended)}"
        if risen:
            note += f"; lifted {sorted(risen)}"
        return False, False, note
    if e2e:
        return True, True, ""
    if not lifted:
        return True, False, reason or "nothing executed"
    wrong = sorted(risen - intended)
    if wrong or len(risen) > 1:
        return True, False, f"lifted {sorted(risen)} (more than the one intended object)"
    top = max((lifted.get(i, 0.0) for i in intended), default=0.0)
    return True, False, f"object rose {top * 100:.1f} cm (< {sim.LIFT_SUCCESS * 100:.0f})"


def tabletop_prompts(scene_dir: str | Path, prompt_set: str = "evaluation") -> list[tuple[str, list[int]]]:
    """``[(prompt, intended instance ids)]`` for the rigid objects of a tabletop scene, read at run time.

    ``"evaluation"``: each object's held-out phrasings, ``CATALOG[meta key].eval_names`` (falling back on
    the scene's ``eval_prompts.json`` for a key the catalogue no longer holds); a phrasing shared by
    several objects (a kind: "cup" for two mugs) is asked once and names all of them. ``"training"``:
    each object's canonical name. Raises ValueError when an evaluation phrasing is a training name of
    the scene (:func:`cos3d.eval.heldout.check_disjoint`).
    """
    from cos3d.eval.heldout import check_disjoint
    from cos3d.core.phrases import normalize
    from cos3d.tabletop.catalog import CATALOG

    if prompt_set not in PROMPT_SETS:
        raise ValueError(f"prompt_set must be one of {PROMPT_SETS}, got {prompt_set!r}")
    root = Path(scene_dir)
    meta = json.loads((root / "meta.json").read_text())
    held_file = root / "eval_prompts.json"
    held = json.loads(held_file.read_text()).get("instances", {}) if held_file.is_file() else {}
    rigid = [o for o in meta["objects"] if _pickable(o)]
    norm = normalize  # "cups" and "a cup" are one prompt, asked once

    by_prompt: dict[str, tuple[str, list[int]]] = {}
    for o in rigid:
        if prompt_set == "training":
            phrasings = [o["names"][0]]
        elif o["key"] in CATALOG:
            phrasings = list(CATALOG[o["key"]].eval_names)
        else:
            phrasings = list(held.get(str(o["id"]), []))
        for ph in phrasings:
            ids = by_prompt.setdefault(norm(ph), (ph, []))[1]
            if int(o["id"]) not in ids:
                ids.append(int(o["id"]))
    if prompt_set == "training":  # a canonical name may be another object's name too ("butter")
        for key, (ph, ids) in by_prompt.items():
            ids[:] = [int(o["id"]) for o in rigid if key in {norm(n) for n in o["names"]}]
    out = [(ph, sorted(ids)) for ph, ids in by_prompt.values()]
    if prompt_set == "evaluation":
        try:
            check_disjoint([ph for ph, _ in out], scene_training_names(root), what="pick benchmark evaluation phrasings",
                           reserved_as="training names of the scene")
        except Exception as e:  # Cos3dError: one line
            raise ValueError(str(e)) from None
    return out


def scene_training_names(scene_dir: str | Path) -> list[str]:
    """Every training name of a tabletop scene: its objects' names (``meta.json``) and parts' (``parts.json``)."""
    root = Path(scene_dir)
    out = [n for o in json.loads((root / "meta.json").read_text())["objects"] for n in o.get("names", [])]
    if (root / "parts.json").is_file():
        out += [n for p in json.loads((root / "parts.json").read_text()).values() for n in p.get("names", [])]
    return out


def _pickable(o: dict) -> bool:
    return o["key"] not in ("floor", "table") and not o["asset"].endswith(".urdf")


def evaluate_tabletop(
    scene_dir: str | Path,
    ts,
    *,
    prompt_set: str = "evaluation",
    approach: str = "auto",
    gripper: GripperSpec | None = None,
    ids: list[int] | None = None,
    T_world_arm: np.ndarray | None = None,
    free_gripper: bool = True,
) -> list[PickTrial]:
    """Pick on a tabletop scene as a user would: a phrasing in, the robot API's first target executed.

    For every prompt of :func:`tabletop_prompts` (``ids``: only prompts naming one of these instances),
    ``targets_mod.pick_targets(ts, prompt, k=1)`` decides alone: its first target (the top grasp of the top-ranked
    object) is executed by :func:`cos3d.robot.sim.simulate_pick`; an empty answer is a grounding failure (its reason
    kept). Only then does ground truth score it (:func:`score_pick`): the true boxes of ``meta.json``
    (``aabb_world``) and every object's rise in the simulation. ``ts`` is the loaded run trained on
    ``scene_dir`` (its scene frame is the world frame, so ``T_base_scene`` is the identity).

    ``T_world_arm``: also execute each target with a Panda arm standing there
    (:func:`cos3d.robot.arm.simulate_arm_pick`; the target's grasp candidates moved into the arm's base
    frame, the first one it reaches without a collision executed): the trial's ``arm`` and
    ``arm_end_to_end``.
    """

    meta = json.loads((Path(scene_dir) / "meta.json").read_text())
    keys = {int(o["id"]): o["key"] for o in meta["objects"]}
    boxes = {int(o["id"]): np.asarray(o["aabb_world"], np.float64) for o in meta["objects"]
             if o["key"] not in ("floor", "table") and "aabb_world" in o}
    trials = []
    for prompt, intended in tabletop_prompts(scene_dir, prompt_set):
        if ids is not None and not set(intended) & set(ids):
            continue
        base = dict(scene=str(scene_dir), prompt=prompt, prompt_set=prompt_set,
                    kind="+".join(sorted({keys[i] for i in intended})), intended=intended)
        targets = targets_mod.pick_targets(ts, prompt, approach=approach, gripper=gripper, k=1,
                                           reach_from=None if T_world_arm is None else
                                           np.asarray(T_world_arm, np.float64)[:3, 3])
        if not targets:
            g, e, note = score_pick(intended, [], {}, answered=False, reason=targets.reason)
            trials.append(PickTrial(**base, answered=False, in_box=[], approach=None, width=None, flags=[],
                                    lifted={}, grounded=g, end_to_end=e, note=note))
            continue
        t = targets[0]
        in_box = sorted(i for i, (lo, hi) in boxes.items() if np.all((t.centroid >= lo) & (t.centroid <= hi)))
        lifted: dict[int, float] = {}
        if t.grasp is not None and free_gripper:
            # simulate_pick needs an instance to report on; every object's rise comes back and is scored here
            aim = next((i for i in in_box if i in intended), intended[0])
            lifted = sim.simulate_pick(scene_dir, t.grasp, aim, gripper=gripper).lifted
        g, e, note = score_pick(intended, in_box, lifted, reason="" if t.grasp is not None else "no grasp")
        arm, arm_e2e = None, False
        if t.grasp is not None and T_world_arm is not None:
            import dataclasses


            Tw = np.asarray(T_world_arm, np.float64)
            aim = next((i for i in in_box if i in intended), intended[0])
            # the target's candidates, best first, moved into the arm's base frame: the arm executes the
            # first one it reaches without a collision
            inv = np.linalg.inv(Tw)
            cands = [dataclasses.replace(g_, T_base_grasp=inv @ g_.T_base_grasp) for g_ in (t.grasps or [t.grasp])]
            out = arm_mod.simulate_arm_pick(scene_dir, cands, aim, Tw)
            arm = out.to_dict()
            if not free_gripper:  # score on the arm's outcome: grounded when the arm lifted an intended object
                g, e, note = score_pick(intended, in_box, {i: r for i, r in out.lifted.items()} if out.success else {},
                                        reason=out.reason)
            risen = {i for i, r in out.lifted.items() if r > arm_mod.LIFT_SUCCESS}
            # no neighbour pushed further than DISTURB_LIMIT either (clutter)
            arm_e2e = bool(out.success and len(risen) == 1 and risen <= set(intended)
                           and not set(out.disturbed) - set(intended))
        trials.append(PickTrial(**base, answered=True, in_box=in_box, arm=arm, arm_end_to_end=arm_e2e,
                                approach=None if t.grasp is None else t.grasp.approach,
                                width=None if t.grasp is None else round(t.grasp.width, 4), flags=list(t.flags),
                                lifted={int(k): float(v) for k, v in lifted.items()}, grounded=g, end_to_end=e,
                                note=note))
    return trials


GROUNDING_NO_TARGET = 0.9
"""The no-target accuracy on the protocol's absent things at which :func:`grounding_bound` places its
hindsight threshold (issue 13's bar)."""


def grounding_bound(ts, prompts: list[tuple[str, list[int]]], *, absent=None,
                    min_no_target: float = GROUNDING_NO_TARGET) -> dict:
    """What the embedder's text side allows the grounding of these prompts, whatever the 3D side does
    (evaluation only: reads the dataset's ids). A bound in the sense of :func:`cos3d.eval.presence.frontier`.

    A *perfect* language field carries at every Gaussian its object's Ins2Lang target exactly. Then a prompt
    ``p``'s best top-k cosine with the scene is ``max_j t_j·p`` over the object level's targets ``t_j`` (the
    presence statistic), and the object it would name first is the dataset object that target came from
    (:func:`cos3d.eval.anchors.anchor_objects`). The presence threshold is chosen **in hindsight**: the most
    lenient one that still answers ``min_no_target`` of the protocol's absent things
    (:data:`cos3d.eval.absent.ABSENT_PROMPTS`) "not here". A prompt is groundable when it clears that
    threshold and its best target is an intended object's.

    Args:
        ts: a trained scene (:class:`cos3d.pipeline.trained.TrainedScene`).
        prompts: ``[(prompt, intended instance ids)]`` (:func:`tabletop_prompts`).
        absent: the absent things (default: the protocol's).

    Returns ``{"prompts", "groundable", "present_decided", "right_object_first", "threshold", "no_target",
    "rows": [{prompt, score, top_id, intended, groundable}]}``.
    """
    import torch

    from cos3d.eval.absent import ABSENT_PROMPTS
    from cos3d.eval.anchors import anchor_objects
    from cos3d.eval.presence import frontier

    e = ts.engine
    T = torch.nn.functional.normalize(e.level_state(e.level).targets.float(), dim=1)
    owner = anchor_objects(ts, e.level)
    absent = list(ABSENT_PROMPTS if absent is None else absent)
    texts = [p for p, _ in prompts] + absent
    P = torch.nn.functional.normalize(e.embed_text(texts).float(), dim=1)
    S = (P @ T.T).double()  # [prompts + absent, J]; float64, as the frontier's thresholds
    best, arg = S.max(1)
    rows = [{"score": float(best[i]), "present": i < len(prompts)} for i in range(len(texts))]
    f = frontier(rows, min_no_target=min_no_target)["at_no_target"]
    thr = f["threshold"] if f is not None else float("inf")
    out_rows = []
    n_ok = n_present = n_first = 0
    for i, (p, ids) in enumerate(prompts):
        top = int(owner[int(arg[i])])
        present, first = bool(best[i] >= thr), top in set(ids)
        n_present, n_first, n_ok = n_present + present, n_first + first, n_ok + (present and first)
        out_rows.append({"prompt": p, "score": round(float(best[i]), 4), "top_id": top, "intended": list(ids),
                         "groundable": present and first})
    return {"prompts": len(prompts), "groundable": n_ok, "present_decided": n_present, "right_object_first": n_first,
            "threshold": thr, "no_target": None if f is None else f["no_target"], "rows": out_rows}


def summarize_trials(trials: list[PickTrial]) -> dict:
    """Grounding, grasp-given-grounded and end-to-end counts and rates, per kind and overall.

    ``{"overall": {...}, "per_kind": {kind: {...}}}`` with ``trials``, ``grounded``, ``grounding_rate``,
    ``grasped_given_grounded``, ``grasp_rate_given_grounded`` (of the grounded trials),
    ``end_to_end``, ``end_to_end_rate``; a rate is None over zero trials.
    """

    def block(ts: list[PickTrial]) -> dict:
        n, g, e = len(ts), sum(t.grounded for t in ts), sum(t.end_to_end for t in ts)
        ok_given = sum(t.end_to_end for t in ts if t.grounded)
        out: dict[str, Any] = {"trials": n, "grounded": g, "grounding_rate": round(g / n, 4) if n else None,
               "grasped_given_grounded": ok_given,
               "grasp_rate_given_grounded": round(ok_given / g, 4) if g else None,
               "end_to_end": e, "end_to_end_rate": round(e / n, 4) if n else None}
        if any(t.arm is not None for t in ts):  # the arm-based measure (cos3d.robot.arm)
            ex = [t for t in ts if t.arm is not None]
            reach = sum(bool(t.arm["reachable"]) for t in ex)
            ag = [t for t in ex if t.grounded]
            a_ok = sum(t.arm_end_to_end for t in ag)
            a_e = sum(t.arm_end_to_end for t in ts)
            out["arm"] = {"executed": len(ex), "reachable": reach,
                          "reachable_rate": round(reach / len(ex), 4) if ex else None,
                          "grounded_executed": len(ag), "grasped_given_grounded": a_ok,
                          "grasp_rate_given_grounded": round(a_ok / len(ag), 4) if ag else None,
                          "end_to_end": a_e, "end_to_end_rate": round(a_e / n, 4) if n else None,
                          "status": {s: sum(t.arm["status"] == s for t in ex) for s in
                                     ("lifted", "unreachable", "collision", "slipped")},
                          "lifted_but_disturbed": sum((t.arm or {}).get("status") == "lifted" and bool((t.arm or {}).get("disturbed"))
                                                      for t in ex)}
        return out

    kinds: dict[str, list[PickTrial]] = {}
    for t in trials:
        kinds.setdefault(t.kind, []).append(t)
    return {"overall": block(trials), "per_kind": {k: block(v) for k, v in sorted(kinds.items())}}


# --- part picks and places (issue 28 items 6-7) -------------------------------------------------------


@dataclass
class PartTrial:
    """A part prompt ("the grip of the blue cup"): the API's first target executed by the arm, scored on the
    handle's true geometry (``meta.json`` ``parts.<id>.geometry``, :mod:`cos3d.tabletop.parts`)."""

    scene: str
    prompt: str
    prompt_set: str
    """``"evaluation"`` (held-out part and object phrasings) or ``"training words"`` ("the handle of the mug")."""
    parent: int
    """The object whose handle the prompt names."""
    answered: bool
    part_grounded: bool
    """The target's centroid lies in the named object's handle (within :data:`PART_TOL`)."""
    object_grounded: bool
    """The target's centroid lies in the named object's true box."""
    arm: dict | None
    success: bool
    """The arm lifted the named object with a grasp whose centre lies in its handle (within :data:`PART_TOL`), and
    disturbed no neighbour."""
    note: str = ""

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


PART_TOL = 0.015
"""Metres: a point this close to a handle's region counts as on the handle (the Gaussians' blur)."""


def part_prompts(scene_dir: str | Path) -> list[tuple[str, str, int]]:
    """``[(prompt, prompt set, parent id)]`` for every handle of a scene made with ``--object-parts``: held-out
    (``"the <part phrasing> of the <object phrasing>"`` and ``"pick up the <object phrasing> by its <part
    phrasing>"``, from ``eval_prompts.json``) and a training-words row (``"the handle of the <kind>"``)."""
    root = Path(scene_dir)
    meta = json.loads((root / "meta.json").read_text())
    held = json.loads((root / "eval_prompts.json").read_text()) if (root / "eval_prompts.json").is_file() else {}
    objs = {int(o["id"]): o for o in meta["objects"]}
    out = []
    for pid, rec in sorted(meta.get("parts", {}).items(), key=lambda kv: int(kv[0])):
        if rec.get("part") != "handle":
            continue
        parent = int(rec["parent"])
        oe = held.get("instances", {}).get(str(parent), [])
        pe = held.get("parts", {}).get(pid, [])
        if oe and pe:
            out.append((f"the {pe[0]} of the {oe[0]}", "evaluation", parent))
            out.append((f"pick up the {oe[-1]} by its {pe[-1]}", "evaluation", parent))
        kind = objs[parent]["names"][1] if len(objs[parent]["names"]) > 1 else objs[parent]["names"][0]
        out.append((f"the handle of the {objs[parent]['names'][0]}", "training words", parent))
        out.append((f"the {kind} by the handle", "training words", parent))
    return out


def _handle_geometry(meta: dict, parent: int) -> dict | None:
    for rec in meta.get("parts", {}).values():
        if rec.get("part") == "handle" and int(rec["parent"]) == parent:
            return rec["geometry"]
    return None


def evaluate_parts(scene_dir: str | Path, ts, T_world_arm: np.ndarray, *, gripper: GripperSpec | None = None,
                   sets: tuple[str, ...] = ("evaluation", "training words")) -> list[PartTrial]:
    """Part picks on a ``--object-parts`` tabletop (:func:`part_prompts`): ``pick_targets(prompt, k=1)`` decides
    alone; its candidates are executed by the Panda at ``T_world_arm``; ground truth only scores."""
    import dataclasses

    from cos3d.tabletop.parts import in_handle

    meta = json.loads((Path(scene_dir) / "meta.json").read_text())
    objs = {int(o["id"]): o for o in meta["objects"]}
    Tw = np.asarray(T_world_arm, np.float64)
    inv = np.linalg.inv(Tw)
    trials = []
    for prompt, pset, parent in part_prompts(scene_dir):
        if pset not in sets:
            continue
        rec, geo = objs[parent], _handle_geometry(meta, parent)
        assert geo is not None
        lo, hi = (np.asarray(v, np.float64) for v in rec["aabb_world"])
        targets = targets_mod.pick_targets(ts, prompt, gripper=gripper, k=1,
                                           reach_from=np.asarray(T_world_arm, np.float64)[:3, 3])
        if not targets or targets[0].grasp is None:
            trials.append(PartTrial(str(scene_dir), prompt, pset, parent, bool(targets), False, False, None, False,
                                    note=targets.reason or "no grasp"))
            continue
        t = targets[0]
        on_handle = bool(in_handle(t.centroid[None], rec, geo, PART_TOL)[0])
        in_obj = bool(np.all((t.centroid >= lo - PART_TOL) & (t.centroid <= hi + PART_TOL)))
        cands = [dataclasses.replace(g, T_base_grasp=inv @ g.T_base_grasp) for g in (t.grasps or [t.grasp])]
        out = arm_mod.simulate_arm_pick(scene_dir, cands, parent, Tw)
        ok, note = False, out.reason
        if out.success and out.grasp_index is not None:
            fits = [g for g in cands if g.feasible] or cands[:1]
            g = fits[out.grasp_index]
            centre_world = (Tw @ g.T_base_grasp)[:3, 3]
            held_handle = bool(in_handle(centre_world[None], rec, geo, PART_TOL)[0])
            ok = held_handle and not out.disturbed
            note = "" if ok else ("lifted, but not by the handle" if not held_handle else
                                  f"lifted by the handle, neighbours moved: {out.disturbed}")
        trials.append(PartTrial(str(scene_dir), prompt, pset, parent, True, on_handle, in_obj, out.to_dict(), ok,
                                note))
    return trials


@dataclass
class PlaceTrial:
    """Pick an object by a phrasing, then place it by another ("in the dish"), both answered by the API."""

    scene: str
    pick_prompt: str
    place_prompt: str
    prompt_set: str
    """``"evaluation"`` (held-out phrasings) or ``"training names"`` (canonical names: the robot side measured with
    targets the offline encoder finds)."""
    obj: int
    receptacle: int
    pick_grounded: bool
    place_grounded: bool
    """The place point lies over the receptacle's true box (x, y)."""
    arm: dict | None
    placed: bool
    """The object rests in/on the receptacle (:func:`cos3d.robot.arm.simulate_arm_pick`'s ``place_on``) and no
    neighbour was disturbed."""
    note: str = ""

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


RECEPTACLES = {"white_bowl": "in", "tray": "on"}
"""Catalogue key → the preposition a user would use for placing there."""
PLACE_OBJECTS_PER_RECEPTACLE = 2
PLACEABLE_MAX = (0.11, 0.16)
"""An object is moved in a place trial when its true footprint's larger side and its height are within these
(metres): it must fit the gripper and the bowl."""


def place_pairs(scene_dir: str | Path, prompt_set: str = "evaluation") -> list[tuple[str, str, int, int]]:
    """``[(pick prompt, place prompt, object id, receptacle id)]``: for each receptacle of :data:`RECEPTACLES` on
    the table, the first :data:`PLACE_OBJECTS_PER_RECEPTACLE` rigid objects (by id) that fit
    (:data:`PLACEABLE_MAX`) and whose phrasing names no object asked for before (two cans are both a "tin"),
    asked for by their first held-out phrasing (``"evaluation"``) or canonical name (``"training names"``); the
    receptacle likewise."""
    root = Path(scene_dir)
    meta = json.loads((root / "meta.json").read_text())
    held = json.loads((root / "eval_prompts.json").read_text()).get("instances", {})
    objs = [o for o in meta["objects"] if _pickable(o)]

    def phrase(o: dict) -> str | None:
        if prompt_set == "training names":
            return o["names"][0]
        ph = held.get(str(o["id"]))
        return ph[0] if ph else None

    out = []
    for r in objs:
        if r["key"] not in RECEPTACLES or phrase(r) is None:
            continue
        n, used = 0, set()
        for o in objs:
            ph = phrase(o)
            if o["key"] in RECEPTACLES or o["key"] == "frying_pan" or ph is None or ph in used:
                continue
            used.add(ph)
            if sum(phrase(x) == ph for x in objs) > 1:
                continue  # a phrasing of several objects: which one moved would be ambiguous
            lo, hi = (np.asarray(v, np.float64) for v in o["aabb_world"])
            ext = hi - lo
            if max(ext[0], ext[1]) > PLACEABLE_MAX[0] or ext[2] > PLACEABLE_MAX[1]:
                continue
            out.append((ph, f"{RECEPTACLES[r['key']]} the {phrase(r)}", int(o["id"]), int(r["id"])))
            n += 1
            if n >= PLACE_OBJECTS_PER_RECEPTACLE:
                break
    return out


def evaluate_places(scene_dir: str | Path, ts, T_world_arm: np.ndarray, *, gripper: GripperSpec | None = None,
                    sets: tuple[str, ...] = ("evaluation", "training names")) -> list[PlaceTrial]:
    """Pick-and-place trials (:func:`place_pairs`): ``pick_targets`` and ``place_target`` decide alone, the
    release pose is :func:`cos3d.robot.targets.release_pose` of the grasp the arm executed; ground truth only
    scores (which objects the prompts name, whether the object ends in/on the receptacle)."""
    import dataclasses

    meta = json.loads((Path(scene_dir) / "meta.json").read_text())
    boxes = {int(o["id"]): tuple(np.asarray(v, np.float64) for v in o["aabb_world"]) for o in meta["objects"]
             if "aabb_world" in o and o["key"] not in ("floor", "table")}
    Tw = np.asarray(T_world_arm, np.float64)
    inv = np.linalg.inv(Tw)
    trials = []
    for pset, (pick_prompt, place_prompt, oid, rid) in [(ps, q) for ps in sets for q in place_pairs(scene_dir, ps)]:
        picks = targets_mod.pick_targets(ts, pick_prompt, gripper=gripper, k=1, reach_from=Tw[:3, 3])
        places = targets_mod.place_target(ts, place_prompt, k=1)
        if not picks or picks[0].grasp is None or not places:
            why = (picks.reason if not picks else "no grasp") if (not picks or picks[0].grasp is None) else places.reason
            trials.append(PlaceTrial(str(scene_dir), pick_prompt, place_prompt, pset, oid, rid, bool(picks),
                                     bool(places), None, False, f"no target: {why}"))
            continue
        t, pl = picks[0], places[0]
        lo, hi = boxes[oid]
        pick_ok = bool(np.all((t.centroid >= lo) & (t.centroid <= hi)))
        rlo, rhi = boxes[rid]
        place_ok = bool(rlo[0] <= pl.position[0] <= rhi[0] and rlo[1] <= pl.position[1] <= rhi[1])
        cands = [dataclasses.replace(g, T_base_grasp=inv @ g.T_base_grasp) for g in (t.grasps or [t.grasp])]

        def release(g_arm, t=t, pl=pl):
            g_world = dataclasses.replace(g_arm, T_base_grasp=Tw @ g_arm.T_base_grasp)
            return inv @ targets_mod.release_pose(t, g_world, pl)

        aim = oid if pick_ok else next((i for i, (a, b) in boxes.items() if np.all((t.centroid >= a) & (t.centroid <= b))
                                        and i in _rigid_ids(meta)), oid)
        out = arm_mod.simulate_arm_pick(scene_dir, cands, aim, Tw, place=release, place_on=rid)
        placed = bool(pick_ok and out.place_status == "placed" and not out.disturbed)
        note = "" if placed else (f"{out.status}: {out.reason}" if not out.success else
                                  f"place {out.place_status}: {out.place_reason}" if out.place_status != "placed"
                                  else f"neighbours moved: {out.disturbed}" if out.disturbed else "wrong object")
        trials.append(PlaceTrial(str(scene_dir), pick_prompt, place_prompt, pset, oid, rid, pick_ok, place_ok,
                                 out.to_dict(), placed, note))
    return trials


def _rigid_ids(meta: dict) -> set[int]:
    return {int(o["id"]) for o in meta["objects"] if _pickable(o)}


def summarize_parts(trials: list[PartTrial]) -> dict:
    """Per prompt set: part grounding, object grounding, part-pick success given part grounding, end to end."""
    out = {}
    for pset in sorted({t.prompt_set for t in trials}):
        ts_ = [t for t in trials if t.prompt_set == pset]
        n, pg = len(ts_), sum(t.part_grounded for t in ts_)
        ok_g = sum(t.success for t in ts_ if t.part_grounded)
        e = sum(t.success for t in ts_)
        out[pset] = {"trials": n, "part_grounded": pg, "part_grounding_rate": _r(pg, n),
                     "object_grounded": sum(t.object_grounded for t in ts_),
                     "success_given_part_grounded": ok_g, "success_rate_given_part_grounded": _r(ok_g, pg),
                     "part_pick_success": e, "part_pick_success_rate": _r(e, n)}
    return out


def summarize_places(trials: list[PlaceTrial]) -> dict:
    """Per prompt set: pick and place grounding, placed given both grounded, placed (end to end)."""
    out = {}
    for pset in sorted({t.prompt_set for t in trials}):
        ts_ = [t for t in trials if t.prompt_set == pset]
        n = len(ts_)
        both = [t for t in ts_ if t.pick_grounded and t.place_grounded]
        ok_b = sum(t.placed for t in both)
        e = sum(t.placed for t in ts_)
        out[pset] = {"trials": n, "pick_grounded": sum(t.pick_grounded for t in ts_),
                     "place_grounded": sum(t.place_grounded for t in ts_), "both_grounded": len(both),
                     "placed_given_both_grounded": ok_b, "place_rate_given_both_grounded": _r(ok_b, len(both)),
                     "placed": e, "place_success_rate": _r(e, n)}
    return out


def _r(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None
