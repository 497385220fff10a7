"""Stage 0: SSIM, initialisation, a short reconstruction of the shared tabletop, checkpoint/resume."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import cos3d.pipeline.recon as recon
from cos3d.core.errors import Cos3dError
from cos3d.data.ply import read_ply
from cos3d.pipeline.recon import ReconConfig, evaluate_psnr, init_gaussians, reconstruct, ssim

PSNR_BAR = 23.5
"""Held-out PSNR the short run below must reach on the shared tabletop (seed 0, 16 train / 4 test views,
160×120): measured 24.05 dB (250 steps, 24.4k Gaussians, ~45 s on 2 shared cores). DESIGN.md suggests
~24 dB for RGB-D initialisation; the bar leaves room for float/thread differences."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scene(tabletop_dir):
    from cos3d.readers import load_scene

    return load_scene(tabletop_dir)


def test_ssim_basic_properties():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 32, 40, 3, generator=gen)
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-6)
    noisy = (a + 0.1 * torch.randn(a.shape, generator=gen)).clamp(0, 1)
    noisier = (a + 0.3 * torch.randn(a.shape, generator=gen)).clamp(0, 1)
    assert 0 < float(ssim(a, noisier)) < float(ssim(a, noisy)) < 1
    x = noisy.clone().requires_grad_(True)
    (1 - ssim(x, a)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_config_validation_and_fast_preset():
    with pytest.raises(Cos3dError, match="init: must be one of"):
        ReconConfig(init="sfm").validate()
    with pytest.raises(Cos3dError, match="sh_degree"):
        ReconConfig(sh_degree=4).validate()
    fast = ReconConfig.fast(iterations=10)
    assert fast.iterations == 10 and fast.sh_degree == 1
    names = {f.name for f in dataclasses.fields(ReconConfig)}
    assert {"seed", "device", "progress", "iterations", "voxel_size", "max_gaussians", "ssim_weight"} <= names


def test_init_modes(scene):
    g, info = init_gaussians(scene, ReconConfig(init_max_points=20_000))
    assert info["mode"] == "depth" and 1000 < g.num <= 20_000 and g.sh_degree == 3
    g.validate()
    # the back-projected points lie on the surfaces: they render close to the training images
    assert evaluate_psnr(g.with_features(), scene.split("test")) > 10
    no_depth = dataclasses.replace(scene, frames=[dataclasses.replace(f, depth_path=None) for f in scene.frames])
    g, info = init_gaussians(no_depth, ReconConfig(init_random_points=500))
    assert info["mode"] == "random" and g.num == 500
    with pytest.raises(Cos3dError, match="no depth"):
        init_gaussians(no_depth, ReconConfig(init="depth"))
    pts = dataclasses.replace(no_depth, points=np.random.default_rng(0).random((300, 3)).astype(np.float32))
    g, info = init_gaussians(pts, ReconConfig())
    assert info["mode"] == "points" and g.num == 300
    coarse, info = init_gaussians(scene, ReconConfig(voxel_size=0.05))
    fine, _ = init_gaussians(scene, ReconConfig(voxel_size=0.02))
    assert info["voxel_size"] == 0.05 and coarse.num < fine.num


def test_stage0_tabletop_reaches_psnr(scene, tmp_path):
    # a 250-step schedule: fewer initial points, and the means' learning rate decays to 10 % (not 1 %)
    cfg = ReconConfig.fast(iterations=250, progress=False, seed=0)
    g, m = reconstruct(scene, cfg, tmp_path / "recon")
    print(f"stage 0: held-out PSNR {m['psnr_test']:.2f} dB, train {m['psnr_train']:.2f} dB, "
          f"{m['n_gaussians']} Gaussians, {m['time_s']:.1f} s")  # fmt: skip
    assert m["psnr_test"] >= PSNR_BAR
    assert m["n_test_views"] == len(scene.split("test")) > 0
    saved = read_ply(tmp_path / "recon" / "gaussians.ply")
    assert saved.num == g.num and torch.equal(saved.means, g.means.cpu())
    assert json.loads((tmp_path / "recon" / "metrics.json").read_text())["psnr_test"] == pytest.approx(m["psnr_test"])
    assert not (tmp_path / "recon" / recon.CHECKPOINT).exists()


def test_checkpoint_and_resume(scene, tmp_path, monkeypatch):
    cfg = ReconConfig.fast(iterations=12, checkpoint_every=5, init_max_points=3000, progress=False, densify=False)
    calls = {"n": 0}
    real_render = recon.render

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt  # killed during step 8
        return real_render(*args, **kwargs)

    monkeypatch.setattr(recon, "render", flaky)
    with pytest.raises(KeyboardInterrupt):
        reconstruct(scene, cfg, tmp_path)
    ckpt = torch.load(tmp_path / recon.CHECKPOINT, weights_only=True)  # tensors and plain values only
    assert ckpt["step"] == 5
    calls["n"] = -1000
    g, m = reconstruct(scene, cfg, tmp_path, resume=True)
    # 7 remaining steps, then the test and a few train views for the final PSNRs
    n_eval = len(scene.split("test")) + len(scene.split("train")[:: max(1, len(scene.split("train")) // 8)])
    assert calls["n"] + 1000 == 7 + n_eval
    assert m["iterations"] == 12 and math.isfinite(m["psnr_test"])
    assert (tmp_path / "gaussians.ply").is_file() and not (tmp_path / recon.CHECKPOINT).exists()


def test_checkpoint_with_densify_state_loads_weights_only(scene, tmp_path, monkeypatch):
    """gsplat's strategy state (grad2d/count tensors, scene_scale) and the Adam state dicts all fit
    ``weights_only=True``; resuming from such a checkpoint works."""
    cfg = ReconConfig.fast(iterations=8, checkpoint_every=4, init_max_points=2000, progress=False,
                           densify=True, refine_start=1, refine_every=2, refine_stop=100)  # fmt: skip
    saved = []
    real = recon._save_checkpoint

    def spy(path, *args):
        real(path, *args)
        saved.append(torch.load(path, map_location="cpu", weights_only=True))
        raise KeyboardInterrupt  # stop right after the first checkpoint

    monkeypatch.setattr(recon, "_save_checkpoint", spy)
    with pytest.raises(KeyboardInterrupt):
        reconstruct(scene, cfg, tmp_path)
    blob = saved[0]
    assert blob["step"] == 4 and blob["format"] == recon.CHECKPOINT_FORMAT
    assert isinstance(blob["strategy_state"]["grad2d"], torch.Tensor)
    assert isinstance(blob["strategy_state"]["scene_scale"], float)
    assert all(isinstance(v, float) for v in blob["info"]["init"].values() if not isinstance(v, (str, int)))
    monkeypatch.setattr(recon, "_save_checkpoint", real)
    g, m = reconstruct(scene, cfg, tmp_path, resume=True)
    assert m["iterations"] == 8 and g.num > 0 and not (tmp_path / recon.CHECKPOINT).exists()


def _points_on_objects(scene, points: np.ndarray) -> int:
    """How many ``points`` project, in some training view, onto an object pixel (not floor/table) at its depth."""
    on = np.zeros(len(points), bool)
    background = {i for i, n in scene.labels.items() if n and n[0] in ("floor", "table")}
    for f in scene.split("train"):
        depth, inst = f.load_depth(), f.load_instance()
        cam = (points - f.camera.c2w[:3, 3]) @ f.camera.c2w[:3, :3]
        z = cam[:, 2]
        uv = cam[:, :2] / np.maximum(z[:, None], 1e-9) * np.diag(f.camera.K)[:2] + f.camera.K[:2, 2]
        x, y = np.floor(uv).astype(int).T
        ok = (z > 0) & (x >= 0) & (y >= 0) & (x < f.camera.width) & (y < f.camera.height)
        i = np.nonzero(ok)[0]
        d = depth[y[i], x[i]]
        hit = (np.abs(d - z[i]) < 0.01) & ~np.isin(inst[y[i], x[i]], list(background) + [0])
        on[i[hit]] = True
    return int(on.sum())


def test_init_focus_spends_the_budget_on_the_objects(scene):
    """The focus/detail allocation of the fast preset puts several times more of the same point budget
    on the objects than footprint-only voxels, which spend it on the floor seen at grazing angles."""
    cams = scene.split("train")
    focus, dist = recon.cameras_focus(cams)
    # every camera looks at the focus: it lies near each optical axis, in front of the camera
    for f in cams:
        v = focus - f.camera.center
        axis = f.camera.c2w[:3, 2]
        assert float(v @ axis) > 0 and np.linalg.norm(np.cross(v, axis)) < 0.5 * dist
    before, _ = init_gaussians(scene, ReconConfig(init_max_points=8000))
    after, _ = init_gaussians(scene, ReconConfig(init_max_points=8000, init_focus=0.35, init_detail=2.0))
    assert after.num <= 8000 and before.num <= 8000
    n0 = _points_on_objects(scene, before.means.numpy())
    n1 = _points_on_objects(scene, after.means.numpy())
    assert n1 > 3 * n0, (n0, n1)
