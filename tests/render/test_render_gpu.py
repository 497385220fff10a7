"""GPU parity: our torch rasterizer against gsplat on CUDA (skipped without a GPU).

Both backends run on the same CUDA tensors; the torch one is the reference implementation
(``backend="torch"``), gsplat the production path (``backend="gsplat"``, what ``auto`` picks).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cos3d.data.gaussians import Gaussians
from cos3d.render import compute_contributions, render
from cos3d.data.scene import Camera

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _look_at(eye, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    eye = np.asarray(eye, float)
    f = np.asarray(target, float) - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, [0.0, 0.0, 1.0])
    r /= np.linalg.norm(r)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = r, np.cross(f, r), f, eye
    return c2w


def _cameras(w=96, h=72):
    K = np.array([[0.9 * w, 0, (w - 1) / 2], [0, 0.9 * w, (h - 1) / 2], [0, 0, 1.0]])
    return [Camera(K, _look_at(e), w, h) for e in [(2.5, 0.5, 1.0), (-1.2, 2.0, 1.4), (0.4, -2.3, 0.6)]]


def _scene(n=3000, degree=3, seed=0) -> Gaussians:
    g = Gaussians.random(n, extent=0.6, scale=(0.005, 0.05), sh_degree=degree, generator=torch.Generator().manual_seed(seed))
    return g.to("cuda")


def _leaves(g: Gaussians, feats: torch.Tensor):
    t = [g.means, g.quats, g.log_scales, g.opacity_logits, g.sh, feats]
    return [x.detach().clone().requires_grad_(True) for x in t]


def _run(backend, leaves, cams, bg):
    m, q, s, o, sh, f = leaves
    out = render(Gaussians(m, q, s, o, sh), cams, features=f, background=bg, backend=backend)
    gen = torch.Generator(device="cuda").manual_seed(1)
    loss = sum((x * torch.rand(x.shape, device="cuda", generator=gen)).sum()
               for x in (out.rgb, out.features, out.alpha, out.depth * out.alpha))  # fmt: skip
    grads = torch.autograd.grad(loss, leaves)
    return out, grads


@pytest.mark.parametrize("width", [16, 70])
def test_torch_and_gsplat_agree(width):
    g = _scene()
    feats = torch.randn(g.num, width, device="cuda", generator=torch.Generator(device="cuda").manual_seed(2))
    cams = _cameras()
    bg = torch.tensor([0.1, 0.2, 0.3], device="cuda")
    ref, gref = _run("torch", _leaves(g, feats), cams, bg)
    out, gout = _run("gsplat", _leaves(g, feats), cams, bg)
    assert out.meta["backend"] == "gsplat" and ref.meta["backend"] == "torch"
    assert ref.alpha.mean() > 0.2
    for name in ("rgb", "features", "alpha"):
        err = (getattr(out, name) - getattr(ref, name)).abs().mean().item()
        assert err < 1e-3, f"{name}: mean abs error {err}"
    hit = ref.alpha > 0.5
    assert (out.depth[hit] - ref.depth[hit]).abs().mean() < 1e-3
    names = ["means", "quats", "log_scales", "opacity_logits", "sh", "features"]
    for name, a, b in zip(names, gout, gref):
        rel = ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
        assert rel < 1e-2, f"d/d{name}: relative error {rel}"


def test_auto_backend_is_gsplat_on_cuda_and_meta_for_densification():
    g = _scene(500, degree=0)
    params = g.params()
    out = render(Gaussians.from_params(params), _cameras()[0])
    assert out.meta["backend"] == "gsplat"
    out.meta["means2d"].retain_grad()
    out.rgb.sum().backward()
    assert out.meta["means2d"].grad.shape == (1, 500, 2)
    assert out.meta["radii"].shape == (1, 500, 2)


def test_contributions_on_gpu_match_gsplat_features():
    g = _scene(3000, degree=0)
    cam = _cameras()[1]
    f = torch.randn(g.num, 16, device="cuda", generator=torch.Generator(device="cuda").manual_seed(3))
    ref = render(g, cam, features=f, render_rgb=False, backend="gsplat").features[0]
    c = compute_contributions(g, cam)
    assert c.device.type == "cuda"
    out = c.render(f).reshape(ref.shape)
    assert (out - ref).abs().mean() < 1e-3
    fr = f.clone().requires_grad_(True)
    w = torch.randn(out.numel() // 16, 16, device="cuda")
    (c.render(fr) * w).sum().backward()
    torch.testing.assert_close(fr.grad, c.matrix().to_dense().t() @ w, atol=1e-3, rtol=1e-3)
    # the same triples as on the CPU
    cpu = compute_contributions(g.to("cpu"), cam)
    assert abs(cpu.nnz - c.nnz) <= 0.001 * cpu.nnz
    torch.testing.assert_close(c.alpha().cpu(), cpu.alpha(), atol=1e-4, rtol=1e-4)


def test_stage0_smoke_on_cuda(tabletop_dir, tmp_path):
    from cos3d.readers import load_scene
    from cos3d.pipeline.recon import ReconConfig, reconstruct

    scene = load_scene(tabletop_dir)
    g, m = reconstruct(scene, ReconConfig.fast(iterations=300, device="cuda", progress=False), tmp_path)
    assert g.device.type == "cuda" and m["psnr_test"] > 20
