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
from cos3d.core.errors import Cos3dError
from cos3d.eval.metrics import mask_iou
from cos3d.query.prompts import parse_part_sentence
from cos3d.vision.image_prompt import ImagePrompt

LIFT_MEAN_BAR = 0.45
"""Mean over every object of the held-out view of its mean IoU in the other held-out views (measured 0.83 on
this fixture, 0.58 on the benchmark's older run)."""
LIFT_EACH_BAR = 0.25
"""Every object's mean IoU (mAcc@0.25 semantics; measured minimum 0.71 here, 0.35 on the older run)."""
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
    from cos3d.data.scene import Frame

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
    # an absent part ("wheel" is not one: the r2d2's legs hold its wheels)
    chimney = eng.query("the chimney of the robot")
    assert chimney.no_target and chimney.targets == "none" and "no level finds" in chimney.reason
    whole = eng.query("bottle of ketchup")
    assert whole.kind == "text" and whole.targets == "one" and "read as one name" in whole.reason
    assert eng.query("bottle of ketchup", parts=False).kind == "text"


@pytest.fixture(scope="module")
def tiny_sam2(tmp_path_factory):
    from cos3d.testing.vision import write_tiny_sam2_hf

    return write_tiny_sam2_hf(tmp_path_factory.mktemp("tinysam2"))


@pytest.fixture(scope="module")
def tiny_sam3(tmp_path_factory):
    from cos3d.testing.vision import write_tiny_sam3_tracker

    return write_tiny_sam3_tracker(tmp_path_factory.mktemp("tinysam3"))


@pytest.mark.parametrize("family", ["sam2-hf", "sam3"])
def test_cli_image_prompts_through_tiny_sam(trained_run, view_objects, request, family, capsys, tmp_path):
    """--segmenter sam2-hf / sam3 with tiny random models through the real loaders: box, points, scribble on a
    scene frame (the lift) and text + image; the answer names the model whose mask it used. (Random weights:
    only the plumbing and shapes are checked.)"""
    from PIL import Image

    f, others, objs, gts = view_objects
    flag = (["--sam2-model", str(request.getfixturevalue("tiny_sam2"))] if family == "sam2-hf"
            else ["--sam3-model", str(request.getfixturevalue("tiny_sam3"))])
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


def test_photo_prompt_embeds_the_sam_crop_with_tiny_openclip(tiny_sam2, tmp_path):
    """A reference photo that is not a scene frame: tiny SAM2 (its mask) → tiny OpenCLIP (the crop embedding),
    both through the real loaders, answered like a text embedding; text + image with sum and and. Random
    weights: shapes and plumbing only."""
    from PIL import Image

    from cos3d.data.gaussians import Gaussians
    from cos3d.query.engine import QueryEngine, QueryInputs
    from cos3d.field.level import LevelField
    from cos3d.vision import create_embedder
    from cos3d.vision.registry import create_prompt_segmenter
    from cos3d.testing.vision import synthetic_maps, write_synthetic_scene, write_tiny_openclip

    W, H = 64, 48
    scene = write_synthetic_scene(tmp_path / "s", n_frames=1, width=W, height=H)
    frame = scene.frames[0]
    ys, xs = np.mgrid[0:H:2, 0:W:2]
    depth = np.zeros((H, W))
    depth[ys, xs] = 1.0
    pts = frame.camera.backproject(depth)[depth > 0]
    g = Gaussians.from_points(torch.from_numpy(pts).float(), torch.full((len(pts), 3), 0.5), scales=0.012,
                              opacity=0.95, sh_degree=0)
    cfg, ckpt = write_tiny_openclip(tmp_path / "clip")
    emb = create_embedder("openclip", model=str(cfg), checkpoint=ckpt, device="cpu")
    n, D = g.num, int(emb.dim)
    torch.manual_seed(0)
    fld = LevelField(instance=torch.randn(n, 16), language=torch.nn.functional.normalize(torch.randn(n, D), dim=1).half(),
                     anchors=torch.zeros(0, 16), targets=torch.nn.functional.normalize(torch.randn(3, D), dim=1), dbar=0.05)
    seg = create_prompt_segmenter("sam2-hf", model=str(tiny_sam2), device="cpu")
    engine = QueryEngine(QueryInputs(scene=scene, gaussians=g, fields={"l": fld}, embedder=emb), segmenter=seg)
    photo = tmp_path / "photo.png"
    Image.fromarray(synthetic_maps(W, H, shift=5)[0]).save(photo)  # not one of the scene's frames
    assert engine.frame_of(photo) is None and engine.frame_of(frame.image_path) == "0"
    for kw in (dict(box=[4, 10, 30, 40]), dict(points="20,25"), dict(box=[4, 10, 30, 40], text="red mug", combine="sum"),
               dict(box=[4, 10, 30, 40], text="red mug", combine="and")):
        res = engine.query(kw.pop("text", None), image=photo, **kw)
        assert res.kind in ("image", "text+image") and "region: sam2-hf:" in res.reason
        assert res.selected.dtype == torch.long and res.selected.ndim == 1
        assert res.targets in ("none", "one", "many") and len(res.objects) == {"none": 0}.get(res.targets, len(res.objects))
        assert res.num_gaussians == sum(o.num for o in res.objects)
    e, note = engine.embed_image(photo, ImagePrompt(box=[4, 10, 30, 40]))
    assert e.shape == (D,) and abs(float(e.norm()) - 1) < 1e-4


def test_part_level_choice_finest_that_separates(tmp_path, monkeypatch):
    """part_query's level choice on a run with levels l, m, s (answers stubbed: this checks the rule only):
    the finest level whose answer holds < 90% of the parent wins; all empty → no target; all covering → the
    sentence as one name."""
    from cos3d.data.gaussians import Gaussians
    from cos3d.query.engine import QueryEngine, QueryInputs, QueryResult
    from cos3d.field.level import LevelField
    from cos3d.testing.vision import write_synthetic_scene

    scene = write_synthetic_scene(tmp_path / "s", n_frames=1)
    n = 200
    g = Gaussians.from_points(torch.rand(n, 3), torch.rand(n, 3), scales=0.01, opacity=0.9, sh_degree=0)

    def lf():
        return LevelField(instance=torch.randn(n, 16), language=torch.randn(n, 8).half(), anchors=torch.zeros(0, 16),
                          targets=torch.randn(2, 8), dbar=0.05)

    class Emb:
        name, dim, model_id = "probe", 8, "probe"

        def embed_text(self, texts):
            return torch.nn.functional.normalize(torch.ones(len(texts), 8), dim=1)

    engine = QueryEngine(QueryInputs(scene=scene, gaussians=g, fields={"l": lf(), "m": lf(), "s": lf()}, embedder=Emb()))
    assert engine.part_level == "s"
    parent_ids = torch.arange(100)
    sizes: dict = {}
    calls = []

    def fake_query(text=None, *, within=None, level=None, parts=True, refine=None, **kw):
        calls.append((text, level))
        if within is None:  # the parent, or the sentence as one name
            ids = parent_ids if text in ("robot", "ketchup", "bottle of ketchup") else torch.zeros(0, dtype=torch.long)
            return QueryResult(query=text, objects=[], selected=ids, no_target=not ids.numel(), reason="r",
                               kind="text", level="l", engine=engine)
        k = sizes[level]
        ids = torch.arange(k) if k else torch.zeros(0, dtype=torch.long)
        return QueryResult(query=text, objects=[], selected=ids, no_target=not k, reason="r", kind="part:text",
                           level=level, engine=engine)

    monkeypatch.setattr(engine, "query", fake_query)
    sizes.update(s=95, m=30)
    res = engine.part_query("head", "robot")
    assert res.level == "m" and "level m, the finest that separates" in res.reason
    sizes.update(s=20, m=30)
    assert engine.part_query("head", "robot").level == "s"
    assert [c[1] for c in calls[-2:]] == [None, "s"]  # parent, then s (m never needed)
    sizes.update(s=0, m=0)
    none = engine.part_query("wheel", "robot")
    assert none.no_target and none.targets == "none" and "s: nothing, m: nothing" in none.reason
    sizes.update(s=95, m=96)
    whole = engine.part_query("bottle", "ketchup", sentence="bottle of ketchup")
    assert "read as one name: no level separates" in whole.reason and calls[-1] == ("bottle of ketchup", None)


def test_2d_first_branch_with_an_oracle_against_the_field(ts):
    """The 2D-first branch (concept2d) with an oracle standing in for SAM 3 (oracle-2D), against the field-only
    answer, in the held-out views (scripts/bench_prompts2d.py measures every prompt kind; docs/benchmarks.md)."""
    from cos3d.eval.tabletop import tabletop_queries
    from cos3d.eval.branches2d import compare_branches
    from cos3d.testing.vision import OracleConceptSegmenter

    scene = ts.scene
    qs = [q for q in tabletop_queries(scene, parts=False) if q.kind in ("name", "plural")]
    prompts = [(q.text, list(q.gt_ids)) for q in qs] + [("elephant", []), ("giraffe", [])]
    oracle = OracleConceptSegmenter(scene, dict(prompts))
    views = [(f.camera, f.load_instance()) for f in scene.split("test")]
    r = compare_branches(ts.engine, oracle, prompts, views, k=4)
    print({b: {k: round(v, 3) for k, v in row.items()} for b, row in r.items()})
    assert oracle.calls == 4 * len(prompts)
    assert r["2d"]["pairs"] == r["field"]["pairs"] > 20
    # measured on this fixture (names + plurals): 2D-first 0.854, and 0.852, field 0.845; on the benchmark's
    # older run with every prompt kind: 0.794 / 0.685 / 0.562 (docs/benchmarks.md)
    assert r["2d"]["mIoU"] >= 0.65 and r["2d"]["mIoU"] >= r["field"]["mIoU"] - 0.03
    assert r["and"]["mIoU"] >= r["field"]["mIoU"] - 0.03
    assert r["2d"]["no_target_accuracy"] == 1.0  # the oracle knows what is absent: by construction
