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

:mod:`cos3d.robot.bench` is the pick benchmark built on it (and on :mod:`cos3d.robot.arm`).

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
    phx, phy = g.palm_half(half)
    palm = p.createCollisionShape(p.GEOM_BOX, halfExtents=[phx, phy, pd / 2],
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
