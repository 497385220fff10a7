"""Occlusion masks two ways: from a view's recorded blending weights, and as a one-off forward render of the
view (cos3d.query.masks2d); they must agree up to the weights below 1e-4 (a pixel or two)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def loaded(trained_run):
    import cos3d.pipeline.trained

    return cos3d.pipeline.trained.load(trained_run, device="cpu", segmenter="none")


def test_forward_mask_matches_recorded_weights(loaded):
    from cos3d.query.masks2d import MaskRenderer

    engine = loaded.engine
    frames = loaded.scene.split("test")[:2]
    compared = 0
    for prompt in ("blue mug", "toy robot", "soda can"):
        res = engine.query(prompt)
        if res.no_target:
            continue
        for f in frames:
            fresh = MaskRenderer(loaded.gaussians)
            one_off = fresh.occlusion(res.selected, f.camera)  # first ask of the view: the forward path
            assert f.camera.key() not in fresh._contrib
            recorded = fresh.occlusion(res.selected, f.camera)  # second ask: weights recorded, sparse product
            assert f.camera.key() in fresh._contrib
            assert one_off.shape == recorded.shape == (f.camera.height, f.camera.width)
            differ = int((one_off != recorded).sum())
            assert differ <= 2, (prompt, f.name, differ, int(recorded.sum()))
            compared += int(recorded.any())
            win = fresh.footprint(res.selected, f.camera)
            if recorded.any():  # every selected pixel lies inside the selection's footprint
                ys, xs = np.nonzero(recorded)
                x0, y0, x1, y1 = win
                assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
    assert compared >= 3


def test_cropped_camera_renders_the_same_pixels(loaded):
    import torch

    from cos3d.render import render

    cam = loaded.scene.frames[0].camera
    with torch.no_grad():
        full = render(loaded.gaussians, cam).rgb[0]
        part = render(loaded.gaussians, cam.cropped(20, 10, 100, 70)).rgb[0]
    assert part.shape[:2] == (60, 80)
    diff = (part - full[10:70, 20:100]).abs()
    assert float(diff.mean()) < 0.005 and float(diff.max()) < 0.03  # the frustum clamp (Camera.cropped)
    with torch.no_grad():  # the whole image as a "window" is the camera itself
        torch.testing.assert_close(render(loaded.gaussians, cam.cropped(0, 0, cam.width, cam.height)).rgb[0], full)
    with pytest.raises(ValueError, match="crop"):
        cam.cropped(0, 0, cam.width + 1, 10)
