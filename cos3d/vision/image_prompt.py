"""One image prompt, as one value (:class:`ImagePrompt`): where on a reference image the user points — a box, a
mask, a scribble, or points with labels. The CLI, the Python API, the viewer and the server build it once; the
query engine and the 2D segmenter (:func:`cos3d.vision.prompts.prompt_mask`) take it whole.

Coordinates are pixels, ``x`` right and ``y`` down; a box is ``[x0, y0, x1, y1]``. Files (mask / scribble PNGs)
and ``"x,y;x,y,0"`` point text are read by :meth:`ImagePrompt.loaded`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from cos3d.core.errors import Cos3dError

__all__ = ["BinaryInput", "ImagePrompt", "PointsInput", "load_binary_image", "parse_box", "parse_points"]

BinaryInput = Union[np.ndarray, str, Path]
"""A bool ``[H, W]`` array or an image file (non-zero pixels are the region)."""
PointsInput = Union[np.ndarray, Sequence[Sequence[float]], str]
"""``[K, 2]`` pixel (x, y), or the text ``"x,y;x,y,0"`` (a third value 0 marks a background point)."""


@dataclass(frozen=True)
class ImagePrompt:
    """Where on the reference image: ``box`` ``[x0, y0, x1, y1]``; ``mask`` or ``scribble`` (bool ``[H, W]`` or an
    image file); ``points`` ``[K, 2]`` (x, y) with ``point_labels`` ``[K]`` (1 object, 0 background; default
    all 1). A mask stands alone; a box may come with points; a scribble with points."""

    box: Sequence[float] | None = None
    mask: BinaryInput | None = None
    scribble: BinaryInput | None = None
    points: PointsInput | None = None
    point_labels: Sequence[int] | np.ndarray | None = None

    @classmethod
    def of(cls, prompt: ImagePrompt | None = None, **parts: Any) -> ImagePrompt | None:
        """``prompt``, or one built from keyword parts (``box=``, ``mask=``, ``scribble=``, ``points=``,
        ``point_labels=``; None ones ignored); None when nothing is given. Both at once is one error line."""
        given = {k: v for k, v in parts.items() if v is not None}
        unknown = sorted(set(given) - {"box", "mask", "scribble", "points", "point_labels"})
        if unknown:
            raise TypeError(f"ImagePrompt has no {', '.join(unknown)}")
        if prompt is not None and given:
            raise Cos3dError(f"give the image prompt as region= or as {', '.join(sorted(given))}=, not both")
        if prompt is not None:
            return prompt
        if set(given) == {"point_labels"}:
            raise Cos3dError("point_labels label points: also give the points they label")
        return cls(**given) if given else None

    @property
    def kind(self) -> str:
        """What is given, for notes and descriptions: ``box``, ``box+points``, ``mask``, ``scribble+points``..."""
        given = [k for k, v in (("box", self.box), ("mask", self.mask), ("scribble", self.scribble),
                                ("points", self.points)) if v is not None]
        return "+".join(given) or "nothing"

    def loaded(self) -> ImagePrompt:
        """The same prompt with files read (mask / scribble → bool arrays) and point text parsed."""
        out = self
        if isinstance(self.mask, (str, Path)):
            out = replace(out, mask=load_binary_image(self.mask, "--mask"))
        if isinstance(self.scribble, (str, Path)):
            out = replace(out, scribble=load_binary_image(self.scribble, "--scribble"))
        if isinstance(self.points, str):
            pts, labels = parse_points(self.points)
            out = replace(out, points=pts, point_labels=labels if self.point_labels is None else self.point_labels)
        return out


def _floats(text: str, flag: str, n: int | tuple[int, ...], form: str) -> list[float]:
    parts = [p.strip() for p in str(text).replace(" ", ",").split(",") if p.strip()]
    counts = (n,) if isinstance(n, int) else n
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise Cos3dError(f"{flag} expects {form}, got {text!r}") from None
    if len(vals) not in counts or not np.all(np.isfinite(vals)):
        raise Cos3dError(f"{flag} expects {form}, got {text!r}")
    return vals


def parse_box(text: str) -> list[float]:
    """``"x0,y0,x1,y1"`` → ``[x0, y0, x1, y1]``."""
    x0, y0, x1, y1 = _floats(text, "--box", 4, "x0,y0,x1,y1 (pixels)")
    if x1 <= x0 or y1 <= y0:
        raise Cos3dError(f"--box {text!r} is empty: need x0 < x1 and y0 < y1")
    return [x0, y0, x1, y1]


def parse_points(text: str) -> tuple[np.ndarray, np.ndarray]:
    """``"x,y;x,y[,label]"`` → points ``[K, 2]`` float64 and labels ``[K]`` int64 (1 = object, 0 = background)."""
    pts, labels = [], []
    for chunk in str(text).split(";"):
        if not chunk.strip():
            continue
        v = _floats(chunk, "--points", (2, 3), '"x,y;x,y" (a third value 0 marks a background point)')
        pts.append(v[:2])
        lab = 1 if len(v) == 2 else int(v[2])
        if lab not in (0, 1):
            raise Cos3dError(f"--points: a point's label must be 0 or 1, got {v[2]:g} in {chunk.strip()!r}")
        labels.append(lab)
    if not pts:
        raise Cos3dError(f'--points expects "x,y;x,y", got {text!r}')
    return np.asarray(pts, np.float64), np.asarray(labels, np.int64)


def load_binary_image(path: str | Path, flag: str) -> np.ndarray:
    """A PNG/JPG as bool ``[H, W]`` (non-zero in any channel; alpha ignored)."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise Cos3dError(f"{flag} {p}: no such file")
    try:
        with Image.open(p) as im:
            im.load()
            arr = np.asarray(im.convert("L") if im.mode not in ("L", "1", "I", "I;16") else im)
    except Exception as e:
        raise Cos3dError(f"{flag} {p}: cannot read image ({e})") from None
    return arr.astype(np.float64) > 0
