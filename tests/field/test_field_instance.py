"""Stage 1 (instance field): sparse product, cached view weights, contrastive loss, training.

Synthetic tests build a frozen-geometry weight matrix directly (objects = blocks of Gaussians, each
pixel blends a few Gaussians of the object it shows); the tabletop tests use the session's trained run.
"""

from __future__ import annotations

import pytest
import torch

from cos3d.field.contrastive import contrastive_loss, normalize, unit_rows
from cos3d.field.instance import InstanceConfig, train_instance_field
from cos3d.field.view_weights import ViewWeights
from cos3d.render.sparse import sparse_product


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic_views(n_views=4, H=24, W=30, K=4, per_obj=60, seed=0, chunk_size=32768):
    """Views whose pixels each blend 5 Gaussians of one object (+ one weak random Gaussian).

    Returns (views, labels, object id per Gaussian). Objects appear as vertical stripes in a random
    order per view; the top 2 rows carry no mask (label 0).
    """
    g = torch.Generator().manual_seed(seed)
    N = K * per_obj
    views, labels = [], []
    for v in range(n_views):
        perm = torch.randperm(K, generator=g)
        obj = perm[torch.arange(W) * K // W]
        lab = (obj[None, :].expand(H, W).reshape(-1) + 1).clone()
        pix, gau, wts = [], [], []
        for _ in range(5):
            pix.append(torch.arange(H * W))
            gau.append((lab - 1) * per_obj + torch.randint(per_obj, (H * W,), generator=g))
            wts.append(torch.full((H * W,), 0.18))
        pix.append(torch.arange(H * W))
        gau.append(torch.randint(N, (H * W,), generator=g))
        wts.append(torch.full((H * W,), 0.04))
        p, gg, w = torch.cat(pix), torch.cat(gau), torch.cat(wts)
        key, inv = torch.unique(p * N + gg, return_inverse=True)
        ws = torch.zeros(key.numel()).index_add_(0, inv, w)
        lab[: 2 * W] = 0
        views.append(ViewWeights.from_triples(key // N, key % N, ws, H, W, N, chunk_size=chunk_size, name=str(v)))
        labels.append({"l": lab, "s": lab})
    return views, labels, torch.arange(N) // per_obj


def dense_from_triples(pixel, gaussian, weight, hw, n):
    Wd = torch.zeros(hw, n, dtype=torch.float64)
    Wd.index_put_((pixel, gaussian), weight.double(), accumulate=True)
    return Wd


def test_sparse_product_matches_dense_forward_and_backward():
    g = torch.Generator().manual_seed(1)
    H, W, N, D = 7, 9, 40, 5
    M = 300
    pixel = torch.randint(H * W, (M,), generator=g)
    gaussian = torch.randint(N, (M,), generator=g)
    key, inv = torch.unique(pixel * N + gaussian, return_inverse=True)
    weight = torch.zeros(key.numel()).index_add_(0, inv, torch.rand(M, generator=g))
    pixel, gaussian = key // N, key % N
    Wd = dense_from_triples(pixel, gaussian, weight, H * W, N)
    shuffle = torch.randperm(pixel.numel(), generator=g)  # builders must not rely on any triple order
    pixel, gaussian, weight = pixel[shuffle], gaussian[shuffle], weight[shuffle]
    for chunk in (1000, 16):  # one chunk, and several permuted chunks
        vw = ViewWeights.from_triples(pixel, gaussian, weight, H, W, N, chunk_size=chunk, name="v")
        assert len(vw.chunks) == (1 if chunk == 1000 else -(-int(torch.unique(pixel).numel()) // 16))
        f = torch.randn(N, D, generator=g, dtype=torch.float32, requires_grad=True)
        out, alpha = vw.render(f)
        ref = Wd @ f.double()
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(alpha.double(), Wd.sum(1), rtol=1e-5, atol=1e-6)
        gout = torch.randn(H * W, D, generator=g)
        (gf,) = torch.autograd.grad((out * gout).sum(), f)
        torch.testing.assert_close(gf.double(), Wd.T @ gout.double(), rtol=1e-5, atol=1e-5)
    # state_dict round trip
    vw2 = ViewWeights.from_state_dict(vw.state_dict())
    torch.testing.assert_close(vw2.render(f.detach())[0], vw.render(f.detach())[0])


def test_sparse_product_without_grad_is_plain_matmul():
    views, _, _ = synthetic_views(n_views=1)
    c = views[0].chunks[0]
    f = torch.randn(views[0].n_gaussians, 3)
    torch.testing.assert_close(sparse_product(c.W, c.Wt, f[c.cols]), c.W.to_dense() @ f[c.cols])
    torch.testing.assert_close(views[0].render_chunk(0, f), views[0].render_chunk(0, f[c.cols], local=True))


def _separating_features(obj, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = normalize(torch.randn(int(obj.max()) + 1, D, generator=g))
    return centers[obj] + 0.02 * torch.randn(obj.numel(), D, generator=g)


def test_contrastive_loss_prefers_separated_features():
    views, labels, obj = synthetic_views(n_views=2)
    good = normalize(_separating_features(obj))
    bad = normalize(torch.randn(obj.numel(), 16, generator=torch.Generator().manual_seed(5)))
    for v, lab in zip(views, labels, strict=True):
        pix = v.chunks[0].pixels
        lg, sg = contrastive_loss(v.render_chunk(0, good), lab["l"][pix])
        lb, sb = contrastive_loss(v.render_chunk(0, bad), lab["l"][pix])
        assert sg["clusters"] == sb["clusters"] == 4
        assert sg["nce"] < sb["nce"] - 0.2, (sg, sb)
        assert lg < lb
        assert sg["norm"] < sb["norm"]


def test_contrastive_loss_excludes_no_mask_and_small_clusters():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(100, 8, generator=g)
    lab = torch.zeros(100, dtype=torch.long)
    loss, st = contrastive_loss(f, lab)
    assert st["clusters"] == 0 and torch.isfinite(loss)
    lab[:30] = 1
    lab[30:45] = 2  # 15 samples <= 20: ignored
    _, st = contrastive_loss(f, lab)
    assert st["clusters"] == 1
    assert st["nce"] == pytest.approx(0.0, abs=1e-6)  # a single prototype: nothing to contrast
    lab[45:] = 3
    loss, st = contrastive_loss(f, lab)
    assert st["clusters"] == 2
    loss.backward() if loss.requires_grad else None


def test_contrastive_loss_gradient_flows():
    f = torch.randn(200, 16, requires_grad=True)
    lab = torch.arange(200) % 3 + 1
    loss, _ = contrastive_loss(f, lab)
    loss.backward()
    assert f.grad is not None and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0


def test_training_separates_synthetic_objects_and_is_deterministic():
    views, labels, obj = synthetic_views(n_views=4, chunk_size=300)
    cfg = InstanceConfig(iterations=150, min_cluster=5, seed=3)
    out, stats = train_instance_field(views, labels, ["l"], cfg, progress=False)
    f = out["l"]
    assert f.shape == (obj.numel(), 16) and f.dtype == torch.float32
    torch.testing.assert_close(f.norm(dim=1), torch.ones(obj.numel()))
    means = normalize(torch.stack([f[obj == k].mean(0) for k in range(4)]))
    cos = means @ means.T
    off = cos[~torch.eye(4, dtype=torch.bool)]
    intra = torch.stack([(f[obj == k] @ means[k]).mean() for k in range(4)])
    assert intra.min() > 0.9, intra
    assert off.max() < intra.min() - 0.3, (off.max(), intra.min())
    out2, _ = train_instance_field(views, labels, ["l"], cfg, progress=False)
    assert torch.equal(out2["l"], f)


def test_levels_are_independent_slices():
    views, labels, _ = synthetic_views(n_views=2)
    cfg = InstanceConfig(iterations=20, min_cluster=5)
    both, _ = train_instance_field(views, labels, ["l", "s"], cfg, progress=False)
    assert set(both) == {"l", "s"}
    # identical labels, different random init slices → different but equally unit features
    assert not torch.equal(both["l"], both["s"])
    torch.testing.assert_close(both["s"].norm(dim=1), torch.ones(both["s"].shape[0]))


class _Kill(Exception):
    pass


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    views, labels, _ = synthetic_views(n_views=3, chunk_size=300)
    cfg = InstanceConfig(iterations=40, min_cluster=5, checkpoint_every=10, seed=1)
    ref, _ = train_instance_field(views, labels, ["l", "s"], cfg, progress=False)
    ck = tmp_path / "ck.pt"

    def kill(i):
        if i == 24:
            raise _Kill

    with pytest.raises(_Kill):
        train_instance_field(views, labels, ["l", "s"], cfg, checkpoint=ck, hook=kill, progress=False)
    assert ck.exists()
    out, stats = train_instance_field(views, labels, ["l", "s"], cfg, checkpoint=ck, progress=False)
    assert stats["resumed_from"] == 20
    for lev in ("l", "s"):
        assert torch.equal(out[lev], ref[lev])


def test_corrupt_checkpoint_names_file(tmp_path):
    from cos3d.core.errors import Cos3dError

    views, labels, _ = synthetic_views(n_views=1)
    ck = tmp_path / "instance_ckpt.pt"
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(Cos3dError, match="instance_ckpt.pt.*--resume"):
        train_instance_field(views, labels, ["l"], InstanceConfig(iterations=2), checkpoint=ck, progress=False)


def test_unit_rows_gradient_matches_autograd_normalize():
    x = torch.randn(7, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(unit_rows, (x,))
    g = torch.randn(7, 3, 5, dtype=torch.float64)
    (a,) = torch.autograd.grad((unit_rows(x) * g).sum(), x)
    (b,) = torch.autograd.grad((normalize(x) * g).sum(), x)
    torch.testing.assert_close(a, b)


def test_max_pixels_keeps_a_seeded_pixel_sample():
    views, _, _ = synthetic_views(n_views=1)
    v = views[0]
    st = v.state_dict()["chunks"][0]
    p = int(st["crow"].numel() - 1)
    rows = torch.repeat_interleave(torch.arange(p), st["crow"][1:] - st["crow"][:-1])
    pixel, gauss, w = st["pixels"][rows], st["cols"][st["col"].long()], st["val"]
    a = ViewWeights.from_triples(
        pixel, gauss, w, v.height, v.width, v.n_gaussians, max_pixels=100, chunk_size=40, name="x"
    )
    b = ViewWeights.from_triples(
        pixel, gauss, w, v.height, v.width, v.n_gaussians, max_pixels=100, chunk_size=40, name="x"
    )
    pa = torch.cat([c.pixels for c in a.chunks])
    assert pa.numel() == 100 and torch.unique(pa).numel() == 100 and len(a.chunks) == 3
    assert torch.equal(pa, torch.cat([c.pixels for c in b.chunks]))
    f = torch.randn(v.n_gaussians, 4)
    full, _ = v.render(f)
    part, alpha = a.render(f)
    torch.testing.assert_close(part[pa], full[pa])
    assert (alpha > 0).sum() == 100
