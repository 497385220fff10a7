"""Sparse blending-weight algebra: CSR matrices from triples and ``W @ f`` with a stored transpose.

With frozen geometry a view's blending weights ``w_i(u) = α_i T_i`` never change, so rendering
per-Gaussian features is a product ``F = W f`` with a sparse ``W`` [pixels, Gaussians] (docs/architecture.md).
:func:`csr_from_triples` builds ``W`` (and, with rows and columns swapped, ``Wᵀ``);
:func:`sparse_product` multiplies, and its backward pass reuses the stored ``Wᵀ``:
``torch.sparse.mm``'s own backward transposes ``W`` on every call and is ~19x slower.
Both :class:`cos3d.render.Contributions` and :class:`cos3d.field.view_weights.ViewWeights` use them.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import Tensor

__all__ = ["csr_from_triples", "sparse_product"]


def csr_from_triples(rows: Tensor, cols: Tensor, vals: Tensor, nrows: int, ncols: int) -> Tensor:
    """A sparse CSR ``[nrows, ncols]`` from (row, col, value) triples ``[M]`` with unique (row, col) pairs.

    Values keep their dtype; indices are int32 when they fit, else int64. On CPU the triples are
    only grouped by row (a stable sort, skipped when they already are): the products do not need
    sorted columns within a row. Other devices get canonical (row, col) order.
    """
    if not (rows.shape == cols.shape == vals.shape and rows.ndim == 1):
        raise ValueError(
            f"triples must be 1-D and equal-length, got {tuple(rows.shape)}, {tuple(cols.shape)}, {tuple(vals.shape)}"
        )
    rows = rows.to(torch.int64)
    if rows.device.type == "cpu":
        if rows.numel() > 1 and not bool((rows[1:] >= rows[:-1]).all()):
            order = torch.argsort(rows, stable=True)
            cols, vals = cols[order], vals[order]
    else:
        order = torch.argsort(rows * ncols + cols.to(torch.int64))
        cols, vals = cols[order], vals[order]
    counts = torch.bincount(rows, minlength=nrows)
    crow = torch.zeros(nrows + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.cumsum(counts, 0)
    idt = torch.int32 if vals.numel() < 2**31 - 1 and max(nrows, ncols) < 2**31 - 1 else torch.int64
    with warnings.catch_warnings():  # "sparse CSR support is in beta": we rely only on the products
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow.to(idt), cols.to(idt), vals, (nrows, ncols), check_invariants=False)


class _SparseProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, W: Tensor, Wt: Tensor | Callable[[], Tensor], f: Tensor) -> Tensor:  # type: ignore[override]
        ctx.Wt = Wt
        return W @ f

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        Wt = ctx.Wt() if callable(ctx.Wt) else ctx.Wt
        return None, None, Wt @ grad.contiguous()


def sparse_product(W: Tensor, Wt: Tensor | Callable[[], Tensor], f: Tensor) -> Tensor:
    """``W @ f`` for a sparse CSR ``W`` ``[P, N]`` and dense ``f`` ``[N, D]``, differentiable in ``f``.

    The backward pass multiplies by the stored transpose ``Wt`` ``[N, P]`` (a CSR tensor, or a
    function returning it, called only when a gradient is needed) instead of transposing ``W``.
    ``f`` must already have ``W``'s dtype and device.
    """
    if not (f.requires_grad and torch.is_grad_enabled()):
        return W @ f
    return _SparseProduct.apply(W, Wt, f)
