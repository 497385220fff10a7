"""``QueryEngine.lift_camera``: an image prompt on any posed view (the viewer's ctrl-drag box).

On a training frame's own camera and image it answers exactly as the frame path (``query(view=, box=)``)
does; on a novel view (a camera no frame has, at another size) it renders that view's image and blending
weights itself. Oracle-2D run (the session's tabletop); the test reads ground truth, the engine does not.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cos3d.core.errors import Cos3dError
from cos3d.vision.image_prompt import ImagePrompt


@pytest.fixture(scope="module")
def trained(trained_run):
    import cos3d

    return cos3d.load(trained_run, device="cpu")


def test_lift_camera_on_a_frame_equals_the_frame_path_and_works_on_a_novel_view(trained):
    eng = trained.engine
    sc = trained.scene
    inst = next(i for i, n in sc.labels.items() if n and n[0] == "red coffee mug")
    frame = next(f for f in sc.split("train") if (f.load_instance() == inst).sum() > 150)
    ys, xs = np.nonzero(frame.load_instance() == inst)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    ref = eng.query(view=frame.name, box=box)
    got = eng.lift_camera(frame.camera, ImagePrompt.of(box=box), image=frame.load_image())
    np.testing.assert_array_equal(got.selected.numpy(), ref.selected.numpy())
    assert got.kind == "image" and "lifted through the view's own blending weights" in got.reason

    # a novel view: the frame's camera moved 3 cm right and 4 cm up, rendered at twice the size
    cam = frame.camera.scaled(2 * frame.camera.width, 2 * frame.camera.height)
    c2w = cam.c2w.copy()
    c2w[:3, 3] += 0.03 * c2w[:3, 0] - 0.04 * c2w[:3, 1]
    cam = dataclasses.replace(cam, c2w=c2w)
    img = eng.render_rgb(cam)
    assert img.shape == (cam.height, cam.width, 3) and img.dtype == np.uint8 and img.std() > 10
    pts = frame.camera.backproject(frame.load_depth())[(frame.load_instance() == inst) & (frame.load_depth() > 0)]
    uv, _ = cam.project(pts)
    lo, hi = uv.min(0) - 2, uv.max(0) + 2
    res = eng.lift_camera(cam, ImagePrompt.of(box=[*lo, *hi]))
    ious = []
    for f in sc.split("test"):
        gt = f.load_instance() == inst
        if gt.sum() >= 30:
            pred = np.asarray(eng.masks.mask(res.selected, f.camera, "occlusion"), bool)
            ious.append((pred & gt).sum() / (pred | gt).sum())
    assert ious and np.mean(ious) >= 0.5, ious
    with pytest.raises(Cos3dError, match="but the camera is"):
        eng.lift_camera(cam, ImagePrompt.of(box=[*lo, *hi]), image=frame.load_image())
    with pytest.raises(TypeError):
        eng.lift_camera(frame.name, ImagePrompt.of(box=box))
