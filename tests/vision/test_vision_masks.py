"""MaskSet, boxes, NMS, packing and the mask crop (pure numpy; fast)."""

from __future__ import annotations

import numpy as np
import pytest

from cos3d.core.errors import Cos3dError
from cos3d.vision.crops import crops_to_tensor, mask_crop, mask_crops
from cos3d.vision.masks import (
    LEVELS,
    MaskSet,
    box_iou,
    level_index,
    mask_iou,
    masks_to_boxes,
    nms,
    pack_masks,
    unpack_masks,
)


def rect(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_boxes_use_exclusive_ends_and_empty_is_zero():
    masks = np.stack([rect(20, 30, 3, 4, 10, 9), np.zeros((20, 30), bool), rect(20, 30, 0, 0, 30, 20)])
    boxes = masks_to_boxes(masks)
    assert boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes, [[3, 4, 10, 9], [0, 0, 0, 0], [0, 0, 30, 20]])
    assert box_iou(boxes[:1], boxes[:1])[0, 0] == pytest.approx(1.0)


def test_mask_iou_exact():
    a = rect(10, 10, 0, 0, 4, 4)
    b = rect(10, 10, 2, 0, 6, 4)
    assert mask_iou(a[None], b[None])[0, 0] == pytest.approx(8 / 24)


def test_nms_on_constructed_masks():
    h, w = 40, 40
    big = rect(h, w, 5, 5, 25, 25)  # score 0.9
    shifted = rect(h, w, 6, 5, 26, 25)  # IoU with big = 380/420 > 0.7, lower score -> dropped
    nested = rect(h, w, 10, 10, 14, 14)  # inside big, IoU tiny -> kept
    far = rect(h, w, 30, 30, 38, 38)  # disjoint -> kept
    empty = np.zeros((h, w), bool)  # always dropped
    better_dup = rect(h, w, 5, 6, 25, 26)  # duplicate of big with a higher score -> suppresses big
    masks = np.stack([big, shifted, nested, far, empty, better_dup])
    scores = np.array([0.9, 0.8, 0.5, 0.7, 0.99, 0.95])
    keep = nms(masks, scores, 0.7)
    assert keep.tolist() == [5, 3, 2]  # highest score first; big and shifted suppressed by better_dup
    # threshold above every overlap keeps all non-empty masks
    assert sorted(nms(masks, scores, 0.99).tolist()) == [0, 1, 2, 3, 5]
    # box mode: a ring and the filled square share a box -> box NMS drops the ring, mask NMS keeps it
    ring = big & ~rect(h, w, 7, 7, 23, 23)
    m2 = np.stack([big, ring])
    s2 = np.array([0.9, 0.8])
    assert nms(m2, s2, 0.7, mode="box").tolist() == [0]
    assert nms(m2, s2, 0.7, mode="mask").tolist() == [0, 1]
    # ties keep the earlier index
    assert nms(np.stack([big, big]), np.array([0.5, 0.5]), 0.7).tolist() == [0]


def test_maskset_validation_levels_label_map():
    h, w = 12, 16
    a = rect(h, w, 0, 0, 8, 8)
    b = rect(h, w, 4, 4, 12, 12)
    c = rect(h, w, 5, 5, 7, 7)  # inside both
    ms = MaskSet.from_masks(np.stack([a, b, c]), level=np.array([2, 2, 2]), score=np.array([0.5, 0.9, 0.5]))
    assert len(ms) == 3 and ms.shape == (h, w)
    assert ms.source_id.tolist() == [-1, -1, -1] and ms.is_part.tolist() == [False] * 3
    lm = ms.label_map("l")
    assert lm.dtype == np.int64 and lm.shape == (h, w)
    assert lm[0, 0] == 1  # only a
    assert lm[6, 6] == 2  # a, b, c overlap: b (0.9) wins over a and c (0.5)
    assert lm[5, 5] == 2  # b has the highest score, beats a and c
    assert lm[10, 10] == 2 and lm[11, 15] == 0
    # equal scores: the smaller mask wins (a vs c at pixel (5,5) without b)
    ms2 = ms.subset([0, 2])
    assert ms2.label_map("l")[5, 5] == 2 and ms2.label_map(2)[0, 0] == 1
    assert not ms.label_map("s").any()
    assert ms.at_level("l").masks.shape == (3, h, w) and len(ms.at_level("m")) == 0
    both = MaskSet.concat([ms, MaskSet.from_masks(a[None], "s")])
    assert both.level.tolist() == [2, 2, 2, 0] and both.indices("s").tolist() == [3]
    with pytest.raises(ValueError):
        MaskSet(masks=np.zeros((2, 4, 4), bool), level=[0], score=[1, 1], box=np.zeros((2, 4)))
    with pytest.raises(ValueError):
        MaskSet.from_masks(np.zeros((1, 4, 4), bool), level=np.array([5]))
    with pytest.raises(Cos3dError, match="unknown mask level"):
        level_index("xl")
    assert [level_index(x) for x in LEVELS] == [0, 1, 2]
    empty = MaskSet.empty(5, 6)
    assert len(empty) == 0 and empty.label_map("l").shape == (5, 6)


def test_pack_unpack_roundtrip():
    rng = np.random.default_rng(0)
    m = rng.random((3, 7, 11)) > 0.5
    np.testing.assert_array_equal(unpack_masks(pack_masks(m), 3, 7, 11), m)
    assert unpack_masks(pack_masks(np.zeros((0, 5, 5), bool)), 0, 5, 5).shape == (0, 5, 5)


def test_crop_contains_exactly_the_mask_native_size():
    h, w = 40, 50
    image = np.full((h, w, 3), 77, np.uint8)  # non-zero everywhere: outside-mask pixels must be zeroed
    mask = rect(h, w, 10, 5, 30, 15)  # box 20 wide, 10 high
    mask[5, 10] = False  # a hole at the corner must stay zero
    image[mask] = (200, 100, 50)
    crop = mask_crop(image, mask, size=20)  # square side = 20 = size: no resampling
    assert crop.shape == (20, 20, 3) and crop.dtype == np.uint8
    expected = np.zeros((20, 20), bool)
    expected[5:15, :] = mask[5:15, 10:30]  # padded by (20 - 10) // 2 = 5 rows above
    np.testing.assert_array_equal(crop.any(-1), expected)
    np.testing.assert_array_equal(crop[expected], np.tile([200, 100, 50], (expected.sum(), 1)))


def test_crop_geometry_after_resize():
    h, w = 60, 60
    image = np.full((h, w, 3), 255, np.uint8)
    mask = rect(h, w, 20, 30, 30, 50)  # 10 wide, 20 high -> side 20, padded 5 columns left/right
    crops = mask_crops(image, np.stack([mask, np.zeros_like(mask)]), size=40, resample="nearest")
    assert crops.shape == (2, 40, 40, 3)
    nz = crops[0].any(-1)
    ys, xs = np.nonzero(nz)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (0, 39, 10, 29)  # columns 5..15 of 20, scaled by 2
    assert nz[:, 10:30].all()
    assert not crops[1].any()  # an empty mask gives an empty crop
    # the default (bicubic) resize keeps the same footprint up to one pixel of ringing
    soft = mask_crop(image, mask, size=40).any(-1)
    assert soft[:, 11:29].all() and not soft[:, :9].any() and not soft[:, 31:].any()


def test_crops_to_tensor_normalises():
    crops = np.zeros((2, 4, 4, 3), np.uint8)
    crops[1] = 255
    x = crops_to_tensor(crops, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert tuple(x.shape) == (2, 3, 4, 4)
    assert float(x[0].max()) == pytest.approx(-1.0) and float(x[1].min()) == pytest.approx(1.0)
