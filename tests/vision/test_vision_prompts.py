"""Image prompts without SAM2 (offline rules), validation, and combining embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cos3d.core.errors import Cos3dError
from cos3d.vision.prompts import combine_embeddings, prompt_mask
from cos3d.testing.vision import synthetic_maps
from cos3d.vision.image_prompt import ImagePrompt


@pytest.fixture(scope="module")
def view():
    return synthetic_maps(96, 64)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_mask_and_box_prompts(view):
    image, inst, _ = view
    duck = inst == 3
    np.testing.assert_array_equal(prompt_mask(image, ImagePrompt(mask=duck)), duck)
    box = prompt_mask(image, ImagePrompt(box=[10, 5, 30, 20]))
    assert box.sum() == 20 * 15 and box[5:20, 10:30].all()
    # a box with a click inside: the clicked region within the box
    ys, xs = np.nonzero(inst == 2)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    m = prompt_mask(image, ImagePrompt(box=[x0 - 2, y0 - 2, x1 + 2, y1 + 2], points=[[xs.mean(), ys.mean()]]))
    assert iou(m, inst == 2) > 0.8


def test_points_and_scribble_prompts(view):
    image, inst, part = view
    ball = inst == 2
    ys, xs = np.nonzero(ball)
    m = prompt_mask(image, ImagePrompt(points=np.array([[xs.mean(), ys.mean()]])))
    assert iou(m, ball) > 0.8
    # a scribble across the mug body, as a polyline and as a stroke image
    body = part == 12
    ys, xs = np.nonzero(body)
    line = np.array([[xs.min() + 2, ys.mean()], [xs.max() - 2, ys.mean()]])
    m1 = prompt_mask(image, ImagePrompt(scribble=line))
    stroke = np.zeros_like(body)
    stroke[int(ys.mean()), xs.min() + 2 : xs.max() - 1] = True
    m2 = prompt_mask(image, ImagePrompt(scribble=stroke))
    np.testing.assert_array_equal(m1, m2)
    assert iou(m1, body) > 0.8
    # a negative point removes what it touches
    both = prompt_mask(
        image,
        ImagePrompt(points=[[xs.mean(), ys.mean()], [np.nonzero(ball)[1].mean(), np.nonzero(ball)[0].mean()]], point_labels=[1, 0]),
    )
    assert not (both & ball).any()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(box=[80, 10, 120, 30]), "outside the 96x64"),
        (dict(box=[10, 10, 5, 30]), "empty"),
        (dict(box=[1, 2, 3]), "4 finite numbers"),
        (dict(mask=np.zeros((64, 96), bool)), "empty"),
        (dict(mask=np.ones((32, 48), bool)), "reference image is 96x64"),
        (dict(points=[[100, 10]]), "outside"),
        (dict(points=[[10, 10]], point_labels=[0]), "positive"),
        (dict(points=[[10, 10]], point_labels=[1, 1]), "point_labels"),
        (dict(mask=np.ones((64, 96), bool), box=[0, 0, 5, 5]), "stands alone"),
        (dict(), "needs a box, a mask"),
        (dict(scribble=np.zeros((64, 96), bool)), "empty"),
    ],
)
def test_prompt_validation(view, kwargs, match):
    image = view[0]
    with pytest.raises(Cos3dError, match=match):
        prompt_mask(image, ImagePrompt(**kwargs))


def test_wrong_image():
    with pytest.raises(Cos3dError, match=r"\[H, W, 3\]"):
        prompt_mask(np.zeros((10, 10), np.uint8), ImagePrompt(box=[0, 0, 5, 5]))
    with pytest.raises(Cos3dError, match="uint8"):
        prompt_mask(np.zeros((10, 10, 3), np.float32), ImagePrompt(box=[0, 0, 5, 5]))


def test_combine_embeddings():
    a = torch.tensor([1.0, 0.0, 0.0])
    b = torch.tensor([0.0, 2.0, 0.0])
    c = combine_embeddings([a, b])
    torch.testing.assert_close(c, torch.tensor([1.0, 1.0, 0.0]) / 2**0.5)
    torch.testing.assert_close(combine_embeddings([a, b], weights=[1, 0]), a)
    with pytest.raises(Cos3dError, match="different widths"):
        combine_embeddings([a, torch.ones(4)])
    with pytest.raises(Cos3dError, match="cancel"):
        combine_embeddings([a, -a])


def test_image_prompt_is_one_value_built_once():
    p = ImagePrompt.of(box=[1, 2, 3, 4], points="5,6;7,8,0")
    assert p.kind == "box+points" and ImagePrompt.of(p) is p and ImagePrompt.of() is None
    loaded = p.loaded()
    np.testing.assert_array_equal(loaded.points, [[5, 6], [7, 8]])
    np.testing.assert_array_equal(loaded.point_labels, [1, 0])
    with pytest.raises(Cos3dError, match="region= or as box=, not both"):
        ImagePrompt.of(p, box=[0, 0, 1, 1])
    with pytest.raises(Cos3dError, match="also give the points"):
        ImagePrompt.of(point_labels=[1])
    with pytest.raises(TypeError, match="no clicks"):
        ImagePrompt.of(clicks=[1])
