"""Query paths the evaluation relies on: refinement at loose thresholds (d̄ ≥ 0.85 used to raise an
AssertionError), the calibration's held-out check, and the image-prompt lift path reading no ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cos3d.core.errors import Cos3dError
from cos3d.query.notarget import NEGATIVE_VOCABULARY, calibrate, check_held_out
from cos3d.query.refine import InstanceIndex, refine_fast, refine_reference, thresholds
from cos3d.vision.image_prompt import ImagePrompt


@pytest.mark.parametrize("dbar", [0.05, 0.9, 1.3, 2.6])
def test_refine_fast_matches_reference_at_loose_thresholds(dbar):
    g = torch.Generator().manual_seed(0)
    n = 600
    centers = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=1)
    F = torch.nn.functional.normalize(centers[torch.randint(0, 6, (n,), generator=g)]
                                      + 0.6 * torch.randn(n, 16, generator=g), dim=1)
    r = torch.rand(n, generator=g)
    opacity = 0.05 + torch.rand(n, generator=g)
    assert thresholds(dbar)[0] < np.cos(0.85) or dbar < 0.85  # the loose case is exercised
    ref = refine_reference(F, r, opacity, dbar)
    fast = refine_fast(F, r, opacity, dbar, index=InstanceIndex(F, k=12))
    assert torch.equal(torch.sort(ref.selected).values, torch.sort(fast.selected).values)
    assert len(ref.regions) == len(fast.regions)


def test_calibration_refuses_held_out_prompts():
    check_held_out(["teapot", "cup"])  # fine
    with pytest.raises(Cos3dError, match="calibration vocabulary: 'Giraffe'"):
        check_held_out(["teapot", "Giraffe"])
    L = torch.nn.functional.normalize(torch.randn(50, 8), dim=1)
    V = torch.nn.functional.normalize(torch.randn(len(NEGATIVE_VOCABULARY), 8), dim=1)
    with pytest.raises(Cos3dError, match="must be held out"):
        calibrate(L, torch.ones(50), L[:5], L[:4], V, held_out=("elephant",))


def test_lift_reads_no_ground_truth(trained_run, monkeypatch):
    """A box on a held-out view → the object, with every ground-truth read made to fail."""
    import cos3d
    from cos3d.eval.metrics import mask_iou
    from cos3d.data.scene import Frame

    ts = cos3d.load(trained_run)
    eng = ts.engine
    test = eng.scene.split("test")
    f = test[0]
    inst = f.load_instance()
    labels = {int(k): v for k, v in eng.scene.labels.items()}
    objs = [i for i, n in labels.items() if n[0] not in ("floor", "table")]
    oid = max(objs, key=lambda i: int((inst == i).sum()))
    ys, xs = np.nonzero(inst == oid)
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    gts = {g.name: g.load_instance() == oid for g in test}

    def no_gt(self):
        raise AssertionError("the lift path read a ground-truth map")

    monkeypatch.setattr(Frame, "load_instance", no_gt)
    monkeypatch.setattr(Frame, "load_part", no_gt)
    monkeypatch.setattr(eng.scene, "labels", {})  # no names either
    res = eng.lift(f.name, ImagePrompt(box=box))
    assert not res.no_target and res.kind == "image" and res.selected.numel() > 0
    ious = [mask_iou(eng.mask(res, g.camera), gt) for g in test if g.name != f.name for gt in [gts[g.name]] if gt.any()]
    assert ious and float(np.mean(ious)) > 0.3, ious
