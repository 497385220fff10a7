"""Camera.key: the one cache key of a camera (stage-1 weights cache, 2D mask renderer)."""

from __future__ import annotations

import dataclasses

import numpy as np

from cos3d.data.scene import Camera


def _camera() -> Camera:
    K = np.array([[50.0, 0, 19.5], [0, 50.0, 14.5], [0, 0, 1]])
    c2w = np.eye(4)
    c2w[:3, 3] = [0.1, -0.2, -2.0]
    return Camera(K, c2w, 40, 30)


def test_key_is_stable_and_changes_with_what_renders():
    cam = _camera()
    key = cam.key()
    assert isinstance(key, str) and len(key) == 16 and int(key, 16) >= 0
    assert _camera().key() == key  # same values, another object
    assert dataclasses.replace(cam, dist=np.array([0.1, 0, 0, 0])).key() == key  # distortion is not rendered
    other_K = cam.K.copy()
    other_K[0, 0] += 1e-9
    other_pose = cam.c2w.copy()
    other_pose[0, 3] += 1e-9
    others = [
        dataclasses.replace(cam, K=other_K),
        dataclasses.replace(cam, c2w=other_pose),
        dataclasses.replace(cam, width=41),
        dataclasses.replace(cam, height=31),
        cam.scaled(80, 60),
    ]
    keys = {c.key() for c in others}
    assert key not in keys and len(keys) == len(others)
