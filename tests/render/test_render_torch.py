"""The pure-torch rasterizer: against a per-pixel reference loop, finite differences, analytic cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cos3d.core.errors import Cos3dError
from cos3d.data.gaussians import Gaussians
from cos3d.render import cameras_to_tensors, compute_contributions, render
from cos3d.render import torch_raster as tr
from cos3d.data.sh import SH_C0, eval_sh, rgb_to_sh0
from cos3d.data.scene import Camera


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """c2w (OpenCV axes) of a camera at ``eye`` looking at ``target``."""
    eye = np.asarray(eye, float)
    f = np.asarray(target, float) - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, up)
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = r, d, f, eye
    return c2w


def make_camera(w=40, h=30, f=None, eye=(2.5, 0.5, 1.0), target=(0, 0, 0)) -> Camera:
    f = f or 1.0 * w
    K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1.0]])
    return Camera(K, look_at(eye, target), w, h)


def reference_render(g: Gaussians, cam: Camera, colors: torch.Tensor):
    """Per-pixel front-to-back loop over depth-sorted Gaussians, gsplat's rules, no tiles (float64)."""
    V, K, W, H = cameras_to_tensors(cam, "cpu", torch.float64)
    p = tr.project_gaussians(g.means, g.quats, g.scales, g.opacities, V, K, W, H)
    m2, con, z, rad, op = p.means2d[0], p.conics[0], p.depths[0], p.radii[0], g.opacities
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij")
    T = torch.ones(H, W, dtype=torch.float64)
    out = torch.zeros(H, W, colors.shape[-1], dtype=torch.float64)
    done = torch.zeros(H, W, dtype=torch.bool)
    for i in torch.argsort(z).tolist():
        if (rad[i] <= 0).all():
            continue
        dx, dy = m2[i, 0] - xs, m2[i, 1] - ys
        sigma = 0.5 * (con[i, 0] * dx * dx + con[i, 2] * dy * dy) + con[i, 1] * dx * dy
        a = torch.clamp(op[i] * torch.exp(-sigma), max=0.999)
        use = (a >= 1 / 255) & ~done
        nT = T * (1 - a)
        stop = use & (nT <= 1e-4)
        done |= stop
        use &= ~stop
        out += torch.where(use, a * T, torch.zeros_like(a))[..., None] * colors[i]
        T = torch.where(use, nT, T)
    return out, 1 - T


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random(n, seed, degree=0, dtype=torch.float64, extent=0.5, scale=(0.03, 0.2)):
    return Gaussians.random(n, extent=extent, scale=scale, sh_degree=degree, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("tile,chunk", [(4, 16), (8, 3), (16, 64)])
def test_matches_reference_loop(monkeypatch, tile, chunk):
    monkeypatch.setattr(tr, "TILE", tile)
    monkeypatch.setattr(tr, "DEFAULT_CHUNK", chunk)
    g = _random(80, seed=1)
    with torch.no_grad():
        g.means[:3] = torch.tensor([[2.5, 0.5, 1.0], [2.6, 0.5, 1.05], [2.52, 0.5, 1.01]])  # at/behind the camera
    cam = make_camera()
    cols = torch.rand(80, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref, ref_alpha = reference_render(g, cam, cols)
    out = render(g, cam, features=cols, render_rgb=False)
    assert ref_alpha.max() > 0.99 and ref_alpha.mean() > 0.1  # saturated pixels exercise early stopping
    torch.testing.assert_close(out.features[0], ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(out.alpha[0], ref_alpha, atol=1e-10, rtol=0)


def test_float32_matches_float64():
    g = _random(300, seed=3, dtype=torch.float32, scale=(0.01, 0.08))
    cam = make_camera(64, 48)
    a = render(g, cam)
    b = render(g.to(dtype=torch.float64), cam)
    assert (a.rgb.double() - b.rgb).abs().max() < 1e-4
    assert (a.alpha.double() - b.alpha).abs().max() < 1e-4


def _grad_case():
    g = _random(6, seed=4, degree=1, extent=0.3, scale=(0.06, 0.2))
    cam = make_camera(20, 16, f=22.0, eye=(2.0, 0.3, 0.8))
    feats = torch.rand(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    leaves = [g.means, g.quats, g.log_scales, g.opacity_logits, g.sh, feats]
    for t in leaves:
        t.requires_grad_(True)
    bg = torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64)

    def fn(m, q, s, o, sh, f):
        out = render(Gaussians(m, q, s, o, sh), cam, features=f, background=bg)
        return out.rgb, out.features, out.alpha, out.depth

    gen = torch.Generator().manual_seed(6)
    weights = [torch.randn(o.shape, dtype=torch.float64, generator=gen) for o in fn(*leaves)]

    def loss(*args):
        return sum((o * w).sum() for o, w in zip(fn(*args), weights))

    return leaves, fn, loss


def test_gradients_match_finite_differences():
    leaves, fn, loss = _grad_case()
    assert fn(*leaves)[2].max() > 0.5
    # every parameter entry: analytic gradient of a random linear loss vs central differences
    grads = torch.autograd.grad(loss(*leaves), leaves)
    eps = 1e-6
    with torch.no_grad():
        for t, gr in zip(leaves, grads):
            flat = t.view(-1)
            num = torch.empty_like(flat)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + eps
                up = loss(*leaves)
                flat[i] = old - eps
                down = loss(*leaves)
                flat[i] = old
                num[i] = (up - down) / (2 * eps)
            torch.testing.assert_close(gr.reshape(-1), num, atol=1e-5, rtol=1e-4)
    # autograd's own (randomised) check of the Jacobian of all outputs
    assert torch.autograd.gradcheck(fn, tuple(leaves), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_backward_recompute_path_matches_stored_path(monkeypatch):
    leaves, _, loss = _grad_case()
    stored = torch.autograd.grad(loss(*leaves), leaves)
    monkeypatch.setattr(tr, "STORE_BUDGET", 0)  # the backward pass recomputes the alphas
    recomputed = torch.autograd.grad(loss(*leaves), leaves)
    for a, b in zip(stored, recomputed):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def _planes(depths, opacities, colors):
    """Huge flat Gaussians facing the camera (one per plane): alpha is ~constant over the image."""
    n = len(depths)
    return Gaussians(
        means=torch.tensor([[0.1, -0.2, z] for z in depths], dtype=torch.float64),
        quats=torch.tensor([[1.0, 0, 0, 0]] * n, dtype=torch.float64),
        log_scales=torch.log(torch.tensor([[1e4, 1e4, 1e-4]] * n, dtype=torch.float64)),
        opacity_logits=torch.logit(torch.tensor(opacities, dtype=torch.float64)),
        sh=rgb_to_sh0(torch.tensor(colors, dtype=torch.float64))[:, None, :],
    )


def test_opaque_plane_depth_and_alpha():
    cam = Camera(np.array([[40.0, 0, 31.5], [0, 40.0, 23.5], [0, 0, 1]]), np.eye(4), 64, 48)
    # an opaque plane at z = 3 hides the planes behind it: alpha is the 0.999 clamp, depth is exact
    out = render(_planes([5.0, 3.0, 4.0], [0.9999, 0.9999, 0.95], [[0, 1, 0], [0.2, 0.4, 0.8], [1, 0, 0]]), cam)
    torch.testing.assert_close(out.alpha, torch.full_like(out.alpha, 0.999), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.depth, torch.full_like(out.depth, 3.0), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.rgb[0], torch.tensor([0.2, 0.4, 0.8], dtype=torch.float64).expand(48, 64, 3) * 0.999, atol=1e-12, rtol=0)
    # two half-transparent planes: alpha 1 - 0.5², depth the weight-normalised mean
    out = render(_planes([3.0, 5.0], [0.5, 0.5], [[1, 0, 0], [0, 0, 1]]), cam)
    torch.testing.assert_close(out.alpha, torch.full_like(out.alpha, 0.75), atol=1e-7, rtol=0)
    torch.testing.assert_close(out.depth, torch.full_like(out.depth, (0.5 * 3 + 0.25 * 5) / 0.75), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.rgb[0, 10, 10], torch.tensor([0.5, 0, 0.25], dtype=torch.float64), atol=1e-6, rtol=0)


def test_feature_rendering_is_linear_and_width_is_free():
    g = _random(200, seed=6, dtype=torch.float32, scale=(0.02, 0.1))
    cam = make_camera(48, 32)
    gen = torch.Generator().manual_seed(7)
    f1, f2 = torch.randn(200, 37, generator=gen), torch.randn(200, 37, generator=gen)
    r = lambda f: render(g, cam, features=f, render_rgb=False).features  # noqa: E731
    torch.testing.assert_close(r(2.0 * f1 - 0.5 * f2), 2.0 * r(f1) - 0.5 * r(f2), atol=1e-5, rtol=1e-5)
    assert r(f1[:, :1]).shape == (1, 32, 48, 1)
    # fp16 features render (in the Gaussians' dtype)
    torch.testing.assert_close(r(f1.half()), r(f1.half().float()))


def test_batched_cameras_equal_single_renders_and_meta():
    g = _random(150, seed=8, dtype=torch.float32, degree=2, scale=(0.02, 0.1))
    cams = [make_camera(40, 30, eye=e) for e in [(2.5, 0.5, 1.0), (-1.0, 2.0, 1.5), (0.3, -2.2, 0.4)]]
    both = render(g, cams, background=[1.0, 1.0, 1.0])
    for i, c in enumerate(cams):
        one = render(g, c, background=[1.0, 1.0, 1.0])
        torch.testing.assert_close(both.rgb[i], one.rgb[0])
        torch.testing.assert_close(both.depth[i], one.depth[0])
    assert both.meta["means2d"].shape == (3, 150, 2) and both.meta["radii"].shape == (3, 150, 2)
    assert both.meta["n_cameras"] == 3 and both.meta["backend"] == "torch"
    # background: where nothing is hit the colour is the background
    empty = both.alpha < 1e-6
    assert empty.any() and torch.allclose(both.rgb[empty], torch.ones(3))


def test_sh_degree_argument_and_view_dependence():
    g = _random(50, seed=9, dtype=torch.float32, degree=3)
    cam = make_camera(32, 24)
    full = render(g, cam).rgb
    dc = render(g, cam, sh_degree=0).rgb
    assert (full - dc).abs().max() > 1e-3
    g0 = Gaussians(g.means, g.quats, g.log_scales, g.opacity_logits, g.sh[:, :1])
    torch.testing.assert_close(dc, render(g0, cam).rgb)
    d = torch.randn(5, 50, 3)
    torch.testing.assert_close(eval_sh(g.sh, d, 0), (SH_C0 * g.sh[:, 0]).expand(5, 50, 3))
    with pytest.raises(ValueError, match="sh_degree"):
        render(g0, cam, sh_degree=2)


def test_bad_cameras_and_inputs_are_clear_errors():
    g = _random(5, seed=10, dtype=torch.float32)
    cam = make_camera()
    bad = make_camera()
    bad.K[0, 0] = 0.0
    with pytest.raises(Cos3dError, match="focal length"):
        render(g, bad)
    with pytest.raises(ValueError, match="share a size"):
        render(g, [cam, make_camera(41, 30)])
    with pytest.raises(ValueError, match=r"features must have shape \[N=5"):
        render(g, cam, features=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="backend"):
        render(g, cam, backend="optix")
    with pytest.raises(ValueError, match="CUDA"):
        render(g, cam, backend="gsplat")
    with pytest.raises(TypeError, match=r"cameras\[1\] must be a cos3d.data.scene.Camera"):
        render(g, [cam, "camera"])
    with pytest.raises(TypeError, match="float tensor"):
        render(g, cam, features=torch.zeros(5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"features must have shape \[N=5"):
        compute_contributions(g, cam).render(torch.zeros(4, 3))


def test_empty_and_invisible_scenes():
    cam = make_camera()
    g = _random(4, seed=11, dtype=torch.float32)
    with torch.no_grad():
        g.means += torch.tensor([100.0, 0, 0])  # all behind / outside
    out = render(g, cam, features=torch.ones(4, 2))
    assert out.alpha.abs().max() == 0 and out.features.abs().max() == 0 and out.depth.abs().max() == 0
    e = Gaussians(torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 1, 3))
    assert render(e, cam).rgb.shape == (1, 30, 40, 3)
    assert compute_contributions(e, cam).nnz == 0


def test_densification_meta_gradients():
    g = _random(60, seed=12, dtype=torch.float32, scale=(0.02, 0.1))
    params = g.params()
    out = render(Gaussians.from_params(params), make_camera())
    out.meta["means2d"].retain_grad()
    out.rgb.sum().backward()
    grad2d = out.meta["means2d"].grad
    visible = (out.meta["radii"] > 0).all(-1)
    assert grad2d.shape == (1, 60, 2) and grad2d[visible].abs().sum() > 0
    assert grad2d[~visible].abs().sum() == 0
    assert all(p.grad is not None for p in params.values())


# --------------------------------------------------------------------------- contributions
def test_contributions_reproduce_feature_rendering_and_gradients():
    g = _random(300, seed=13, dtype=torch.float32, scale=(0.02, 0.12))
    cam = make_camera(48, 36)
    f = torch.randn(300, 16, generator=torch.Generator().manual_seed(14))
    ref = render(g, cam, features=f, render_rgb=False)
    exact = compute_contributions(g, cam, min_weight=0.0)
    torch.testing.assert_close(exact.render(f).reshape(36, 48, 16), ref.features[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(exact.alpha().reshape(36, 48), ref.alpha[0], atol=1e-5, rtol=1e-5)
    c = compute_contributions(g, cam)  # min_weight 1e-4: at most ~1e-4 per dropped weight
    assert c.nnz < exact.nnz
    assert (c.render(f).reshape(36, 48, 16) - ref.features[0]).abs().max() < 5e-3
    # sorted by pixel, then by weight (largest first)
    assert bool((c.pixel[1:] >= c.pixel[:-1]).all())
    same = c.pixel[1:] == c.pixel[:-1]
    assert bool((c.weight[1:][same] <= c.weight[:-1][same]).all())
    # gradient flows to the features and equals the dense computation
    fr = f.clone().requires_grad_(True)
    w = torch.randn(36 * 48, 16)
    (c.render(fr) * w).sum().backward()
    dense = c.matrix().to_dense()
    torch.testing.assert_close(fr.grad, dense.t() @ w, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(c.matrix_t().to_dense(), dense.t())


def test_contributions_top_k():
    g = _random(300, seed=15, dtype=torch.float32, scale=(0.05, 0.2))
    cam = make_camera(32, 24)
    allc = compute_contributions(g, cam)
    top = compute_contributions(g, cam, max_per_pixel=3)
    counts = torch.bincount(top.pixel, minlength=32 * 24)
    assert counts.max() == 3 and top.nnz < allc.nnz
    # the kept weights are each pixel's largest
    for px in torch.nonzero(counts == 3).squeeze(1)[:20].tolist():
        best = torch.sort(allc.weight[allc.pixel == px], descending=True).values[:3]
        torch.testing.assert_close(top.weight[top.pixel == px], best)
    with pytest.raises(ValueError, match="max_per_pixel"):
        compute_contributions(g, cam, max_per_pixel=0)
