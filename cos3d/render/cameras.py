"""Cameras as the rasterizers take them: ``(viewmats, Ks, width, height)`` tensors (both backends)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from cos3d.data.scene import Camera

__all__ = ["cameras_to_tensors"]


def _as_camera_list(cameras: Camera | Sequence[Camera]) -> list[Camera]:
    if isinstance(cameras, Camera):
        return [cameras]
    cams = list(cameras)
    if not cams:
        raise ValueError("render: got an empty list of cameras")
    for i, c in enumerate(cams):
        if not isinstance(c, Camera):
            raise TypeError(f"render: cameras[{i}] must be a cos3d.data.scene.Camera, got {type(c).__name__}")
    return cams


def cameras_to_tensors(
    cameras: Camera | Sequence[Camera], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, int, int]:
    """``(viewmats [C,4,4] world-to-camera, Ks [C,3,3] corner convention, width, height)``.

    An unusable camera (see :meth:`Camera.validate`) raises :class:`~cos3d.core.errors.SceneFormatError`;
    cameras of different sizes raise ``ValueError``.
    """
    cams = _as_camera_list(cameras)
    w, h = cams[0].width, cams[0].height
    for i, cam in enumerate(cams):
        cam.validate(f"render: camera {i}")
        if (cam.width, cam.height) != (w, h):
            raise ValueError(
                f"render: cameras in one call must share a size; camera 0 is {w}x{h}, camera {i} is "
                f"{cam.width}x{cam.height} (render them in separate calls)"
            )
    Kt = torch.as_tensor(np.stack([cam.K_corner for cam in cams]), dtype=dtype, device=device)
    Vt = torch.as_tensor(np.stack([cam.w2c for cam in cams]), dtype=dtype, device=device)
    return Vt, Kt, w, h
