"""The mask crop every image embedder sees (README "Models and the oracle-2D protocol").

For one mask: zero the pixels outside the mask, crop the mask's box, pad the crop to a square (the
crop centred, zeros around it), resize to ``size`` × ``size``. Then each embedder applies its model's
own normalisation (:func:`crops_to_tensor`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from cos3d.vision.masks import masks_to_boxes

if TYPE_CHECKING:  # pragma: no cover
    import torch

_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}  # PIL.Image.Resampling values


def mask_crop(image: np.ndarray, mask: np.ndarray, size: int = 224, *, resample: str = "bicubic") -> np.ndarray:
    """uint8 ``[size, size, 3]`` crop of ``image`` (uint8 ``[H, W, 3]``) around ``mask`` (bool ``[H, W]``).

    An empty mask gives an all-zero crop.
    """
    return mask_crops(image, np.asarray(mask, bool)[None], size, resample=resample)[0]


def square_box(box: Sequence[float]) -> tuple[int, int, int, int, int]:
    """For an integer box ``x0, y0, x1, y1`` (exclusive ends): the square side and the offsets at which
    the box content sits inside the square: ``(side, off_x, off_y, w, h)``."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    w, h = x1 - x0, y1 - y0
    side = max(w, h, 1)
    return side, (side - w) // 2, (side - h) // 2, w, h


def mask_crops(
    image: np.ndarray,
    masks: np.ndarray,
    size: int = 224,
    *,
    boxes: np.ndarray | None = None,
    resample: str = "bicubic",
) -> np.ndarray:
    """uint8 ``[M, size, size, 3]``: :func:`mask_crop` for each of ``masks`` (bool ``[M, H, W]``)."""
    from PIL import Image

    image = np.asarray(image)
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"masks {masks.shape} do not match image {image.shape}")
    if resample not in _RESAMPLE:
        raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
    if boxes is None:
        boxes = masks_to_boxes(masks)
    out = np.zeros((masks.shape[0], size, size, 3), np.uint8)
    for k in range(masks.shape[0]):
        x0, y0, x1, y1 = (int(round(v)) for v in boxes[k])
        if x1 <= x0 or y1 <= y0:
            continue
        side, ox, oy, w, h = square_box((x0, y0, x1, y1))
        sq = np.zeros((side, side, 3), np.uint8)
        region = image[y0:y1, x0:x1]
        sq[oy : oy + h, ox : ox + w] = np.where(masks[k, y0:y1, x0:x1, None], region, 0)
        if side != size:
            sq = np.asarray(Image.fromarray(sq).resize((size, size), _RESAMPLE[resample]))
        out[k] = sq
    return out


def crops_to_tensor(
    crops: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: "str | torch.device" = "cpu",
    dtype: "torch.dtype | None" = None,
) -> "torch.Tensor":
    """uint8 ``[M, S, S, 3]`` → normalised ``[M, 3, S, S]`` tensor: ``(x / 255 - mean) / std``."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(crops)).to(device)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(list(mean), dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    x = (x - m) / s
    return x if dtype is None else x.to(dtype)
