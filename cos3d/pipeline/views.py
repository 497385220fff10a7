"""Which views train, and at what size: the view and resolution policy of ``cos3d train``.

A real scan has thousands of frames (ScanNet: 1,000-5,000 at 1296×968) and many of them are blurred
by motion. Training uses at most ``max_views`` of them, spread evenly along the trajectory: the
frames (in capture order) are cut into ``max_views`` consecutive runs and the sharpest frame of each
run is kept, so coverage stays even and blurry frames lose to their neighbours. Sharpness is the
variance of the Laplacian of the grey image (a standard focus measure), computed on a JPEG-draft
decode at reduced size, so scoring 5,000 frames takes seconds. Frames without a valid pose never
reach this point (the readers drop them).

Training then runs at ``max_size`` pixels on the long side (intrinsics rescaled, :meth:`Frame.at_size`);
masks and query answers stay at the frames' own resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cos3d.data.scene import Frame, Scene

__all__ = ["ViewPolicy", "sharpness", "select_views", "training_scene"]


def sharpness(frame: Frame, *, size: int = 320) -> float:
    """Variance of the 4-neighbour Laplacian of ``frame``'s grey image at about ``size`` px wide."""
    from PIL import Image

    with Image.open(frame.image_path) as im:
        scale = max(1, (im.size[0] // size))
        im.draft("L", (im.size[0] // scale, im.size[1] // scale))  # JPEG: decode at reduced size
        grey = im.convert("L")
        if grey.size[0] > size:
            grey = grey.resize((size, max(1, round(grey.size[1] * size / grey.size[0]))), Image.BOX)
        g = np.asarray(grey, dtype=np.float32)
    if min(g.shape) < 3:
        return 0.0
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def select_views(frames: Sequence[Frame], max_views: int, *, score=sharpness) -> tuple[list[Frame], dict]:
    """At most ``max_views`` of ``frames`` (in order): the highest-``score`` frame of each of
    ``max_views`` consecutive runs. Returns ``(frames, info)``; ``info`` says how many were scored and
    the median sharpness of the kept and the passed-over frames."""
    frames = list(frames)
    if max_views < 1:
        raise ValueError(f"max_views must be positive, got {max_views}")
    if len(frames) <= max_views:
        return frames, {"from": len(frames), "kept": len(frames), "scored": 0}
    bounds = np.linspace(0, len(frames), max_views + 1)
    scores = [score(f) for f in frames]
    kept_idx = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        lo, hi = int(math.floor(a)), max(int(math.floor(a)) + 1, int(math.floor(b)))
        kept_idx.append(lo + int(np.argmax(scores[lo:hi])))
    kept = set(kept_idx)
    passed = [scores[i] for i in range(len(frames)) if i not in kept]
    info = {
        "from": len(frames),
        "kept": len(kept_idx),
        "scored": len(frames),
        "sharpness_kept_median": round(float(np.median([scores[i] for i in kept_idx])), 2),
        "sharpness_passed_median": round(float(np.median(passed)), 2) if passed else None,
    }
    return [frames[i] for i in kept_idx], info


@dataclass(frozen=True)
class ViewPolicy:
    """Which views train and at what size."""

    max_views: int | None = 300
    """Train on at most this many views: the sharpest of each of as many even runs of the trajectory (none: all)."""
    max_test_views: int = 16
    """Measure stage 0's held-out PSNR on at most this many test views, spread evenly."""
    max_size: int | None = 1600
    """Long side in pixels of the training images; larger frames train downscaled, intrinsics rescaled (none: as is)."""

    def train_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of a ``width`` × ``height`` frame under ``max_size``."""
        if self.max_size is None or max(width, height) <= self.max_size:
            return width, height
        s = self.max_size / max(width, height)
        return max(1, round(width * s)), max(1, round(height * s))


def training_scene(scene: Scene, policy: ViewPolicy) -> tuple[Scene, dict]:
    """A scene of the views ``policy`` keeps, rescaled to the training size, with ``splits`` naming
    them; and the record of what was chosen (for ``run.json`` and the log)."""
    import dataclasses

    train, info = select_views(scene.split("train"), policy.max_views or len(scene.frames))
    test = scene.split("test")
    if len(test) > policy.max_test_views:
        idx = np.linspace(0, len(test) - 1, policy.max_test_views).round().astype(int)
        test = [test[i] for i in sorted(set(idx.tolist()))]
    train_names = {f.name for f in train}
    frames = [f.at_size(*policy.train_size(*f.size)) for f in train + [t for t in test if t.name not in train_names]]
    sub = dataclasses.replace(scene, frames=frames, splits={"train": [f.name for f in train],
                                                            "test": [f.name for f in test]})
    sizes = sorted({f.size for f in frames})
    record = {
        "frames": len(scene.frames),
        "train": len(train),
        "test": len(test),
        "selection": info,
        "train_size": list(sizes[0]) if len(sizes) == 1 else [list(s) for s in sizes],
        "native_size": list(scene.frames[0].size),
    }
    return sub, record
