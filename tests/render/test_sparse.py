"""cos3d.render.sparse: CSR from triples and ``W @ f`` with a stored-transpose backward, against dense."""

from __future__ import annotations

import pytest
import torch

from cos3d.render.sparse import csr_from_triples, sparse_product

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _triples(nrows=23, ncols=17, m=150, seed=0, dtype=torch.float32):
    """Unique (row, col) pairs in a random order, and the dense matrix they make."""
    g = torch.Generator().manual_seed(seed)
    key = torch.unique(torch.randint(nrows * ncols, (m,), generator=g))
    key = key[torch.randperm(key.numel(), generator=g)]
    rows, cols = key // ncols, key % ncols
    vals = torch.rand(key.numel(), generator=g, dtype=torch.float64).to(dtype)
    dense = torch.zeros(nrows, ncols, dtype=dtype)
    dense[rows, cols] = vals
    return rows, cols, vals, dense


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_csr_from_triples_matches_dense_in_any_order(dtype):
    rows, cols, vals, dense = _triples(dtype=dtype)
    W = csr_from_triples(rows, cols, vals, *dense.shape)
    assert W.layout == torch.sparse_csr and W.values().dtype == dtype
    assert W.crow_indices().dtype == torch.int32 and W.col_indices().dtype == torch.int32
    torch.testing.assert_close(W.to_dense(), dense, rtol=0, atol=0)
    Wt = csr_from_triples(cols, rows, vals, dense.shape[1], dense.shape[0])
    torch.testing.assert_close(Wt.to_dense(), dense.T, rtol=0, atol=0)
    # already grouped by row (the sort is skipped), empty rows at both ends, and no triples at all
    order = torch.argsort(rows, stable=True)
    W2 = csr_from_triples(rows[order] + 2, cols[order], vals[order], dense.shape[0] + 4, dense.shape[1])
    torch.testing.assert_close(W2.to_dense()[2:-2], dense, rtol=0, atol=0)
    e = torch.zeros(0, dtype=torch.int64)
    assert csr_from_triples(e, e, torch.zeros(0), 5, 4).to_dense().abs().sum() == 0
    with pytest.raises(ValueError, match="equal-length"):
        csr_from_triples(rows, cols[:-1], vals, *dense.shape)


def test_sparse_product_gradient_matches_dense_product():
    rows, cols, vals, dense = _triples(seed=1, dtype=torch.float64)
    W = csr_from_triples(rows, cols, vals, *dense.shape)
    Wt = csr_from_triples(cols, rows, vals, dense.shape[1], dense.shape[0])
    g = torch.Generator().manual_seed(2)
    f = torch.randn(dense.shape[1], 5, generator=g, dtype=torch.float64, requires_grad=True)
    out = sparse_product(W, Wt, f)
    fd = f.detach().clone().requires_grad_(True)
    ref = dense @ fd
    torch.testing.assert_close(out, ref)
    gout = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (gf,) = torch.autograd.grad((out * gout).sum(), f)
    (gd,) = torch.autograd.grad((ref * gout).sum(), fd)
    torch.testing.assert_close(gf, gd)
    assert torch.autograd.gradcheck(lambda x: sparse_product(W, Wt, x), (f,))


def test_sparse_product_builds_a_lazy_transpose_only_for_a_backward_pass():
    rows, cols, vals, dense = _triples(seed=3)
    W = csr_from_triples(rows, cols, vals, *dense.shape)
    calls = []

    def Wt():
        calls.append(1)
        return csr_from_triples(cols, rows, vals, dense.shape[1], dense.shape[0])

    f = torch.randn(dense.shape[1], 3, requires_grad=True)
    with torch.no_grad():
        torch.testing.assert_close(sparse_product(W, Wt, f), dense @ f)
    out = sparse_product(W, Wt, f.detach())
    assert not out.requires_grad and not calls
    out = sparse_product(W, Wt, f)
    assert not calls  # the forward pass does not need Wᵀ
    out.sum().backward()
    assert calls == [1]
    torch.testing.assert_close(f.grad, dense.sum(0)[:, None].expand(-1, 3))
