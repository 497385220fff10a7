"""Stage 2 (Ins2Lang): anchors, kernel regression, MLP option, 3D smoothing."""

from __future__ import annotations

import pytest
import torch

from cos3d.field.ins2lang import (
    Anchors,
    Ins2LangConfig,
    collect_anchors,
    fit_mlp,
    kernel_regression,
    map_to_language,
    view_anchors,
)
from cos3d.field.contrastive import normalize
from cos3d.field.smoothing import smooth_features


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _clusters(K=5, per=50, d=16, D=32, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = normalize(torch.randn(K, d, generator=g))
    emb = normalize(torch.randn(K, D, generator=g))
    obj = torch.arange(K * per) // per
    f = normalize(centers[obj] + noise * torch.randn(K * per, d, generator=g))
    return centers, emb, obj, f


def test_view_anchors_means_targets_and_distances():
    centers, emb, obj, f = _clusters(K=3, per=40)
    labels = obj + 1
    labels[:5] = 0  # unlabelled pixels are ignored
    alpha = torch.ones(obj.numel())
    alpha[5:10] = 0.1  # low-alpha pixels are ignored
    a, c, k, dist, row = view_anchors(f * 0.7, labels, emb[:3], alpha=alpha, min_pixels=20)
    assert a.shape == (3, 16) and c.shape == (3, 32)
    assert torch.equal(k, torch.arange(3))
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3))
    assert (a * centers[:3]).sum(1).min() > 0.99
    torch.testing.assert_close(c, emb[:3])
    assert dist.numel() == obj.numel() - 10 and (dist >= -1e-6).all() and (dist < 0.05).all()
    # distances are 1 - cos to their own anchor
    keep = (labels > 0) & (alpha >= 0.5)
    torch.testing.assert_close(dist, 1 - (f[keep] * a[row]).sum(1))
    # too small a mask gives no anchor
    a2, _, k2, _, _ = view_anchors(f, labels, emb[:3], min_pixels=40)
    assert torch.equal(k2, torch.tensor([1, 2])) and a2.shape[0] == 2


def test_collect_anchors_dbar_is_median_distance():
    centers, emb, obj, f = _clusters(K=4, per=60, noise=0.2)
    views = [(f, obj + 1, emb[:4], None), (f.flip(0), (obj + 1).flip(0), emb[:4], None)]
    A = collect_anchors(views, min_pixels=5, samples_per_view=30)
    assert len(A) == 8 and A.targets.shape == (8, 32)
    assert torch.equal(A.view, torch.tensor([0] * 4 + [1] * 4))
    d = torch.cat([view_anchors(*v[:3], min_pixels=5)[3] for v in views])
    assert A.dbar == pytest.approx(float(d.median()))
    assert 0 < A.dbar < 0.2
    assert A.sample_x.shape == (60, 16) and A.sample_y.max() < 8


def test_kernel_regression_returns_each_objects_embedding():
    centers, emb, obj, f = _clusters(K=5, per=50, noise=0.05)
    # several noisy anchors per object (as from several views)
    g = torch.Generator().manual_seed(1)
    anchors = normalize(centers.repeat(6, 1) + 0.03 * torch.randn(30, 16, generator=g))
    targets = emb.repeat(6, 1)
    L = kernel_regression(f, anchors, targets, k=25, sigma=0.1, chunk=37)
    assert L.shape == (250, 32) and L.dtype == torch.float32
    torch.testing.assert_close(L.norm(dim=1), torch.ones(250))
    cos_own = (L * emb[obj]).sum(1)
    assert cos_own.min() > 0.99, cos_own.min()


def test_kernel_regression_nan_free_when_all_anchors_far():
    anchors = normalize(torch.randn(10, 16, generator=torch.Generator().manual_seed(0)))
    targets = normalize(torch.randn(10, 8, generator=torch.Generator().manual_seed(1)))
    f = -anchors[:3]  # opposite: d = 2 to its anchor, > 1 to most
    L = kernel_regression(f, anchors, targets, k=25, sigma=0.1)
    assert torch.isfinite(L).all()
    torch.testing.assert_close(L.norm(dim=1), torch.ones(3))
    # all anchors identical and exactly opposite: d = 2 everywhere, still a unit answer
    a = normalize(torch.ones(4, 16))
    t = normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(2)))
    L = kernel_regression(-a[:1], a, t)
    assert torch.isfinite(L).all() and float(L.norm()) == pytest.approx(1.0, abs=1e-5)
    # cancelling targets fall back to the nearest anchor's target
    L = kernel_regression(a[:1], a[:2], torch.stack([t[0], -t[0]]))
    assert torch.isfinite(L).all() and float(L.norm()) == pytest.approx(1.0, abs=1e-5)
    # a raw exp(-d^2 / 2 sigma^2) would underflow here
    assert float(torch.exp(torch.tensor(-(2.0**2) / (2 * 0.1**2)))) == 0.0


def test_kernel_regression_rejects_bad_shapes():
    with pytest.raises(ValueError, match="anchors"):
        kernel_regression(torch.randn(3, 16), torch.randn(4, 16), torch.randn(5, 8))
    with pytest.raises(ValueError, match="16-d"):
        kernel_regression(torch.randn(3, 8), torch.randn(4, 16), torch.randn(4, 8))


def test_mlp_option_learns_the_mapping():
    centers, emb, obj, f = _clusters(K=4, per=50, noise=0.03)
    model = fit_mlp(f, emb[obj], iterations=150, lr=5e-3, batch=128, seed=0)
    with torch.no_grad():
        L = model(f)
    torch.testing.assert_close(L.norm(dim=1), torch.ones(L.shape[0]))
    assert (L * emb[obj]).sum(1).mean() > 0.9
    widths = [m.out_features for m in model.net if isinstance(m, torch.nn.Linear)]
    assert widths == [32, 64, 128, 256, 256, 32]


def test_map_to_language_fp16_unit_and_methods():
    centers, emb, obj, f = _clusters(K=3, per=30)
    A = Anchors(centers, emb[:3], 0.05, sample_x=f, sample_y=obj)
    xyz = obj[:, None].float() * 10 + torch.rand(obj.numel(), 3, generator=torch.Generator().manual_seed(0))
    L = map_to_language(f, A, Ins2LangConfig(), xyz=xyz)
    assert L.dtype == torch.float16 and L.shape == (90, 32)
    assert (L.float().norm(dim=1) - 1).abs().max() < 2e-3
    assert (L.float() * emb[obj]).sum(1).min() > 0.98
    Lm = map_to_language(f, A, Ins2LangConfig(method="mlp", mlp_iterations=60, mlp_batch=90, mlp_lr=3e-3))
    assert Lm.dtype == torch.float16 and torch.isfinite(Lm.float()).all()
    with pytest.raises(ValueError, match="unknown Ins2Lang method"):
        map_to_language(f, A, Ins2LangConfig(method="svm"))


def test_smoothing_out_of_place_unit_and_local():
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(200, 3, generator=g)
    feats = normalize(torch.randn(200, 24, generator=g)).half()
    before = feats.clone()
    out = smooth_features(xyz, feats, k=10)
    assert torch.equal(feats, before)  # out of place
    assert out.dtype == torch.float16 and out.data_ptr() != feats.data_ptr()
    assert (out.float().norm(dim=1) - 1).abs().max() < 2e-3
    # equals the renormalised mean over the 10 nearest (self included)
    d = torch.cdist(xyz.double(), xyz.double())
    nn_idx = d.topk(10, largest=False).indices
    ref = normalize(feats.float()[nn_idx].mean(1))
    assert (out.float() - ref).abs().max() < 3e-3
    # two far-apart clusters with constant features stay constant
    xyz2 = torch.cat([torch.rand(20, 3), torch.rand(20, 3) + 100])
    f2 = torch.cat([torch.tensor([[1.0, 0]]).repeat(20, 1), torch.tensor([[0, 1.0]]).repeat(20, 1)])
    torch.testing.assert_close(smooth_features(xyz2, f2, k=10), f2)
    # k = 1 is the identity (normalised); k > N uses every point
    torch.testing.assert_close(smooth_features(xyz2, f2 * 3, k=1), f2)
    assert smooth_features(xyz2[:5], f2[:5], k=10).shape == (5, 2)
