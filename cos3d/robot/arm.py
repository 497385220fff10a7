"""Execute a pick with a real arm in pybullet: pybullet_data's Franka Panda at a base pose the user gives.

:func:`simulate_arm_pick` rebuilds the tabletop of ``scene_dir`` (:func:`cos3d.robot.sim.load_tabletop_physics`:
its own meshes, the table, the fixed toy robot; objects settled for 1 s) and loads the Panda
(``franka_panda/panda.urdf``, fixed base) at ``T_world_base``: the pose of the robot's base in the
scene's world, the same frame the pick targets were computed in (``T_base_scene = inv(T_world_base)``
on a tabletop, whose scene frame is its world frame). Then, for one :class:`cos3d.robot.grasp.Grasp`
(base frame):

1. **Inverse kinematics** (pybullet's damped least squares with the URDF's joint limits as null-space
   limits; five hand-picked starts, then :data:`IK_RANDOM_SEEDS` random ones) for the pre-grasp
   (:data:`~cos3d.robot.grasp.APPROACH_DISTANCE` back along the approach), the grasp and the lift
   (:data:`LIFT` straight up) poses of the tool centre point
   (``panda_grasptarget``, between the finger pads); a solution counts only when it lies inside the
   joint limits and its forward kinematics lands within :data:`POS_TOL` / :data:`ROT_TOL` of the pose.
   A pose without one: **unreachable** (``reachable=False``; nothing is executed).
2. **Collision check** of the arm's links against the scene, kinematically, at every waypoint: the
   joint-space path from the arm's home configuration to a pose :data:`HOVER` above the pre-grasp (or to
   the pre-grasp when that pose has no IK solution), the straight descent to the pre-grasp, the straight
   approach to the grasp, the lift; when that way touches the scene, the same from the higher hovers of
   :data:`HOVERS` (over a tall neighbour). Any link touching the table, the floor, the toy robot or another object, or a link
   other than the hand and fingers touching the target: **collision** (which link, which body, where).
   Given a target's candidates (``PickTarget.grasps``, best first) rather than one grasp, the first
   :data:`MAX_CANDIDATES` that fit the gripper are planned in order and the first one that passes both
   checks is executed (a real arm would do the same before moving); the report says which.
3. **Execution** in physics: the arm starts at the pre-grasp configuration, fingers open to the grasp's
   width; position control along the approach, the fingers close (:data:`GRIP_FORCE` N each), lift,
   hold 1 s. **Success**: the target rose more than :data:`LIFT_SUCCESS` (5 cm) and both fingers still
   touch it (held); otherwise **slipped** (with its rise). A place carries the object at a bounded joint
   speed (:data:`CARRY_JOINT_STEP`) to above the release pose, lowers it, opens.

``status`` is one of ``"lifted"``, ``"unreachable"``, ``"collision"``, ``"slipped"``; ``reason`` says
why in one line. Ground truth (which body is the target) only scores; the grasp comes from the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cos3d.robot.grasp import APPROACH_DISTANCE, Grasp

LIFT = 0.15
"""Metres the arm lifts the object, straight up (world z)."""
LIFT_SUCCESS = 0.05
"""A pick succeeds when the object rose more than this (and is still between the fingers)."""
GRIP_FORCE = 40.0
"""N per finger."""
POS_TOL = 0.01
"""Metres: an IK solution must put the tool centre point this close to the asked pose."""
ROT_TOL = 0.1
"""Radians: and its orientation this close."""
HOVER = 0.15
"""Metres above the pre-grasp pose the arm arrives at (from its home configuration, in joint space) before
going straight down to the pre-grasp."""
HOVERS = (HOVER, 0.30)
"""The hover heights tried in turn: when the way from home over the lower one touches the scene (a tall
neighbour under the joint-space path), the arm arrives higher and comes down further."""
COLLISION_MARGIN = 0.0
"""Distance under which a link counts as touching the scene (0: penetration or contact)."""
HOME = (0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785)
"""The Panda's ready configuration (radians): where each pick starts."""
IK_SOLUTIONS = 4
"""Distinct arm configurations for the pre-grasp tried in turn when one's way or approach touches the scene
(an elbow through a tall neighbour may have another configuration that clears it)."""
IK_DISTINCT = 0.3
"""Radians: two IK solutions whose joints all lie within this of each other are the same configuration."""
IK_RANDOM_SEEDS = 8
"""Random joint configurations (fixed seed) tried after the five hand-picked starts of the pre-grasp's IK."""
MAX_CANDIDATES = 8
"""Grasp candidates of a target planned, best first, before giving up (:func:`simulate_arm_pick`)."""
DISTURB_LIMIT = 0.02
"""Metres: a neighbour that moved further than this (3D, from where it settled) was disturbed by the pick."""
PLACE_CLEARANCE = 0.02
"""Metres above the place pose the held object is released (it drops that far at most)."""
TRANSIT = 0.03
"""The arm carries the object at the lift's height, or with its bottom this many metres above the release pose,
the receptacle's rim and every body under its straight path, whichever is highest."""
CARRY_JOINT_STEP = 0.01
"""Radians: while carrying an object, the arm's joint targets advance at most this much every
:data:`CARRY_STEPS` physics steps (0.6 rad/s at 240 Hz) — a jump to the next waypoint at full motor force
flings a held object out of the fingers."""
CARRY_STEPS = 4
RELEASE_TURNS = tuple(np.radians([0, 180, 90, -90, 45, -45, 135, -135]))
"""Turns of the hand about the vertical (radians) tried, in order, for the way to the release pose: the hand keeps
its grasp but may turn the object about the vertical on the way (the wrist's joint limits)."""
DT = 1.0 / 240.0
STATUSES = ("lifted", "unreachable", "collision", "slipped")


@dataclass
class ArmPickOutcome:
    """What happened to one pick executed by the arm."""

    status: str
    """``"lifted"``, ``"unreachable"``, ``"collision"`` or ``"slipped"``."""
    reason: str = ""
    reachable: bool = True
    """IK found joint-limited solutions for the pre-grasp, grasp and lift poses."""
    target_rise: float = 0.0
    lifted: dict[int, float] = field(default_factory=dict)
    """Instance id → rise (metres) of every rigid object at the end of the hold (empty: not executed)."""
    held: bool = False
    """Both fingers touched the target at the end of the hold."""
    collisions: list[str] = field(default_factory=list)
    """``"<link> ~ <body> at <waypoint>"`` for each contact found by the kinematic check."""
    grasp_index: int | None = None
    """Which of the candidates given was executed (0: the first), None when none was."""
    tried: int = 1
    """Candidates planned."""
    displaced: dict[int, float] = field(default_factory=dict)
    """Instance id → how far (metres, 3D) every rigid object other than the target moved from where it settled,
    at the end (after the place, when one was asked)."""
    place_status: str | None = None
    """None when no place was asked; else ``"placed"``, ``"unreachable"`` (no IK for the release poses),
    ``"missed"`` (released, but it does not rest in/on the receptacle) or ``"not_held"`` (the pick failed)."""
    place_reason: str = ""

    @property
    def success(self) -> bool:
        return self.status == "lifted"

    @property
    def disturbed(self) -> list[int]:
        """Objects other than the target moved more than :data:`DISTURB_LIMIT`."""
        return sorted(i for i, d in self.displaced.items() if d > DISTURB_LIMIT)

    def to_dict(self) -> dict:
        return {"status": self.status, "success": self.success, "reason": self.reason, "reachable": self.reachable,
                "target_rise": round(self.target_rise, 4), "held": self.held, "collisions": list(self.collisions),
                "grasp_index": self.grasp_index, "tried": self.tried,
                "lifted": {str(k): round(v, 4) for k, v in self.lifted.items()},
                "displaced": {str(k): round(v, 4) for k, v in self.displaced.items()},
                "disturbed": self.disturbed, "place_status": self.place_status, "place_reason": self.place_reason}


def hand_rotation(R_grasp: np.ndarray) -> np.ndarray:
    """The Panda hand's orientation for a grasp frame (x closing, z approach): the hand's fingers move
    along its y and point along its z, so hand = [-y, x, z] of the grasp."""
    R = np.asarray(R_grasp, np.float64)
    return np.stack([-R[:, 1], R[:, 0], R[:, 2]], axis=1)


class _Panda:
    def __init__(self, p, cid: int, T_world_base: np.ndarray):
        from scipy.spatial.transform import Rotation

        from cos3d.tabletop.catalog import package_root

        self.p, self.cid = p, cid
        urdf = package_root("pybullet_data") / "franka_panda" / "panda.urdf"
        q = Rotation.from_matrix(T_world_base[:3, :3]).as_quat().tolist()
        self.body = p.loadURDF(str(urdf), T_world_base[:3, 3].tolist(), q, useFixedBase=True,
                               flags=p.URDF_USE_SELF_COLLISION_EXCLUDE_PARENT, physicsClientId=cid)
        self.arm, self.fingers, self.names = [], [], {}
        lo, hi = [], []
        for j in range(p.getNumJoints(self.body, physicsClientId=cid)):
            info = p.getJointInfo(self.body, j, physicsClientId=cid)
            jtype, link = info[2], info[12].decode()
            self.names[j] = link
            if link == "panda_grasptarget":
                self.tcp = j
            if jtype == p.JOINT_REVOLUTE:
                self.arm.append(j)
                lo.append(info[8])
                hi.append(info[9])
            elif jtype == p.JOINT_PRISMATIC:
                self.fingers.append(j)
        self.names[-1] = "panda_link0"
        self.lo, self.hi = np.array(lo), np.array(hi)
        self.hand_links = {j for j, n in self.names.items() if n in ("panda_hand", "panda_leftfinger",
                                                                     "panda_rightfinger", "panda_grasptarget")}
        self.finger_max = 0.04
        for j in self.fingers:
            p.changeDynamics(self.body, j, lateralFriction=1.5, physicsClientId=cid)

    def set(self, q, opening: float | None = None) -> None:
        for j, v in zip(self.arm, q):
            self.p.resetJointState(self.body, j, float(v), physicsClientId=self.cid)
        if opening is not None:
            for j in self.fingers:
                self.p.resetJointState(self.body, j, min(opening / 2, self.finger_max), physicsClientId=self.cid)

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        st = self.p.getLinkState(self.body, self.tcp, computeForwardKinematics=True, physicsClientId=self.cid)
        from scipy.spatial.transform import Rotation

        return np.array(st[4]), Rotation.from_quat(st[5]).as_matrix()

    def ik(self, T: np.ndarray, seeds: list) -> np.ndarray | None:
        """Joint-limited IK for the TCP pose ``T`` (world, hand orientation): the first seed whose
        solution is inside the limits and within POS_TOL / ROT_TOL, else None."""
        from scipy.spatial.transform import Rotation

        p, cid = self.p, self.cid
        pos, quat = T[:3, 3].tolist(), Rotation.from_matrix(T[:3, :3]).as_quat().tolist()
        rng = (self.hi - self.lo).tolist()
        for seed in seeds:
            self.set(seed)
            q = np.asarray(seed, np.float64)
            for _ in range(4):  # refine from the last answer (pybullet's IK takes one DLS pass per call)
                sol = p.calculateInverseKinematics(
                    self.body, self.tcp, pos, quat, lowerLimits=self.lo.tolist(), upperLimits=self.hi.tolist(),
                    jointRanges=rng, restPoses=list(seed), maxNumIterations=200, residualThreshold=1e-5,
                    physicsClientId=cid)
                q = np.asarray(sol[: len(self.arm)], np.float64)
                self.set(q)
            if np.any(q < self.lo - 1e-6) or np.any(q > self.hi + 1e-6):
                continue
            x, R = self.tcp_pose()
            dpos = float(np.linalg.norm(x - T[:3, 3]))
            drot = float(np.linalg.norm(Rotation.from_matrix(R.T @ T[:3, :3]).as_rotvec()))
            if dpos <= POS_TOL and drot <= ROT_TOL:
                return q
        return None

    def ik_all(self, T: np.ndarray, seeds: list, max_solutions: int = 1) -> list[np.ndarray]:
        """Up to ``max_solutions`` distinct joint-limited IK solutions for ``T`` (:meth:`ik` from each seed in
        turn; distinct = some joint differs by more than :data:`IK_DISTINCT` rad): other arm configurations
        (elbow, wrist) for the same hand pose."""
        out: list[np.ndarray] = []
        for seed in seeds:
            q = self.ik(T, [seed])
            if q is not None and all(np.abs(q - o).max() > IK_DISTINCT for o in out):
                out.append(q)
                if len(out) >= max_solutions:
                    break
        return out

    def contacts(self, bodies: dict[int, str], target: int | None, where: str) -> list[str]:
        """Links touching the scene at the current (reset) configuration."""
        p, cid = self.p, self.cid
        p.performCollisionDetection(physicsClientId=cid)
        out = []
        for b, name in bodies.items():
            for c in p.getClosestPoints(self.body, b, COLLISION_MARGIN, physicsClientId=cid):
                link = c[3]
                if link == -1:
                    continue  # the fixed base stands where the user put it (on the table)
                if b == target and link in self.hand_links:
                    continue  # the hand and fingers may touch what they grasp
                out.append(f"{self.names.get(link, link)} ~ {name} at {where}")
        return sorted(set(out))


def _lerp_poses(A: np.ndarray, B: np.ndarray, n: int) -> list[np.ndarray]:
    out = []
    for i in range(1, n + 1):
        T = A.copy()
        T[:3, 3] = A[:3, 3] + (B[:3, 3] - A[:3, 3]) * i / n
        out.append(T)
    return out


def _plan(p, cid: int, arm: _Panda, Tw: np.ndarray, grasp: Grasp, names: dict, target: int, check_path: bool):
    """Kinematic plan of one grasp: ``(status, reason, q_pre, path, collisions)`` with status ``"ok"``,
    ``"unreachable"`` or ``"collision"`` (module docstring, steps 1 and 2)."""
    Tg = Tw @ grasp.T_base_grasp
    Tg[:3, :3] = hand_rotation(Tg[:3, :3])
    pre = Tg.copy()
    pre[:3, 3] -= APPROACH_DISTANCE * Tg[:3, 2]
    lift = Tg.copy()
    lift[:3, 3] += LIFT * np.array([0.0, 0.0, 1.0])
    opening = min(float(grasp.width), 2 * arm.finger_max)
    home = list(HOME)
    seeds = [home] + [list(np.clip(np.asarray(HOME) + d, arm.lo, arm.hi)) for d in
                      (np.array([np.pi / 2, 0, 0, 0, 0, 0, 0]), np.array([-np.pi / 2, 0, 0, 0, 0, 0, 0]),
                       np.array([np.pi, 0, 0, 0.5, 0, 0, 0]), np.array([0, 0.5, 0, 0.5, 0, 0.5, 0]))]
    # and a few fixed random configurations: the damped least squares lands in the start's basin
    rng = np.random.default_rng(0)
    seeds += [list(rng.uniform(arm.lo, arm.hi)) for _ in range(IK_RANDOM_SEEDS)]
    sols = arm.ik_all(pre, seeds, IK_SOLUTIONS if check_path else 1)
    if not sols:
        d = float(np.linalg.norm(pre[:3, 3] - Tw[:3, 3]))
        why = f"no joint-limited IK solution for the pre-grasp pose ({d:.2f} m from the base)"
        return "unreachable", why, None, [], []
    first = None
    for q_pre in sols:  # the first configuration whose way, approach and lift are reachable and clear
        plan = _plan_from(arm, q_pre, pre, Tg, lift, opening, home, seeds, names, target, check_path)
        if plan[0] == "ok":
            return plan
        if first is None or (first[0] == "unreachable" and plan[0] == "collision"):
            first = plan
    return first


def _plan_from(arm: _Panda, q_pre: np.ndarray, pre: np.ndarray, Tg: np.ndarray, lift: np.ndarray, opening: float,
               home: list, seeds: list, names: dict, target: int, check_path: bool):
    """:func:`_plan` from one arm configuration ``q_pre`` at the pre-grasp."""
    path: list[tuple[str, np.ndarray]] = []
    q = q_pre
    for label, poses in (("approach", _lerp_poses(pre, Tg, 5)), ("lift", _lerp_poses(Tg, lift, 5))):
        for T in poses:
            q = arm.ik(T, [list(q)])
            if q is None:
                return ("unreachable", f"no joint-limited IK solution along the {label} "
                        f"(at {np.round(T[:3, 3], 3).tolist()})", None, [], [])
            path.append((label, q))
    # the way there: joint-space from home to a pose HOVER over the pre-grasp (the arm moves over the
    # scene, not through it), then straight down to the pre-grasp; when that way touches the scene, the
    # same from higher up (HOVERS)
    first_hits: list[str] | None = None
    for hover_h in (HOVERS if check_path else HOVERS[:1]):
        hover = pre.copy()
        hover[2, 3] += hover_h
        q_hover = arm.ik(hover, [list(q_pre)] + seeds)
        descent: list[np.ndarray] = []
        if q_hover is not None:
            q = q_hover
            for T in _lerp_poses(hover, pre, max(4, int(round(4 * hover_h / HOVER)))):
                q = arm.ik(T, [list(q)])
                if q is None:
                    break
                descent.append(q)
            if q is None:  # no straight descent: go to the pre-grasp directly
                q_hover, descent = None, []
        # kinematic collision check along the way, the fingers open to the grasp's width
        hits: list[str] = []
        waypoints: list[tuple[str, np.ndarray]] = []
        if check_path:
            q_via = q_pre if q_hover is None else q_hover
            waypoints += [("the way to the pre-grasp", np.asarray(home) + (q_via - home) * s)
                          for s in np.linspace(0, 1, 12)]
            waypoints += [("the descent to the pre-grasp", qq) for qq in descent]
        waypoints += [("the pre-grasp", q_pre)] + path[:5]
        for where, qq in waypoints:
            arm.set(qq, opening)
            for h in arm.contacts(names, target, where):
                if h not in hits:
                    hits.append(h)
        if not hits:
            return "ok", "", q_pre, path, []
        if first_hits is None:
            first_hits = hits
    hits = first_hits or []
    more = f" (+{len(hits) - 1} more)" if len(hits) > 1 else ""
    return "collision", f"the arm touches the scene: {hits[0]}{more}", q_pre, path, hits


def simulate_arm_pick(
    scene_dir,
    grasp: "Grasp | list[Grasp]",
    target_id: int,
    T_world_base: np.ndarray,
    *,
    check_path: bool = True,
    max_candidates: int = MAX_CANDIDATES,
    place: "np.ndarray | Callable[[Grasp], np.ndarray] | None" = None,
    place_on: int | None = None,
) -> ArmPickOutcome:
    """Pick with a Panda whose base stands at ``T_world_base`` (module docstring).

    Args:
        scene_dir: a tabletop scene folder (``meta.json``).
        grasp: the grasp to execute, in the robot's base frame (``pick_targets(..., T_base_scene=inv(T_world_base))``),
            or a target's candidates best first (``PickTarget.grasps``): the first ``max_candidates`` that fit
            the gripper are planned in order and the first one the arm reaches without a collision is
            executed; when none is, the first one's failure is reported (unreachable only when every one was).
        target_id: the instance id (``meta.json``) the grasp is meant to lift (scoring only).
        T_world_base: [4, 4] rigid pose of the arm's base in the scene's world (z up).
        check_path: also check the path from the home configuration to the pre-grasp.
        place: after a successful lift, where the tool centre point releases the object: a [4, 4] pose in the
            base frame (its rotation is ignored: the hand keeps the grasp's orientation), or a function of the
            executed grasp giving it (:func:`cos3d.robot.targets.release_pose`). The arm carries the object
            at the lift's height (:data:`TRANSIT`), goes down to :data:`PLACE_CLEARANCE` above the release pose,
            opens, backs off along the approach and waits 1 s.
        place_on: the instance id of the receptacle (scoring only): **placed** when the released object
            touches it and no longer touches the table or the floor, and its centre lies over the
            receptacle's footprint (its axis-aligned box, x and y).
    """
    from cos3d.robot.sim import load_tabletop_physics
    from cos3d.tabletop.render import import_pybullet, sim

    p = import_pybullet()
    Tw = np.asarray(T_world_base, np.float64)
    if Tw.shape != (4, 4):
        raise ValueError(f"T_world_base must be 4x4, got {Tw.shape}")
    cands = [grasp] if isinstance(grasp, Grasp) else list(grasp)
    if not cands:
        raise ValueError("no grasp to execute")
    fits = [g for g in cands if g.feasible] or cands[:1]
    cands = fits[: max(1, max_candidates)]
    with sim() as cid:
        names: dict[int, str] = {}
        objects = load_tabletop_physics(p, cid, scene_dir, names)
        if target_id not in objects:
            raise ValueError(f"instance {target_id} is not a rigid object of the scene")
        arm = _Panda(p, cid, Tw)
        target = objects[target_id]
        z0 = {i: p.getBasePositionAndOrientation(b, physicsClientId=cid)[0][2] for i, b in objects.items()}
        x0 = {i: np.array(p.getBasePositionAndOrientation(b, physicsClientId=cid)[0]) for i, b in objects.items()}

        def moved() -> dict[int, float]:
            return {i: float(np.linalg.norm(np.array(p.getBasePositionAndOrientation(b, physicsClientId=cid)[0])
                                            - x0[i])) for i, b in objects.items() if i != target_id}
        first = None
        chosen = None
        for k, g in enumerate(cands):
            plan = _plan(p, cid, arm, Tw, g, names, target, check_path)
            if first is None:
                first = plan
            if plan[0] == "ok":
                chosen = (k, g, plan)
                break
            if plan[0] == "collision" and first[0] == "unreachable":
                first = plan  # a reachable candidate's failure says more than an unreachable one's
        if chosen is None:
            status, reason, _, _, hits = first
            if len(cands) > 1:
                reason += f" (best of {len(cands)} candidates)"
            return ArmPickOutcome(status, reason, status != "unreachable", collisions=hits, tried=len(cands),
                                  place_status=None if place is None else "not_held",
                                  place_reason="" if place is None else "nothing was picked")
        k, g, (_, _, q_pre, path, _) = chosen
        opening = min(float(g.width), 2 * arm.finger_max)
        # --- execution in physics, from the pre-grasp configuration
        arm.set(q_pre, opening)
        for j in arm.arm + arm.fingers:
            p.resetJointState(arm.body, j, p.getJointState(arm.body, j, physicsClientId=cid)[0], 0.0,
                              physicsClientId=cid)

        def drive(q_target, steps: int, finger: float | None = None):
            p.setJointMotorControlArray(arm.body, arm.arm, p.POSITION_CONTROL, targetPositions=list(q_target),
                                        forces=[200.0] * len(arm.arm), physicsClientId=cid)
            if finger is not None:
                for j in arm.fingers:
                    p.setJointMotorControl2(arm.body, j, p.POSITION_CONTROL, targetPosition=finger,
                                            force=GRIP_FORCE, maxVelocity=0.2, physicsClientId=cid)
            for _ in range(steps):
                p.stepSimulation(physicsClientId=cid)

        drive(q_pre, 24, opening / 2)
        for _, qq in path[:5]:
            drive(qq, 48)
        drive(path[4][1], 144, 0.0)  # close
        for _, qq in path[5:]:
            drive(qq, 72, 0.0)
        drive(path[-1][1], 240, 0.0)  # hold 1 s
        rise = {i: p.getBasePositionAndOrientation(b, physicsClientId=cid)[0][2] - z0[i] for i, b in objects.items()}
        touching = {c[3] for c in p.getContactPoints(arm.body, target, physicsClientId=cid)}
        held = all(j in touching for j in arm.fingers)
        r = float(rise[target_id])
        lifted_ok = r > LIFT_SUCCESS and held
        place_status, place_reason = None, ""
        if place is not None:
            if not lifted_ok:
                place_status, place_reason = "not_held", "the pick did not hold the object"
            else:
                Tp = np.asarray(place(g) if callable(place) else place, np.float64)
                place_status, place_reason = _execute_place(p, cid, arm, Tw, g, Tp, path[-1][1], drive, objects,
                                                            target, place_on, names)
        displaced = moved()
    if lifted_ok:
        return ArmPickOutcome("lifted", "", True, r, rise, True, grasp_index=k, tried=k + 1, displaced=displaced,
                              place_status=place_status, place_reason=place_reason)
    why = f"object rose {r * 100:.1f} cm" + ("" if held else ", no longer between the fingers")
    return ArmPickOutcome("slipped", why, True, r, rise, held, grasp_index=k, tried=k + 1, displaced=displaced,
                          place_status=place_status, place_reason=place_reason)


def _execute_place(p, cid: int, arm: "_Panda", Tw: np.ndarray, g: Grasp, T_release: np.ndarray, q_lift: np.ndarray,
                   drive, objects: dict[int, int], target: int, place_on: int | None,
                   names: dict[int, str]) -> tuple[str, str]:
    """Carry the held object to ``T_release`` (base frame; the grasp's orientation is kept), release it, back
    off; returns ``(place_status, reason)`` (:func:`simulate_arm_pick`'s ``place``)."""
    Tg = Tw @ g.T_base_grasp
    R = hand_rotation(Tg[:3, :3])
    rel = (Tw @ np.asarray(T_release, np.float64))[:3, 3]
    lifted = Tg[:3, 3] + LIFT * np.array([0.0, 0.0, 1.0])
    top = max(lifted[2], rel[2] + PLACE_CLEARANCE + TRANSIT)
    # over whatever stands between here and there, the receptacle's rim included: the held object's bottom
    # TRANSIT above the tallest body under its straight path (the arm's collision world, as in :func:`_plan`)
    olo, ohi = (np.asarray(v, np.float64) for v in p.getAABB(target, physicsClientId=cid)[:2])
    below = lifted[2] - olo[2]  # the tool centre point above the held object's bottom
    reach = 0.5 * float(np.linalg.norm(ohi[:2] - olo[:2])) + TRANSIT
    path_xy = lifted[:2] + np.linspace(0.0, 1.0, 21)[:, None] * (rel[:2] - lifted[:2])
    for body, name in names.items():
        if body == target or name in ("table", "floor"):
            continue
        lo, hi = (np.asarray(v, np.float64) for v in p.getAABB(body, physicsClientId=cid)[:2])
        if np.any(np.all((path_xy >= lo[:2] - reach) & (path_xy <= hi[:2] + reach), axis=1)):
            top = max(top, hi[2] + TRANSIT + below)

    def pose(x, yaw: float = 0.0) -> np.ndarray:
        c, s_ = np.cos(yaw), np.sin(yaw)
        T = np.eye(4)
        T[:3, :3] = np.array([[c, -s_, 0.0], [s_, c, 0.0], [0.0, 0.0, 1.0]]) @ R
        T[:3, 3] = x
        return T

    waypoints = [(np.array([lifted[0], lifted[1], top]), 0.0)]
    for s_ in np.linspace(0, 1, 6)[1:]:
        waypoints.append((np.array([lifted[0] + s_ * (rel[0] - lifted[0]), lifted[1] + s_ * (rel[1] - lifted[1]),
                                    top]), float(s_)))
    down = rel + np.array([0.0, 0.0, PLACE_CLEARANCE])
    for s_ in np.linspace(0, 1, 5)[1:]:
        waypoints.append((np.array([rel[0], rel[1], top + s_ * (down[2] - top)]), 1.0))
    # ik() resets the joints to test its solutions: remember where the motors hold the arm, to put it back
    held_q = [p.getJointState(arm.body, j, physicsClientId=cid)[0] for j in arm.arm]
    qs: list[np.ndarray] = []
    fail = ""
    for turn in RELEASE_TURNS:  # the hand may turn about the vertical on the way (the wrist's limits)
        qs, q = [], np.asarray(q_lift, np.float64)
        for x, share in waypoints:
            q_new = arm.ik(pose(x, share * turn), [list(q)])
            if q_new is None or np.abs(q_new - q).max() > 1.0:  # no jump to another arm configuration
                fail = f"no joint-limited IK solution on the way to the release pose (at {np.round(x, 3).tolist()})"
                qs = []
                break
            q = q_new
            qs.append(q)
        if qs:
            break
    if not qs:
        arm.set(held_q)
        return "unreachable", fail + f" (hand turned by any of {len(RELEASE_TURNS)} angles)"
    arm.set(held_q)
    q_from = np.asarray(held_q, np.float64)
    for qq in qs:  # carried at a bounded joint speed
        n = max(1, int(np.ceil(float(np.abs(qq - q_from).max()) / CARRY_JOINT_STEP)))
        for s_ in np.linspace(0.0, 1.0, n + 1)[1:]:
            drive(q_from + s_ * (qq - q_from), CARRY_STEPS, 0.0)
        q_from = qq
    drive(qs[-1], 96, 0.0)
    drive(qs[-1], 96, arm.finger_max)  # open
    back = down - 0.1 * Tg[:3, 2]
    held_q = [p.getJointState(arm.body, j, physicsClientId=cid)[0] for j in arm.arm]
    q_back = arm.ik(pose(back, turn), [list(qs[-1])])
    arm.set(held_q)
    if q_back is not None:
        drive(q_back, 96, arm.finger_max)
    drive(q_back if q_back is not None else qs[-1], 240, arm.finger_max)  # 1 s to settle
    if place_on is None or place_on not in objects:
        return "placed", "released (no receptacle to score against)"
    recv = objects[place_on]
    on_recv = bool(p.getContactPoints(target, recv, physicsClientId=cid))
    ground = [b for b, n in names.items() if n in ("table", "floor")]
    on_ground = any(p.getContactPoints(target, b, physicsClientId=cid) for b in ground)
    held = bool(p.getContactPoints(arm.body, target, physicsClientId=cid))
    lo, hi = p.getAABB(recv, physicsClientId=cid)[:2]
    olo, ohi = p.getAABB(target, physicsClientId=cid)[:2]
    mid = (np.array(olo) + np.array(ohi)) / 2
    over = bool(lo[0] <= mid[0] <= hi[0] and lo[1] <= mid[1] <= hi[1])
    if on_recv and not on_ground and over and not held:
        return "placed", ""
    why = []
    if held:
        why.append("still touching the fingers")
    if not on_recv:
        why.append("not touching the receptacle")
    if on_ground:
        why.append("touching the table")
    if not over:
        why.append("its centre is not over the receptacle")
    return "missed", ", ".join(why)


def base_facing(target_xy, distance: float = 0.55, yaw_offset: float = 0.0, z: float | None = None,
                table_top: float = 0.0) -> np.ndarray:
    """A base pose ``distance`` from ``target_xy`` on the −x side, facing it (a convenience for demos
    and the benchmark: a user gives their own)."""
    c, s = np.cos(yaw_offset), np.sin(yaw_offset)
    T = np.eye(4)
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[:2, 3] = np.asarray(target_xy, np.float64)[:2] - distance * np.array([c, s])
    T[2, 3] = table_top if z is None else z
    return T
