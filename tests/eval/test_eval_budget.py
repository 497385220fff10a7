"""The tabletop error budget (cos3d/eval/budget.py): the oracle ceiling and the rows below it."""

from __future__ import annotations

import torch

from cos3d.eval.budget import ROWS, diagnose, error_budget, oracle_labels
from cos3d.eval.tabletop import Answer, EvalQuery, tabletop_queries


def test_oracle_labels_vote_by_blending_weight(trained_run):
    import cos3d

    ts = cos3d.load(trained_run)
    e = ts.engine
    train = ts.scene.split("train")
    lab = oracle_labels(e, train)
    assert lab.shape == (e.num_gaussians,)
    ids = set(int(i) for i in ts.scene.labels)
    seen = set(torch.unique(lab[lab >= 0]).tolist())
    assert seen <= ids and len(seen) >= len(ids) - 1
    # a Gaussian's label is the id under its heaviest pixels: the top contributor of a pixel of the
    # first view mostly carries that pixel's id
    f = train[0]
    c = e.masks.contributions(f.camera)
    inst = torch.from_numpy(f.load_instance().reshape(-1).astype("int64"))
    first = torch.ones_like(c.pixel, dtype=torch.bool)
    first[1:] = c.pixel[1:] != c.pixel[:-1]
    heavy = first & (c.weight > 0.5)
    agree = (lab[c.gaussian[heavy]] == inst[c.pixel[heavy]]).double().mean()
    assert agree > 0.8


def test_budget_rows_and_ceiling_bounds_the_engine(trained_run):
    import cos3d

    ts = cos3d.load(trained_run)
    qs = [q for q in tabletop_queries(ts.engine.scene) if q.kind in ("name", "part")][:6]
    res = error_budget(ts, qs, rows=("ceiling", "collaborative + presence"))
    assert set(res["rows"]) == {"ceiling", "collaborative + presence"}
    ceil, final = res["rows"]["ceiling"], res["rows"]["collaborative + presence"]
    assert ceil["pairs"] == final["pairs"] > 0
    assert ceil["mIoU"] > 0.5
    assert ceil["mIoU"] + 0.02 >= final["mIoU"]
    assert len(res["prompts"]) == len(qs) and all(p["why"] for p in res["prompts"])
    assert set(ROWS) >= set(res["rows"])


def test_diagnose_names_the_failure():
    labels = torch.tensor([1, 1, 1, 2, 2, 3, 3, -1])
    opacity = torch.ones(8)
    q = EvalQuery("mugs", "plural", [1, 2])
    assert diagnose(Answer(torch.zeros(0, dtype=torch.long), True), q, labels, opacity) == "answered not here"
    assert diagnose(Answer(torch.tensor([5, 6]), False), q, labels, opacity).startswith("wrong object (id 3")
    assert "missed instance [2]" in diagnose(Answer(torch.tensor([0, 1, 2]), False), q, labels, opacity)
    assert "merged" in diagnose(Answer(torch.tensor([0, 1, 2, 3, 4, 5, 6]), False), EvalQuery("a", "name", [1]),
                                labels, opacity)
    assert diagnose(Answer(torch.tensor([0, 1, 2, 3, 4]), False), q, labels, opacity) == "boundary / partial"
