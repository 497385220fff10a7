"""Generate a tabletop scene and write it in the ScanNet layout (docs/architecture.md, "Scene").

Output folder::

    color/<i>.png  depth/<i>.png (uint16 mm)  pose/<i>.txt (4×4 c2w, OpenCV)
    instance/<i>.png (uint16, 0 = nothing)  part/<i>.png (uint16, 0 = no part)
    intrinsic/intrinsic_color.txt  intrinsic/intrinsic_depth.txt (4×4, K top-left)
    labels.json  parts.json  splits.json  meta.json  eval_prompts.json

``labels.json`` / ``parts.json`` hold the *training* names (what the oracle-2D ``labels`` embedder
embeds); ``eval_prompts.json`` holds held-out phrasings per instance and part id, used only by
``cos3d eval tabletop`` (format: :data:`EVAL_PROMPTS_FORMAT`). No held-out phrasing is a training name
of the scene (checked when the scene is written).

Instance ids: 1 = floor, 2 = table, 3 = the toy robot (the object with parts), then the rigid objects
(the same-kind pair first); 0 = nothing hit (beyond the far plane). Part ids 1.. are the robot's
parts; every other pixel is 0 in ``part/``. Frames ``0 .. n_train-1`` are the train views, the rest
the test views (``splits.json``).

The scene is written into a hidden temporary folder next to ``out`` (``.<name>.tmp-<pid>-*``) and
renamed into place when complete, so an interrupted run never leaves a partial scene at ``out``; the
next run for the same ``out`` deletes temporary folders whose process is gone.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from cos3d.core.atomic import atomic_dir, check_output_folder, write_json
from cos3d.core.errors import Cos3dError
from cos3d.core.phrases import overlapping
from cos3d.readers.writers import write_scannet_frame, write_scannet_intrinsics, write_scannet_meta
from cos3d.data.scene import PartInfo
from cos3d.tabletop.catalog import (
    FLOOR_EVAL_NAMES,
    FLOOR_NEAR_NAMES,
    FLOOR_NAMES,
    FLOOR_URDF,
    PACKAGES,
    ROBOT,
    TABLE_EVAL_NAMES,
    TABLE_NEAR_NAMES,
    TABLE_NAMES,
    TABLE_URDF,
    check_catalog,
    upright_bounds,
)
from cos3d.tabletop.catalog import CATALOG, up_quaternion
from cos3d.tabletop.layout import Footprint, Selection, choose_objects, place
from cos3d.tabletop.parts import ObjectParts, label_object_parts, object_part_geometry
from cos3d.tabletop.render import (
    Lens,
    Light,
    Textures,
    View,
    body_bounds,
    capture,
    load_mesh,
    load_robot,
    load_stage,
    make_lens,
    motion_blur,
    move_body,
    orbit_views,
    quat_to_matrix,
    scan_views,
    sim,
    texture_size_for,
    yaw_quat,
)

FLOOR_ID, TABLE_ID, ROBOT_ID = 1, 2, 3
_OPTIONS = {"clutter": False, "object_parts": False, "include": ()}
"""Options added after scenes were published: left out of meta.json's config at their defaults, so a default scene's
files are what they always were."""
REGION = (-0.38, -0.25, 0.38, 0.25)
"""Placement region on the table top (x0, y0, x1, y1), metres, for up to 8 objects; the table is
1.5 × 1.0 m. More objects get a proportionally larger region (and cameras further away)."""
REGION_MAX_SCALE = 1.75
MIN_TRAIN_VIEWS = 2
MIN_VIEWS = 4
EVAL_PROMPTS_FORMAT = "cos3d-eval-prompts/2"
"""``eval_prompts.json``: ``{"format": ..., "instances": {"<id>": [phrasing, ...]}, "parts": {"<part id>":
[phrasing, ...]}, "near_instances": {...}, "near_parts": {...}}``: held-out phrasings, never among
``labels.json`` / ``parts.json``'s names (up to :func:`cos3d.core.phrases.normalize`) and sharing no content word
with their object's names; ``near_*``: the near-training phrasings (the set before issue 23), scored apart."""


@dataclass
class TabletopConfig:
    """What ``cos3d prepare tabletop`` makes."""

    out: Path
    """Scene folder to create (must be absent or empty unless ``force``)."""
    seed: int = 0
    """Random seed: fixes the objects, their layout and the cameras."""
    views: int = 24
    """Total number of views (train + test)."""
    width: int = 320
    """Image width in pixels."""
    height: int = 240
    """Image height in pixels."""
    objects: int = 8
    """Objects on the table, the robot and the same-kind pair included."""
    test_views: int | None = None
    """Held-out views; default max(2, round(views / 5))."""
    force: bool = False
    """Replace an existing, non-empty ``out``."""
    fov_deg: float = 55.0
    """Vertical field of view (degrees)."""
    trajectory: Literal["orbit", "scan"] = "orbit"
    """``orbit``: train views on up to three orbits, test views between them. ``scan``: one continuous
    handheld walk around the table (a ScanNet-like sweep), test views spread evenly along it."""
    color_format: Literal["png", "jpg"] = "png"
    """Colour image format (ScanNet exports JPEG, quality 90 here)."""
    depth_width: int | None = None
    """Depth and instance/part map width (ScanNet: 640); default the colour width. Depth is rendered by
    its own camera (``intrinsic_depth.txt``); id maps are the colour frame's ids resized (nearest)."""
    depth_height: int | None = None
    """Depth and instance/part map height (ScanNet: 480); default the colour height."""
    blur: float = 0.0
    """Fraction of train frames given motion blur (a handheld camera's shaken frames)."""
    lost_tracking: float = 0.0
    """Fraction of train frames whose pose is written as ``-inf`` (ScanNet's lost tracking)."""
    workers: int = 1
    """Processes rendering frames in parallel (each loads the scene itself); the files do not depend on it."""
    clutter: bool = False
    """Clutter (8-12 objects): a compact region (:data:`CLUTTER_REGION`, whatever the count), a 5 mm gap instead of
    1.5 cm, and about half the objects set touching a neighbour (:func:`cos3d.tabletop.layout.place`). Off, the
    scene is the one it always was."""
    object_parts: bool = False
    """Part maps for the objects with an obvious part (mugs' and the frying pan's handles and bodies; parts.json
    and part/<i>.png), found from the mesh's geometry (:mod:`cos3d.tabletop.parts`). Off, only the toy robot
    has parts, as it always had."""
    include: tuple[str, ...] = ()
    """Catalogue keys that must be on the table (e.g. ``white_bowl,tray`` for place targets); the rest are
    drawn as usual."""

    def n_test(self) -> int:
        if self.test_views is not None:
            return int(self.test_views)
        return max(2, round(self.views / (50 if self.trajectory == "scan" else 5)))

    def depth_size(self) -> tuple[int, int]:
        return (self.depth_width or self.width, self.depth_height or self.height)

    def validate(self) -> None:
        """Raise :class:`Cos3dError` naming the flag of the first bad setting."""
        if self.views < MIN_VIEWS:
            raise Cos3dError(
                f"--views must be at least {MIN_VIEWS} ({MIN_TRAIN_VIEWS} train and 2 test views), got {self.views}"
            )
        n_test = self.n_test()
        if not 1 <= n_test <= self.views - MIN_TRAIN_VIEWS:
            raise Cos3dError(
                f"--test-views must be between 1 and {self.views - MIN_TRAIN_VIEWS} for --views {self.views} "
                f"(at least {MIN_TRAIN_VIEWS} train views), got {n_test}"
            )
        for flag, value in (("--width", self.width), ("--height", self.height)):
            if not 16 <= value <= 4096:
                raise Cos3dError(f"{flag} must be between 16 and 4096 pixels, got {value}")
        if (self.depth_width is None) != (self.depth_height is None):
            raise Cos3dError("--depth-width and --depth-height go together (e.g. 640 and 480); give both or neither")
        for flag, value in (("--depth-width", self.depth_width), ("--depth-height", self.depth_height)):
            if value is not None and not 16 <= value <= 4096:
                raise Cos3dError(f"{flag} must be between 16 and 4096 pixels, got {value}")
        if not 1 <= self.workers <= 64:
            raise Cos3dError(f"--workers must be between 1 and 64, got {self.workers}")
        for flag, value in (("--blur", self.blur), ("--lost-tracking", self.lost_tracking)):
            if not 0.0 <= value <= 0.5:
                raise Cos3dError(f"{flag} is a fraction of the train frames between 0 and 0.5, got {value}")
        if self.clutter and not CLUTTER_OBJECTS[0] <= self.objects <= CLUTTER_OBJECTS[1]:
            raise Cos3dError(f"--clutter scenes hold {CLUTTER_OBJECTS[0]} to {CLUTTER_OBJECTS[1]} objects, got "
                             f"--objects {self.objects}")
        if not 10.0 <= self.fov_deg <= 120.0:
            raise Cos3dError(f"field of view must be between 10 and 120 degrees, got {self.fov_deg}")


CLUTTER_REGION = (-0.4, -0.2, 0.4, 0.2)
"""Placement region of a clutter scene (x0, y0, x1, y1), metres: 0.8 × 0.4 m, a Panda at (0, -0.48) on the
table's long side, facing +y, reaches all of it (0.25-0.8 m). Grown by 10 % steps (up to 1.3×) when the
objects do not fit."""
CLUTTER_OBJECTS = (8, 12)
CLUTTER_GAP = 0.005
CLUTTER_TOUCHING = 0.9


def region_scale(objects: int) -> float:
    """Linear growth of the placement region (and camera distance) with the object count."""
    return float(np.clip(math.sqrt(objects / 8), 1.0, REGION_MAX_SCALE))


def generate_tabletop(cfg: TabletopConfig) -> Path:
    """Render the scene described by ``cfg`` and write it to ``cfg.out``; returns the scene folder.

    The same config gives byte-identical files. Raises :class:`Cos3dError` for bad settings or an
    existing non-empty ``out`` without ``force``.
    """
    cfg.validate()
    check_catalog()
    out = Path(cfg.out).absolute()
    check_output_folder(out, cfg.force)
    with atomic_dir(out, force=cfg.force) as tmp:
        texdir = tmp / ".textures"  # downsampled textures; inside tmp so a killed run's copies go with it
        with sim() as cid:
            setup = _setup(cid, cfg, texdir / "0")
            write_scannet_intrinsics(tmp, setup.lens.K, setup.depth_lens.K)
            if cfg.workers == 1:
                visible = _render_views(cid, tmp, setup, range(len(setup.views)), cfg)
        if cfg.workers > 1:
            import multiprocessing

            shares = [(cfg, tmp, texdir / str(w + 1), range(w, len(setup.views), cfg.workers)) for w in range(cfg.workers)]
            with multiprocessing.get_context("spawn").Pool(cfg.workers) as pool:
                parts = pool.map(_render_share, shares)
            visible = {key: {name: c for part in parts for name, c in part[key].items()} for key in parts[0]}
            visible = {key: {str(i): visible[key][str(i)] for i in range(len(setup.views)) if str(i) in visible[key]}
                       for key in visible}
        shutil.rmtree(texdir)
        _write_sidecars(tmp, cfg, setup.built, setup.lens, setup.views, setup.effects, visible)
    return out


@dataclass
class Setup:
    """A scene loaded into a physics client with its cameras: the same for a config in any process."""

    built: "Built"
    lens: Lens
    depth_lens: Lens
    views: list[View]
    effects: "FrameEffects"


def _setup(cid: int, cfg: TabletopConfig, texdir: Path) -> Setup:
    """Build ``cfg``'s scene in ``cid`` and make its cameras (deterministic: seeded streams only)."""
    # Independent streams: the objects and their layout do not change with the number of views.
    rng_objects = np.random.default_rng([cfg.seed, 0])
    rng_layout = np.random.default_rng([cfg.seed, 1])
    rng_cameras = np.random.default_rng([cfg.seed, 2])
    rng_frames = np.random.default_rng([cfg.seed, 3])  # blurred frames, lost tracking
    selection = choose_objects(rng_objects, cfg.objects, tuple(cfg.include))
    scales = [e.scale * float(rng_objects.uniform(0.92, 1.08)) for e in selection.entries]
    texdir.mkdir(parents=True)
    textures = Textures(cid, texdir)
    tex_size = texture_size_for(cfg.width, cfg.height)
    zoom = 1.0 if cfg.clutter else region_scale(cfg.objects)
    built = _build(cid, selection, scales, rng_layout, textures, tex_size, zoom, clutter=cfg.clutter,
                   object_parts=cfg.object_parts)
    lens = make_lens(cfg.width, cfg.height, cfg.fov_deg)
    dw, dh = cfg.depth_size()
    depth_lens = lens if (dw, dh) == (cfg.width, cfg.height) else make_lens(dw, dh, cfg.fov_deg)
    center = np.array([0.0, 0.0, built.table_top + 0.06])
    n_test = cfg.n_test()
    if cfg.trajectory == "scan":
        views = scan_views(rng_cameras, cfg.views, n_test, center, region=built.region, radius_scale=zoom)
    else:
        views = orbit_views(rng_cameras, cfg.views - n_test, n_test, center, radius_scale=zoom)
    return Setup(built, lens, depth_lens, views, _frame_effects(rng_frames, views, cfg))


def _render_share(share: tuple[TabletopConfig, Path, Path, range]) -> dict:
    """A worker process: build the scene and render the frames of ``share`` (config, folder, own texture
    folder, frame indices)."""
    cfg, root, texdir, indices = share
    with sim() as cid:
        return _render_views(cid, root, _setup(cid, cfg, texdir), indices, cfg)


# --- building the scene ---------------------------------------------------------------------------


@dataclass
class Built:
    """A scene loaded into a physics client, with its ground-truth bookkeeping."""

    table_top: float
    region: tuple[float, ...]
    robot_body: int
    inst_lut: np.ndarray
    """uint16 [max body id + 2]: ``inst_lut[body + 1]`` is the instance id (index 0: nothing)."""
    part_lut: np.ndarray
    """uint16 [max link index + 2]: ``part_lut[link + 1]`` is the robot part id (0: none)."""
    labels: dict[int, list[str]]
    parts: dict[int, PartInfo]
    objects: list[dict]
    """meta.json records, one per instance id."""
    pair: dict = field(default_factory=dict)
    eval_names: dict[int, list[str]] = field(default_factory=dict)
    """Held-out phrasings per instance id (``eval_prompts.json``)."""
    part_eval_names: dict[int, list[str]] = field(default_factory=dict)
    """Held-out phrasings per part id."""
    near_names: dict[int, list[str]] = field(default_factory=dict)
    """Near-training phrasings per instance id (:attr:`cos3d.tabletop.catalog.CatalogEntry.near_names`)."""
    part_near_names: dict[int, list[str]] = field(default_factory=dict)
    """Near-training phrasings per part id."""
    object_parts: dict[int, "ObjectParts"] = field(default_factory=dict)
    """Body id → the part geometry of a rigid object with parts (``object_parts`` option)."""


def _build(
    cid: int,
    selection: Selection,
    scales: list[float],
    rng_layout: np.random.Generator,
    textures: Textures,
    tex_size: int,
    zoom: float,
    *,
    clutter: bool = False,
    object_parts: bool = False,
) -> Built:
    stage = load_stage(cid, textures, tex_size)
    top = stage.table_top
    robot_body, robot_links = load_robot(cid, ROBOT)
    robot_fp = Footprint(*body_bounds(cid, robot_body))  # loaded at the origin: upright-frame bounds
    rigid_fps = [Footprint(*upright_bounds(e, s)) for e, s in zip(selection.entries, scales)]
    # Largest footprints first: they are the hardest to fit.
    order = sorted(range(len(rigid_fps)), key=lambda i: -float(np.prod(rigid_fps[i].half)))
    if clutter:  # the compact region, grown by 10 % steps when the objects do not fit (a frying pan and a tray)
        for grow in (1.0, 1.1, 1.2, 1.3):
            x0, y0, x1, y1 = (grow * v for v in CLUTTER_REGION)
            region = (x0, y0, x1, y1)
            try:
                place(rng_layout, [robot_fp] + [rigid_fps[i] for i in order], (x0, y0, x1, y1), gap=CLUTTER_GAP,
                      touching=CLUTTER_TOUCHING, restarts=40)
                break
            except Cos3dError:
                if grow == 1.3:
                    raise
    else:
        region = tuple(zoom * v for v in REGION)
        place(rng_layout, [robot_fp] + [rigid_fps[i] for i in order], region)

    pos, quat = robot_fp.base_position(top), yaw_quat(robot_fp.yaw)
    move_body(cid, robot_body, pos, quat)
    body_to_id = {stage.floor: FLOOR_ID, stage.table: TABLE_ID, robot_body: ROBOT_ID}
    labels = {FLOOR_ID: list(FLOOR_NAMES), TABLE_ID: list(TABLE_NAMES), ROBOT_ID: list(ROBOT.names)}
    eval_names = {FLOOR_ID: list(FLOOR_EVAL_NAMES), TABLE_ID: list(TABLE_EVAL_NAMES), ROBOT_ID: list(ROBOT.eval_names)}
    near_names = {FLOOR_ID: list(FLOOR_NEAR_NAMES), TABLE_ID: list(TABLE_NEAR_NAMES), ROBOT_ID: list(ROBOT.near_names)}
    objects = [
        {"id": FLOOR_ID, "key": "floor", "names": list(FLOOR_NAMES), "source": "pybullet_data",
         "distribution": PACKAGES["pybullet_data"], "asset": FLOOR_URDF},
        {"id": TABLE_ID, "key": "table", "names": list(TABLE_NAMES), "source": "pybullet_data",
         "distribution": PACKAGES["pybullet_data"], "asset": TABLE_URDF,
         "aabb_world": [[-0.75, -0.5, 0.0], [0.75, 0.5, top]]},
        {"id": ROBOT_ID, "key": ROBOT.key, "names": list(ROBOT.names), "source": ROBOT.package,
         "distribution": PACKAGES[ROBOT.package], "asset": ROBOT.path, "scale": ROBOT.scale,
         **_pose_record(pos, quat, robot_fp)},
    ]
    pair_ids = []
    for k, (entry, scale, fp) in enumerate(zip(selection.entries, scales, rigid_fps)):
        oid = ROBOT_ID + 1 + k
        pos = fp.base_position(top)
        body, quat = load_mesh(cid, entry, scale, pos, fp.yaw, textures, tex_size)
        body_to_id[body] = oid
        labels[oid] = list(entry.names)
        eval_names[oid] = list(entry.eval_names)
        near_names[oid] = list(entry.near_names)
        if k in selection.pair:
            pair_ids.append(oid)
        objects.append({
            "id": oid, "key": entry.key, "names": list(entry.names), "source": entry.package,
            "distribution": PACKAGES[entry.package], "asset": entry.path, "scale": round(scale, 6),
            "up_axis": entry.up, "kind": entry.kind or None, **_pose_record(pos, quat, fp),
        })

    inst_lut = np.zeros(max(body_to_id) + 2, dtype=np.uint16)
    for body, oid in body_to_id.items():
        inst_lut[body + 1] = oid
    part_lut = np.zeros(max(robot_links.values()) + 2, dtype=np.uint16)
    parts = {}
    part_eval = {}
    part_near = {}
    for pid, part in enumerate(ROBOT.parts, start=1):
        parts[pid] = PartInfo(names=list(part.names), parent=ROBOT_ID)
        part_eval[pid] = list(part.eval_names)
        part_near[pid] = list(part.near_names)
        for link in part.links:
            part_lut[robot_links[link] + 1] = pid
    object_part_maps: dict[int, ObjectParts] = {}
    if object_parts:
        next_pid = len(ROBOT.parts) + 1
        for body, oid in body_to_id.items():
            rec = next((o for o in objects if o["id"] == oid), None)
            if rec is None or rec["key"] not in CATALOG:
                continue
            geo = object_part_geometry(CATALOG[rec["key"]], float(rec["scale"]))
            if geo is None:
                continue
            ids = {}
            for name, spec in geo.parts.items():
                parts[next_pid] = PartInfo(names=list(spec.names), parent=oid)
                part_eval[next_pid] = list(spec.eval_names)
                part_near[next_pid] = []
                ids[name] = next_pid
                next_pid += 1
            pos = np.asarray(rec["position"], np.float64)
            object_part_maps[body] = ObjectParts(geo, ids, pos, float(_yaw_of(rec)))
    return Built(table_top=top, region=region, robot_body=robot_body, inst_lut=inst_lut, part_lut=part_lut,
                 labels=labels, parts=parts, objects=objects, pair={"kind": selection.pair_kind, "ids": pair_ids},
                 eval_names=eval_names, part_eval_names=part_eval, near_names=near_names, part_near_names=part_near,
                 object_parts=object_part_maps)


def _yaw_of(rec: dict) -> float:
    """The yaw (radians about +z) of an object record: its upright frame's x axis in the world."""
    T = np.asarray(rec["T_world_object"], np.float64)
    R = T[:3, :3] @ quat_to_matrix(np.asarray(up_quaternion(rec.get("up_axis", "z")), np.float64)).T
    return math.atan2(R[1, 0], R[0, 0])


def _pose_record(pos: np.ndarray, quat: np.ndarray, fp: Footprint) -> dict:
    """World pose and world AABB of an object, rounded for meta.json."""
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix(quat)
    T[:3, 3] = pos
    # fp.lo/hi are bounds in the upright frame, which differs from the body frame by yaw only.
    Ty = np.eye(4)
    Ty[:3, :3] = quat_to_matrix(yaw_quat(fp.yaw))
    Ty[:3, 3] = pos
    corners = np.array([[x, y, z] for x in (fp.lo[0], fp.hi[0]) for y in (fp.lo[1], fp.hi[1])
                        for z in (fp.lo[2], fp.hi[2])])
    w = corners @ Ty[:3, :3].T + Ty[:3, 3]
    return {"position": _r(pos), "orientation_xyzw": _r(quat), "T_world_object": _r(T),
            "aabb_world": [_r(w.min(0)), _r(w.max(0))]}


def _r(x: np.ndarray | list | tuple | float, nd: int = 6) -> list | float:
    """Rounded plain-Python numbers for JSON (stable text)."""
    return (np.round(np.asarray(x, dtype=np.float64), nd) + 0.0).tolist()  # + 0.0 turns -0.0 into 0.0


# --- rendering and writing ------------------------------------------------------------------------


@dataclass
class FrameEffects:
    """What a handheld capture does to some train frames (indices into the views)."""

    blurred: dict[int, tuple[float, float]] = field(default_factory=dict)
    """frame → (blur length in pixels, direction in radians)."""
    lost: set[int] = field(default_factory=set)
    """Frames whose pose is written as ``-inf`` (lost tracking)."""


def _frame_effects(rng: np.random.Generator, views: list[View], cfg: TabletopConfig) -> FrameEffects:
    train = np.array([i for i, v in enumerate(views) if v.split == "train"])
    effects = FrameEffects()
    n_blur, n_lost = round(cfg.blur * len(train)), round(cfg.lost_tracking * len(train))
    if n_blur + n_lost > len(train) - MIN_TRAIN_VIEWS:
        raise Cos3dError(f"--blur {cfg.blur} and --lost-tracking {cfg.lost_tracking} leave fewer than "
                         f"{MIN_TRAIN_VIEWS} clean train views; lower them or add --views")
    picked = rng.permutation(train)[: n_blur + n_lost]
    for i in picked[:n_blur]:
        # 1-4 % of the image width: a shake clearly visible at full size (ScanNet's blurry frames).
        effects.blurred[int(i)] = (float(rng.uniform(0.01, 0.04) * cfg.width), float(rng.uniform(0, math.pi)))
    effects.lost = {int(i) for i in picked[n_blur:]}
    return effects


def _render_views(cid: int, root: Path, setup: Setup, indices: range, cfg: TabletopConfig) -> dict:
    """Render and write the views ``indices``; returns visible pixel counts per view, per instance and per part.

    With a depth camera of another size, depth is rendered by that camera and the id maps are the colour
    frame's ids resized (nearest) to its size, as ScanNet's 640×480 ``instance-filt`` maps are."""
    built, lens, depth_lens, effects, light = setup.built, setup.lens, setup.depth_lens, setup.effects, Light()
    own_depth = depth_lens is not lens
    if own_depth:  # nearest colour pixel for each id-map pixel (pixel centres)
        rows = np.floor((np.arange(depth_lens.height) + 0.5) * lens.height / depth_lens.height).astype(int)
        cols = np.floor((np.arange(depth_lens.width) + 0.5) * lens.width / depth_lens.width).astype(int)
    counts: dict[str, dict] = {"instances": {}, "parts": {}}
    for i in indices:
        view = setup.views[i]
        name = str(i)
        cap = capture(cid, lens, view.c2w, light)
        inst = built.inst_lut[cap.body + 1]
        part = np.where(cap.body == built.robot_body, built.part_lut[cap.link + 1], 0).astype(np.uint16)
        for body, op in built.object_parts.items():
            label_object_parts(part, cap.body == body, cap.depth, lens.K, view.c2w, op)
        depth = cap.depth
        if own_depth:
            inst, part = inst[rows][:, cols], part[rows][:, cols]
            depth = capture(cid, depth_lens, view.c2w, light).depth
        rgb = motion_blur(cap.rgb, *effects.blurred[i]) if i in effects.blurred else cap.rgb
        pose = np.full((4, 4), -np.inf) if i in effects.lost else view.c2w
        write_scannet_frame(root, name, pose, image=rgb, depth=depth, instance=inst, part=part,
                            image_ext=f".{cfg.color_format}")
        for key, ids in (("instances", inst), ("parts", part)):
            u, c = np.unique(ids, return_counts=True)
            counts[key][name] = {str(a): int(n) for a, n in zip(u, c) if a}
    return counts


def _write_sidecars(root: Path, cfg: TabletopConfig, built: Built, lens: Lens, views: list[View], effects: FrameEffects,
                    visible: dict) -> None:  # fmt: skip
    from cos3d import __version__

    names = [str(i) for i in range(len(views))]
    write_scannet_meta(
        root,
        labels=dict(sorted(built.labels.items())),
        parts=built.parts,
        splits={split: [n for n, v in zip(names, views) if v.split == split] for split in ("train", "test")},
    )
    write_json(root / "eval_prompts.json", eval_prompts_record(built))
    write_json(root / "meta.json", {
        "generator": "cos3d.tabletop",
        "cos3d_version": __version__,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "force", "workers")
                   and not (k in _OPTIONS and v == _OPTIONS[k])} | {"test_views": cfg.n_test()},
        "renderer": "pybullet TinyRenderer (CPU)",
        "camera": {"fov_deg_vertical": cfg.fov_deg, "near": lens.near, "far": lens.far, "K": _r(lens.K, 9),
                   "convention": "OpenCV camera-to-world in metres; pixel centres at integer coordinates"},
        "light": asdict(Light()),
        "table_top_z": built.table_top,
        "placement_region_xy": _r(built.region),
        "pair": built.pair,
        "objects": built.objects,
        "parts": {str(pid): {"names": list(part.names), "parent": ROBOT_ID, "links": list(part.links)}
                  for pid, part in enumerate(ROBOT.parts, start=1)}
        | {str(pid): {"names": list(op.geometry.parts[name].names), "parent": int(built.parts[pid].parent),
                      "part": name, "geometry": op.geometry.to_dict()}
           for op in built.object_parts.values() for name, pid in op.ids.items()},
        "views": [{"name": n, "split": v.split, "orbit": v.ring}
                  | ({"blur_px": round(effects.blurred[i][0], 2)} if i in effects.blurred else {})
                  | ({"lost_tracking": True} if i in effects.lost else {})
                  for i, (n, v) in enumerate(zip(names, views))],
        "visible_pixels": visible["instances"],
        "visible_part_pixels": visible["parts"],
    })


def eval_prompts_record(built: Built) -> dict:
    """The ``eval_prompts.json`` record; raises ValueError if a held-out phrasing is a training name here."""
    train = {n.lower() for ns in built.labels.values() for n in ns}
    train |= {n.lower() for p in built.parts.values() for n in p.names}
    held = [n for ns in list(built.eval_names.values()) + list(built.part_eval_names.values()) for n in ns]
    clash = overlapping(held, train)
    if clash:
        raise ValueError(f"held-out phrasings that are training names of this scene: {clash}")
    return {
        "format": EVAL_PROMPTS_FORMAT,
        "note": "held-out phrasings for cos3d eval; never in labels.json/parts.json, never embedded in training",
        "instances": {str(k): list(v) for k, v in sorted(built.eval_names.items()) if v},
        "parts": {str(k): list(v) for k, v in sorted(built.part_eval_names.items()) if v},
        "near_instances": {str(k): list(v) for k, v in sorted(built.near_names.items()) if v},
        "near_parts": {str(k): list(v) for k, v in sorted(built.part_near_names.items()) if v},
    }
