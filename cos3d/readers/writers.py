"""Write cameras (and optionally images, depth, ids, points) in each format the readers read.

Used by tests (round trips) and tools (the tabletop generator writes the ScanNet layout with
:func:`write_scannet_intrinsics` + :func:`write_scannet_frame` + :func:`write_scannet_meta`, frame by
frame). Every writer converts from this project's conventions (OpenCV camera-to-world, OpenCV pixel
centres; :mod:`cos3d.data.scene`) to the format's own, so ``read_X(write_X(cameras))`` gives the same cameras.
Where no image is given, a flat grey placeholder of the camera's size is written. All files are written
atomically.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cos3d.core.atomic import atomic_open, atomic_path, write_json
from cos3d.readers.colmap import MODEL_IDS, ColmapCamera, ColmapImage, rotmat_to_qvec
from cos3d.readers.nerfstudio import GL_TO_CV
from cos3d.data.scene import Camera, PartInfo

# ----------------------------------------------------------------------------------------------- pixels


def _placeholder(camera: Camera) -> np.ndarray:
    return np.full((camera.height, camera.width, 3), 128, dtype=np.uint8)


def save_image(path: str | Path, image: np.ndarray) -> Path:
    """Save uint8 ``[H, W, 3]`` (or ``[H, W]``) to ``path``; the suffix picks the format (JPEG at quality 90)."""
    from PIL import Image

    path = Path(path)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {arr.dtype}")
    with atomic_path(path) as tmp:
        jpeg = path.suffix.lower() in (".jpg", ".jpeg")
        Image.fromarray(arr).save(tmp, **({"quality": 90} if jpeg else {}))
    return path


def save_depth(path: str | Path, depth: np.ndarray) -> Path:
    """Save float metres ``[H, W]`` (0 = invalid): ``.png`` as uint16 millimetres, ``.npy`` as float32 metres."""
    from PIL import Image

    path = Path(path)
    d = np.nan_to_num(np.asarray(depth, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    with atomic_path(path) as tmp:
        if path.suffix == ".npy":
            np.save(tmp, d.astype(np.float32))
        else:
            mm = np.clip(np.round(d * 1000.0), 0, 65535).astype(np.uint16)
            Image.fromarray(mm).save(tmp)
    return path


def save_id_map(path: str | Path, ids: np.ndarray) -> Path:
    """Save integer ids ``[H, W]`` (0 = none) as a uint16 PNG."""
    from PIL import Image

    path = Path(path)
    a = np.asarray(ids)
    if a.min(initial=0) < 0 or a.max(initial=0) > 65535:
        raise ValueError(f"ids must lie in [0, 65535] for a uint16 PNG, got [{a.min()}, {a.max()}]")
    with atomic_path(path) as tmp:
        Image.fromarray(a.astype(np.uint16)).save(tmp)
    return path


def _matrix_text(m: np.ndarray) -> str:
    return "\n".join(" ".join(f"{v:.17g}" for v in row) for row in np.asarray(m, dtype=np.float64)) + "\n"


def _default_names(n: int, names: Sequence[str] | None) -> list[str]:
    if names is None:
        return [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"got {len(names)} names for {n} cameras")
    return [str(x) for x in names]


def _per_frame(values: Sequence | None, n: int, what: str) -> list:
    if values is None:
        return [None] * n
    if len(values) != n:
        raise ValueError(f"got {len(values)} {what} for {n} cameras")
    return list(values)


# ---------------------------------------------------------------------------------------------- ScanNet


def write_scannet_intrinsics(root: str | Path, K: np.ndarray, depth_K: np.ndarray | None = None, rows: int = 4) -> None:
    """``intrinsic/intrinsic_color.txt`` (and ``intrinsic_depth.txt``) as ``rows`` = 4 (ScanNet) or 3."""
    if rows not in (3, 4):
        raise ValueError(f"rows must be 3 or 4, got {rows}")
    for name, k in (("intrinsic_color.txt", K), ("intrinsic_depth.txt", depth_K)):
        if k is None:
            continue
        m = np.eye(rows)
        m[:3, :3] = np.asarray(k, dtype=np.float64)
        with atomic_open(Path(root) / "intrinsic" / name) as f:
            f.write(_matrix_text(m))


def write_scannet_frame(
    root: str | Path,
    name: str,
    c2w: np.ndarray,
    *,
    image: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    instance: np.ndarray | None = None,
    part: np.ndarray | None = None,
    image_ext: str = ".png",
    depth_ext: str = ".png",
) -> None:
    """One frame: ``pose/<name>.txt`` (4×4 c2w; non-finite values are written as ScanNet does),
    ``color/<name><image_ext>`` if ``image`` (uint8 ``[H, W, 3]``), ``depth/<name><depth_ext>`` from float
    metres ``[h, w]``, ``instance/<name>.png`` and ``part/<name>.png`` from integer ``[H, W]`` ids."""
    root = Path(root)
    with atomic_open(root / "pose" / f"{name}.txt") as f:
        f.write(_matrix_text(np.asarray(c2w, dtype=np.float64).reshape(4, 4)))
    if image is not None:
        save_image(root / "color" / f"{name}{image_ext}", image)
    if depth is not None:
        save_depth(root / "depth" / f"{name}{depth_ext}", depth)
    if instance is not None:
        save_id_map(root / "instance" / f"{name}.png", instance)
    if part is not None:
        save_id_map(root / "part" / f"{name}.png", part)


def write_scannet_meta(
    root: str | Path,
    *,
    labels: Mapping[int, Sequence[str] | str] | None = None,
    parts: Mapping[int, PartInfo] | None = None,
    splits: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """``labels.json`` / ``parts.json`` / ``splits.json`` (only those given)."""
    root = Path(root)
    if labels is not None:
        write_json(root / "labels.json", {str(k): (v if isinstance(v, str) else list(v)) for k, v in labels.items()})
    if parts is not None:
        write_json(
            root / "parts.json",
            {str(k): {"names": list(p.names), "parent": int(p.parent)} for k, p in parts.items()},
        )
    if splits is not None:
        write_json(root / "splits.json", {k: [str(n) for n in v] for k, v in splits.items()})


def write_scannet(
    root: str | Path,
    cameras: Sequence[Camera],
    *,
    names: Sequence[str] | None = None,
    images: Sequence[np.ndarray] | None = None,
    depths: Sequence[np.ndarray] | None = None,
    depth_K: np.ndarray | None = None,
    instances: Sequence[np.ndarray] | None = None,
    part_maps: Sequence[np.ndarray] | None = None,
    labels: Mapping[int, Sequence[str] | str] | None = None,
    parts: Mapping[int, PartInfo] | None = None,
    splits: Mapping[str, Sequence[str]] | None = None,
    image_ext: str = ".png",
    intrinsic_rows: int = 4,
) -> Path:
    """Write ``cameras`` (which must share K and size: the layout has one intrinsics file) in the ScanNet
    layout. ``depths`` are float metres at any resolution; give ``depth_K`` when it is not the colour K
    rescaled. Frame names default to ``"0"``, ``"1"``, ... Returns ``root``."""
    root = Path(root)
    if not cameras:
        raise ValueError("no cameras to write")
    c0 = cameras[0]
    for c in cameras[1:]:
        if (c.width, c.height) != (c0.width, c0.height) or not np.allclose(c.K, c0.K, rtol=0, atol=1e-12):
            raise ValueError("the ScanNet layout has one intrinsics file: all cameras must share K and image size")
    n = len(cameras)
    names = _default_names(n, names)
    images_, depths_ = _per_frame(images, n, "images"), _per_frame(depths, n, "depths")
    inst_, part_ = _per_frame(instances, n, "instance maps"), _per_frame(part_maps, n, "part maps")
    if depths is not None and depth_K is None:
        dh, dw = np.asarray(depths[0]).shape[:2]
        if (dw, dh) != (c0.width, c0.height):
            depth_K = c0.scaled(dw, dh).K
    write_scannet_intrinsics(root, c0.K, depth_K, rows=intrinsic_rows)
    for i, (cam, name) in enumerate(zip(cameras, names)):
        write_scannet_frame(
            root, name, cam.c2w,
            image=images_[i] if images_[i] is not None else _placeholder(cam),
            depth=depths_[i], instance=inst_[i], part=part_[i], image_ext=image_ext,
        )
    write_scannet_meta(root, labels=labels, parts=parts, splits=splits)
    return root


# ----------------------------------------------------------------------------------------------- COLMAP


def colmap_camera(camera: Camera, camera_id: int, model: str | None = None) -> ColmapCamera:
    """A :class:`Camera`'s intrinsics as a COLMAP camera (corner-origin principal point).

    ``model`` defaults to ``OPENCV`` when the camera has distortion, else ``PINHOLE``. ``SIMPLE_*`` and
    ``RADIAL`` models need ``fx == fy``; models without tangential terms need ``p1 == p2 == 0``.
    """
    fx, fy = camera.fx, camera.fy
    cx, cy = camera.cx + 0.5, camera.cy + 0.5
    k1, k2, p1, p2 = camera.dist if camera.dist.size == 4 else np.zeros(4)
    if model is None:
        model = "OPENCV" if np.any(camera.dist != 0) else "PINHOLE"
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL") and not np.isclose(fx, fy, rtol=1e-12, atol=0):
        raise ValueError(f"{model} needs fx == fy, got {fx} and {fy}")
    lost = {"PINHOLE": (k1, k2, p1, p2), "SIMPLE_PINHOLE": (k1, k2, p1, p2), "SIMPLE_RADIAL": (k2, p1, p2),
            "RADIAL": (p1, p2)}.get(model, ())
    if any(v != 0 for v in lost):
        raise ValueError(f"{model} cannot hold the distortion {camera.dist.tolist()}")
    params = {
        "SIMPLE_PINHOLE": [fx, cx, cy],
        "PINHOLE": [fx, fy, cx, cy],
        "SIMPLE_RADIAL": [fx, cx, cy, k1],
        "RADIAL": [fx, cx, cy, k1, k2],
        "OPENCV": [fx, fy, cx, cy, k1, k2, p1, p2],
    }.get(model)
    if params is None:
        raise ValueError(f"cannot write camera model {model!r}")
    return ColmapCamera(camera_id, model, camera.width, camera.height, np.array(params, dtype=np.float64))


def colmap_image(camera: Camera, image_id: int, camera_id: int, name: str) -> ColmapImage:
    """A :class:`Camera`'s pose as a COLMAP image (world-to-camera quaternion + translation)."""
    w2c = camera.w2c
    return ColmapImage(image_id, rotmat_to_qvec(w2c[:3, :3]), w2c[:3, 3].copy(), camera_id, name)


def write_cameras_bin(path: str | Path, cameras: Sequence[ColmapCamera]) -> None:
    with atomic_open(path, "wb") as f:
        f.write(struct.pack("<Q", len(cameras)))
        for c in cameras:
            model_id, nparams = MODEL_IDS[c.model]
            assert len(c.params) == nparams, (c.model, len(c.params))
            f.write(struct.pack("<iiQQ", c.id, model_id, c.width, c.height))
            f.write(struct.pack(f"<{nparams}d", *c.params))


def write_cameras_txt(path: str | Path, cameras: Sequence[ColmapCamera]) -> None:
    with atomic_open(path) as f:
        f.write("# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n")
        f.write(f"# Number of cameras: {len(cameras)}\n")
        for c in cameras:
            f.write(f"{c.id} {c.model} {c.width} {c.height} " + " ".join(f"{p:.17g}" for p in c.params) + "\n")


def write_images_bin(path: str | Path, images: Sequence[ColmapImage]) -> None:
    """Registered images with no 2D observations."""
    with atomic_open(path, "wb") as f:
        f.write(struct.pack("<Q", len(images)))
        for im in images:
            f.write(struct.pack("<i7di", im.id, *im.qvec, *im.tvec, im.camera_id))
            f.write(im.name.encode("utf-8") + b"\x00")
            f.write(struct.pack("<Q", 0))


def write_images_txt(path: str | Path, images: Sequence[ColmapImage]) -> None:
    """Registered images with no 2D observations (an empty second line per image)."""
    with atomic_open(path) as f:
        f.write("# Image list with two lines of data per image:\n"
                "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n#   POINTS2D[] as (X, Y, POINT3D_ID)\n")
        for im in images:
            vals = " ".join(f"{v:.17g}" for v in (*im.qvec, *im.tvec))
            f.write(f"{im.id} {vals} {im.camera_id} {im.name}\n\n")


def write_points3d_bin(path: str | Path, xyz: np.ndarray, rgb: np.ndarray | None = None) -> None:
    """Points ``[P, 3]`` with colours ``[P, 3]`` uint8 (grey if None), error 0 and empty tracks."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    rgb = np.full((len(xyz), 3), 128, np.uint8) if rgb is None else np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
    with atomic_open(path, "wb") as f:
        f.write(struct.pack("<Q", len(xyz)))
        for i, (p, c) in enumerate(zip(xyz, rgb)):
            f.write(struct.pack("<Q3d3BdQ", i + 1, *p, *c, 0.0, 0))


def write_points3d_txt(path: str | Path, xyz: np.ndarray, rgb: np.ndarray | None = None) -> None:
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    rgb = np.full((len(xyz), 3), 128, np.uint8) if rgb is None else np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
    with atomic_open(path) as f:
        f.write("# 3D point list with one line of data per point:\n"
                "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n")
        for i, (p, c) in enumerate(zip(xyz, rgb)):
            f.write(f"{i + 1} {p[0]:.17g} {p[1]:.17g} {p[2]:.17g} {c[0]} {c[1]} {c[2]} 0\n")


def write_colmap(
    root: str | Path,
    cameras: Sequence[Camera],
    *,
    names: Sequence[str] | None = None,
    images: Sequence[np.ndarray] | None = None,
    binary: bool = True,
    model: str | None = None,
    points: np.ndarray | None = None,
    point_colors: np.ndarray | None = None,
    sparse_subdir: str = "sparse/0",
    image_ext: str = ".png",
) -> Path:
    """Write a COLMAP scene: ``images/<name><image_ext>`` and ``<sparse_subdir>/{cameras,images,points3D}``
    as ``.bin`` (``binary``) or ``.txt``. Identical intrinsics share one COLMAP camera. ``model`` as in
    :func:`colmap_camera`. Returns ``root``."""
    root = Path(root)
    n = len(cameras)
    names = _default_names(n, names)
    imgs = _per_frame(images, n, "images")
    cams: list[ColmapCamera] = []
    regs: list[ColmapImage] = []
    key_to_id: dict[tuple, int] = {}
    for i, (cam, name) in enumerate(zip(cameras, names)):
        cc = colmap_camera(cam, len(cams) + 1, model)
        key = (cc.model, cc.width, cc.height, tuple(cc.params))
        if key not in key_to_id:
            key_to_id[key] = cc.id
            cams.append(cc)
        fname = f"{name}{image_ext}"
        regs.append(colmap_image(cam, i + 1, key_to_id[key], fname))
        save_image(root / "images" / fname, imgs[i] if imgs[i] is not None else _placeholder(cam))
    sparse = root / sparse_subdir
    if binary:
        write_cameras_bin(sparse / "cameras.bin", cams)
        write_images_bin(sparse / "images.bin", regs)
        write_points3d_bin(sparse / "points3D.bin", np.zeros((0, 3)) if points is None else points, point_colors)
    else:
        write_cameras_txt(sparse / "cameras.txt", cams)
        write_images_txt(sparse / "images.txt", regs)
        write_points3d_txt(sparse / "points3D.txt", np.zeros((0, 3)) if points is None else points, point_colors)
    return root


# ----------------------------------------------------------------------------------------- nerfstudio


def write_transforms_json(
    root: str | Path,
    cameras: Sequence[Camera],
    *,
    names: Sequence[str] | None = None,
    images: Sequence[np.ndarray] | None = None,
    depths: Sequence[np.ndarray] | None = None,
    per_frame_intrinsics: bool | None = None,
    instant_ngp: bool = False,
    applied_transform: np.ndarray | None = None,
    points: np.ndarray | None = None,
    point_colors: np.ndarray | None = None,
    image_ext: str = ".png",
) -> Path:
    """Write ``transforms.json`` + ``images/`` (+ ``depth/`` as uint16 mm PNG, + ``sparse_pc.ply``).

    Poses are written with OpenGL camera axes, principal points with the corner origin. Intrinsics go
    at the top level when all cameras share them, per frame otherwise (or as ``per_frame_intrinsics``
    says). ``instant_ngp=True`` writes only ``camera_angle_x`` (no size, no principal point), which
    needs one centred camera with ``fx == fy``. ``applied_transform`` ([4, 4] or [3, 4]) is recorded
    as given; ``cameras`` are already in the transformed space. Returns ``root``.
    """
    root = Path(root)
    n = len(cameras)
    if n == 0:
        raise ValueError("no cameras to write")
    names = _default_names(n, names)
    imgs, deps = _per_frame(images, n, "images"), _per_frame(depths, n, "depths")

    def intr(c: Camera) -> dict:
        d = {"w": c.width, "h": c.height, "fl_x": c.fx, "fl_y": c.fy, "cx": c.cx + 0.5, "cy": c.cy + 0.5}
        if np.any(c.dist != 0):
            d.update(zip(("k1", "k2", "p1", "p2"), (float(v) for v in c.dist)))
        return d

    shared = all(intr(c) == intr(cameras[0]) for c in cameras)
    per_frame = (not shared) if per_frame_intrinsics is None else per_frame_intrinsics
    if not per_frame and not shared:
        raise ValueError("cameras differ in intrinsics: write them per frame (per_frame_intrinsics=True)")
    meta: dict = {"camera_model": "OPENCV"}
    if instant_ngp:
        c = cameras[0]
        centred = np.isclose(c.cx, (c.width - 1) / 2) and np.isclose(c.cy, (c.height - 1) / 2)
        if not shared or not np.isclose(c.fx, c.fy) or not centred or np.any(c.dist != 0):
            raise ValueError("instant_ngp needs one shared, centred, undistorted camera with fx == fy")
        meta = {"camera_angle_x": float(2.0 * np.arctan(0.5 * c.width / c.fx))}
        per_frame = False
    elif not per_frame:
        meta.update(intr(cameras[0]))
    if applied_transform is not None:
        meta["applied_transform"] = np.asarray(applied_transform, dtype=np.float64)[:3].tolist()
    frames = []
    for i, (cam, name) in enumerate(zip(cameras, names)):
        rel = f"images/{name}{image_ext}"
        save_image(root / rel, imgs[i] if imgs[i] is not None else _placeholder(cam))
        fr: dict = {"file_path": rel, "transform_matrix": (cam.c2w @ GL_TO_CV).tolist()}
        if per_frame:
            fr.update(intr(cam))
        if deps[i] is not None:
            drel = f"depth/{name}.png"
            save_depth(root / drel, deps[i])
            fr["depth_file_path"] = drel
        frames.append(fr)
    meta["frames"] = frames
    if points is not None:
        _write_ply_points(root / "sparse_pc.ply", points, point_colors)
        meta["ply_file_path"] = "sparse_pc.ply"
    write_json(root / "transforms.json", meta)
    return root


def _write_ply_points(path: Path, xyz: np.ndarray, rgb: np.ndarray | None) -> None:
    from plyfile import PlyData, PlyElement

    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if rgb is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    v = np.empty(len(xyz), dtype=fields)
    v["x"], v["y"], v["z"] = xyz.T
    if rgb is not None:
        rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
        v["red"], v["green"], v["blue"] = rgb.T
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp))
