"""Scene readers: turn a dataset folder into a :class:`cos3d.data.scene.Scene`.

``load_scene("scannet/scene0000")`` resolves the name under the data root, detects the layout and
dispatches to the matching reader:

- ScanNet export (``color/``, ``pose/``, ``intrinsic/``; our tabletop scenes use it too) → :mod:`.scannet`
- COLMAP (``images/`` + ``sparse/0/`` or ``sparse/``) → :mod:`.colmap`
- nerfstudio / instant-ngp ``transforms.json`` → :mod:`.nerfstudio`

Every reader holds every file a scene names (a ``file_path``, a COLMAP image name, an entry of
``color/``, a symlink) to one rule: it resolves inside the scene folder, or the load stops with one
line naming the file, the field and the value (:mod:`cos3d.core.paths`; ``COS3D_TRUST_SCENE_PATHS=1``
lifts it for scenes you trust).
"""

from __future__ import annotations

import os
from pathlib import Path

from cos3d.core.errors import SceneFormatError
from cos3d.data.scene import Scene

FORMATS = ("scannet", "colmap", "nerfstudio")


def default_data_root() -> Path:
    """``$COS3D_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("COS3D_DATA", "data"))


def resolve_scene_path(scene: str | os.PathLike, data_root: str | os.PathLike | None = None) -> Path:
    """A path that exists as given wins; otherwise ``scene`` is looked up under the data root."""
    p = Path(scene)
    if p.is_dir():
        return p
    root = Path(data_root) if data_root is not None else default_data_root()
    q = root / p
    if q.is_dir():
        return q
    where = f"{p} is not a folder" if p.is_absolute() or q == p else f"neither {p} nor {q} is a folder"
    raise SceneFormatError(
        f"scene {str(scene)!r} not found: {where} "
        "(pass a path, or set --data-root / $COS3D_DATA to the folder that holds it)"
    )


def detect_format(root: Path) -> str:
    if (root / "transforms.json").is_file():
        return "nerfstudio"
    if (root / "sparse").is_dir():
        return "colmap"
    if (root / "pose").is_dir() or (root / "color").is_dir():
        return "scannet"
    raise SceneFormatError(
        f"{root}: unknown scene layout; expected color/+pose/+intrinsic/ (ScanNet), images/+sparse/0/ (COLMAP) "
        "or transforms.json (nerfstudio)"
    )


def load_scene(
    scene: str | os.PathLike, data_root: str | os.PathLike | None = None, format: str = "auto"
) -> Scene:
    """Resolve, detect and read a scene. ``format`` is one of ``auto`` or :data:`FORMATS`."""
    root = resolve_scene_path(scene, data_root)
    fmt = detect_format(root) if format == "auto" else format
    if fmt == "scannet":
        from cos3d.readers.scannet import read_scannet

        return read_scannet(root)
    if fmt == "colmap":
        from cos3d.readers.colmap import read_colmap

        return read_colmap(root)
    if fmt == "nerfstudio":
        from cos3d.readers.nerfstudio import read_nerfstudio

        return read_nerfstudio(root)
    raise SceneFormatError(f"unknown scene format {format!r}; choose one of auto, {', '.join(FORMATS)}")
