"""The ``classical`` mask provider: superpixels merged into masks; no weights, works on real photos.

1. Superpixels: Felzenszwalb–Huttenlocher graph segmentation (default; ``scale=50``, ``sigma=0.5`` —
   stronger pre-smoothing splits flat regions at their blurred rims) or SLIC (``method="slic"``).
2. A region adjacency graph weighted by the distance between the regions' mean colours
   (``skimage.graph.rag_mean_color``) is cut at three thresholds (``thresholds``, RGB units):
   adjacent regions closer than the threshold merge. The smallest threshold gives level ``s``,
   the middle ``m``, the largest ``l``.
3. Each connected region becomes a mask; regions smaller than ``min_area_frac`` or larger than
   ``max_area_frac`` of the image are left out (specks; background/walls). Score = colour
   homogeneity ``1 / (1 + mean RGB std / 32)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from cos3d.core.errors import Cos3dError
from cos3d.vision.base import MaskProvider, check_image
from cos3d.vision.masks import LEVELS, MaskSet, masks_to_boxes

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.data.scene import Frame

METHODS = ("felzenszwalb", "slic")


def superpixels(
    image: np.ndarray, method: str = "felzenszwalb", *, scale: float = 50.0, sigma: float = 0.5
) -> np.ndarray:
    """int64 ``[H, W]`` superpixel labels (0-based, contiguous) of a uint8 image. ``scale``/``sigma`` are
    Felzenszwalb's (larger scale = larger segments; sigma = pre-smoothing)."""
    from skimage import segmentation

    h, w = image.shape[:2]
    if method == "felzenszwalb":
        seg = segmentation.felzenszwalb(image, scale=scale, sigma=sigma, min_size=max(10, h * w // 2000))
    elif method == "slic":
        seg = segmentation.slic(image, n_segments=max(16, h * w // 500), compactness=10, start_label=0)
    else:
        raise Cos3dError(f"unknown superpixel method {method!r}; choose one of {', '.join(METHODS)}")
    _, seg = np.unique(seg, return_inverse=True)
    return seg.reshape(h, w).astype(np.int64)


def merged_regions(image: np.ndarray, seg: np.ndarray, thresholds: tuple[float, ...]) -> list[np.ndarray]:
    """For each threshold, int64 ``[H, W]`` labels after merging adjacent superpixels whose mean colours
    are closer than it."""
    from skimage import graph

    if seg.max() == 0:
        return [seg.copy() for _ in thresholds]
    rag = graph.rag_mean_color(image, seg)
    out = []
    for t in thresholds:
        lab = graph.cut_threshold(seg, rag, float(t), in_place=False)
        _, lab = np.unique(lab, return_inverse=True)
        out.append(lab.reshape(seg.shape).astype(np.int64))
    return out


def region_around(
    image: np.ndarray,
    seeds: np.ndarray,
    *,
    negative: np.ndarray | None = None,
    method: str = "felzenszwalb",
    threshold: float = 25.0,
) -> np.ndarray:
    """bool ``[H, W]``: the union of the merged superpixel regions touched by ``seeds`` (bool ``[H, W]``),
    minus those touched by ``negative``. Used for point/scribble prompts without SAM2."""
    image = check_image(image, "reference image")
    lab = merged_regions(image, superpixels(image, method), (threshold,))[0]
    hit = np.unique(lab[np.asarray(seeds, bool)])
    if negative is not None and np.asarray(negative, bool).any():
        hit = np.setdiff1d(hit, np.unique(lab[np.asarray(negative, bool)]))
    return np.isin(lab, hit)


class ClassicalMaskProvider(MaskProvider):
    """Superpixels merged into masks at three colour thresholds (see the module docstring)."""

    name = "classical"

    def __init__(
        self,
        method: str = "felzenszwalb",
        *,
        thresholds: tuple[float, float, float] = (10.0, 25.0, 45.0),
        scale: float = 50.0,
        sigma: float = 0.5,
        min_area_frac: float = 0.001,
        max_area_frac: float = 0.6,
    ) -> None:
        if method not in METHODS:
            raise Cos3dError(f"unknown superpixel method {method!r}; choose one of {', '.join(METHODS)}")
        if len(thresholds) != len(LEVELS) or list(thresholds) != sorted(thresholds):
            raise Cos3dError(f"classical thresholds must be 3 increasing values (s, m, l), got {thresholds}")
        self.method = method
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale = float(scale)
        self.sigma = float(sigma)
        self.min_area_frac = float(min_area_frac)
        self.max_area_frac = float(max_area_frac)

    @property
    def model_id(self) -> str:
        return f"classical:{self.method}"

    @property
    def params(self) -> dict[str, Any]:
        return {
            "thresholds": list(self.thresholds),
            "scale": self.scale,
            "sigma": self.sigma,
            "min_area_frac": self.min_area_frac,
            "max_area_frac": self.max_area_frac,
        }

    def generate(self, image: np.ndarray, frame: "Frame | None" = None) -> MaskSet:
        image = check_image(image)
        h, w = image.shape[:2]
        seg = superpixels(image, self.method, scale=self.scale, sigma=self.sigma)
        levels = merged_regions(image, seg, self.thresholds)
        lo, hi = self.min_area_frac * h * w, self.max_area_frac * h * w
        flat = image.reshape(-1, 3).astype(np.float64)
        masks, lv, score = [], [], []
        for k, lab in enumerate(levels):
            n = int(lab.max()) + 1
            counts = np.bincount(lab.ravel(), minlength=n)
            sums = np.stack([np.bincount(lab.ravel(), flat[:, c], minlength=n) for c in range(3)], 1)
            sq = np.stack([np.bincount(lab.ravel(), flat[:, c] ** 2, minlength=n) for c in range(3)], 1)
            mean = sums / np.maximum(counts, 1)[:, None]
            std = np.sqrt(np.clip(sq / np.maximum(counts, 1)[:, None] - mean**2, 0, None)).mean(1)
            for r in np.nonzero((counts >= max(lo, 1)) & (counts <= hi))[0]:
                masks.append(lab == r)
                lv.append(k)
                score.append(1.0 / (1.0 + std[r] / 32.0))
        if not masks:
            return MaskSet.empty(h, w)
        arr = np.stack(masks)
        return MaskSet(
            masks=arr,
            level=np.asarray(lv, np.int8),
            score=np.asarray(score, np.float32),
            box=masks_to_boxes(arr),
            source_id=np.full(len(masks), -1, np.int64),
        )
