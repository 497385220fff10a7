"""nerfstudio / instant-ngp ``transforms.json``.

```
{
  "camera_model": "OPENCV",                 optional; OPENCV, PINHOLE or SIMPLE_PINHOLE (fisheye refused)
  "fl_x", "fl_y", "cx", "cy", "w", "h",     intrinsics, global or per frame (per frame wins)
  "k1", "k2", "p1", "p2",                   optional distortion (kept, not applied by renderers)
  "camera_angle_x" [, "camera_angle_y"],    instant-ngp / Blender: horizontal field of view in radians
  "applied_transform": [[...] x3],          optional 3×4 that produced these poses from the original ones
  "ply_file_path": "sparse_pc.ply",         optional initial points (same space as the poses)
  "frames": [{"file_path": "images/frame_00001.png", "transform_matrix": [[...] x4],
              "depth_file_path": "depth/frame_00001.png", ...}],
  "train_filenames" / "test_filenames"      optional split lists (file paths)
}
```

``transform_matrix`` is camera-to-world with OpenGL/Blender camera axes (x right, y up, z back); it is
turned into OpenCV axes by flipping the camera's y and z axes (``c2w_cv = c2w_gl @ diag(1, -1, -1, 1)``).
Principal points use the corner origin (``cx = w / 2`` for a centred camera, as nerfstudio casts rays
through ``pixel + 0.5``) and are shifted to OpenCV pixel centres. File paths are relative to the folder
of ``transforms.json``; a path without a suffix (Blender synthetic: ``./train/r_0``) gets ``.png`` or
``.jpg``. ``applied_transform`` is recorded as ``scene.transform`` so that
:meth:`cos3d.data.scene.Scene.to_original_space` maps results back to the original (e.g. COLMAP) frame.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from cos3d.core.errors import SceneFormatError
from cos3d.core.paths import inside_folder
from cos3d.readers.scannet import (
    SIDECARS,
    aspect_differs,
    depth_file_size,
    in_scene,
    note,
    read_labels,
    read_parts,
    read_splits,
)
from cos3d.data.scene import Camera, Frame, Scene, frame_names, read_image_size

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
"""Right-multiply a camera-to-world to swap OpenGL and OpenCV camera axes (its own inverse)."""
SUPPORTED_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2",
                  "camera_angle_x", "camera_angle_y", "camera_model")


def _matrix(value: Any, path: Path, what: str) -> np.ndarray:
    """A 4×4 (or 3×4, completed with 0 0 0 1) matrix from a JSON list of rows."""
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise SceneFormatError(f"{path}: {what} must be a list of 4 rows of 4 numbers") from None
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise SceneFormatError(f"{path}: {what} must be a 4x4 (or 3x4) matrix, got shape {m.shape}")
    return m


def _resolve_file(root: Path, rel: str, source: Path, field: str) -> Path:
    """The file ``rel`` (``field`` of ``source``) names, relative to ``root``; it must resolve inside
    ``root`` (:func:`cos3d.core.paths.inside_folder`: one line naming the file, the field and the value)."""
    if "\0" in rel:
        raise SceneFormatError(f"{source}: {field} {rel!r} contains a NUL byte; fix the file")
    p = Path(rel)
    p = p if p.is_absolute() else root / p
    if p.suffix == "" and not p.is_file():
        for ext in (".png", ".jpg", ".jpeg"):
            if p.with_name(p.name + ext).is_file():
                p = p.with_name(p.name + ext)
                break
    return inside_folder(root, p, source=source, field=field, value=rel)


def _name_path(root: Path, p: Path) -> str:
    """``p`` relative to ``root`` (lexically normalised) for naming its frame; outside it (a trusted
    scene, :data:`cos3d.core.paths.TRUST_ENV`), the file name alone."""
    p, root = Path(os.path.normpath(p)), Path(os.path.normpath(root))
    return p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name


def _rel_key(root: Path, rel: str) -> str:
    """A normalised key for matching file paths between ``frames`` and the ``*_filenames`` lists."""
    p = Path(rel)
    p = p if p.is_absolute() else root / p
    return Path(*[part for part in p.parts if part != "."]).with_suffix("").as_posix()


def _number(meta: dict, frame: dict, key: str, path: Path, where: str) -> float | None:
    v = frame.get(key, meta.get(key))
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise SceneFormatError(f"{path}: {where}: {key} must be a number, got {v!r}") from None


def read_nerfstudio(root: str | Path, filename: str = "transforms.json") -> Scene:
    """Read a nerfstudio / instant-ngp ``transforms.json`` scene (format in the module docstring).

    Frames are sorted by ``file_path`` (as nerfstudio does); a frame's name is its image's file stem.
    Every image's header is read (no pixels): its size must match the frame's ``w``/``h`` (sizes missing
    from the file come from the images, which must then share one size), and a depth map must have its
    image's aspect ratio; each mismatch is one :class:`SceneFormatError` line naming the file. Every
    file the scene names must resolve inside ``root`` (:mod:`cos3d.core.paths`: ``../``, absolute paths and
    symlinks out of the folder are refused unless ``COS3D_TRUST_SCENE_PATHS=1``).
    """
    root = Path(root)
    path = root / filename
    if path.is_file():
        in_scene(root, path)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise SceneFormatError(f"{path}: file is missing") from None
    except json.JSONDecodeError as e:
        raise SceneFormatError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise SceneFormatError(f'{path}: expected an object with a "frames" list')
    raw_frames = meta["frames"]
    if not raw_frames:
        raise SceneFormatError(f"{path}: \"frames\" is empty; the scene has no images")
    for i, fr in enumerate(raw_frames):
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise SceneFormatError(f"{path}: frame {i} needs \"file_path\" and \"transform_matrix\"")
    raw_frames = sorted(raw_frames, key=lambda fr: str(fr["file_path"]))
    notes: list[str] = []

    default_size: tuple[int, int] | None = None
    default_img: Path | None = None
    image_paths = [_resolve_file(root, str(fr["file_path"]), path, "file_path") for fr in raw_frames]
    names = frame_names([_name_path(root, p) for p in image_paths])
    depth_factor = meta.get("depth_unit_scale_factor")  # metres per raw depth unit, if the file says

    frames: list[Frame] = []
    dropped_k34 = False
    for fr, img, name in zip(raw_frames, image_paths, names):
        where = f"frame {fr['file_path']!r}"
        if not img.is_file():
            raise SceneFormatError(
                f"{img}: image listed in {path.name} ({where}) is missing; restore it or remove the frame"
            )
        model = str(fr.get("camera_model", meta.get("camera_model", "OPENCV"))).upper()
        if model not in SUPPORTED_MODELS:
            raise SceneFormatError(
                f"{path}: {where} uses camera_model {model}, which cos3d does not read (it reads "
                f"{', '.join(SUPPORTED_MODELS)}); undistort the images to a pinhole camera first"
            )
        size = read_image_size(img)  # every image: a header read, no pixels
        w = _number(meta, fr, "w", path, where)
        h = _number(meta, fr, "h", path, where)
        if w is None or h is None:
            if default_size is None:
                default_size, default_img = size, img
            elif size != default_size:
                raise SceneFormatError(
                    f"{path}: images of different sizes and no \"w\"/\"h\" for {where}: {default_img.name} is "
                    f"{default_size[0]}x{default_size[1]} but {img.name} is {size[0]}x{size[1]}; give each frame its "
                    "w, h and intrinsics, or resize the images to one size"
                )
            w, h = (w or default_size[0]), (h or default_size[1])
        fx = _number(meta, fr, "fl_x", path, where)
        if fx is None:
            ax = _number(meta, fr, "camera_angle_x", path, where)
            if ax is None:
                raise SceneFormatError(
                    f"{path}: {where} has no focal length; add fl_x (pixels) or camera_angle_x (radians)"
                )
            fx = 0.5 * w / math.tan(0.5 * ax) if 0 < ax < math.pi else 0.0
        fy = _number(meta, fr, "fl_y", path, where)
        if fy is None:
            ay = _number(meta, fr, "camera_angle_y", path, where)
            fy = (0.5 * h / math.tan(0.5 * ay) if 0 < ay < math.pi else 0.0) if ay is not None else fx
        cx = _number(meta, fr, "cx", path, where)
        cy = _number(meta, fr, "cy", path, where)
        cx = w / 2.0 if cx is None else cx
        cy = h / 2.0 if cy is None else cy
        dist = [_number(meta, fr, k, path, where) or 0.0 for k in ("k1", "k2", "p1", "p2")]
        dropped_k34 |= any(_number(meta, fr, k, path, where) for k in ("k3", "k4"))
        K = np.array([[fx, 0.0, cx - 0.5], [0.0, fy, cy - 0.5], [0.0, 0.0, 1.0]])
        c2w = _matrix(fr["transform_matrix"], path, f"{where}: transform_matrix") @ GL_TO_CV
        cam = Camera(K=K, c2w=c2w, width=round(w), height=round(h), dist=dist)
        cam.validate(f"{path} ({where})")
        if size != (cam.width, cam.height):
            raise SceneFormatError(
                f"{img}: image is {size[0]}x{size[1]} but {path.name} says {cam.width}x{cam.height} "
                f"({where}); fix w/h and the intrinsics, or resize the image"
            )
        depth_path, depth_scale = None, 1000.0
        if fr.get("depth_file_path"):
            depth_path = _resolve_file(root, str(fr["depth_file_path"]), path, f"{where}: depth_file_path")
            if not depth_path.is_file():
                raise SceneFormatError(f"{depth_path}: depth file listed in {path.name} ({where}) is missing")
            dsize = depth_file_size(depth_path)
            if aspect_differs(dsize, size):  # depth covers the image's field of view: a uniform scale only
                raise SceneFormatError(
                    f"{depth_path}: depth is {dsize[0]}x{dsize[1]} but its image {img.name} is {size[0]}x{size[1]} "
                    f"({where}), another aspect ratio; export depth at the image's aspect ratio"
                )
            # Default: uint16 PNG in millimetres, .npy in metres.
            depth_scale = 1.0 if depth_path.suffix == ".npy" else 1000.0
            if depth_factor is not None:
                if not isinstance(depth_factor, (int, float)) or not depth_factor > 0:
                    raise SceneFormatError(f"{path}: depth_unit_scale_factor must be a positive number")
                depth_scale = 1.0 / float(depth_factor)
        frames.append(
            Frame(name=name, camera=cam, image_path=img, depth_path=depth_path, depth_scale=depth_scale)
        )
    if dropped_k34:
        note(notes, f"{path}: distortion terms k3/k4 are ignored (cos3d keeps k1, k2, p1, p2); undistort the images")
    if any(np.any(f.camera.dist != 0) for f in frames):
        note(notes, f"{path}: cameras have lens distortion, which renderers ignore; "
             "undistort the images for exact results")

    transform = np.eye(4)
    if "applied_transform" in meta:
        transform = _matrix(meta["applied_transform"], path, "applied_transform")
        if not np.all(np.isfinite(transform)) or abs(np.linalg.det(transform)) < 1e-12:
            raise SceneFormatError(f"{path}: applied_transform must be a finite, invertible matrix")

    points = colors = None
    if meta.get("ply_file_path"):
        points, colors = _read_ply_points(_resolve_file(root, str(meta["ply_file_path"]), path, "ply_file_path"), path)

    splits: dict[str, list[str]] = {}
    key_to_name = {_rel_key(root, str(fr["file_path"])): n for fr, n in zip(raw_frames, names)}
    for split in ("train", "val", "test"):
        listed = meta.get(f"{split}_filenames")
        if listed is None:
            continue
        missing = [f for f in listed if _rel_key(root, str(f)) not in key_to_name]
        if missing:
            raise SceneFormatError(f"{path}: {split}_filenames lists {missing[0]!r}, which is not among the frames")
        splits[split] = [key_to_name[_rel_key(root, str(f))] for f in listed]

    for side in SIDECARS:
        if (root / side).is_file():
            in_scene(root, root / side)
    labels = read_labels(root / "labels.json") if (root / "labels.json").is_file() else {}
    parts = read_parts(root / "parts.json") if (root / "parts.json").is_file() else {}
    if (root / "splits.json").is_file():
        known = {f.name for f in frames}
        splits = read_splits(root / "splits.json")
        for split, listed in splits.items():
            bad = [n for n in listed if n not in known]
            if bad:
                raise SceneFormatError(f"{root / 'splits.json'}: split {split!r} names unknown frame {bad[0]!r}")
    return Scene(
        root=root, frames=frames, labels=labels, parts=parts, points=points, point_colors=colors,
        splits=splits, transform=transform, source="nerfstudio", notes=notes,
    )


def _read_ply_points(ply: Path, json_path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(xyz ``[P, 3]`` float32, rgb ``[P, 3]`` uint8 or None) from a point-cloud PLY."""
    from plyfile import PlyData

    if not ply.is_file():
        raise SceneFormatError(f"{ply}: ply_file_path in {json_path.name} points to a missing file")
    try:
        v = PlyData.read(str(ply))["vertex"]
        xyz = np.stack([v["x"], v["y"], v["z"]], -1).astype(np.float32)
        names = v.data.dtype.names or ()
        rgb = np.stack([v["red"], v["green"], v["blue"]], -1).astype(np.uint8) if "red" in names else None
    except Exception as e:
        raise SceneFormatError(f"{ply}: cannot read points ({e}); expected a PLY with vertex x, y, z") from None
    return xyz, rgb
