"""Two rules for paths that come from data, not from the user's command line.

**Reading: a scene's files stay inside its folder.** A path read from a scene's data files
(nerfstudio ``file_path`` / ``depth_file_path`` / ``ply_file_path``, a COLMAP image name, a file
listed in a ScanNet/tabletop folder, a path recorded in ``run.json``) must resolve — symlinks
resolved too — inside the folder it belongs to; otherwise the load stops with one
:class:`~cos3d.core.errors.SceneFormatError` line naming the file, the field and the value. A scene
downloaded from someone else must not make cos3d read the user's other files, just as git refuses
paths that leave the work tree and tar refuses ``..`` members.

Scenes you trust that keep their images elsewhere (an ``images/`` symlink to another disk,
absolute ``file_path`` values) load with ``COS3D_TRUST_SCENE_PATHS=1`` in the environment: it
allows every path a scene file names (absolute, ``..``, symlinks out of the folder), nothing else.

**Writing: a frame name is never a path.** Frame names come from data too (file stems, or relative
paths when stems collide), so every writer that names a file after a frame goes through
:func:`safe_name`: it keeps ``[A-Za-z0-9._-]`` names as they are and turns anything else (separators,
``..``, NUL bytes, a leading dot, an empty or overlong name) into a plain name with a hash of the
original, so two frames never share a file and no file lands outside its folder.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

from cos3d.core.errors import SceneFormatError

__all__ = ["TRUST_ENV", "inside_folder", "safe_name", "trusted"]

TRUST_ENV = "COS3D_TRUST_SCENE_PATHS"
"""Set to 1 to let scene files name files outside their folder (absolute paths, ``..``, symlinks)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME = 120


def trusted() -> bool:
    """True when ``$COS3D_TRUST_SCENE_PATHS`` allows paths outside the scene folder."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def inside_folder(root: str | os.PathLike, path: str | os.PathLike, *, source: str | os.PathLike, field: str,
                  value: object = None, what: str = "the scene folder") -> Path:
    """``path`` (a file named by ``field`` of ``source``), checked to resolve inside ``root``.

    Symlinks are resolved on both sides. Returns ``path`` unchanged; raises one
    :class:`SceneFormatError` line naming ``source``, ``field`` and ``value`` (default: ``path``) when
    the path leaves ``root`` or holds a NUL byte, unless :func:`trusted`.
    """
    shown = os.fspath(path) if value is None else value
    if "\0" in os.fspath(path):
        raise SceneFormatError(f"{source}: {field} {shown!r} contains a NUL byte; fix the file")
    if trusted():
        return Path(path)
    real_root = Path(root).resolve()
    try:
        real = Path(path).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise SceneFormatError(
            f"{source}: {field} {shown!r} cannot be resolved ({type(e).__name__}); fix the file"
        ) from None
    if real != real_root and not real.is_relative_to(real_root):
        raise SceneFormatError(
            f"{source}: {field} {shown!r} resolves to {real}, outside {what} {real_root}; cos3d reads only files "
            f"inside it: move the file in (or, for a scene you trust, set {TRUST_ENV}=1)"
        )
    return Path(path)


def safe_name(name: str) -> str:
    """A file name (no suffix) for a frame named ``name``: ``name`` itself when it is made of
    ``[A-Za-z0-9._-]``, does not start with a dot and is not overlong; else the name with every other
    character replaced by ``_`` (leading dots dropped, cut to a bounded length) and the CRC-32 of the
    original appended, so distinct names stay distinct. Never a path: no separator, no ``..``, no NUL."""
    safe = _UNSAFE.sub("_", name)
    if safe == name and safe and not safe.startswith(".") and len(safe) <= _MAX_NAME:
        return safe
    safe = safe.lstrip(".")[:_MAX_NAME]
    return f"{safe}-{zlib.crc32(name.encode('utf-8', 'surrogatepass')):08x}"
