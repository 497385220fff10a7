"""Verify grasps in physics: a simulated parallel-jaw gripper picks tabletop objects in pybullet.

:func:`simulate_pick` rebuilds a tabletop scene from its ``meta.json`` (``cos3d prepare tabletop``):
pybullet's plane and table, the fixed-base toy robot, and every rigid object as a dynamic body of
:data:`OBJECT_MASS` kg whose collision shape is its own mesh (a V-HACD convex decomposition, cached
next to the meshes' cache key in a temporary folder; pybullet's single convex hull would fill a mug's
opening and the gap under its handle). Objects settle for 1 s, then a free-floating two-finger
gripper (:class:`cos3d.robot.grasp.GripperSpec`'s dimensions; palm + two prismatic fingers, moved by a
fixed constraint) executes the grasp:

1. appear at the pre-grasp pose (10 cm back along the approach), fingers opened to the grasp's width;
2. move to the grasp pose in 1 s; 3. close with :data:`GRIP_FORCE` N per finger for 0.6 s;
4. lift 15 cm straight up in 1.5 s; 5. hold for 1 s.

Success: the intended object rose ≥ :data:`LIFT_SUCCESS` (10 cm) at the end of the hold and no other
object did. The scene frame of a tabletop is its world frame (metres, z up), so ``T_base_scene`` is the
identity there.

:func:`evaluate_tabletop` is the pick benchmark, grounded like a user: every rigid object is asked for
by its held-out phrasings (the catalogue's ``eval_names``, never training names), the robot API's first
target is executed, and ground truth only scores the outcome (:func:`score_pick`: grounding, grasp given
grounding, end to end; :func:`summarize_trials`). ``scripts/bench_pick.py`` runs it over seeded scenes.

Imports pybullet when called (it is a dependency of the tabletop generator).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from cos3d.robot.grasp import APPROACH_DISTANCE, Grasp, GripperSpec

OBJECT_MASS = 0.15
"""kg, every rigid object."""
GRIP_FORCE = 40.0
"""N per finger."""
FRICTION = 1.0
LIFT = 0.15
LIFT_SUCCESS = 0.10
DT = 1.0 / 240.0


@dataclass
class PickOutcome:
    """What happened to one simulated pick."""

    success: bool
    lifted: dict[int, float]
    """Instance id → rise of that object (metres) at the end of the hold."""
    target_rise: float
    """Rise of the intended object (metres)."""
    note: str = ""

    def to_dict(self) -> dict:
        return {"success": self.success, "target_rise": round(self.target_rise, 4), "note": self.note,
                "lifted": {str(k): round(v, 4) for k, v in self.lifted.items()}}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the C-level stdout/stderr (pybullet's V-HACD writes there)."""
    from cos3d.tabletop.render import _flush_c_stdio

    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            yield
            _flush_c_stdio()
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def _vhacd(p, cid: int, obj: Path, cache: Path) -> Path:
    key = hashlib.sha1(str(obj.resolve()).encode() + str(obj.stat().st_mtime_ns).encode()).hexdigest()[:16]
    out = cache / f"{obj.stem}-{key}.obj"
    if not out.is_file():
        tmp = cache / f".{out.name}.{os.getpid()}.obj"
        with _quiet():  # V-HACD prints its progress on the C stdout
            p.vhacd(str(obj), str(tmp), str(cache / "vhacd.log"), resolution=100000, maxNumVerticesPerCH=48,
                    physicsClientId=cid)
        os.replace(tmp, out)
    return out


def _cache_dir() -> Path:
    """Where convex decompositions are cached: ``$COS3D_SIM_CACHE``, else ``$XDG_CACHE_HOME/cos3d/sim``
    (``~/.cache/cos3d/sim``), private to the user (0700). A shared, predictable folder in /tmp would let
    another user plant the meshes the simulation loads. Where no cache folder can be made (a read-only
    home), a private ``mkdtemp`` folder serves this process."""
    env = os.environ.get("COS3D_SIM_CACHE")
    if env:
        d = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = Path(base) / "cos3d" / "sim"
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not env and d.stat().st_uid != os.getuid():
            raise PermissionError(f"{d} belongs to another user")
        return d
    except OSError:
        global _PRIVATE_CACHE
        if _PRIVATE_CACHE is None:
            _PRIVATE_CACHE = Path(tempfile.mkdtemp(prefix="cos3d_sim_"))
        return _PRIVATE_CACHE


_PRIVATE_CACHE: Path | None = None


def load_tabletop_physics(p, cid: int, scene_dir: str | Path, names: dict[int, str] | None = None) -> dict[int, int]:
    """Load the scene of ``scene_dir/meta.json`` into client ``cid``; returns instance id → body id
    for the rigid objects (the robot and table are fixed). ``names``, when given, is filled with body id →
    a readable name (``floor``, ``table``, ``toy_robot``, ``object 7 (red_coffee_mug)``)."""
    names = {} if names is None else names
    from cos3d.tabletop.catalog import asset_path, package_root

    meta = json.loads((Path(scene_dir) / "meta.json").read_text())
    pd = package_root("pybullet_data")
    p.setGravity(0, 0, -9.81, physicsClientId=cid)
    p.setTimeStep(DT, physicsClientId=cid)
    names[p.loadURDF(str(pd / "plane.urdf"), useFixedBase=True, physicsClientId=cid)] = "floor"
    bodies: dict[int, int] = {}
    cache = _cache_dir()
    for o in meta["objects"]:
        key = o["key"]
        if key in ("floor",):
            continue
        if key == "table":
            b = p.loadURDF(str(asset_path("pybullet_data", o["asset"])), useFixedBase=True, physicsClientId=cid)
            p.changeDynamics(b, -1, lateralFriction=FRICTION, physicsClientId=cid)
            names[b] = "table"
            continue
        if o["asset"].endswith(".urdf"):  # the toy robot: a fixed obstacle
            b = p.loadURDF(str(asset_path(o["source"], o["asset"])), o["position"], o["orientation_xyzw"],
                           useFixedBase=True, globalScaling=float(o["scale"]), physicsClientId=cid)
            names[b] = key
            continue
        mesh = asset_path(o["source"], o["asset"])
        col_file = _vhacd(p, cid, mesh, cache)
        s = [float(o["scale"])] * 3
        col = p.createCollisionShape(p.GEOM_MESH, fileName=str(col_file), meshScale=s, physicsClientId=cid)
        b = p.createMultiBody(baseMass=OBJECT_MASS, baseCollisionShapeIndex=col, basePosition=o["position"],
                              baseOrientation=o["orientation_xyzw"], physicsClientId=cid)
        p.changeDynamics(b, -1, lateralFriction=FRICTION, spinningFriction=0.002, rollingFriction=0.0005,
                         physicsClientId=cid)
        bodies[int(o["id"])] = b
        names[b] = f"object {o['id']} ({key})"
    for _ in range(240):
        p.stepSimulation(physicsClientId=cid)
    return bodies


def _make_gripper(p, cid: int, g: GripperSpec, T: np.ndarray, opening: float) -> tuple[int, int]:
    """A palm + two prismatic fingers at pose ``T`` (the grasp frame); returns (body, constraint)."""
    from scipy.spatial.transform import Rotation

    fd, fw, ft, pd = g.finger_depth, g.finger_width, g.finger_thickness, g.palm_depth
    half = g.max_opening / 2
    palm = p.createCollisionShape(p.GEOM_BOX, halfExtents=[half + ft, fw / 2, pd / 2],
                                  collisionFramePosition=[0, 0, -fd - pd / 2], physicsClientId=cid)
    fingers = [p.createCollisionShape(p.GEOM_BOX, halfExtents=[ft / 2, fw / 2, fd / 2],
                                      collisionFramePosition=[sgn * ft / 2, 0, 0], physicsClientId=cid)
               for sgn in (1, -1)]
    q = Rotation.from_matrix(T[:3, :3]).as_quat().tolist()
    body = p.createMultiBody(
        baseMass=0.5, baseCollisionShapeIndex=palm, basePosition=T[:3, 3].tolist(), baseOrientation=q,
        linkMasses=[0.05, 0.05], linkCollisionShapeIndices=fingers, linkVisualShapeIndices=[-1, -1],
        linkPositions=[[0, 0, -fd / 2], [0, 0, -fd / 2]], linkOrientations=[[0, 0, 0, 1]] * 2,
        linkInertialFramePositions=[[0, 0, 0]] * 2, linkInertialFrameOrientations=[[0, 0, 0, 1]] * 2,
        linkParentIndices=[0, 0], linkJointTypes=[p.JOINT_PRISMATIC] * 2, linkJointAxis=[[1, 0, 0], [-1, 0, 0]],
        physicsClientId=cid,
    )
    for j in (0, 1):
        p.resetJointState(body, j, opening / 2, physicsClientId=cid)
        p.changeDynamics(body, j, lateralFriction=1.5, jointLowerLimit=0.0, jointUpperLimit=half,
                         physicsClientId=cid)
        p.setJointMotorControl2(body, j, p.POSITION_CONTROL, targetPosition=opening / 2, force=GRIP_FORCE,
                                physicsClientId=cid)
    con = p.createConstraint(body, -1, -1, -1, p.JOINT_FIXED, [0, 0, 0], [0, 0, 0], T[:3, 3].tolist(), [0, 0, 0, 1],
                             q, physicsClientId=cid)
    p.changeConstraint(con, T[:3, 3].tolist(), q, maxForce=500, physicsClientId=cid)
    return body, con


def _move(p, cid: int, con: int, a: np.ndarray, b: np.ndarray, q: list, seconds: float) -> None:
    n = max(1, int(seconds / DT))
    for i in range(1, n + 1):
        x = a + (b - a) * (i / n)
        p.changeConstraint(con, x.tolist(), q, maxForce=500, physicsClientId=cid)
        p.stepSimulation(physicsClientId=cid)


def simulate_pick(
    scene_dir: str | Path,
    grasp: Grasp,
    target_id: int,
    *,
    gripper: GripperSpec | None = None,
    T_world_base: np.ndarray | None = None,
) -> PickOutcome:
    """Execute ``grasp`` (base frame) on the tabletop of ``scene_dir`` and report the object's rise.

    Args:
        target_id: the instance id (``meta.json`` ``objects[].id``) the grasp is meant to lift.
        T_world_base: the base frame in the simulated world (identity: targets computed with
            ``T_base_scene`` = identity on a tabletop run).
    """
    from scipy.spatial.transform import Rotation

    from cos3d.tabletop.render import import_pybullet, sim

    p = import_pybullet()
    g = gripper or GripperSpec()
    Tw = np.eye(4) if T_world_base is None else np.asarray(T_world_base, np.float64)
    T = Tw @ grasp.T_base_grasp
    with sim() as cid:
        bodies = load_tabletop_physics(p, cid, scene_dir)
        if target_id not in bodies:
            return PickOutcome(False, {}, 0.0, f"instance {target_id} is not a rigid object of the scene")
        z0 = {i: p.getBasePositionAndOrientation(b, physicsClientId=cid)[0][2] for i, b in bodies.items()}
        pre = T.copy()
        pre[:3, 3] -= APPROACH_DISTANCE * T[:3, 2]
        opening = min(grasp.width, g.max_opening)
        body, con = _make_gripper(p, cid, g, pre, opening)
        q = Rotation.from_matrix(T[:3, :3]).as_quat().tolist()
        _move(p, cid, con, pre[:3, 3], T[:3, 3], q, 1.0)
        for j in (0, 1):
            p.setJointMotorControl2(body, j, p.POSITION_CONTROL, targetPosition=0.0, force=GRIP_FORCE,
                                    maxVelocity=0.2, physicsClientId=cid)
        for _ in range(int(0.6 / DT)):
            p.stepSimulation(physicsClientId=cid)
        up = Tw[:3, 2]
        _move(p, cid, con, T[:3, 3], T[:3, 3] + LIFT * up, q, 1.5)
        for _ in range(int(1.0 / DT)):
            p.stepSimulation(physicsClientId=cid)
        rise = {i: p.getBasePositionAndOrientation(b, physicsClientId=cid)[0][2] - z0[i] for i, b in bodies.items()}
    others = [i for i, r in rise.items() if i != target_id and r >= LIFT_SUCCESS]
    ok = rise[target_id] >= LIFT_SUCCESS and not others
    note = "" if ok else (f"lifted the wrong object {others}" if others else
                         f"object rose {rise[target_id] * 100:.1f} cm (< {LIFT_SUCCESS * 100:.0f})")
    return PickOutcome(bool(ok), rise, float(rise[target_id]), note)


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
    lift raised an intended object >= :data:`LIFT_SUCCESS`."""
    end_to_end: bool
    """An intended object rose >= :data:`LIFT_SUCCESS` and no other object did."""
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
    >= :data:`LIFT_SUCCESS`. End to end: exactly one object rose that far and it is an intended one
    (lifting a wrong object, or two at once, is no success). A wrong object chosen is a grounding
    failure even if it lifts.
    """
    intended = {int(i) for i in intended}
    if not answered:
        if not reason:
            return False, False, "no target"
        return False, False, reason if reason.startswith("no target") else f"no target: {reason}"
    risen = {int(i) for i, r in lifted.items() if r >= LIFT_SUCCESS}
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
    return True, False, f"object rose {top * 100:.1f} cm (< {LIFT_SUCCESS * 100:.0f})"


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
) -> list[PickTrial]:
    """Pick on a tabletop scene as a user would: a phrasing in, the robot API's first target executed.

    For every prompt of :func:`tabletop_prompts` (``ids``: only prompts naming one of these instances),
    ``pick_targets(ts, prompt, k=1)`` decides alone: its first target (the top grasp of the top-ranked
    object) is executed by :func:`simulate_pick`; an empty answer is a grounding failure (its reason
    kept). Only then does ground truth score it (:func:`score_pick`): the true boxes of ``meta.json``
    (``aabb_world``) and every object's rise in the simulation. ``ts`` is the loaded run trained on
    ``scene_dir`` (its scene frame is the world frame, so ``T_base_scene`` is the identity).

    ``T_world_arm``: also execute each target with a Panda arm standing there
    (:func:`cos3d.robot.arm.simulate_arm_pick`; the target's grasp candidates moved into the arm's base
    frame, the first one it reaches without a collision executed): the trial's ``arm`` and
    ``arm_end_to_end``.
    """
    from cos3d.robot.targets import pick_targets

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
        targets = pick_targets(ts, prompt, approach=approach, gripper=gripper, k=1)
        if not targets:
            g, e, note = score_pick(intended, [], {}, answered=False, reason=targets.reason)
            trials.append(PickTrial(**base, answered=False, in_box=[], approach=None, width=None, flags=[],
                                    lifted={}, grounded=g, end_to_end=e, note=note))
            continue
        t = targets[0]
        in_box = sorted(i for i, (lo, hi) in boxes.items() if np.all((t.centroid >= lo) & (t.centroid <= hi)))
        lifted: dict[int, float] = {}
        if t.grasp is not None:
            # simulate_pick needs an instance to report on; every object's rise comes back and is scored here
            aim = next((i for i in in_box if i in intended), intended[0])
            lifted = simulate_pick(scene_dir, t.grasp, aim, gripper=gripper).lifted
        g, e, note = score_pick(intended, in_box, lifted, reason="" if t.grasp is not None else "no grasp")
        arm, arm_e2e = None, False
        if t.grasp is not None and T_world_arm is not None:
            import dataclasses

            from cos3d.robot import arm as arm_mod

            Tw = np.asarray(T_world_arm, np.float64)
            aim = next((i for i in in_box if i in intended), intended[0])
            # the target's candidates, best first, moved into the arm's base frame: the arm executes the
            # first one it reaches without a collision
            inv = np.linalg.inv(Tw)
            cands = [dataclasses.replace(g_, T_base_grasp=inv @ g_.T_base_grasp) for g_ in (t.grasps or [t.grasp])]
            out = arm_mod.simulate_arm_pick(scene_dir, cands, aim, Tw)
            arm = out.to_dict()
            risen = {i for i, r in out.lifted.items() if r > arm_mod.LIFT_SUCCESS}
            arm_e2e = bool(out.success and len(risen) == 1 and risen <= set(intended))
        trials.append(PickTrial(**base, answered=True, in_box=in_box, arm=arm, arm_end_to_end=arm_e2e,
                                approach=None if t.grasp is None else t.grasp.approach,
                                width=None if t.grasp is None else round(t.grasp.width, 4), flags=list(t.flags),
                                lifted={int(k): float(v) for k, v in lifted.items()}, grounded=g, end_to_end=e,
                                note=note))
    return trials


def summarize_trials(trials: list[PickTrial]) -> dict:
    """Grounding, grasp-given-grounded and end-to-end counts and rates, per kind and overall.

    ``{"overall": {...}, "per_kind": {kind: {...}}}`` with ``trials``, ``grounded``, ``grounding_rate``,
    ``grasped_given_grounded``, ``grasp_rate_given_grounded`` (of the grounded trials),
    ``end_to_end``, ``end_to_end_rate``; a rate is None over zero trials.
    """

    def block(ts: list[PickTrial]) -> dict:
        n, g, e = len(ts), sum(t.grounded for t in ts), sum(t.end_to_end for t in ts)
        ok_given = sum(t.end_to_end for t in ts if t.grounded)
        out = {"trials": n, "grounded": g, "grounding_rate": round(g / n, 4) if n else None,
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
                                     ("lifted", "unreachable", "collision", "slipped")}}
        return out

    kinds: dict[str, list[PickTrial]] = {}
    for t in trials:
        kinds.setdefault(t.kind, []).append(t)
    return {"overall": block(trials), "per_kind": {k: block(v) for k, v in sorted(kinds.items())}}
