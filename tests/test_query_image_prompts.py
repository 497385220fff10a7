"""The 2D multi-modal segmenter at query time (#14) on the shared trained tabletop (oracle-2D protocol):
image prompts on a scene frame lifted into 3D (every object of a held-out view, no ground truth read),
text + image combined (sum / and), part sentences, one/many/no-target answers, and the same CLI paths with
tiny random SAM2 / SAM 3 tracker models loaded through the real transformers loaders.

Bars were measured on the session fixture (tests/conftest.py) and set a margin below (docs/benchmarks.md,
"Image prompts through cos3d query").
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cos3d.cli import entrypoint
from cos3d.errors import Cos3dError
from cos3d.eval.metrics import mask_iou
from cos3d.query.prompts import parse_part_sentence

LIFT_MEAN_BAR = 0.45
"""Mean over every object of the held-out view of its mean IoU in the other held-out views (measured 0.58)."""
LIFT_EACH_BAR = 0.25
"""Every object's mean IoU (mAcc@0.25 semantics; measured minimum 0.35, butter)."""
PART_IOU_BAR = 0.4


@pytest.fixture(scope="module")
def ts(trained_run):
    import cos3d

    return cos3d.load(trained_run, device="cpu")


@pytest.fixture(scope="module")
def view_objects(ts):
    """(held-out view, others, [(object id, name, box)], {view: instance map}) read before any query."""
    scene = ts.scene
    test = scene.split("test")
    f = test[0]
    gts = {g.name: g.load_instance() for g in test}
    labels = {int(k): v for k, v in scene.labels.items()}
    inst = gts[f.name]
    objs = []
    for oid in sorted(int(i) for i in np.unique(inst) if i):
        if labels[oid][0] in ("floor", "table") or int((inst == oid).sum()) < 20:
            continue
        ys, xs = np.nonzero(inst == oid)
        objs.append((oid, labels[oid][0], [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]))
    return f, [g for g in test if g.name != f.name], objs, gts


def _no_ground_truth(monkeypatch, scene):
    from cos3d.scene import Frame

    def no_gt(self):
        raise AssertionError("a query read a ground-truth map")

    monkeypatch.setattr(Frame, "load_instance", no_gt)
    monkeypatch.setattr(Frame, "load_part", no_gt)
    monkeypatch.setattr(scene, "labels", {})


def test_parse_part_sentence():
    assert parse_part_sentence("the handle of the red mug") == ("handle", "red mug")
    assert parse_part_sentence("the robot's head") == ("head", "robot")
    assert parse_part_sentence("head of the robot") == ("head", "robot")
    assert parse_part_sentence("The toy robot's left leg") == ("left leg", "toy robot")
    assert parse_part_sentence("red coffee mug") is None
    assert parse_part_sentence("mug on the table") is None  # a relation, not a part
    assert parse_part_sentence("robot's") is None


def test_box_on_every_object_of_a_held_out_view_lifts_the_right_object(ts, view_objects, monkeypatch):
    """``--image <scene frame> --box``: each object's box → the lift → IoU in the other held-out views."""
    f, others, objs, gts = view_objects
    eng = ts.engine
    assert len(objs) >= 6
    _no_ground_truth(monkeypatch, ts.scene)
    scores = {}
    for oid, name, box in objs:
        res = eng.query(image=f.image_path, box=box)
        assert res.kind == "image" and res.targets == "one" and "lifted through view" in res.reason
        assert "offline rule" in res.reason  # no SAM configured for an oracle-2D run, and the answer says so
        ious = [mask_iou(eng.mask(res, g.camera), gts[g.name] == oid) for g in others if (gts[g.name] == oid).any()]
        scores[f"{name}#{oid}"] = float(np.mean(ious))
    print("lift IoU per object:", {k: round(v, 3) for k, v in scores.items()})
    assert min(scores.values()) >= LIFT_EACH_BAR, scores
    assert float(np.mean(list(scores.values()))) >= LIFT_MEAN_BAR, scores


def test_cli_view_box_writes_the_objects_masks(trained_run, view_objects, tmp_path, capsys):
    f, others, objs, gts = view_objects
    oid, name, box = max(objs, key=lambda o: (o[2][2] - o[2][0]) * (o[2][3] - o[2][1]))
    out = tmp_path / "m"
    views = ",".join(g.name for g in others)
    code = entrypoint(["query", "--run", str(trained_run), "--view", f.name, "--box", ",".join(map(str, box)),
                       "--json", "--masks-out", str(out), "--views", views])
    assert code == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "image" and d["targets"] == "one" and len(d["objects"]) == 1
    from PIL import Image

    ious = [mask_iou(np.asarray(Image.open(out / f"{g.name}.png")) > 0, gts[g.name] == oid)
            for g in others if (gts[g.name] == oid).any()]
    assert float(np.mean(ious)) >= LIFT_EACH_BAR, (name, ious)
    # an image prompt needs a region; --image and --view exclude each other
    assert entrypoint(["query", "--run", str(trained_run), "--view", f.name]) == 2
    assert "needs a region" in capsys.readouterr().err
    assert entrypoint(["query", "--run", str(trained_run), "--view", f.name, "--image", str(f.image_path),
                       "--box", "1,1,5,5"]) == 2
    assert "not both" in capsys.readouterr().err


def test_text_and_image_combine(ts, view_objects):
    """"soda can" holds two cans; a box on one of them with --combine and keeps that one."""
    f, others, objs, gts = view_objects
    eng = ts.engine
    cans = [o for o in objs if o[1] == "soda can"]
    assert len(cans) == 2
    text = eng.query("soda can")
    assert text.targets == "many" and len(text.objects) == 2
    oid, _, box = cans[0]
    both = eng.query("soda can", view=f.name, box=box, combine="and")
    assert both.kind == "text+image" and both.targets == "one"
    assert bool(torch.isin(both.selected, text.selected).all())
    g = others[0]
    gt = gts[g.name] == oid
    if gt.any():
        assert mask_iou(eng.mask(both, g.camera), gt) > 0.3
    summed = eng.query("soda can", view=f.name, box=box, combine="sum")
    assert summed.kind == "text+image" and not summed.no_target and "rendered language feature" in summed.reason
    absent = eng.query("elephant", view=f.name, box=box, combine="and")
    assert absent.no_target and absent.targets == "none" and "text prompt found nothing" in absent.reason
    with pytest.raises(Cos3dError, match="--combine"):
        eng.query("soda can", view=f.name, box=box, combine="or")


def test_part_sentences(ts, view_objects):
    """"the robot's head" / "head of the robot" = "head" within "robot", on the finest level that separates
    it; an absent part is a no-target answer; "bottle of ketchup" is read as one name."""
    eng = ts.engine
    ref = eng.query("head", within="robot")
    assert ref.kind == "part:text" and ref.level == "s" and ref.targets == "one" and "finest" in ref.reason
    for sentence in ("the robot's head", "head of the robot"):
        res = eng.query(sentence)
        assert res.kind == "part:text" and torch.equal(res.selected, ref.selected), sentence
    vals = []
    for g in eng.scene.split("test"):
        part = g.load_part()
        head = [k for k, v in eng.scene.parts.items() if v.names[0] == "head"]
        gt = np.isin(part, head)
        if gt.any():
            vals.append(mask_iou(eng.mask(ref, g.camera), gt))
    assert float(np.mean(vals)) >= PART_IOU_BAR, vals
    wheel = eng.query("the wheel of the robot")
    assert wheel.no_target and wheel.targets == "none" and "no level finds" in wheel.reason
    whole = eng.query("bottle of ketchup")
    assert whole.kind == "text" and whole.targets == "one" and "read as one name" in whole.reason
    assert eng.query("bottle of ketchup", parts=False).kind == "text"


@pytest.fixture(scope="module")
def tiny_sams(tmp_path_factory):
    from cos3d.vision.testing import write_tiny_sam2_hf, write_tiny_sam3_tracker

    root = tmp_path_factory.mktemp("tinysam")
    return write_tiny_sam2_hf(root / "sam2"), write_tiny_sam3_tracker(root / "sam3")


@pytest.mark.parametrize("family", ["sam2-hf", "sam3"])
def test_cli_image_prompts_through_tiny_sam(trained_run, view_objects, tiny_sams, family, capsys, tmp_path):
    """--segmenter sam2-hf / sam3 with tiny random models through the real loaders: box, points, scribble on a
    scene frame (the lift) and text + image; the answer names the model whose mask it used. (Random weights:
    only the plumbing and shapes are checked.)"""
    from PIL import Image

    f, others, objs, gts = view_objects
    sam2, sam3 = tiny_sams
    flag = ["--sam2-model", str(sam2)] if family == "sam2-hf" else ["--sam3-model", str(sam3)]
    oid, name, box = objs[0]
    scr = np.zeros((f.camera.height, f.camera.width), np.uint8)
    x0, y0, x1, y1 = box
    scr[(y0 + y1) // 2, x0:x1] = 255
    Image.fromarray(scr).save(tmp_path / "scribble.png")
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    for region, text in ((["--box", ",".join(map(str, box))], []), (["--points", f"{cx},{cy}"], []),
                         (["--scribble", str(tmp_path / "scribble.png")], []),
                         (["--box", ",".join(map(str, box))], [name, "--combine", "and"])):
        if True:
            argv = ["query", *text, "--run", str(trained_run), "--image", str(f.image_path), *region,
                    "--segmenter", family, *flag, "--json"]
            code = entrypoint(argv)
            cap = capsys.readouterr()
            assert code == 0, (argv, cap.err)
            d = json.loads(cap.out)
            assert d["kind"] == ("text+image" if text else "image")
            fam = family.replace("-hf", "")
            assert f"region: {fam}-hf:" in d["reason"], d["reason"]  # the model's mask (or its empty mask, said)
            assert d["targets"] in ("one", "many", "none") and d["num_gaussians"] == sum(
                o["num_gaussians"] for o in d["objects"])
    # missing weights for an explicitly asked segmenter: one line naming the flag
    code = entrypoint(["query", "--run", str(trained_run), "--view", f.name, "--box", ",".join(map(str, box)),
                       "--segmenter", family, flag[0], str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and flag[0] in err, err


def test_load_with_a_segmenter_object(trained_run, view_objects):
    """cos3d.load(RUN, segmenter=...) hands any PromptSegmenter to the engine; its mask is the region lifted."""
    import cos3d

    f, others, objs, gts = view_objects
    oid, name, box = objs[0]

    class Half:
        model_id = "half-box"

        def __init__(self):
            self.calls = 0

        def segment(self, image, *, points=None, point_labels=None, box=None, level=None):
            self.calls += 1
            m = np.zeros(image.shape[:2], bool)
            x0, y0, x1, y1 = (int(v) for v in box)
            m[y0:y1, x0:(x0 + x1) // 2 + 1] = True
            return m, 1.0

    seg = Half()
    t2 = cos3d.load(trained_run, device="cpu", segmenter=seg)
    res = t2.query(view=f.name, box=box)
    assert seg.calls == 1 and "half-box mask from the box" in res.reason and res.targets == "one"
    with pytest.raises(Cos3dError, match="unknown setting"):
        cos3d.load(trained_run, device="cpu", models={"sam9_model": "x"})
