"""The query engine end to end on the shared trained tabletop (oracle-2D protocol).

Bars were measured on the session fixture (tests/conftest.py: seed 3, 20 views at 160x120, fast presets)
and are set a margin below the measured values (docs/benchmarks.md, "query").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cos3d.core.errors import Cos3dError
from cos3d.eval.metrics import iou
from cos3d.eval.tabletop import evaluate, tabletop_queries

NAME_IOU_BAR = 0.35
"""Per-object name query: mean IoU over held-out views where the object is visible (measured: 0.50-0.99,
butter lowest; mean 0.73)."""
NAME_MEAN_BAR = 0.6
PART_IOU_BAR = 0.4
"""'head' within 'toy robot' against the GT part map (measured 0.63)."""
CLICK_IOU_BAR = 0.3
"""Click on the most interior pixel of an object in a held-out view (measured 0.37-0.82)."""
IMAGE_IOU_BAR = 0.5
"""Box cut from a training view (measured 0.82 for the robot)."""
MIOU_BAR = 0.5
"""Tabletop protocol mIoU of the object-name queries (measured 0.73 on this fixture, oracle-2D; over every
present query, held-out paraphrases and part paraphrases included, 0.49)."""
PARAPHRASE_SHARE = 0.2
"""Share of held-out phrasings (eval_prompts.json: no content word of their object's training names) found with
IoU > 0.25 (measured 4 of 15 with the settings before tuning: the sentence encoder knows "desk" for a table
but not "linoleum", "automaton" or "tin"; docs/benchmarks.md)."""
NEAR_SHARE = 0.5
"""The same for the near-training phrasings ("red mug" for a "red coffee mug": the held-out set before issue 23)."""


@pytest.fixture(scope="module")
def engine(trained_run):
    import cos3d.pipeline.trained
    from cos3d.query.engine import QueryEngine

    return QueryEngine(cos3d.pipeline.trained.load(trained_run, device="cpu"))


@pytest.fixture(scope="module")
def report(engine):
    return evaluate(engine)


def _mean_iou(engine, res, ids, part=False):
    vals = []
    for f in engine.scene.split("test"):
        m = f.load_part() if part else f.load_instance()
        gt = np.isin(m, ids)
        if gt.any():
            vals.append(iou(engine.mask(res, f.camera) if not res.no_target else np.zeros_like(gt), gt))
    return float(np.mean(vals))


def test_every_object_name_is_found(engine, report):
    names = [q for q in report.per_query if q.query.kind == "name"]
    assert names
    for q in names:
        assert not q.no_target, q.query.label
        assert q.miou is not None and q.miou >= NAME_IOU_BAR, (q.query.label, q.miou)
    assert np.mean([q.miou for q in names]) >= NAME_MEAN_BAR
    assert report.by_kind["name"]["mIoU"] >= MIOU_BAR, report.to_dict()
    # presence decisions beat the trivial answers on the same mix (held-out absent prompts: measured 0.78
    # against always-present 0.65)
    p = report.presence
    assert p["accuracy"] > max(p["always_present_baseline"], p["always_absent_baseline"]), p


def test_paraphrase_finds_the_object(engine, report):
    paras = [q for q in report.per_query if q.query.kind == "paraphrase"]
    assert paras
    ok = [q for q in paras if not q.no_target and (q.miou or 0) > 0.25]
    assert len(ok) >= PARAPHRASE_SHARE * len(paras), [(q.query.label, q.no_target, q.miou) for q in paras]
    near = [q for q in report.per_query if q.query.kind == "near_paraphrase"]
    assert near
    ok = [q for q in near if not q.no_target and (q.miou or 0) > 0.25]
    assert len(ok) >= NEAR_SHARE * len(near), [(q.query.label, q.no_target, q.miou) for q in near]


UNSEEN_ABSENT = ("walrus", "trombone", "hovercraft")
"""Absent things in no word list of the project (calibration, canonical negatives, absent/development prompts,
catalogue names): the presence test has never seen them."""


@pytest.mark.parametrize("word", UNSEEN_ABSENT)
def test_absent_prompt_is_empty_with_reason(engine, word):
    from cos3d.eval.heldout import in_project_vocabulary

    assert in_project_vocabulary(word) == [], word
    res = engine.query(word)
    assert res.no_target and res.objects == [] and res.selected.numel() == 0
    assert word in res.reason and "threshold" in res.reason
    cam = engine.scene.split("test")[0].camera
    assert not res.mask(cam).any()


def test_same_kind_pair_comes_back_as_two_objects(engine):
    plural = [q for q in tabletop_queries(engine.scene) if q.kind == "plural"]
    assert plural, "the tabletop has a same-kind pair"
    q = plural[0]
    res = engine.query(q.text)
    assert not res.no_target
    assert len(q.gt_ids) == 2
    # each GT instance is covered by its own object
    owners = []
    for gid in q.gt_ids:
        f = max(engine.scene.split("test"), key=lambda fr: int((fr.load_instance() == gid).sum()))
        gt = f.load_instance() == gid
        best = max(range(len(res.objects)),
                   key=lambda k: iou(engine.masks.mask(res.objects[k].gaussians, f.camera), gt))
        owners.append(best)
    assert len(res.objects) >= 2 and owners[0] != owners[1], (res.reason, [o.num for o in res.objects])


def test_fast_and_reference_refinement_agree(engine):
    from cos3d.query.relevancy import normalize_relevancy

    lv = engine.level_state(engine.level)
    for q in [q for q in tabletop_queries(engine.scene) if q.present and not q.within]:
        r = normalize_relevancy(engine.relevancy(engine.embed_text([q.text]))[0])
        a = engine.refine(r, method="reference").selected
        b = engine.refine(r, method="fast").selected
        inter = np.intersect1d(a.numpy(), b.numpy()).size
        union = np.union1d(a.numpy(), b.numpy()).size
        assert union == 0 or inter / union >= 0.99, q.text
    assert lv.index is not None


def test_click_returns_the_clicked_object(engine):
    from scipy.ndimage import distance_transform_edt

    f = engine.scene.split("test")[0]
    inst = f.load_instance()
    labels = engine.scene.labels
    objs = [i for i in labels if labels[i][0] not in ("floor", "table") and (inst == i).sum() > 30]
    assert objs
    for oid in objs[:3]:
        d = distance_transform_edt(inst == oid)
        y, x = np.unravel_index(int(np.argmax(d)), d.shape)
        res = engine.query(click=f"{f.name}:{x},{y}")
        assert len(res.objects) == 1 and res.kind == "click"
        score = _mean_iou(engine, res, [oid])
        assert score >= CLICK_IOU_BAR, (labels[oid][0], score, res.reason)


def test_image_prompt_from_one_view_finds_the_object_in_3d(engine):
    train = engine.scene.split("train")
    fr = train[len(train) // 2]
    inst = fr.load_instance()
    labels = engine.scene.labels
    cands = [i for i in labels if labels[i][0] not in ("floor", "table")]
    oid = max(cands, key=lambda i: int((inst == i).sum()))
    ys, xs = np.nonzero(inst == oid)
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    res = engine.query(image=fr.image_path, box=box, lift=False)  # the oracle-2D name look-up
    assert res.kind == "image" and not res.no_target
    assert "oracle-2D" in res.reason
    assert _mean_iou(engine, res, [oid]) >= IMAGE_IOU_BAR
    # a scene frame lifts by default (no look-up)
    lifted = engine.query(image=fr.image_path, box=box)
    assert "lifted through view" in lifted.reason and "oracle-2D" not in lifted.reason
    # text + image combine
    both = engine.query(labels[oid][0], image=fr.image_path, box=box, lift=False)
    assert both.kind == "text+image" and not both.no_target


def test_part_within_object_matches_gt_part(engine):
    parts = [q for q in tabletop_queries(engine.scene) if q.kind == "part"]
    assert parts
    head = next((q for q in parts if q.text == "head"), parts[0])
    res = engine.query(head.text, within=head.within)
    assert res.kind.startswith("part:") and res.level == engine.part_level
    assert not res.no_target
    parent = engine.query(head.within)
    assert bool(torch.isin(res.selected, parent.selected).all())
    assert _mean_iou(engine, res, head.gt_ids, part=True) >= PART_IOU_BAR
    # the same part via the parent's object id
    res2 = engine.query(head.text, within_object=parent.objects[0].id)
    assert not res2.no_target


def test_query_errors(engine, trained_run, tmp_path):
    import cos3d

    with pytest.raises(Cos3dError, match="empty text"):
        engine.query("   ")
    fr = engine.scene.split("train")[0]
    with pytest.raises(Cos3dError, match="outside"):
        engine.query(image=fr.image_path, box=[0, 0, fr.camera.width + 50, 10])
    with pytest.raises(Cos3dError, match="unknown view"):
        engine.query(click="nope:1,1")
    with pytest.raises(Cos3dError, match="outside"):
        engine.query(click=f"{fr.name}:{fr.camera.width + 3},1")
    with pytest.raises(Cos3dError, match="no such run"):
        cos3d.load(tmp_path / "missing")
    # a non-scene image with the offline labels embedder
    from PIL import Image

    p = tmp_path / "other.png"
    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(p)
    with pytest.raises(Cos3dError, match="real CLIP"):
        engine.query(image=p, box=[1, 1, 20, 20])


def test_load_query_returns_query_result(trained_run):
    import cos3d
    from cos3d.query.engine import QueryResult

    ts = cos3d.load(trained_run, device="cpu")
    name = ts.scene.labels[sorted(ts.scene.labels)[-1]][0]
    res = ts.query(name)
    assert isinstance(res, QueryResult) and res.objects
    d = res.to_dict()
    assert set(d) >= {"query", "objects", "no_target", "reason", "timings"}
    o = res.objects[0]
    assert o.centroid.shape == (3,) and o.box.R.shape == (3, 3) and o.points.shape[1] == 3
    assert o.box.contains(o.points).all()


def test_masks_protocols(engine):
    f = engine.scene.split("test")[0]
    name = engine.scene.labels[sorted(engine.scene.labels)[-1]][0]
    res = engine.query(name)
    occ = res.mask(f.camera, "occlusion")
    sel = res.mask(f.name, "selected")
    assert occ.shape == sel.shape == (f.camera.height, f.camera.width)
    assert occ.dtype == bool and sel.dtype == bool
    with pytest.raises(Cos3dError, match="protocol"):
        res.mask(f.camera, "nope")
