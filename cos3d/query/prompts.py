"""Parsing prompt specifications given on the command line (or as strings in Python).

- ``--box x0,y0,x1,y1`` → 4 floats (pixels, exclusive ends; checked against the image later);
- ``--points "x,y;x,y"`` → ``[K, 2]`` (a third value per point, ``x,y,0``, marks a negative point);
- ``--click VIEW:x,y`` → ``(view, x, y)``;
- ``--mask m.png`` / ``--scribble s.png`` → bool ``[H, W]`` (non-zero pixels, any channel);
- ``--views v1,v2`` → frame names;
- a part sentence ("the handle of the red mug", "the robot's head") → ``(part, parent)``
  (:func:`parse_part_sentence`).

Every malformed value raises :class:`~cos3d.core.errors.Cos3dError` naming the flag and the expected form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cos3d.core.errors import Cos3dError
from cos3d.vision.image_prompt import _floats

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.data.scene import Camera


@dataclass(frozen=True)
class Click:
    """A pixel ``(x, y)`` (x right, y down; pixel centres at integers) in the frame named ``view``
    (or, from Python, in a :class:`~cos3d.data.scene.Camera`)."""

    view: str | Camera
    x: float
    y: float

    def __str__(self) -> str:
        return f"{self.view}:{self.x:g},{self.y:g}"


def parse_click(text: str) -> Click:
    """``"VIEW:x,y"`` → :class:`Click`."""
    view, sep, rest = str(text).rpartition(":")
    if not sep or not view:
        raise Cos3dError(f"--click expects VIEW:x,y (a frame name, then pixel x,y), got {text!r}")
    x, y = _floats(rest, "--click", 2, "VIEW:x,y")
    return Click(view=view, x=x, y=y)


def parse_views(text: str | list[str] | None) -> list[str] | None:
    """``"a,b"`` or ``["a", "b,c"]`` → ``["a", "b", "c"]``; None stays None."""
    if text is None:
        return None
    items = [text] if isinstance(text, str) else list(text)
    out = [v.strip() for item in items for v in str(item).split(",") if v.strip()]
    if not out:
        raise Cos3dError("--views expects frame names, e.g. --views 16,17")
    return out


def load_rgb_image(path: str | Path, flag: str = "--image") -> np.ndarray:
    """A reference image as uint8 ``[H, W, 3]``."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise Cos3dError(f"{flag} {p}: no such file")
    try:
        with Image.open(p) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except Exception as e:
        raise Cos3dError(f"{flag} {p}: cannot read image ({e})") from None


_ARTICLE = r"(?:(?:the|a|an|this|that)\s+)?"
_PART_OF = re.compile(rf"^\s*{_ARTICLE}(?P<part>[\w][\w\s-]*?)\s+of\s+{_ARTICLE}(?P<whole>[\w][\w\s'-]*?)\s*$", re.I)
_POSSESSIVE = re.compile(rf"^\s*{_ARTICLE}(?P<whole>[\w][\w\s-]*?)(?:'s|’s|s'|’)\s+(?P<part>[\w][\w\s-]*?)\s*$", re.I)


def parse_part_sentence(text: str) -> tuple[str, str] | None:
    """``(part, parent)`` of a part query written as one sentence, else None.

    Forms: "the handle of the red mug" (``PART of PARENT``) and "the robot's
    head" / "the robots' heads" (``PARENT's PART``); articles are dropped. Whether the sentence really
    names a part ("bottle of ketchup" parses too) is decided by the query engine
    (:meth:`cos3d.query.engine.QueryEngine.part_query`: no level separates a part → one name)."""
    if not isinstance(text, str):
        return None
    for rx in (_POSSESSIVE, _PART_OF):
        m = rx.match(text)
        if m:
            part, whole = m.group("part").strip(), m.group("whole").strip()
            if part and whole:
                return part, whole
    return None
