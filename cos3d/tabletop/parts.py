"""Parts of rigid tabletop objects found from their mesh's geometry: a mug's or a frying pan's handle and body.

Both are a round body standing on the table with one handle sticking out sideways. From the mesh's
vertices (scaled, turned upright: :func:`upright_vertices`):

1. the body's radius ``R`` is half the footprint's *smaller* extent (the handle lengthens the other one);
   the handle's axis is the footprint's longer horizontal axis;
2. the body's centre lies ``R`` in from one end of that axis: the end whose circle leaves fewer vertices
   outside it on the side away from the handle (the wrong end's circle leaves the body's back outside);
3. a point belongs to the **handle** when it lies more than ``R + margin`` from the centre *along the handle's
   axis* (``margin`` = max(3 mm, 5 % of R): the body's wall and a flared rim stay body), else to the **body**.

Part maps (``cos3d prepare tabletop --object-parts``) label each pixel of such an object by back-projecting its
depth into the object's upright frame and applying rule 3 (:func:`label_object_parts`). The geometry is written
to ``meta.json`` (``parts.<id>.geometry``), so a benchmark can tell whether a grasp held the handle
(:func:`in_handle`), ground truth for scoring only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from cos3d.tabletop.catalog import CatalogEntry, asset_path


@dataclass(frozen=True)
class PartSpec:
    names: tuple[str, ...]
    """Training names (parts.json)."""
    eval_names: tuple[str, ...] = ()
    """Held-out phrasings (eval_prompts.json ``parts``): never a training name of the scene."""


OBJECT_PARTS: dict[str, dict[str, PartSpec]] = {
    "red_coffee_mug": {"handle": PartSpec(("handle", "mug handle"), ("grip", "loop")),
                       "body": PartSpec(("mug body",))},
    "blue_mug": {"handle": PartSpec(("handle", "mug handle"), ("grip", "loop")),
                 "body": PartSpec(("mug body",))},
    "frying_pan": {"handle": PartSpec(("handle", "pan handle"), ("grip",)),
                   "body": PartSpec(("pan body",))},
}
"""Catalogue key → its parts (handle first). Other objects have no parts."""


@dataclass(frozen=True)
class PartGeometry:
    """A round body and its handle, in the object's upright frame (metres; :mod:`module docstring`)."""

    centre: tuple[float, float]
    """The body's axis (x, y)."""
    radius: float
    axis: tuple[float, float]
    """Unit direction from the centre towards the handle."""
    margin: float
    z_range: tuple[float, float]
    """Heights of the handle's vertices (lowest, highest)."""
    parts: dict[str, PartSpec]

    def handle_mask(self, local: np.ndarray, tol: float = 0.0) -> np.ndarray:
        """[K] bool: which upright-frame points ``[K, 3]`` lie in the handle (``tol`` metres looser)."""
        P = np.asarray(local, np.float64).reshape(-1, 3)
        t = (P[:, :2] - np.asarray(self.centre)) @ np.asarray(self.axis)
        return t > self.radius + self.margin - tol

    def to_dict(self) -> dict:
        return {"frame": "upright object frame (meta.json T_world_object, up axis turned to +z)",
                "centre": [round(v, 6) for v in self.centre], "radius": round(self.radius, 6),
                "axis": [round(v, 6) for v in self.axis], "margin": round(self.margin, 6),
                "z_range": [round(v, 6) for v in self.z_range],
                "rule": "handle where (xy - centre) . axis > radius + margin, else body"}


@dataclass
class ObjectParts:
    """An object of a scene with parts: its geometry, its part ids and its pose."""

    geometry: PartGeometry
    ids: dict[str, int]
    """Part name (``handle``, ``body``) → part id."""
    position: np.ndarray
    """[3] world position of the body frame."""
    yaw: float


def upright_vertices(entry: CatalogEntry, scale: float) -> np.ndarray:
    """``[V, 3]`` the mesh's vertices in metres, its up axis turned to +z (the frame of ``upright_bounds``)."""
    v = _vertices(str(asset_path(entry.package, entry.path))) * scale
    if entry.up == "y":
        v = np.stack([v[:, 0], -v[:, 2], v[:, 1]], 1)
    return v


@functools.lru_cache(maxsize=16)
def _vertices(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        rows = [line.split()[1:4] for line in f if line.startswith(b"v ")]
    return np.asarray(rows, np.float64)


def object_part_geometry(entry: CatalogEntry, scale: float) -> PartGeometry | None:
    """The handle/body split of ``entry`` (module docstring), or None for an object without parts."""
    spec = OBJECT_PARTS.get(entry.key)
    if spec is None:
        return None
    v = upright_vertices(entry, scale)
    lo, hi = v.min(0), v.max(0)
    ext = hi - lo
    a = int(np.argmax(ext[:2]))
    b = 1 - a
    R = float(ext[b] / 2)
    margin = max(0.003, 0.05 * R)
    best = None
    for sign, end in ((+1.0, lo[a] + R), (-1.0, hi[a] - R)):
        c = np.zeros(2)
        c[a], c[b] = end, (lo[b] + hi[b]) / 2
        axis = np.zeros(2)
        axis[a] = sign
        t = (v[:, :2] - c) @ axis
        outside = int(((np.linalg.norm(v[:, :2] - c, axis=1) > R + margin) & (t < 0)).sum())
        if best is None or outside < best[0]:
            best = (outside, c, axis)
    assert best is not None
    _, c, axis = best
    t = (v[:, :2] - c) @ axis
    h = v[t > R + margin]
    if len(h) < 3:
        return None
    return PartGeometry(centre=(float(c[0]), float(c[1])), radius=R, axis=(float(axis[0]), float(axis[1])),
                        margin=margin, z_range=(float(h[:, 2].min()), float(h[:, 2].max())), parts=spec)


def to_upright(world: np.ndarray, position: np.ndarray, yaw: float) -> np.ndarray:
    """World points ``[K, 3]`` → the object's upright frame (undo its yaw about +z and its position)."""
    c, s = math.cos(yaw), math.sin(yaw)
    Rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return (np.asarray(world, np.float64).reshape(-1, 3) - np.asarray(position, np.float64)) @ Rz


def label_object_parts(part: np.ndarray, mask: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray,
                       op: ObjectParts) -> None:
    """Write the part ids of ``op``'s pixels (``mask`` [H, W] bool, its z-depth ``depth``) into ``part`` in place:
    each pixel is back-projected (OpenCV camera ``K``, ``c2w``) into the object's upright frame and split by the
    handle rule."""
    ys, xs = np.nonzero(mask & (depth > 0))
    if len(ys) == 0:
        return
    d = depth[ys, xs].astype(np.float64)
    cam = np.stack([(xs - K[0, 2]) / K[0, 0] * d, (ys - K[1, 2]) / K[1, 1] * d, d], 1)
    world = cam @ np.asarray(c2w)[:3, :3].T + np.asarray(c2w)[:3, 3]
    handle = op.geometry.handle_mask(to_upright(world, op.position, op.yaw))
    part[ys, xs] = np.where(handle, op.ids["handle"], op.ids["body"]).astype(part.dtype)


def in_handle(world: np.ndarray, record: dict, geometry: dict, tol: float = 0.0) -> np.ndarray:
    """[K] bool: which world points lie in the handle of the object of ``meta.json`` record ``record`` whose part
    geometry (``meta.json parts.<id>.geometry``) is ``geometry`` (scoring only)."""
    from cos3d.tabletop.render import quat_to_matrix

    T = np.asarray(record["T_world_object"], np.float64)
    from cos3d.tabletop.catalog import up_quaternion

    R = T[:3, :3] @ quat_to_matrix(np.asarray(up_quaternion(record.get("up_axis") or "z"), np.float64)).T
    yaw = math.atan2(R[1, 0], R[0, 0])
    g = PartGeometry(centre=tuple(geometry["centre"]), radius=float(geometry["radius"]),  # type: ignore[arg-type]
                     axis=tuple(geometry["axis"]), margin=float(geometry["margin"]),  # type: ignore[arg-type]
                     z_range=tuple(geometry["z_range"]), parts={})  # type: ignore[arg-type]
    return g.handle_mask(to_upright(world, T[:3, 3], yaw), tol)
