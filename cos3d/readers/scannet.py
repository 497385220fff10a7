"""ScanNet export layout (also what ``cos3d prepare tabletop`` writes).

```
ROOT/color/<N>.jpg|png            colour frames; N sorts numerically
ROOT/depth/<N>.png                optional, uint16 millimetres (or <N>.npy, float metres); any resolution
ROOT/pose/<N>.txt                 4×4 camera-to-world, OpenCV axes; ScanNet writes -inf for lost tracking
ROOT/intrinsic/intrinsic_color.txt   4×4 (ScanNet) or 3×3, K in the top-left, for the colour resolution
ROOT/intrinsic/intrinsic_depth.txt   optional, the same for the depth images
ROOT/instance/<N>.png, part/<N>.png  optional, uint16 ids, 0 = none
ROOT/labels.json                  optional {"<instance id>": ["name", "phrasing", ...] | "name"}
ROOT/parts.json                   optional {"<part id>": {"names": [...], "parent": <instance id>}}
ROOT/splits.json                  optional {"train": [frame names], "test": [frame names]}
```

The sidecar readers (:func:`read_labels`, :func:`read_parts`, :func:`read_splits`) are shared with the
other readers, which accept the same files at their scene root.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cos3d.core.errors import SceneFormatError
from cos3d.core.paths import inside_folder
from cos3d.data.scene import Camera, Frame, PartInfo, Scene, read_image_size

log = logging.getLogger("cos3d")

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
DEPTH_EXTS = {".png": 1000.0, ".npy": 1.0}
"""Depth file suffix → raw units per metre."""


def _numeric_key(stem: str) -> tuple[int, int, str]:
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def read_matrix(path: Path, what: str) -> np.ndarray:
    """Whitespace-separated numbers of a text file as a float64 ``[rows, cols]`` array."""
    try:
        m = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except FileNotFoundError:
        raise SceneFormatError(f"{path}: {what} file is missing") from None
    except ValueError as e:
        raise SceneFormatError(f"{path}: {what} must be whitespace-separated numbers ({e})") from None
    return m


def read_intrinsics(path: Path) -> np.ndarray:
    """``[3, 3]`` K from a 3×3 or ScanNet-style 4×4 (K in the top-left) text file."""
    if not path.is_file():
        raise SceneFormatError(
            f"{path}: intrinsics file is missing; write the colour camera's 3x3 K (or ScanNet's 4x4) there"
        )
    m = read_matrix(path, "intrinsics")
    if m.shape not in ((3, 3), (4, 4)):
        raise SceneFormatError(f"{path}: intrinsics must be a 3x3 or 4x4 matrix, got {m.shape[0]}x{m.shape[1]}")
    K = m[:3, :3].copy()
    if not np.allclose(K[2], [0.0, 0.0, 1.0]) or K[1, 0] != 0.0:
        raise SceneFormatError(
            f"{path}: not a pinhole intrinsics matrix (expected [[fx 0 cx] [0 fy cy] [0 0 1]], got rows "
            f"{K[1].tolist()}, {K[2].tolist()})"
        )
    return K


def read_pose(path: Path) -> np.ndarray:
    """``[4, 4]`` camera-to-world from a text file; may contain non-finite values (check before use)."""
    m = read_matrix(path, "pose")
    if m.shape != (4, 4):
        raise SceneFormatError(
            f"{path}: expected a 4x4 camera-to-world matrix (4 rows of 4 numbers), got {m.shape[0]}x{m.shape[1]}; "
            "add the last row 0 0 0 1 or re-export the poses"
        )
    if np.all(np.isfinite(m)) and not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0]):
        raise SceneFormatError(f"{path}: the last row of a camera-to-world matrix must be 0 0 0 1, got {m[3].tolist()}")
    return m


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise SceneFormatError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise SceneFormatError(f"{path}: not a UTF-8 text file") from None


def _int_key(path: Path, key: str, what: str) -> int:
    try:
        return int(key)
    except (TypeError, ValueError):
        raise SceneFormatError(f"{path}: keys must be integer {what} ids, got {key!r}") from None


def _names(path: Path, value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise SceneFormatError(f"{path}: {where} must be a name or a non-empty list of names, got {value!r}")
    return [v.strip() for v in value]


def read_labels(path: Path) -> dict[int, list[str]]:
    """``labels.json`` → {instance id: [names]} (first = canonical). A plain string value is one name."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise SceneFormatError(
            f'{path}: expected an object {{"<instance id>": ["name", ...]}}, got {type(data).__name__}'
        )
    return {_int_key(path, k, "instance"): _names(path, v, f"instance {k}") for k, v in data.items()}


def read_parts(path: Path) -> dict[int, PartInfo]:
    """``parts.json`` → {part id: PartInfo(names, parent instance id)}."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise SceneFormatError(f'{path}: expected an object {{"<part id>": {{"names": [...], "parent": <id>}}}}')
    parts: dict[int, PartInfo] = {}
    for k, v in data.items():
        pid = _int_key(path, k, "part")
        if not isinstance(v, dict) or "parent" not in v or not ("names" in v or "name" in v):
            raise SceneFormatError(f'{path}: part {k} must be {{"names": [...], "parent": <instance id>}}, got {v!r}')
        try:
            parent = int(v["parent"])
        except (TypeError, ValueError):
            raise SceneFormatError(f"{path}: part {k} has a non-integer parent {v['parent']!r}") from None
        parts[pid] = PartInfo(names=_names(path, v.get("names", v.get("name")), f"part {k}"), parent=parent)
    return parts


def read_splits(path: Path) -> dict[str, list[str]]:
    """``splits.json`` → {split name: [frame names]}. Integer names are accepted and turned into strings."""
    data = _read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise SceneFormatError(f'{path}: expected {{"train": [frame names], "test": [frame names]}}')
    return {str(k): [str(n) for n in v] for k, v in data.items()}


SIDECARS = ("labels.json", "parts.json", "splits.json", "meta.json", "eval_prompts.json")
"""Files at a scene's top level that readers, evaluation and the simulation read (tabletop scenes
carry all five); each must resolve inside the scene folder."""


def read_sidecars(root: Path, scene_frames: list[str], skipped: set[str], notes: list[str]) -> dict[str, Any]:
    """Read the optional ``labels.json`` / ``parts.json`` / ``splits.json`` at ``root``.

    Split entries naming a ``skipped`` frame are dropped (with a note); unknown names are an error.
    Returns keyword arguments for :class:`Scene` (``labels``, ``parts``, ``splits``).
    """
    out: dict[str, Any] = {}
    for name in SIDECARS:
        if (root / name).is_file():
            in_scene(root, root / name)
    if (root / "labels.json").is_file():
        out["labels"] = read_labels(root / "labels.json")
    if (root / "parts.json").is_file():
        out["parts"] = read_parts(root / "parts.json")
    if (root / "splits.json").is_file():
        path = root / "splits.json"
        splits = read_splits(path)
        known = set(scene_frames)
        for split, names in splits.items():
            unknown = [n for n in names if n not in known and n not in skipped]
            if unknown:
                raise SceneFormatError(
                    f"{path}: split {split!r} names {len(unknown)} frame(s) the scene does not have, "
                    f"e.g. {unknown[0]!r}; frame names are image file stems"
                )
            dropped = [n for n in names if n in skipped]
            if dropped:
                note(notes, f"{path.name}: dropped {len(dropped)} skipped frame(s) from split {split!r}")
            splits[split] = [n for n in names if n in known]
        out["splits"] = splits
    return out


def note(notes: list[str], message: str) -> None:
    """Record a reader note and log it as a warning on the ``cos3d`` logger."""
    notes.append(message)
    log.warning(message)


def in_scene(root: Path, path: Path) -> Path:
    """``path``, a file of the scene at ``root``, checked to resolve inside it (symlinks resolved:
    :func:`cos3d.core.paths.inside_folder`)."""
    return inside_folder(root, path, source=path.parent, field="file", value=path.name)


def _index(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    """Files of ``folder`` with one of ``exts``, keyed by stem; each must resolve inside the scene
    folder (``folder``'s parent)."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for p in folder.iterdir():
        if p.suffix.lower() in exts and p.is_file():
            if p.stem in out:
                raise SceneFormatError(f"{folder}: both {out[p.stem].name} and {p.name} exist; keep one")
            out[p.stem] = in_scene(folder.parent, p)
    return out


def depth_file_size(path: Path) -> tuple[int, int]:
    """(width, height) of a depth file from its header: a PNG's, or a ``.npy`` array's ``[H, W]``."""
    if path.suffix.lower() != ".npy":
        return read_image_size(path)
    try:
        with open(path, "rb") as f:
            fmt = np.lib.format
            version = fmt.read_magic(f)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, _ = read_header(f)  # header only, no data
    except Exception as e:
        raise SceneFormatError(f"{path}: cannot read the .npy header ({type(e).__name__}); re-export this depth map") from None
    if len(shape) != 2:
        raise SceneFormatError(f"{path}: depth must be a 2-D [H, W] array, got shape {tuple(shape)}")
    return int(shape[1]), int(shape[0])


def _one_size(sizes: dict[str, tuple[int, int]], files: dict[str, Path], what: str, fix: str) -> tuple[int, int]:
    """The size every file of ``sizes`` shares; else one line naming two files that differ."""
    it = iter(sizes.items())
    stem0, size0 = next(it)
    for stem, size in it:
        if size != size0:
            raise SceneFormatError(
                f"{files[stem].parent}: {what} of different sizes: {files[stem0].name} is {size0[0]}x{size0[1]} "
                f"but {files[stem].name} is {size[0]}x{size[1]}; {fix}"
            )
    return size0


def aspect_differs(a: tuple[int, int], b: tuple[int, int], tol: float = 0.01) -> bool:
    """True when the aspect ratios (width / height) of sizes ``a`` and ``b`` differ by more than ``tol``."""
    ra, rb = a[0] / a[1], b[0] / b[1]
    return abs(ra - rb) > tol * rb


CENTRE_TOL = 0.1
"""How far (a fraction of the image size) the principal point of ``intrinsic_depth.txt`` may lie from
the centre of the depth image. Real cameras are within a few %; intrinsics made for another resolution
(×1.25 or more) are off by ≥ 10 %."""


def _check_depth(root: Path, depth_files: dict[str, Path], depth_K: np.ndarray | None, depth_K_path: Path,
                 color_size: tuple[int, int], color_name: str) -> None:  # fmt: skip
    """Depth images agree with their intrinsics: one size; with ``intrinsic_depth.txt`` its principal point
    lies near the depth image's centre; without it, the depth has the colour image's aspect ratio (its
    intrinsics are the colour ones scaled). A mismatch would be misregistered silently."""
    if not depth_files:
        return
    sizes = {stem: depth_file_size(p) for stem, p in depth_files.items()}
    size = _one_size(sizes, depth_files, "depth images", "one intrinsic_depth.txt serves every frame: export them at one size")
    first = depth_files[next(iter(sizes))]
    w, h = size
    if depth_K is not None:
        cx, cy = depth_K[0, 2], depth_K[1, 2]
        if abs(cx - (w - 1) / 2) > CENTRE_TOL * w or abs(cy - (h - 1) / 2) > CENTRE_TOL * h:
            raise SceneFormatError(
                f"{depth_K_path}: principal point ({cx:g}, {cy:g}) is far from the centre of the {w}x{h} depth "
                f"images (e.g. {first.name}); these intrinsics look made for about {2 * cx + 1:.0f}x{2 * cy + 1:.0f}: "
                "rescale them to the depth resolution (or the depth images to theirs)"
            )
    elif aspect_differs(size, color_size):
        raise SceneFormatError(
            f"{first}: depth is {w}x{h} but the colour images are {color_size[0]}x{color_size[1]} (e.g. {color_name}), "
            f"another aspect ratio, and there is no {depth_K_path.name}; write the depth camera's K to "
            f"{depth_K_path} or export depth at the colour aspect ratio"
        )


def _check_id_maps(files: dict[str, Path], what: str, color_size: tuple[int, int], color_name: str) -> None:
    """Instance/part maps must have the colour image's aspect ratio (same size, or a uniform scale that
    nearest-neighbour resizing undoes); another aspect ratio would be stretched."""
    for p in files.values():
        size = read_image_size(p)
        if aspect_differs(size, color_size):
            raise SceneFormatError(
                f"{p}: {what} map is {size[0]}x{size[1]} but the colour images are {color_size[0]}x{color_size[1]} "
                f"(e.g. {color_name}), another aspect ratio; export the {what} maps at the colour resolution"
            )


def read_scannet(root: str | Path) -> Scene:
    """Read a ScanNet-style export (layout in the module docstring) into a :class:`Scene`.

    Every image's header is read (pixels load lazily): colour images must share one size (one
    ``intrinsic_color.txt`` serves them all), depth images must agree with ``intrinsic_depth.txt`` (or,
    without it, have the colour aspect ratio), and instance/part maps must have the colour aspect ratio;
    each mismatch is one :class:`SceneFormatError` line naming the files. Frames whose pose is non-finite
    are skipped, and the count is logged and recorded in ``scene.notes``.
    """
    root = Path(root)
    color_dir = root / "color"
    if not color_dir.is_dir():
        raise SceneFormatError(
            f"{color_dir}: folder is missing; a ScanNet-style scene needs color/, pose/ and intrinsic/"
        )
    images = _index(color_dir, IMAGE_EXTS)
    if not images:
        raise SceneFormatError(f"{color_dir}: no .jpg/.png images found; export the colour frames there")
    stems = sorted(images, key=_numeric_key)

    K = read_intrinsics(in_scene(root, root / "intrinsic" / "intrinsic_color.txt"))
    depth_K_path = root / "intrinsic" / "intrinsic_depth.txt"
    depth_K = read_intrinsics(in_scene(root, depth_K_path)) if depth_K_path.is_file() else None

    first = images[stems[0]]
    width, height = _one_size(
        {stem: read_image_size(images[stem]) for stem in stems}, images, "colour images",
        "one intrinsic_color.txt serves every frame: resize them to one size",
    )
    Camera(K=K, c2w=np.eye(4), width=width, height=height).validate(str(root / "intrinsic" / "intrinsic_color.txt"))
    if depth_K is not None:
        Camera(K=depth_K, c2w=np.eye(4), width=1, height=1).validate(str(depth_K_path))
    if not (-0.5 <= K[0, 2] <= width - 0.5 and -0.5 <= K[1, 2] <= height - 0.5):
        raise SceneFormatError(
            f"{root / 'intrinsic' / 'intrinsic_color.txt'}: principal point ({K[0, 2]:g}, {K[1, 2]:g}) lies outside "
            f"the {width}x{height} colour image {first.name}; the intrinsics belong to another resolution: rescale them"
        )

    depths = _index(root / "depth", tuple(DEPTH_EXTS))
    instances = _index(root / "instance", (".png",))
    parts = _index(root / "part", (".png",))
    used = set(stems)
    _check_depth(root, {k: v for k, v in depths.items() if k in used}, depth_K, depth_K_path, (width, height), first.name)
    _check_id_maps({k: v for k, v in instances.items() if k in used}, "instance", (width, height), first.name)
    _check_id_maps({k: v for k, v in parts.items() if k in used}, "part", (width, height), first.name)
    notes: list[str] = []

    frames: list[Frame] = []
    skipped: list[str] = []
    for stem in stems:
        pose_path = root / "pose" / f"{stem}.txt"
        if not pose_path.is_file():
            raise SceneFormatError(
                f"{pose_path}: pose file is missing for {images[stem].name}; export it or delete the colour frame"
            )
        c2w = read_pose(in_scene(root, pose_path))
        if not np.all(np.isfinite(c2w)):
            skipped.append(stem)
            continue
        cam = Camera(K=K, c2w=c2w, width=width, height=height)
        cam.validate(str(pose_path))
        dpath = depths.get(stem)
        frames.append(
            Frame(
                name=stem,
                camera=cam,
                image_path=images[stem],
                depth_path=dpath,
                depth_scale=DEPTH_EXTS[dpath.suffix.lower()] if dpath is not None else 1000.0,
                instance_path=instances.get(stem),
                part_path=parts.get(stem),
                depth_K=depth_K,
            )
        )
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        note(notes, f"{root}: skipped {len(skipped)} of {len(stems)} frames with non-finite poses ({shown})")
    if not frames:
        raise SceneFormatError(
            f"{root / 'pose'}: all {len(stems)} poses are non-finite; the scene has no usable frames"
        )
    if depths and len(depths) < len(stems):
        note(notes, f"{root / 'depth'}: {len(stems) - len(depths)} frame(s) have no depth image")

    side = read_sidecars(root, [f.name for f in frames], set(skipped), notes)
    return Scene(root=root, frames=frames, source="scannet", notes=notes, **side)
