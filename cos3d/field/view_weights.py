"""A view's frozen blending weights, cached as sparse matrices in fixed pixel chunks (stage 1's input).

Geometry is frozen after stage 0, so a view's blending weights ``w_i(u) = α_i T_i`` never change and
rendering a feature map is a sparse-matrix product ``F = W @ f`` (docs/architecture.md). :class:`ViewWeights`
holds, per view, ``W`` as CSR (and its transpose, for the backward pass) for the pixels that any
Gaussian covers, split into fixed pixel chunks of at most ``chunk_size`` pixels (a "fixed pixel sample
per view"), and saves to / loads from a ``state_dict`` for the on-disk weights cache.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from cos3d.render.sparse import csr_from_triples, sparse_product

__all__ = ["ViewWeights"]


@dataclass
class _Chunk:
    pixels: Tensor
    """[p] flat pixel indices (y * W + x) of this chunk's rows."""
    cols: Tensor
    """[n] ids of the Gaussians that touch this chunk (the columns of W, in order)."""
    W: Tensor
    """[p, n] CSR blending weights over the chunk's Gaussians ``cols``."""
    Wt: Tensor
    """[n, p] CSR transpose."""
    alpha: Tensor
    """[p] accumulated opacity (row sums of W)."""

    @classmethod
    def build(cls, pixels: Tensor, rows: Tensor, gaussians: Tensor, weights: Tensor, n_gaussians: int) -> "_Chunk":
        p = int(pixels.numel())
        present = torch.zeros(n_gaussians, dtype=torch.bool, device=gaussians.device)
        present[gaussians] = True
        cols = torch.nonzero(present).flatten()
        local = (torch.cumsum(present, 0) - 1)[gaussians]
        n = int(cols.numel())
        W = csr_from_triples(rows, local, weights, p, n)
        Wt = csr_from_triples(local, rows, weights, n, p)
        alpha = torch.zeros(p, device=weights.device).index_add_(0, rows, weights)
        return cls(pixels, cols, W, Wt, alpha)

    def to(self, device: torch.device | str) -> "_Chunk":
        return _Chunk(self.pixels.to(device), self.cols.to(device), self.W.to(device), self.Wt.to(device),
                      self.alpha.to(device))  # fmt: skip


class ViewWeights:
    """One view's frozen blending weights, in fixed pixel chunks.

    Build with :meth:`from_triples` (or :meth:`from_contributions` from a
    ``cos3d.render.compute_contributions`` result). Only pixels that some Gaussian covers are kept.
    """

    def __init__(self, name: str, height: int, width: int, n_gaussians: int, chunks: list[_Chunk]):
        self.name = name
        self.height = int(height)
        self.width = int(width)
        self.n_gaussians = int(n_gaussians)
        self.chunks = chunks

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_triples(
        cls,
        pixel: Tensor,
        gaussian: Tensor,
        weight: Tensor,
        height: int,
        width: int,
        n_gaussians: int,
        *,
        chunk_size: int = 32768,
        seed: int = 0,
        name: str = "",
        max_pixels: int | None = None,
    ) -> "ViewWeights":
        """Build from (pixel ``[M]``, gaussian ``[M]``, weight ``[M]``) triples, pixel = y * width + x.

        Covered pixels are split into ``ceil(P / chunk_size)`` balanced chunks by a permutation
        seeded with ``seed`` and ``name`` (one chunk, in pixel order, when ``P <= chunk_size``).
        ``max_pixels`` keeps only a seeded random sample of that many covered pixels (bounds memory
        on large scenes; None keeps all).
        """
        if not (pixel.shape == gaussian.shape == weight.shape and pixel.ndim == 1):
            raise ValueError(
                f"triples must be 1-D and equal-length, got {tuple(pixel.shape)}, {tuple(gaussian.shape)}, "
                f"{tuple(weight.shape)}"
            )
        device = weight.device
        pixel = pixel.to(torch.int64)
        gaussian = gaussian.to(torch.int64)
        keep = weight > 0
        if not bool(keep.all()):
            pixel, gaussian, weight = pixel[keep], gaussian[keep], weight[keep]
        hw = int(height) * int(width)
        seen = torch.zeros(hw, dtype=torch.bool, device=device)
        seen[pixel] = True
        covered = torch.nonzero(seen).flatten()
        P = int(covered.numel())
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
        if max_pixels is not None and P > max_pixels:
            covered = torch.sort(covered[torch.randperm(P, generator=g)[: int(max_pixels)].to(device)]).values
            P = int(covered.numel())
            inside = torch.zeros(hw, dtype=torch.bool, device=device)
            inside[covered] = True
            keep = inside[pixel]
            pixel, gaussian, weight = pixel[keep], gaussian[keep], weight[keep]
        n_chunks = max(1, math.ceil(P / max(1, chunk_size)))
        if n_chunks > 1:
            covered = covered[torch.randperm(P, generator=g).to(device)]
        size = math.ceil(P / n_chunks) if P else 0
        chunk_of = torch.full((hw,), -1, dtype=torch.int64, device=device)
        row_of = torch.full((hw,), -1, dtype=torch.int64, device=device)
        pos = torch.arange(P, device=device)
        if P:
            chunk_of[covered] = pos // size
            row_of[covered] = pos % size
        weight = weight.to(torch.float32)
        if n_chunks == 1:
            return cls(
                name, height, width, n_gaussians, [_Chunk.build(covered, row_of[pixel], gaussian, weight, n_gaussians)]
            )
        cid = chunk_of[pixel]
        order = torch.argsort(cid, stable=True)
        counts = torch.bincount(cid, minlength=n_chunks).tolist()
        chunks: list[_Chunk] = []
        start = 0
        for c in range(n_chunks):
            sel = order[start : start + counts[c]]
            start += counts[c]
            pix = covered[c * size : (c + 1) * size]
            chunks.append(_Chunk.build(pix, row_of[pixel[sel]], gaussian[sel], weight[sel], n_gaussians))
        return cls(name, height, width, n_gaussians, chunks)

    @classmethod
    def from_contributions(
        cls,
        contrib: Any,
        n_gaussians: int | None = None,
        *,
        chunk_size: int = 32768,
        seed: int = 0,
        name: str = "",
        max_pixels: int | None = None,
    ) -> "ViewWeights":
        """From a ``cos3d.render.Contributions`` (``pixel``, ``gaussian``, ``weight``, ``height``, ``width``)."""
        n = int(n_gaussians if n_gaussians is not None else contrib.num_gaussians)
        return cls.from_triples(
            contrib.pixel,
            contrib.gaussian,
            contrib.weight,
            contrib.height,
            contrib.width,
            n,
            chunk_size=chunk_size,
            seed=seed,
            name=name,
            max_pixels=max_pixels,
        )

    # ---- use -----------------------------------------------------------------------------------
    @property
    def nnz(self) -> int:
        return sum(int(c.W.values().numel()) for c in self.chunks)

    @property
    def nbytes(self) -> int:
        """Memory held by ``W`` and ``Wt`` (indices + values)."""
        total = 0
        for c in self.chunks:
            for m in (c.W, c.Wt):
                total += sum(t.numel() * t.element_size() for t in (m.crow_indices(), m.col_indices(), m.values()))
        return total

    def to(self, device: torch.device | str) -> "ViewWeights":
        chunks = [c.to(device) for c in self.chunks]
        return ViewWeights(self.name, self.height, self.width, self.n_gaussians, chunks)

    def render_chunk(self, i: int, features: Tensor, *, local: bool = False) -> Tensor:
        """Rendered features ``[p, D]`` of chunk ``i`` (pixels ``self.chunks[i].pixels``); differentiable.

        ``features`` is ``[N, D]`` (all Gaussians), or with ``local=True`` ``[n, D]``: the rows of the
        chunk's Gaussians ``self.chunks[i].cols`` only (what training uses: it normalises and
        back-propagates through the visible Gaussians alone).
        """
        c = self.chunks[i]
        return sparse_product(c.W, c.Wt, features if local else features[c.cols])

    def render(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Full-view render of ``features`` ``[N, D]``: ``(F [H*W, D], alpha [H*W])``, zeros where uncovered."""
        if features.shape[0] != self.n_gaussians:
            raise ValueError(f"features must be [{self.n_gaussians}, D], got {tuple(features.shape)}")
        hw = self.height * self.width
        out = features.new_zeros(hw, features.shape[1])
        alpha = features.new_zeros(hw)
        rendered = [self.render_chunk(i, features) for i in range(len(self.chunks))]
        out = out.index_put((torch.cat([c.pixels for c in self.chunks]),), torch.cat(rendered))
        for c in self.chunks:
            alpha[c.pixels] = c.alpha.to(alpha.dtype)
        return out, alpha

    # ---- disk cache ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "name": self.name,
            "height": self.height,
            "width": self.width,
            "n_gaussians": self.n_gaussians,
            "chunks": [
                {
                    "pixels": c.pixels.cpu(),
                    "cols": c.cols.cpu(),
                    "crow": c.W.crow_indices().cpu(),
                    "col": c.W.col_indices().cpu(),
                    "val": c.W.values().cpu(),
                }
                for c in self.chunks
            ],
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], device: torch.device | str = "cpu") -> "ViewWeights":
        chunks = []
        n = int(state["n_gaussians"])
        for c in state["chunks"]:
            crow, col, val = c["crow"].to(device), c["col"].to(device), c["val"].to(device)
            p = int(crow.numel() - 1)
            rows = torch.repeat_interleave(torch.arange(p, device=device), (crow[1:] - crow[:-1]).to(torch.int64))
            gaussians = c["cols"].to(device)[col.to(torch.int64)]
            chunks.append(_Chunk.build(c["pixels"].to(device), rows, gaussians, val, n))
        return cls(str(state["name"]), int(state["height"]), int(state["width"]), n, chunks)
