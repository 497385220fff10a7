"""LERF relevancy of per-Gaussian language features to prompt embeddings.

For a positive prompt embedding ``p`` and canonical negatives ``n_k`` (:data:`CANONICAL_NEGATIVES`,
embedded by the same embedder), the raw relevancy of a Gaussian with language feature ``L`` is

    R = min_k softmax(τ·[L·p, L·n_k])[0]        (τ = 10)

A two-way softmax is a sigmoid of the difference, so ``R = sigmoid(τ·(L·p − max_k L·n_k))``; that is
how it is computed here (exactly the same value). ``max_k L·n_k`` does not depend on the prompt:
an engine computes it once per level (:func:`negative_max`), so a query reads the field once per prompt.

COS3D then normalises per query: ``r = (R − min R) / (max R − min R)`` and ``r ← clip(2r − 1, 0, 1)``
(:func:`normalize_relevancy`). The normalised ``r`` drives the refinement; it always selects
something, so no-target decisions use the raw ``R`` (:mod:`cos3d.query.notarget`).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
from torch import Tensor

CANONICAL_NEGATIVES: tuple[str, ...] = ("object", "things", "stuff", "texture")
"""LERF's canonical negative phrases."""

TEMPERATURE = 10.0


class TextEmbedder(Protocol):
    """What :class:`PromptCache` needs of an embedder (:class:`cos3d.vision.base.Embedder` has it)."""

    model_id: str
    dim: int

    def embed_text(self, texts: list[str]) -> Tensor: ...


class PromptCache:
    """Text → unit embedding cache, keyed by ``(embedder.model_id, text)``.

    Re-embedding the canonical negatives and repeated prompts is the main fixed cost of a text query
    with a real CLIP model; one cache per engine removes it.
    """

    def __init__(self) -> None:
        self._store: dict[tuple[str, str], Tensor] = {}

    def __len__(self) -> int:
        return len(self._store)

    def embed(self, embedder: TextEmbedder, texts: Sequence[str]) -> Tensor:
        """``[T, D]`` float32 unit rows for ``texts``, embedding only the ones not cached yet."""
        key_id = embedder.model_id
        missing = [t for t in dict.fromkeys(texts) if (key_id, t) not in self._store]
        if missing:
            emb = torch.as_tensor(embedder.embed_text(list(missing))).detach().float().cpu()
            assert emb.shape[0] == len(missing), (emb.shape, len(missing))
            emb = torch.nn.functional.normalize(emb, dim=-1)
            for t, e in zip(missing, emb):
                self._store[(key_id, t)] = e
        if not texts:
            return torch.zeros(0, int(embedder.dim))
        return torch.stack([self._store[(key_id, t)] for t in texts])


CHUNK = 16_384
"""Rows of language features converted to float32 at a time (≈ 24 MiB at D = 384: stays in cache)."""
NATIVE_ROWS = 4
"""Up to this many prompts, a half-precision field is multiplied in its own dtype (fp32 accumulation,
no conversion pass): at 1M Gaussians × 384 that is one ~0.1 s read of the field per prompt."""


def _similarities(language: Tensor, Q: Tensor, *, native: bool = True, chunk: int = CHUNK) -> Tensor:
    """``[T, N]`` float32 dot products of ``Q [T, D]`` with every row of ``language [N, D]``; ``native``
    allows the half-precision product for a few rows (:data:`NATIVE_ROWS`), else float32 throughout."""
    if native and language.dtype in (torch.float16, torch.bfloat16) and Q.shape[0] <= NATIVE_ROWS:
        q = Q.to(language.device, language.dtype)
        return torch.stack([torch.mv(language, row).float() for row in q]) if len(q) else Q.new_zeros(0, len(language))
    out = torch.empty(Q.shape[0], language.shape[0], dtype=torch.float32, device=language.device)
    Q = Q.to(language.device, torch.float32)
    for s in range(0, language.shape[0], chunk):
        out[:, s : s + chunk] = Q @ language[s : s + chunk].float().T
    return out


def negative_max(language: Tensor, negatives: Tensor) -> Tensor:
    """``[N]`` float32 ``max_k L·n_k``: the prompt-independent half of :func:`raw_relevancy` (an engine
    computes it once per level and saves it with the query state). Always in float32: it is paid once."""
    if negatives.dim() != 2 or negatives.shape[0] < 1 or negatives.shape[1] != language.shape[1]:
        raise ValueError(f"negatives must be [K>=1, D={language.shape[1]}], got {tuple(negatives.shape)}")
    return _similarities(language, negatives, native=False).amax(0)


def raw_relevancy(
    language: Tensor,
    positives: Tensor,
    negatives: Tensor,
    *,
    temperature: float = TEMPERATURE,
    neg_max: Tensor | None = None,
    return_cosines: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Raw LERF relevancy ``R`` of every Gaussian to every positive.

    Args:
        language: ``[N, D]`` per-Gaussian language features (unit rows; fp16 is fine).
        positives: ``[T, D]`` or ``[D]`` prompt embeddings (unit rows).
        negatives: ``[K, D]`` canonical negative embeddings (unit rows), K ≥ 1.
        neg_max: optional ``[N]`` :func:`negative_max` of these negatives, computed once and reused.

    Returns:
        ``[T, N]`` float32 in (0, 1) (``[N]`` when ``positives`` is 1-D); with ``return_cosines`` also the
        cosines ``L·p`` it was computed from, same shape (the presence test reads them: no second pass).
    """
    single = positives.dim() == 1
    P = positives[None] if single else positives
    if language.dim() != 2 or P.dim() != 2 or language.shape[1] != P.shape[1]:
        raise ValueError(f"language [N, D] and positives [T, D] must share D, got {tuple(language.shape)} and {tuple(P.shape)}")
    if negatives.dim() != 2 or negatives.shape[0] < 1 or negatives.shape[1] != P.shape[1]:
        raise ValueError(f"negatives must be [K>=1, D={P.shape[1]}], got {tuple(negatives.shape)}")
    if neg_max is None:
        neg_max = negative_max(language, negatives)
    elif neg_max.shape != (language.shape[0],):
        raise ValueError(f"neg_max must be [N={language.shape[0]}], got {tuple(neg_max.shape)}")
    sims = _similarities(language, P)
    out = torch.sigmoid(temperature * (sims - neg_max.to(sims.device)))
    if return_cosines:
        return (out[0], sims[0]) if single else (out, sims)
    return out[0] if single else out


def normalize_relevancy(R: Tensor, subset: Tensor | None = None) -> Tensor:
    """COS3D's per-query normalisation: min-max over Gaussians, then ``clip(2r − 1, 0, 1)``.

    Args:
        R: ``[..., N]`` raw relevancy.
        subset: optional bool ``[N]``; min/max are taken over these Gaussians only and the others get 0
            (hierarchical queries normalise within the parent).

    Returns:
        ``[..., N]`` float32 in [0, 1].
    """
    if subset is not None:
        big = torch.finfo(R.dtype).max
        lo = torch.where(subset, R, torch.full_like(R, big)).amin(-1, keepdim=True)
        hi = torch.where(subset, R, torch.full_like(R, -big)).amax(-1, keepdim=True)
    else:
        lo = R.amin(-1, keepdim=True)
        hi = R.amax(-1, keepdim=True)
    r = (R - lo) / (hi - lo).clamp_min(1e-12)
    r = (2.0 * r - 1.0).clamp(0.0, 1.0)
    if subset is not None:
        r = torch.where(subset, r, torch.zeros_like(r))
    return r
