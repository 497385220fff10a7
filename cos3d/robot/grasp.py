"""Parallel-jaw grasps from an object's points, checked against the rest of the scene.

All inputs are in the robot base frame (``up`` is the base frame's up, +z by default), in metres.

**Gripper frame** (``T_base_grasp``): the origin is the tool centre point between the fingertips; z is
the approach direction (pointing from the gripper into the object; ``-up`` for a top-down grasp),
x the closing direction (between the finger pads), y = z × x. The fingers extend from the palm at
``-finger_depth`` along z to the origin.

Candidates (:func:`plan_grasps`), at 12 angles measured from the object's own main horizontal axis
(so that a rotated base frame gives the same grasps, rotated):

- **top**: approach along ``-up``; the fingertips go down to ``min(finger_depth, max(0.5·height,
  1 cm))`` below the object's top, through the points above that height;
- **side**: approach horizontally at the object's mid-height (at least half a pad above its bottom);
  the fingertips reach the object's middle or ``finger_depth``, whichever is less.

Along the closing axis, the points the fingers sweep past (within the pad's width) split into runs
wherever a finger fits between two neighbours (a gap wider than its thickness + 2 × clearance); each
run holding ≥ :data:`MIN_HELD_SHARE` of those points is a candidate, the jaws centred on it: the whole
object for a can or a box, a mug's or bowl's wall (a rim grasp) or a handle otherwise.

A candidate is **feasible** when its opening (run width + 2 × clearance) is within ``max_opening``.
It is **collision-free** when no point of the rest of the scene (its Gaussians, the table included)
lies in the volume the hand sweeps from the pre-grasp pose (:data:`APPROACH_DISTANCE` back along the
approach) to the grasp, inflated by half the clearance, and at most :data:`SELF_TOLERANCE` of the
object's own points lie inside the fingers or the palm. The **antipodal quality** is the mean
``|n · x|`` of the contact points (the held points within 5 mm of either jaw, normals from a local
PCA): 1 for faces square to the closing axis, 0 for faces parallel to it. The score ranks
candidates: feasible, then collision-free, then ``quality + 0.5 · held share − 0.5 · opening /
max_opening + 1`` when the jaws hold the object's centre (no torque when lifting) ``+ 0.5`` when no
other point lies within :data:`NEIGHBOUR_MARGIN` of the swept volume (clutter: keep clear of the
neighbours); top grasps first on ties (``approach="auto"``).

The hand reaches the pre-grasp **from above** (a pick arrives over the scene and goes straight down: the
way :func:`cos3d.robot.arm.simulate_arm_pick` moves): the hand at the pre-grasp, raised by up to
:data:`DESCENT`, must not meet the scene either; points there count as collisions. For a side grasp in
clutter that column is where the neighbours stand. With ``reach_from`` (where the arm's base stands), a
side grasp loses ``REACH_WEIGHT · (1 − cos θ) / 2`` of score, θ between its approach direction and the
horizontal line from the base to the object: nothing from the arm's side, 1 from the far side (an arm
reaches around an object rarely); top grasps keep their lead on ties.

The hand: two finger boxes (reaching ``tip_offset`` past the origin) and a palm box behind them, as wide
as the open fingers by default, or the real hand's (:data:`FRANKA_HAND`: the Franka Hand's 0.2 × 0.064 m
palm and its wrist, from pybullet_data's Panda meshes) when given.

Point-cloud work uses numpy and scipy's cKDTree (module docstring of :mod:`cos3d.robot`: open3d was
measured and not needed here).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

APPROACHES = ("top", "side", "auto")
APPROACH_DISTANCE = 0.10
"""Metres: the pre-grasp pose is this far back along the approach; the hand's path from there is
checked for collisions."""
SELF_TOLERANCE = 0.03
"""Share of the object's own surface samples allowed inside the fingers and palm at the grasp pose."""
NEIGHBOUR_MARGIN = 0.01
"""Metres beyond the swept volume (inflated by half the clearance) in which other objects' points cost a grasp
0.5 of score: in clutter, of two collision-free grasps the one that keeps its distance from the neighbours
comes first."""
DESCENT = 0.15
"""Metres above the pre-grasp the hand comes down from (the descent is checked for collisions)."""
DESCENT_STEP = 0.03
"""Metres between the hand poses checked on the descent."""
REACH_WEIGHT = 1.0
"""Score a side grasp approaching from the far side of the object loses (``reach_from``; none from the arm's side)."""
MIN_HELD_SHARE = 0.1
"""A run of points between the jaws must hold this share of the points the fingers sweep past."""


@dataclass(frozen=True)
class GripperSpec:
    """A parallel-jaw gripper (defaults: a Franka Hand's fingers, metres)."""

    max_opening: float = 0.08
    """Widest opening between the finger pads."""
    finger_depth: float = 0.045
    """Finger length from the palm to the tips."""
    finger_width: float = 0.02
    """Pad width across the closing direction (the gripper's y)."""
    finger_thickness: float = 0.012
    """Finger thickness along the closing direction."""
    palm_depth: float = 0.03
    """Palm thickness along the approach direction, behind the fingers."""
    clearance: float = 0.012
    """Free space each side of the object when opening (Gaussian centres lie inside the surface they
    draw, by up to their size), and twice the inflation of the collision boxes."""
    palm_width: float | None = None
    """The palm's extent along the closing direction (None: it spans the open fingers, the old model)."""
    palm_length: float | None = None
    """The palm's extent across the closing direction, along the gripper's y (None: ``finger_width``)."""
    tip_offset: float = 0.0
    """How far the fingertips reach past the grasp origin along the approach (the Panda's tool centre point
    ``panda_grasptarget`` sits 7 mm above its fingertips)."""
    wrist_radius: float = 0.0
    """Half-width of the wrist (the arm's last link) behind the palm, modelled as a box (0: none)."""
    wrist_length: float = 0.0
    """Length of that box along the approach, behind the palm."""

    def validate(self) -> None:
        for name in ("max_opening", "finger_depth", "finger_width", "finger_thickness", "palm_depth"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"GripperSpec.{name} must be a positive number of metres, got {v!r}")
        for name in ("palm_width", "palm_length"):
            v = getattr(self, name)
            if v is not None and not (np.isfinite(v) and v > 0):
                raise ValueError(f"GripperSpec.{name} must be a positive number of metres or None, got {v!r}")
        for name in ("tip_offset", "wrist_radius", "wrist_length"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"GripperSpec.{name} must be >= 0 metres, got {v!r}")
        if not (np.isfinite(self.clearance) and self.clearance >= 0):
            raise ValueError(f"GripperSpec.clearance must be >= 0, got {self.clearance!r}")

    def palm_half(self, half_open: float) -> tuple[float, float]:
        """Half-extents of the palm along the closing direction and across it, for a given half-opening."""
        hx = half_open + self.finger_thickness if self.palm_width is None else max(self.palm_width / 2,
                                                                                  half_open + self.finger_thickness)
        hy = self.finger_width / 2 if self.palm_length is None else max(self.palm_length, self.finger_width) / 2
        return hx, hy


FRANKA_HAND = GripperSpec(
    max_opening=0.08, finger_depth=0.039, finger_width=0.021, finger_thickness=0.0265, palm_depth=0.092,
    clearance=0.012, palm_width=0.205, palm_length=0.064, tip_offset=0.007, wrist_radius=0.045, wrist_length=0.06)
"""The Franka Hand as pybullet_data's ``franka_panda/panda.urdf`` draws it (its collision meshes
``meshes/collision/hand.obj``, ``finger.obj``, ``link7.obj``, measured; Franka's datasheet: 80 mm stroke,
hand about 0.2 m wide): the hand's hull spans 0.2044 m along the closing axis, 0.0633 m across and 0.0919 m
along the approach (hand frame z -0.026…0.066); the fingers are mounted at z 0.0584 and their hulls span
0.054 m along z, 0.021 m across and 0.0265 m along the closing axis, so the tool centre point
(``panda_grasptarget``, z 0.105) has 0.039 m of free finger above it before the palm and the fingertips reach
0.007 m past it; each finger opens 0.04 m. The wrist (``panda_link7``'s hull, about 0.09 m across) follows
behind the palm. The default :class:`GripperSpec` is the smaller palm-less model the free-floating
gripper of :mod:`cos3d.robot.sim` was built with (a palm only as wide as the open fingers); plan with this
one for the Panda (:mod:`cos3d.robot.arm`)."""


@dataclass
class Grasp:
    """One parallel-jaw grasp in the base frame."""

    T_base_grasp: np.ndarray
    """[4, 4] gripper pose (module docstring: origin between the fingertips, z approach, x closing)."""
    approach: str
    """``"top"`` or ``"side"``."""
    width: float
    """Opening to command before closing (object extent between the jaws + 2 × clearance), metres."""
    object_width: float
    """The object's extent between the jaws (what the closed gripper holds), metres."""
    quality: float
    """Antipodal quality in [0, 1] (module docstring)."""
    feasible: bool
    """The opening fits the gripper."""
    collision_free: bool
    """No point of the rest of the scene inside the fingers or the palm."""
    collisions: int = 0
    """Scene points inside the gripper's boxes."""
    score: float = 0.0
    needed_width: float | None = None
    """The opening this grasp needs (object extent + 2 × clearance), not capped at the gripper's: ``width``
    is what to command, capped at ``max_opening``; this is what a ``too_wide`` note reports. None: the
    same as ``width``."""

    neighbours_near: int = 0
    """Scene points within :data:`NEIGHBOUR_MARGIN` outside the swept volume (0: a clear margin all round)."""

    def __post_init__(self):
        if self.needed_width is None:
            self.needed_width = float(self.width)

    @property
    def approach_direction(self) -> np.ndarray:
        """[3] unit approach direction (the pose's z axis)."""
        return self.T_base_grasp[:3, 2].copy()

    def pregrasp(self, distance: float = APPROACH_DISTANCE) -> np.ndarray:
        """[4, 4] the pose ``distance`` back along the approach (where to go first)."""
        T = self.T_base_grasp.copy()
        T[:3, 3] -= distance * T[:3, 2]
        return T

    def to_dict(self) -> dict:
        return {
            "T_base_grasp": self.T_base_grasp.tolist(),
            "approach": self.approach,
            "approach_direction": self.approach_direction.tolist(),
            "width": float(self.width),
            "object_width": float(self.object_width),
            "quality": float(self.quality),
            "feasible": bool(self.feasible),
            "collision_free": bool(self.collision_free),
            "collisions": int(self.collisions),
            "score": float(self.score),
            "needed_width": float(self.needed_width),
            "neighbours_near": int(self.neighbours_near),
        }


def estimate_normals(points: np.ndarray, k: int = 10) -> np.ndarray:
    """``[K, 3]`` unit normals by local PCA over the ``k`` nearest points (sign arbitrary)."""
    from scipy.spatial import cKDTree

    P = np.asarray(points, np.float64)
    n = len(P)
    if n < 3:
        return np.tile([0.0, 0.0, 1.0], (n, 1))
    kk = min(k, n)
    _, nb = cKDTree(P).query(P, k=kk)
    X = P[nb] - P[nb].mean(1, keepdims=True)
    C = np.einsum("nki,nkj->nij", X, X)
    _, v = np.linalg.eigh(C)
    return v[:, :, 0]


def _frame(z: np.ndarray, x: np.ndarray) -> np.ndarray:
    z = z / np.linalg.norm(z)
    x = x - (x @ z) * z
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def _boxes_hits(obstacles: np.ndarray, origin: np.ndarray, R: np.ndarray, boxes: list[tuple]) -> int:
    """Points of ``obstacles`` inside any box ``(center_local [3], half [3])`` of the frame (origin, R)."""
    if len(obstacles) == 0:
        return 0
    local = (obstacles - origin) @ R
    inside = np.zeros(len(local), bool)
    for c, h in boxes:
        inside |= np.all(np.abs(local - np.asarray(c)) <= np.asarray(h), axis=1)
    return int(inside.sum())


@dataclass
class _Ctx:
    P: np.ndarray
    N: np.ndarray
    obstacles: np.ndarray
    up: np.ndarray
    g: GripperSpec
    centre: np.ndarray
    e1: np.ndarray
    """Horizontal axes the candidate angles are measured from: the object's own (so that the grasps
    move with the frame: a rotated base frame gives the same grasps, rotated)."""
    e2: np.ndarray
    candidates: list = field(default_factory=list)
    reach_from: np.ndarray | None = None
    """``[3]`` where the arm's base stands (base frame), or None: no preference of approach."""


def _clusters(u: np.ndarray, gap: float) -> list[tuple[float, float]]:
    """Runs of sorted ``u`` values split where two neighbours are more than ``gap`` apart: the parts of
    the object a pair of fingers can close around (the fingers go into the gaps)."""
    if len(u) == 0:
        return []
    v = np.sort(u)
    cut = np.nonzero(np.diff(v) > gap)[0]
    starts = np.r_[0, cut + 1]
    ends = np.r_[cut, len(v) - 1]
    return [(float(v[a]), float(v[b])) for a, b in zip(starts, ends)]


def _evaluate(ctx: _Ctx, approach: str, R: np.ndarray, tip: np.ndarray, region: np.ndarray) -> list[Grasp]:
    """Grasps with axes ``R`` (x closing, y pad, z approach) whose fingertip centre lies on the line
    ``tip + t x``: one per run (:func:`_clusters`) of the object points ``region`` (bool [K]: the points
    the fingers sweep past) along x, each centred on its run."""
    g = ctx.g
    if region.sum() < 2:
        return []
    ax = R[:, 0]
    u_all = (ctx.P - tip) @ ax
    u_reg = u_all[region]
    out = []
    for lo, hi in _clusters(u_reg, 2 * g.clearance + g.finger_thickness):
        # a run of a few stray points is no part of the object to hold
        if ((u_reg >= lo) & (u_reg <= hi)).sum() < max(3, MIN_HELD_SHARE * len(u_reg)):
            continue
        origin = tip + ax * (lo + hi) / 2
        obj_w = hi - lo
        width = obj_w + 2 * g.clearance
        feasible = width <= g.max_opening
        half_open = min(width, g.max_opening) / 2
        c = g.clearance / 2
        fd, fw, ft, pd, ad = g.finger_depth, g.finger_width, g.finger_thickness, g.palm_depth, APPROACH_DISTANCE
        to = g.tip_offset
        fingers = [
            ((+(half_open + ft / 2), 0.0, (to - fd) / 2), (ft / 2, fw / 2, (fd + to) / 2)),
            ((-(half_open + ft / 2), 0.0, (to - fd) / 2), (ft / 2, fw / 2, (fd + to) / 2)),
        ]
        phx, phy = g.palm_half(half_open)
        palm = [((0.0, 0.0, -fd - pd / 2), (phx, phy, pd / 2))]
        # the rest of the scene: nothing in the volume the hand sweeps from the pre-grasp pose, inflated
        swept = [((0.0, 0.0, (to - fd) / 2 - ad / 2), (half_open + ft + c, fw / 2 + c, (fd + to + ad) / 2 + c)),
                 ((0.0, 0.0, -fd - (pd + ad) / 2), (phx + c, phy + c, (pd + ad) / 2 + c))]
        if g.wrist_radius > 0 and g.wrist_length > 0:
            wl = g.wrist_length
            swept.append(((0.0, 0.0, -fd - pd - (wl + ad) / 2), (g.wrist_radius + c, g.wrist_radius + c,
                                                                (wl + ad) / 2 + c)))
        hits = _boxes_hits(ctx.obstacles, origin, R, swept)
        # the descent to the pre-grasp, from DESCENT above it: the hand (fingers, palm, wrist) at each step
        hand = [((0.0, 0.0, (to - fd) / 2), (half_open + ft + c, fw / 2 + c, (fd + to) / 2 + c)),
                ((0.0, 0.0, -fd - pd / 2), (phx + c, phy + c, pd / 2 + c))]
        if g.wrist_radius > 0 and g.wrist_length > 0:
            hand.append(((0.0, 0.0, -fd - pd - g.wrist_length / 2),
                         (g.wrist_radius + c, g.wrist_radius + c, g.wrist_length / 2 + c)))
        pre = origin - ad * R[:, 2]
        for t in np.arange(DESCENT_STEP, DESCENT + 1e-9, DESCENT_STEP):
            hits += _boxes_hits(ctx.obstacles, pre + t * ctx.up, R, hand)
        # neighbours within a further NEIGHBOUR_MARGIN of the swept volume: a grasp that keeps them at a distance
        # disturbs them less (clutter), ranked ahead of one that brushes past
        m = NEIGHBOUR_MARGIN
        near = _boxes_hits(ctx.obstacles, origin, R, [(cc, tuple(v + m for v in h)) for cc, h in swept]) - hits
        # the object itself: the fingers and the palm at the grasp pose must not push into it (a few
        # surface samples of its own there are the blur of its Gaussians, not a collision)
        own = _boxes_hits(ctx.P, origin, R, fingers + palm)
        hits += own if own > SELF_TOLERANCE * len(ctx.P) else 0
        uu = u_all - (lo + hi) / 2
        held = region & (uu >= -obj_w / 2 - 1e-9) & (uu <= obj_w / 2 + 1e-9)
        # antipodal quality: the held points within 5 mm of either jaw
        contact = held & ((uu < -obj_w / 2 + 0.005) | (uu > obj_w / 2 - 0.005))
        quality = float(np.abs(ctx.N[contact] @ ax).mean()) if contact.any() else 0.0
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = origin
        # prefer holding more of the object (its mass centre) and narrower, well-aligned jaws
        share = float(held.sum()) / max(int(region.sum()), 1)
        # jaws around the object's mass centre lift it without a torque
        centred = lo - 1e-9 <= float((ctx.centre - tip) @ ax) <= hi + 1e-9
        score = quality + 0.5 * share - 0.5 * min(width, 2 * g.max_opening) / g.max_opening + (1.0 if centred else 0.0)
        score += (2.0 if hits == 0 else 0.0) + (4.0 if feasible else 0.0) + (0.5 if near == 0 else 0.0)
        if ctx.reach_from is not None and approach == "side":
            u = ctx.centre - ctx.reach_from
            u = u - (u @ ctx.up) * ctx.up
            d = R[:, 2] - (R[:, 2] @ ctx.up) * ctx.up
            if np.linalg.norm(u) > 1e-9 and np.linalg.norm(d) > 1e-9:
                align = float(u @ d / (np.linalg.norm(u) * np.linalg.norm(d)))
                score -= REACH_WEIGHT * (1.0 - align) / 2  # a penalty: top grasps keep their lead
        out.append(Grasp(T, approach, float(min(width, g.max_opening)), float(obj_w), quality, bool(feasible),
                         hits == 0, hits, float(score), needed_width=float(width), neighbours_near=int(near)))
    return out


def _top(ctx: _Ctx, n_yaw: int) -> list[Grasp]:
    g, P, up = ctx.g, ctx.P, ctx.up
    h = P @ up
    top, bottom = np.percentile(h, 98), np.percentile(h, 2)
    height = top - bottom
    depth = min(g.finger_depth, max(0.5 * height, 0.01))
    # the fingertips reach ``depth`` below the top; the fingers sweep past every point above that
    band = h >= top - depth
    e1, e2 = ctx.e1, ctx.e2
    centre = P[band].mean(0)  # a mean, not a per-axis median: it moves with the frame
    tip = centre + (top - depth - centre @ up) * up
    out = []
    for k in range(n_yaw):
        th = np.pi * k / n_yaw
        R = _frame(-up, np.cos(th) * e1 + np.sin(th) * e2)
        v = (P - tip) @ R[:, 1]
        region = band & (np.abs(v) <= g.finger_width / 2 + g.clearance)
        for gr in _evaluate(ctx, "top", R, tip, region):
            gr.score += 0.25  # top-down first on ties: the simplest motion
            out.append(gr)
    return out


def _side(ctx: _Ctx, n_dir: int) -> list[Grasp]:
    g, P, up = ctx.g, ctx.P, ctx.up
    h = P @ up
    top, bottom = np.percentile(h, 98), np.percentile(h, 2)
    z = max(bottom + 0.5 * (top - bottom), bottom + g.finger_width / 2 + 2 * g.clearance)
    z = min(z, top)
    slab = np.abs(h - z) <= g.finger_width / 2 + g.clearance
    if slab.sum() < 2:
        return []
    e1, e2 = ctx.e1, ctx.e2
    c = P[slab].mean(0)
    c = c + (z - c @ up) * up
    out = []
    for k in range(n_dir):
        th = 2 * np.pi * k / n_dir
        d = np.cos(th) * e1 + np.sin(th) * e2  # approach direction
        R = _frame(d, np.cross(up, d))
        s = (P - c) @ d
        s_min, s_max = float(s[slab].min()), float(s[slab].max())
        s_tip = min(s_min + g.finger_depth, 0.5 * (s_min + s_max))
        # the fingers sweep past every slab point in front of their tips
        out += _evaluate(ctx, "side", R, c + s_tip * d, slab & (s <= s_tip))
    return out


def _horizontal_axes(P: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The object's main horizontal axis (PCA of the points projected along ``up``; its sign makes the
    third moment positive) and ``up × e1``: axes attached to the object, not to the frame."""
    X = P - P.mean(0)
    X = X - (X @ up)[:, None] * up
    w, v = np.linalg.eigh(X.T @ X)
    e1 = v[:, 2] - (v[:, 2] @ up) * up
    if np.linalg.norm(e1) < 1e-9:  # no horizontal extent: any horizontal axis
        e1 = np.cross(up, [1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.cross(up, [0.0, 1.0, 0.0])
    e1 = e1 / np.linalg.norm(e1)
    if ((X @ e1) ** 3).sum() < 0:
        e1 = -e1
    return e1, np.cross(up, e1)


def plan_grasps(
    points: np.ndarray,
    obstacles: np.ndarray | None = None,
    *,
    up: np.ndarray | None = None,
    approach: str = "auto",
    gripper: GripperSpec | None = None,
    normals: np.ndarray | None = None,
    n_angles: int = 12,
    reach_from: np.ndarray | None = None,
) -> list[Grasp]:
    """Grasp candidates for an object, best first (module docstring).

    Args:
        points: ``[K, 3]`` the object's points (base frame).
        obstacles: ``[M, 3]`` the rest of the scene's points (table included) for collision checks.
        up: ``[3]`` the base frame's up (default +z).
        approach: ``"top"``, ``"side"`` or ``"auto"`` (both, ranked together).
        normals: ``[K, 3]`` the points' normals (estimated by local PCA when None).
        reach_from: ``[3]`` where the arm's base stands: side grasps approaching from its side rank first
            (module docstring); None: no preference.
    """
    if approach not in APPROACHES:
        raise ValueError(f"approach must be one of {APPROACHES}, got {approach!r}")
    g = gripper or GripperSpec()
    g.validate()
    P = np.asarray(points, np.float64).reshape(-1, 3)
    if len(P) == 0:
        return []
    up_v = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, np.float64)
    up_v = up_v / np.linalg.norm(up_v)
    N = estimate_normals(P) if normals is None else np.asarray(normals, np.float64)
    O = np.zeros((0, 3)) if obstacles is None else np.asarray(obstacles, np.float64).reshape(-1, 3)
    # only obstacles near the object matter
    if len(O):
        lo, hi = P.min(0) - 0.3, P.max(0) + 0.3 + DESCENT
        O = O[np.all((O >= lo) & (O <= hi), axis=1)]
    e1, e2 = _horizontal_axes(P, up_v)
    rf = None if reach_from is None else np.asarray(reach_from, np.float64)
    if rf is not None and (rf.shape != (3,) or not np.all(np.isfinite(rf))):
        raise ValueError(f"reach_from must be 3 finite numbers (where the arm's base stands, in the base frame), "
                         f"got shape {list(rf.shape)}")
    ctx = _Ctx(P=P, N=N, obstacles=O, up=up_v, g=g, centre=P.mean(0), e1=e1, e2=e2, reach_from=rf)
    out: list[Grasp] = []
    if approach in ("top", "auto"):
        out += _top(ctx, n_angles)
    if approach in ("side", "auto"):
        out += _side(ctx, n_angles)
    out.sort(key=lambda gr: -gr.score)
    return out
