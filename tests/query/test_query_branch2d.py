"""The 2D-first branch on every surface (issue 26 item 3): ``QueryEngine.query(..., branch="field"|"2d"|"fused")``
through ``cos3d query --branch``, ``cos3d.load(...).query``, the viewer's adapter, ``cos3d.robot.pick_targets``
and the server's request handling; SAM 3 as tiny random weights loaded through the real transformers loader
(plumbing and shapes only), and the oracle concept stand-in (oracle-2D) for the fused branch's IoU on the
shared trained tabletop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cos3d.cli import entrypoint
from cos3d.eval.metrics import mask_iou

FUSED_IOU_BAR = 0.75
"""Mean IoU of the fused branch over (name prompt, held-out view) pairs with the oracle stand-in (measured
on this fixture: 0.889 for 3 objects in 2 held-out views, the field 0.901, 2D-first 0.886; docs/benchmarks.md "The 2D-first branch on every surface")."""


@pytest.fixture(scope="module")
def tiny_sam3_concepts(tmp_path_factory):
    from cos3d.testing.vision import write_tiny_sam3

    return write_tiny_sam3(tmp_path_factory.mktemp("sam3concepts"))


@pytest.fixture(scope="module")
def oracle_ts(trained_run):
    """The run loaded with the oracle concept stand-in (it reads the instance maps; the branch does not)."""
    import cos3d
    from cos3d.eval.tabletop import tabletop_queries
    from cos3d.testing.vision import OracleConceptSegmenter

    ts = cos3d.load(trained_run, device="cpu", concept_segmenter="none")
    qs = [q for q in tabletop_queries(ts.scene, parts=False) if q.kind == "name" and q.text not in ("floor", "table")]
    prompts = [(q.text, list(q.gt_ids)) for q in qs[:3]] + [("elephant", [])]  # 3 objects: ~20 s on 2 cores
    ts.engine.concept_segmenter = OracleConceptSegmenter(ts.scene, dict(prompts))
    return ts, prompts


def test_field_branch_is_the_default_answer(oracle_ts):
    ts, prompts = oracle_ts
    text = prompts[0][0]
    a, b = ts.query(text), ts.query(text, branch="field")
    assert torch.equal(a.selected, b.selected) and a.reason == b.reason and a.branch == "field"
    assert "branch" not in a.to_dict()
    from cos3d.core.errors import Cos3dError

    with pytest.raises(Cos3dError, match="--branch"):
        ts.query(text, branch="sideways")
    with pytest.raises(Cos3dError, match="text prompt alone"):
        ts.query(text, branch="2d", within="robot")


def test_fused_branch_with_the_oracle_stand_in(oracle_ts):
    """Oracle-2D: the fused and 2D-first answers in the held-out views; an absent thing is no target."""
    ts, prompts = oracle_ts
    views = [(f.camera, f.load_instance()) for f in ts.scene.split("test")[:2]]
    ious = {"field": [], "2d": [], "fused": []}
    for text, ids in prompts:
        for b in ious:
            res = ts.query(text, branch=b, parts=False)
            assert res.branch == b
            if not ids:
                if b != "field":
                    assert res.no_target and res.targets == "none", (b, res.reason)
                continue
            for cam, inst in views:
                gt = np.isin(inst, ids)
                if gt.any():
                    pred = res.mask(cam) if res.num_gaussians else np.zeros_like(gt)
                    ious[b].append(mask_iou(pred, gt))
    m = {b: float(np.mean(v)) for b, v in ious.items()}
    print(m, len(ious["fused"]))
    assert m["fused"] >= FUSED_IOU_BAR
    assert m["2d"] >= FUSED_IOU_BAR - 0.05


def test_robot_viewer_and_server_pass_the_branch(oracle_ts):
    from cos3d.robot import pick_targets
    from cos3d.serve.handlers import query_kwargs
    from cos3d.viewer.adapter import answer_query

    ts, prompts = oracle_ts
    text = prompts[0][0]
    t = pick_targets(ts, text, branch="2d")
    assert t.query.branch == "2d" and len(t) >= 1 and not t.no_target
    ans = answer_query(ts, text, branch="fused")
    assert ans.error is None and len(ans.selected) > 0 and ans.kind == "text"
    assert answer_query(ts, text, within="robot", branch="2d").error
    assert query_kwargs({"text": text, "branch": "2d"}, allow_paths=False) == (text, {"branch": "2d"})
    assert query_kwargs({"text": text, "branch": "field"}, allow_paths=False) == (text, {})
    from cos3d.serve.client import RemoteScene

    remote = object.__new__(RemoteScene)  # the request alone: no server
    remote.accepts_paths = False
    assert remote.request(text, branch="fused") == {"text": text, "branch": "fused"}
    assert remote.request(text) == {"text": text}


def test_tiny_sam3_through_load_and_the_cli(trained_run, tiny_sam3_concepts, capsys, tmp_path):
    """Random SAM 3 weights through the real loader: the branch runs and returns shaped answers (values are
    meaningless); missing weights and no segmenter are one line naming the flag."""
    import cos3d

    ts = cos3d.load(trained_run, device="cpu", models={"sam3_model": str(tiny_sam3_concepts)})
    res = ts.query("red mug", branch="2d")  # fused: through the CLI below
    assert res.branch == "2d" and res.targets in ("none", "one", "many")
    assert res.num_gaussians == sum(int(o.gaussians.numel()) for o in res.objects)
    assert "views hold instances" in res.reason, res.reason
    assert ts.engine.concept_segmenter.model_id.startswith("sam3-concepts:")
    argv = ["query", "red mug", "--run", str(trained_run), "--no-server", "--json"]
    assert entrypoint([*argv, "--branch", "fused", "--sam3-model", str(tiny_sam3_concepts)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["branch"] == "fused" and d["num_gaussians"] == sum(o["num_gaussians"] for o in d["objects"])
    assert entrypoint([*argv, "--branch", "2d", "--sam3-model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--sam3-model" in err, err
    assert entrypoint([*argv, "--branch", "2d", "--concept-segmenter", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--concept-segmenter" in err, err
