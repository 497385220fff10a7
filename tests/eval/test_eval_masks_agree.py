"""`cos3d eval tabletop` / `cos3d eval lerf` score the masks `cos3d query --masks-out` writes (issue 23).

The evaluators ask each view many times (its blending weights get recorded: sparse products); a fresh
`cos3d query --masks-out` renders each view once (a forward render). Both must give the same mask, so the
IoU the evaluators report is the IoU of what a user gets."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

PROMPTS = ("blue mug", "soda can", "toy robot")


def _masks_out(run, prompt, views, out) -> dict[str, np.ndarray]:
    """The masks a fresh `cos3d query --masks-out` process writes, by view."""
    r = subprocess.run([sys.executable, "-m", "cos3d", "query", prompt, "--run", str(run), "--masks-out", str(out),
                        "--views", ",".join(views), "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return {v: np.asarray(Image.open(out / f"{v}.png")) > 0 for v in views}


def _two_pixels(mask: np.ndarray, gt: np.ndarray) -> float:
    """How much two flipped pixels can move an IoU against ``gt``: the recorded weights leave out those below
    1e-4, which can flip a pixel whose ratio sits at 0.5 (tests/test_masks2d.py: at most 2 per view)."""
    return 2.0 / max(1, int((mask | gt).sum()) - 2) + 1e-9


@pytest.fixture(scope="module")
def written(trained_run, tmp_path_factory):
    import cos3d

    ts = cos3d.load(trained_run)
    views = [f.name for f in ts.scene.split("test")]
    root = tmp_path_factory.mktemp("masks_out")
    return views, {p: _masks_out(trained_run, p, views, root / p.replace(" ", "_")) for p in PROMPTS}


def test_eval_tabletop_scores_the_masks_query_writes(trained_run, written):
    import cos3d
    from cos3d.eval.metrics import mask_iou
    from cos3d.eval.tabletop import EvalQuery, evaluate

    views, masks = written
    ts = cos3d.load(trained_run)
    labels = {int(k): v for k, v in ts.scene.labels.items()}
    qs = [EvalQuery(p, "name", sorted(i for i, n in labels.items() if n and n[0] == p)) for p in PROMPTS]
    qs = [q for q in qs if q.gt_ids]
    # warm the views first, as an evaluation of many prompts does: its masks then come from recorded weights
    for f in ts.scene.split("test"):
        ts.engine.masks.contributions(f.camera)
    rep = evaluate(ts.engine, qs)
    compared = 0
    for qe in rep.per_query:
        for view, iou in qe.ious.items():
            gt = np.isin(ts.scene.frame(view).load_instance(), qe.query.gt_ids)
            mine = masks[qe.query.text][view]
            assert mask_iou(mine, gt) == pytest.approx(iou, abs=_two_pixels(mine, gt)), (qe.query.text, view)
            compared += 1
    assert compared >= 4


def test_eval_lerf_scores_the_masks_query_writes(trained_run, written, tmp_path):
    """LangSplat-format labels for the held-out views (the GT objects' boxes as polygons); the evaluator's
    per-pair IoU equals the IoU of the written masks against the same label masks."""
    import cos3d
    from cos3d.eval.lerf import evaluate_lerf_scene, read_labels
    from cos3d.eval.metrics import mask_iou

    views, masks = written
    ts = cos3d.load(trained_run)
    labels = {int(k): v for k, v in ts.scene.labels.items()}
    for view in views:
        inst = ts.scene.frame(view).load_instance()
        objs = []
        for p in PROMPTS:
            m = np.isin(inst, [i for i, n in labels.items() if n and n[0] == p])
            if m.sum() < 20:
                continue
            ys, xs = np.nonzero(m)
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
            objs.append({"category": p, "segmentation": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], "bbox": [x0, y0, x1, y1]})
        h, w = inst.shape
        (tmp_path / f"frame_{view}.json").write_text(json.dumps({"info": {"width": w, "height": h, "name": f"{view}.jpg"},
                                                             "objects": objs}))
    frames = read_labels(tmp_path)
    res = evaluate_lerf_scene(ts.engine, frames, protocols=("occlusion",))
    by = {lf.name: lf for lf in frames}
    assert len(res["pairs"]) >= 4
    for row in res["pairs"]:
        gt = by[row["frame"]].masks[row["query"]]
        mine = masks[row["query"]][row["frame"]]
        assert mask_iou(mine, gt) == pytest.approx(row["occlusion"], abs=_two_pixels(mine, gt)), row
