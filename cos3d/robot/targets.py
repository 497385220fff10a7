"""Pick and place targets from prompts, in the robot's base frame.

``pick_targets(scene, "red mug", T_base_scene=T)`` answers the prompt with the scene's query engine
(text, image, click and part prompts alike), then for every object found, best first:

- moves its points, centroid and oriented box into the base frame (:mod:`cos3d.robot.frames`);
- plans parallel-jaw grasps against the rest of the scene's Gaussians (:mod:`cos3d.robot.grasp`);
- raises honest flags: ``too_wide`` (no grasp fits the gripper's opening), ``collision`` (every grasp
  that fits touches other Gaussians), ``occluded`` (more than :data:`OCCLUDED_FRACTION` of its points are
  covered from above by other Gaussians: something rests on or overhangs it), ``low_confidence``
  (fewer than :data:`MIN_GAUSSIANS` Gaussians, or a score under the query's presence threshold).

A prompt whose target is absent gives an empty :class:`Targets` whose ``reason`` says why: never a
guess. ``"the handle of the mug"`` and ``"the mug by the handle"`` ("pick up the mug by its handle") are
read as the part query ``query("handle", within="mug")`` when that finds something (else as a whole
prompt); the grasps are then planned on the part's points, the rest of the object an obstacle.

``place_target(scene, "bowl")`` gives where to put something: inside the receptacle's opening when
its middle is well below its rim (a bowl, a mug, a tray's floor), else on its top surface; flagged
``occupied`` when something stands within :data:`MIN_PLACE_RADIUS` of that point.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cos3d.core.errors import Cos3dError
from cos3d.query.engine import QueryResult
from cos3d.query.thin_parts import attach_thin_parts as grow_thin_parts
from cos3d.robot.frames import (
    as_transform,
    transform_directions,
    transform_from_correspondences,
    transform_points,
    transform_scale,
)
from cos3d.robot.grasp import APPROACHES, Grasp, GripperSpec, plan_grasps

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.query.objects import Object3D
    from cos3d.pipeline.trained import TrainedScene

MIN_GAUSSIANS = 30
"""Objects with fewer Gaussians are flagged ``low_confidence`` (too little evidence for a grasp)."""
OCCLUDED_FRACTION = 0.2
"""Share of an object's points covered from above by other Gaussians that flags it ``occluded``."""
SAMPLE_SIGMA = 0.5
"""Surface samples of an object: its Gaussians' centres and their two largest axes' ends at this many σ."""
MIN_PLACE_RADIUS = 0.03
"""A placement point with less free radius is flagged ``occupied``."""
OBSTACLE_OPACITY = 0.1
"""Gaussians less opaque than this are ignored as obstacles (floaters)."""

_BY_PART = re.compile(r"^\s*(?:(?:pick\s+up|grab|take|lift|hold|grasp)\s+)?(?:the\s+|a\s+|an\s+)?(?P<whole>.+?)"
                      r"\s+by\s+(?:the\s+|its\s+|a\s+)?(?P<part>.+?)\s*$", re.I)
""""the mug by the handle", "pick up the mug by its handle": the part query ``query(part, within=whole)``."""
_PART_OF = re.compile(r"^\s*(?:the\s+|a\s+)?(?P<part>.+?)\s+of\s+(?:the\s+|a\s+|an\s+)?(?P<whole>.+?)\s*$", re.I)


@dataclass
class Box:
    """An oriented box ``T_base_box``: ``x = center + R @ x_box``, ``|x_box_i| <= extent_i / 2``."""

    center: np.ndarray
    R: np.ndarray
    extent: np.ndarray

    def contains(self, points: np.ndarray, tol: float = 1e-6) -> np.ndarray:
        local = (np.asarray(points, np.float64) - self.center) @ self.R
        return np.all(np.abs(local) <= self.extent / 2 + tol, axis=-1)

    def to_dict(self) -> dict:
        return {"center": self.center.tolist(), "R": self.R.tolist(), "extent": self.extent.tolist()}


@dataclass
class PickTarget:
    """One object to pick, in the base frame (metres)."""

    object_id: int
    """The object's id in the query answer (a Gaussian id; a ``within_object`` handle)."""
    score: float
    """The object's score in the query answer (raw relevancy for text/image prompts)."""
    centroid: np.ndarray
    """[3] opacity-weighted centre of its Gaussians."""
    box: Box
    """Its oriented box (PCA of its Gaussian centres)."""
    points: np.ndarray
    """[K, 3] float32: its surface points (Gaussian centres)."""
    gaussians: np.ndarray
    """[K] int64 Gaussian ids in the run."""
    grasp: Grasp | None
    """The best grasp (None when no candidate could be formed, e.g. a single point)."""
    grasps: list[Grasp] = field(default_factory=list)
    """Every candidate, best first (alternatives when the best one fails)."""
    occluded_fraction: float = 0.0
    """Share of its points covered from above by other Gaussians."""
    flags: list[str] = field(default_factory=list)
    """Any of ``too_wide``, ``collision``, ``occluded``, ``low_confidence``."""
    notes: list[str] = field(default_factory=list)
    """One line per flag, saying why."""

    @property
    def T_base_grasp(self) -> np.ndarray | None:
        """[4, 4] the best grasp's pose, or None."""
        return None if self.grasp is None else self.grasp.T_base_grasp

    @property
    def approach_direction(self) -> np.ndarray | None:
        return None if self.grasp is None else self.grasp.approach_direction

    @property
    def width(self) -> float | None:
        """Gripper opening to command before closing (metres)."""
        return None if self.grasp is None else self.grasp.width

    @property
    def too_wide(self) -> bool:
        return "too_wide" in self.flags

    @property
    def occluded(self) -> bool:
        return "occluded" in self.flags

    @property
    def low_confidence(self) -> bool:
        return "low_confidence" in self.flags

    def to_dict(self, points: bool = False) -> dict:
        d = {
            "object_id": int(self.object_id),
            "score": float(self.score),
            "centroid": self.centroid.tolist(),
            "box": self.box.to_dict(),
            "num_gaussians": int(len(self.gaussians)),
            "grasp": None if self.grasp is None else self.grasp.to_dict(),
            "occluded_fraction": float(self.occluded_fraction),
            "flags": list(self.flags),
            "notes": list(self.notes),
        }
        if points:
            d["points"] = self.points.tolist()
        return d


@dataclass
class PlaceTarget:
    """Where to put something on or into an object, in the base frame."""

    object_id: int
    score: float
    kind: str
    """``"inside"`` (within the opening, above its floor) or ``"on_top"`` (on the top surface)."""
    T_base_place: np.ndarray
    """[4, 4] the placement pose: origin at the point where the held object's bottom should go
    (``clearance`` above the surface), z = up, x along the receptacle's longer horizontal side."""
    surface_height: float
    """Height of the supporting surface (floor of the opening or top) along up, base frame."""
    rim_height: float
    """Height of the receptacle's top along up."""
    radius: float
    """Free radius around the placement point on that surface (metres): the horizontal distance to the
    nearest Gaussian, of the object or anything else, standing higher than the surface."""
    box: Box
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def position(self) -> np.ndarray:
        return self.T_base_place[:3, 3].copy()

    def to_dict(self) -> dict:
        return {
            "object_id": int(self.object_id), "score": float(self.score), "kind": self.kind,
            "T_base_place": self.T_base_place.tolist(), "surface_height": float(self.surface_height),
            "rim_height": float(self.rim_height), "radius": float(self.radius), "box": self.box.to_dict(),
            "flags": list(self.flags), "notes": list(self.notes),
        }


class Targets(list):
    """A list of :class:`PickTarget` / :class:`PlaceTarget`, best first, with the query's answer.

    Empty when the target is absent: ``reason`` says why (``no_target`` is True then).
    """

    def __init__(self, items=(), *, reason: str = "", no_target: bool = False, query: "QueryResult | None" = None):
        super().__init__(items)
        self.reason = reason
        self.no_target = no_target
        self.query = query

    def to_dict(self, points: bool = False) -> dict:
        items = [t.to_dict(points=points) if isinstance(t, PickTarget) else t.to_dict() for t in self]
        return {"reason": self.reason, "no_target": self.no_target, "targets": items}


# --------------------------------------------------------------------------------------------------


def _resolve_scene(scene: "TrainedScene | str | Path") -> "TrainedScene":
    if isinstance(scene, (str, Path)):
        from cos3d.pipeline.trained import load

        return load(scene)
    return scene


def _resolve_T(T_base_scene: np.ndarray | None, correspondences: tuple | None) -> np.ndarray:
    if correspondences is not None:
        if T_base_scene is not None:
            raise ValueError("give T_base_scene or correspondences, not both")
        pts_scene, pts_base = correspondences
        return transform_from_correspondences(pts_scene, pts_base, scale=True)
    return as_transform(T_base_scene)


def _answer(scene: "TrainedScene", prompt: Any, query: dict) -> "QueryResult":
    """The query answer for ``prompt`` (text, a QueryResult, or None with image/click/... kwargs)."""
    if prompt is not None and not isinstance(prompt, str):
        if hasattr(prompt, "objects") and hasattr(prompt, "no_target"):
            return prompt
        raise TypeError(f"prompt must be text or a QueryResult, got {type(prompt).__name__}")
    if isinstance(prompt, str) and not query:
        m = _BY_PART.match(prompt) or _PART_OF.match(prompt)
        if m:
            part = scene.query(m.group("part"), within=m.group("whole"))
            if part.objects:
                return part
    return scene.query(prompt, **query)


def _gaussian_points(scene: "TrainedScene") -> tuple[np.ndarray, np.ndarray]:
    """All Gaussian centres [N, 3] (scene frame) and their opacities [N] as numpy."""
    g = scene.gaussians
    return g.means.detach().cpu().double().numpy(), g.opacities.detach().cpu().double().numpy()


def surface_samples(scene: "TrainedScene", ids: np.ndarray) -> np.ndarray:
    """``[5K, 3]`` scene-frame points on the surface the Gaussians ``ids`` draw: each centre and the
    ends of its two largest axes at ±``SAMPLE_SIGMA`` σ (centres alone are sparse on a small or lightly
    trained object, and a gripper finger would fit into the gaps between them; ±1 σ made a coarse
    object look 3 cm wider than it is)."""
    from cos3d.core.rotations import quat_to_rotmat

    g = scene.gaussians
    idx = np.asarray(ids, np.int64)
    mu = g.means[idx].detach().cpu().double().numpy()
    R = quat_to_rotmat(g.quats[idx].detach().cpu().double().numpy())  # [K, 3, 3], columns = axes
    sc = g.scales[idx].detach().cpu().double().numpy()
    order = np.argsort(-sc, axis=1)[:, :2]
    out = [mu]
    for j in range(2):
        a = order[:, j]
        ax = R[np.arange(len(idx)), :, a] * (SAMPLE_SIGMA * sc[np.arange(len(idx)), a])[:, None]
        out += [mu + ax, mu - ax]
    return np.concatenate(out, 0)


def _base_box(T: np.ndarray, box: Any) -> Box:
    s = transform_scale(T)
    R = transform_directions(T, np.asarray(box.R, np.float64).T).T
    return Box(center=transform_points(T, box.center), R=R, extent=np.asarray(box.extent, np.float64) * s)


def attach_thin_parts(res: "QueryResult", obj: "Object3D", taken: np.ndarray) -> "Object3D":
    """The whole object: ``obj`` of a text answer ``res`` with the thin parts the query's instance-space
    refinement left out (a toy robot's arm and claw), by :func:`cos3d.query.thin_parts.attach_thin_parts`;
    ``taken``: bool [N], the answer's other objects. Image, click and part answers, and a hand-made answer
    without its engine, are returned unchanged: a part stays a part."""
    if not isinstance(res, QueryResult) or res.engine is None or res.kind != "text" or not isinstance(res.query, str):
        return obj
    eng = res.engine
    if obj.num < 3 or eng.settings.attach_thin_parts:  # the engine's answer already holds them
        return obj
    try:
        R = eng.relevancy(eng.embed_text([res.query]), res.level)[0].detach().cpu().double().numpy()
    except Cos3dError:  # a prompt the engine can no longer embed as text: leave the answer as it is
        return obj
    return grow_thin_parts(obj, relevancy=R, unit=eng.level_state(res.level).unit_np,
                           means=eng.means.detach().cpu().numpy(), scales=eng.scales.detach().cpu().numpy(),
                           opacity=eng.opacity.detach().cpu().numpy(), taken=taken)


def covered_from_above(points: np.ndarray, others: np.ndarray, up: np.ndarray, radius: float = 0.01) -> np.ndarray:
    """[K] bool: which ``points`` have one of ``others`` above them within ``radius`` horizontally
    (and more than ``radius`` higher)."""
    from scipy.spatial import cKDTree

    P = np.asarray(points, np.float64)
    if len(P) == 0 or len(others) == 0:
        return np.zeros(len(P), bool)
    up = up / np.linalg.norm(up)
    hp, ho = P @ up, others @ up
    cand = others[ho > hp.min() + radius]
    if len(cand) == 0:
        return np.zeros(len(P), bool)
    hc = cand @ up
    flat = lambda X: X - (X @ up)[:, None] * up  # noqa: E731
    tree = cKDTree(flat(cand))
    out = np.zeros(len(P), bool)
    for i, nb in enumerate(tree.query_ball_point(flat(P), radius)):
        if nb and hc[nb].max() > hp[i] + radius:
            out[i] = True
    return out


def pick_targets(
    scene: "TrainedScene | str | Path",
    prompt: "str | QueryResult | None" = None,
    *,
    T_base_scene: np.ndarray | None = None,
    correspondences: tuple[np.ndarray, np.ndarray] | None = None,
    approach: str = "auto",
    k: int | None = None,
    gripper: GripperSpec | None = None,
    up: np.ndarray | None = None,
    branch: str = "field",
    reach_from: np.ndarray | None = None,
    **query: Any,
) -> Targets:
    """Pick targets for a prompt, best first, in the robot base frame (module docstring).

    Args:
        scene: a loaded run (``cos3d.load(RUN)``), a run folder, or a served run (``cos3d.serve.client.load(RUN)``:
            the server computes the targets).
        prompt: text (``"red mug"``, ``"the handle of the mug"``), an earlier ``QueryResult``, or None
            with image/click keywords (``image=, box=, mask=, points=, click=, within=``: those of
            ``TrainedScene.query``).
        T_base_scene: [4, 4] scene → base similarity (default identity: the scene frame is the base).
        correspondences: ``(points_scene [K, 3], points_base [K, 3])`` instead of ``T_base_scene``
            (scale estimated: for metric-less COLMAP scenes).
        approach: ``"top"``, ``"side"`` or ``"auto"``.
        k: at most this many targets (default: every object found).
        gripper: the parallel-jaw gripper (:class:`GripperSpec`; default a Franka Hand).
        up: [3] up in the base frame (default +z).
        branch: how a text prompt is answered (``QueryEngine.query``'s): ``"field"``, ``"2d"`` (SAM 3's concept
            masks lifted) or ``"fused"``.
        reach_from: [3] where the arm's base stands, in the base frame: side grasps that approach from the
            arm's side rank first (:func:`cos3d.robot.grasp.plan_grasps`). Default: the base frame's origin
            when ``T_base_scene`` or ``correspondences`` is given (the frame is then the robot's), else no
            preference.

    Returns:
        :class:`Targets` (a list of :class:`PickTarget`); empty with ``reason`` when nothing is there.
    """
    if approach not in APPROACHES:
        raise ValueError(f"approach must be one of {APPROACHES}, got {approach!r}")
    if branch != "field":
        query["branch"] = branch
    if callable(getattr(scene, "remote_targets", None)):  # a run served by cos3d serve (cos3d.serve.client)
        return scene.remote_targets("pick", prompt, T_base_scene=T_base_scene, correspondences=correspondences,
                                    approach=approach, k=k, gripper=gripper, up=up, reach_from=reach_from, **query)
    if k is not None and k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    ts = _resolve_scene(scene)
    T = _resolve_T(T_base_scene, correspondences)
    up_v = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, np.float64) / np.linalg.norm(up)
    if reach_from is None and (T_base_scene is not None or correspondences is not None):
        reach_from = np.zeros(3)
    rf = None if reach_from is None else np.asarray(reach_from, np.float64)
    if rf is not None and (rf.shape != (3,) or not np.all(np.isfinite(rf))):
        raise ValueError(f"reach_from must be 3 finite numbers (where the arm's base stands, in the base frame), "
                         f"got shape {list(rf.shape)}")
    res = _answer(ts, prompt, query)
    if res.no_target or not res.objects:
        return Targets(reason=res.reason or "no object matched the prompt", no_target=True, query=res)
    means, opac = _gaussian_points(ts)
    solid = opac > OBSTACLE_OPACITY
    threshold = getattr(res, "threshold", None)
    out = []
    answered = np.zeros(len(means), bool)  # every object's Gaussians: thin parts never move between objects
    for o in res.objects:
        answered[o.gaussians.detach().cpu().numpy().astype(np.int64)] = True
    for obj in res.objects[: k or len(res.objects)]:
        obj = attach_thin_parts(res, obj, answered)
        ids = obj.gaussians.detach().cpu().numpy().astype(np.int64)
        answered[ids] = True
        mine = np.zeros(len(means), bool)
        mine[ids] = True
        P = transform_points(T, means[ids])
        others_ids = np.nonzero(solid & ~mine)[0]
        others = transform_points(T, means[others_ids])
        grasps = plan_grasps(transform_points(T, surface_samples(ts, ids)), others, up=up_v, approach=approach,
                             gripper=gripper, reach_from=rf)
        best = grasps[0] if grasps else None
        covered = covered_from_above(P, others, up_v)
        frac = float(covered.mean()) if len(covered) else 0.0
        flags, notes = [], []
        if best is not None and not best.feasible:
            flags.append("too_wide")
            notes.append(f"narrowest grasp needs {min(g.needed_width for g in grasps) * 100:.1f} cm, the gripper opens "
                         f"{(gripper or GripperSpec()).max_opening * 100:.1f} cm")
        if best is not None and best.feasible and not best.collision_free:
            flags.append("collision")
            notes.append(f"every grasp that fits touches other Gaussians ({best.collisions} points in the gripper)")
        if frac > OCCLUDED_FRACTION:
            flags.append("occluded")
            notes.append(f"{frac:.0%} of its points are covered from above by other Gaussians")
        low = []
        if len(ids) < MIN_GAUSSIANS:
            low.append(f"only {len(ids)} Gaussians (< {MIN_GAUSSIANS})")
        if threshold is not None and obj.score < float(threshold):
            low.append(f"score {obj.score:.3f} under the presence threshold {float(threshold):.3f}")
        if best is None:
            low.append("too few points to form a grasp")
        if low:
            flags.append("low_confidence")
            notes.append("; ".join(low))
        out.append(PickTarget(
            object_id=int(obj.id), score=float(obj.score), centroid=transform_points(T, obj.centroid),
            box=_base_box(T, obj.box), points=P.astype(np.float32), gaussians=ids, grasp=best, grasps=grasps,
            occluded_fraction=frac, flags=flags, notes=notes,
        ))
    return Targets(out, reason=res.reason, query=res)


def release_pose(pick: PickTarget, grasp: Grasp, place: PlaceTarget) -> np.ndarray:
    """``[4, 4]`` where the gripper (its tool centre point, base frame) lets go of the object ``pick`` held by
    ``grasp`` so that it lands at ``place``: the object's lowest point (its points along the place's up) at the
    place point, its centroid straight above it; the hand keeps the grasp's orientation (no regrasp)."""
    up = np.asarray(place.T_base_place[:3, 2], np.float64)
    P = np.asarray(pick.points, np.float64)
    g = np.asarray(grasp.T_base_grasp[:3, 3], np.float64)
    above_bottom = float(g @ up - (P @ up).min()) if len(P) else 0.0
    off = g - np.asarray(pick.centroid, np.float64)
    off = off - (off @ up) * up
    T = np.asarray(grasp.T_base_grasp, np.float64).copy()
    T[:3, 3] = place.position + off + above_bottom * up
    return T


def place_target(
    scene: "TrainedScene | str | Path",
    prompt: "str | QueryResult | None" = None,
    *,
    T_base_scene: np.ndarray | None = None,
    correspondences: tuple[np.ndarray, np.ndarray] | None = None,
    clearance: float = 0.01,
    k: int | None = None,
    up: np.ndarray | None = None,
    **query: Any,
) -> Targets:
    """Placement poses on or into the objects a prompt names (``"bowl"``, ``"into the bowl"``, ``"tray"``).

    A leading ``into``/``in``/``on``/``onto`` (+ ``the``) is dropped from a text prompt. Per object: the
    central column (within a third of its smaller horizontal half-extent of its middle) is compared
    with its rim: when the column's top is more than 30 % of the object's height (and 1 cm) below the
    rim, the object has an opening and the target is ``inside``, on the opening's floor; otherwise
    ``on_top``, on the top surface. Other arguments as :func:`pick_targets`.
    """
    if callable(getattr(scene, "remote_targets", None)):  # a run served by cos3d serve (cos3d.serve.client)
        return scene.remote_targets("place", prompt, T_base_scene=T_base_scene, correspondences=correspondences,
                                    clearance=clearance, k=k, up=up, **query)
    ts = _resolve_scene(scene)
    T = _resolve_T(T_base_scene, correspondences)
    up_v = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, np.float64) / np.linalg.norm(up)
    if isinstance(prompt, str):
        prompt = re.sub(r"^\s*(?:put\s+it\s+)?(?:into|in|onto|on|inside)\s+(?:the\s+|a\s+)?", "", prompt, flags=re.I)
    res = _answer(ts, prompt, query)
    if res.no_target or not res.objects:
        return Targets(reason=res.reason or "no object matched the prompt", no_target=True, query=res)
    means, opac = _gaussian_points(ts)
    out = []
    for obj in res.objects[: k or len(res.objects)]:
        ids = obj.gaussians.detach().cpu().numpy().astype(np.int64)
        P = transform_points(T, means[ids])
        box = _base_box(T, obj.box)
        h = P @ up_v
        rim, bottom = float(np.percentile(h, 98)), float(np.percentile(h, 2))
        height = rim - bottom
        flat = P - h[:, None] * up_v
        centre_flat = flat.mean(0)
        # the box's horizontal extents: project its axes
        horiz = [box.extent[i] * np.linalg.norm(box.R[:, i] - (box.R[:, i] @ up_v) * up_v) for i in range(3)]
        small = sorted(horiz)[1] if len(horiz) == 3 else min(horiz)
        r_col = max(small / 6, 0.005)
        d = np.linalg.norm(flat - centre_flat, axis=1)
        col = d <= r_col
        flags, notes = [], []
        if col.sum() < 3:
            col = d <= 2 * r_col
            if col.sum() < 3:
                flags.append("low_confidence")
                notes.append("few points in the middle of the object")
        surface = float(h[col].max()) if col.any() else rim
        inside = (rim - surface) > max(0.3 * height, 0.01)
        kind = "inside" if inside else "on_top"
        # free radius: horizontal distance from the middle to the nearest point, of the object or of
        # anything else (what stands on a table), higher than the surface
        mine = np.zeros(len(means), bool)
        mine[ids] = True
        O = transform_points(T, means[(opac > OBSTACLE_OPACITY) & ~mine])
        ho = O @ up_v
        do = np.linalg.norm(O - ho[:, None] * up_v - centre_flat, axis=1)
        higher_o = (ho > surface + 0.01) & (ho < surface + 0.3)
        higher = h > surface + 0.01
        radius = float(min(d[higher].min() if higher.any() else max(horiz) / 2,
                           do[higher_o].min() if higher_o.any() else np.inf))
        if radius < MIN_PLACE_RADIUS:
            flags.append("occupied")
            notes.append(f"something stands {radius * 100:.1f} cm from the placement point")
        # x along the longer horizontal box axis
        ax = int(np.argmax(horiz))
        x = box.R[:, ax] - (box.R[:, ax] @ up_v) * up_v
        x = x / max(np.linalg.norm(x), 1e-12)
        Tp = np.eye(4)
        Tp[:3, :3] = np.stack([x, np.cross(up_v, x), up_v], axis=1)
        Tp[:3, 3] = centre_flat + (surface + clearance) * up_v
        out.append(PlaceTarget(object_id=int(obj.id), score=float(obj.score), kind=kind, T_base_place=Tp,
                               surface_height=surface, rim_height=rim, radius=radius, box=box, flags=flags,
                               notes=notes))
    return Targets(out, reason=res.reason, query=res)
