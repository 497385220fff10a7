"""cos3d.eval.metrics against hand-computed values; held-out prompt overlap checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cos3d.core.errors import Cos3dError
from cos3d.eval.heldout import ABSENT_PROMPTS, check_disjoint
from cos3d.eval.metrics import mask_iou, presence_metrics, semantic_metrics, summarize_ious


def test_mask_iou_hand_computed():
    gt = np.zeros((4, 5), bool)
    gt[0:2, 0:3] = True  # 6 pixels
    pred = np.zeros((4, 5), bool)
    pred[1:3, 1:4] = True  # 6 pixels, overlap rows 1, cols 1..2 = 2 pixels
    assert mask_iou(pred, gt) == pytest.approx(2 / 10)
    assert mask_iou(gt, gt) == 1.0  # perfect prediction
    assert mask_iou(np.zeros_like(gt), gt) == 0.0  # empty prediction
    assert mask_iou(np.zeros_like(gt), np.zeros_like(gt)) == 0.0  # empty union: 0, as OpenGaussian's script
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(gt, gt[:3])


def test_summarize_ious_thresholds_are_strict():
    s = summarize_ious([0.25, 0.5, 0.75, 0.0])
    assert s["pairs"] == 4
    assert s["mIoU"] == pytest.approx(0.375)
    assert s["mAcc@0.25"] == pytest.approx(0.5)  # 0.25 itself does not count (IoU > 0.25)
    assert s["mAcc@0.5"] == pytest.approx(0.25)
    assert math.isnan(summarize_ious([])["mIoU"])


def test_semantic_metrics_hand_computed():
    # classes 1..3; class 3 absent from the GT; label 0 = not counted (its prediction is ignored)
    gt = np.array([1, 1, 1, 2, 2, 0, 0])
    pred = np.array([1, 1, 2, 2, 3, 3, 1])
    m = semantic_metrics(gt, pred, 3)
    # class 1: TP 2, FN 1, FP 0 -> IoU 2/3, Acc 2/3; class 2: TP 1, FN 1 (pred 3), FP 1 -> IoU 1/3, Acc 1/2
    assert m.class_iou[1] == pytest.approx(2 / 3) and m.class_iou[2] == pytest.approx(1 / 3)
    assert m.miou == pytest.approx(0.5)  # over the GT's classes only (1, 2)
    assert m.macc == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m.accuracy == pytest.approx(3 / 5) and m.points == 5
    assert list(m.present) == [1, 2] and math.isnan(m.class_iou[3])
    perfect = semantic_metrics(gt, np.where(gt > 0, gt, 3), 3)
    assert perfect.miou == 1.0 and perfect.macc == 1.0
    wrong = semantic_metrics(gt, np.full_like(gt, 3), 3)
    assert wrong.miou == 0.0 and wrong.macc == 0.0


def test_presence_metrics_and_baselines():
    present = [True, True, True, False]
    empty = [False, True, False, True]  # one false empty, the absent one right
    p = presence_metrics(present, empty)
    assert p["accuracy"] == pytest.approx(0.75)
    assert p["always_present_baseline"] == pytest.approx(0.75)
    assert p["always_absent_baseline"] == pytest.approx(0.25)
    assert p["false_empty_rate"] == pytest.approx(1 / 3)
    assert p["false_present_rate"] == 0.0
    assert p["balanced_accuracy"] == pytest.approx(0.5 * (2 / 3 + 1.0))


def test_absent_prompts_are_disjoint_from_the_calibration_vocabulary():
    from cos3d.query.notarget import NEGATIVE_VOCABULARY

    check_disjoint(ABSENT_PROMPTS, NEGATIVE_VOCABULARY, what="absent prompts", reserved_as="the vocabulary")
    vocab_words = {w for v in NEGATIVE_VOCABULARY for w in v.split()}
    # not even a word of one: "banana peel" would embed next to the vocabulary's "banana"
    assert not [a for a in ABSENT_PROMPTS if set(a.split()) & vocab_words]


def test_overlap_fails_loudly():
    with pytest.raises(Cos3dError, match="absent prompts overlap the vocabulary: 'Elephant'"):
        check_disjoint(["Elephant", "teapot"], ["elephant", "giraffe"], what="absent prompts", reserved_as="the vocabulary")
