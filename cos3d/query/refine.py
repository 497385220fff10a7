"""Adaptive Lang2Ins refinement: from per-Gaussian relevancy to a selection, grown in instance space.

The greedy loop (COS3D; DESIGN.md "Query"), with the exact semantics both implementations follow:

1. ``allowed`` = every Gaussian, or the ``subset`` given (hierarchical queries); Gaussians outside it
   count as processed from the start and never enter a region.
2. Candidates = unprocessed Gaussians with ``r > 0.5`` and ``opacity > 0.1``. None left → stop.
3. Seed = the candidate with the highest ``r``; ties go to the lowest Gaussian id.
4. For ``t`` in :func:`thresholds` (``1 − 0.4d̄, 1 − 0.3d̄, 1 − 0.2d̄, 1 − 0.1d̄``, loosest first, each
   capped at ``1 − 1e-5`` so the seed itself is always inside): region
   ``S_t = {unprocessed j : cos(f_seed, f_j) > t}``. The first ``S_t`` whose opacity-weighted mean
   relevancy ``Σ o_j r_j / Σ o_j ≥ 0.5`` is **accepted**: it joins the answer and all of ``S_t`` is
   marked processed.
5. If no threshold passes, the region is **rejected** and only the seed is marked processed (a rejected
   region is not consumed: its other Gaussians stay available to later seeds). Go to 2.

The answer is the union of accepted regions (several objects for a multi-instance prompt).

:func:`refine_reference` is a literal, one-seed-at-a-time implementation over all N Gaussians (kept for
tests and benchmarks; O(seeds × N)). :func:`refine_fast` visits the same seeds in the same order and
makes the same decisions (up to float rounding of a cosine exactly at a threshold), at O(ball) per seed:

- seeds are taken in batches (≤ 64) in the order step 3 picks them (sorted by ``−r``, then id; a seed
  already absorbed by an accepted region is skipped, as in the loop);
- :class:`InstanceIndex` (built once per field, query-independent) gives each seed the few Gaussians that
  can lie within its loosest ball — exactly, via the triangle inequality on the sphere (members of a
  cluster sorted by their angle β to the centroid; a seed at angle α reaches only ``|β − α| ≤ arccos t₀``,
  one contiguous range per cluster);
- the batch's cosines are one vectorised product; each entry keeps its threshold level (the tightest of
  the four thresholds it passes), so a seed's region sums at all four thresholds are a 4-bin histogram
  of its still-unprocessed entries; a ball whose Gaussians all have ``r ≥ 0.5`` is accepted at the
  loosest threshold without summing (any part of it has mean ``r ≥ 0.5``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

THRESHOLD_STEPS: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)
"""``t = 1 − step·d̄``, loosest first."""
R_MIN = 0.5
OPACITY_MIN = 0.1
ACCEPT = 0.5
_T_CAP = 1.0 - 1e-5


def thresholds(dbar: float, steps: tuple[float, ...] = THRESHOLD_STEPS) -> list[float]:
    """The adaptive cosine thresholds for compactness ``dbar``, loosest first (capped below 1)."""
    return [min(1.0 - s * float(dbar), _T_CAP) for s in steps]


@dataclass
class RefineResult:
    selected: Tensor
    """LongTensor ``[S]`` sorted Gaussian ids: the union of accepted regions."""
    regions: list[Tensor] = field(default_factory=list)
    """Accepted regions in acceptance order, each a sorted LongTensor of Gaussian ids."""
    seeds: list[int] = field(default_factory=list)
    """The seed of each accepted region."""
    region_thresholds: list[float] = field(default_factory=list)
    """The cosine threshold each accepted region was grown with."""
    n_seeds: int = 0
    """How many seeds were tried (accepted + rejected)."""

    def mask(self, n: int) -> Tensor:
        m = torch.zeros(n, dtype=torch.bool)
        m[self.selected] = True
        return m


def _check(instance: Tensor, r: Tensor, opacity: Tensor) -> None:
    n = instance.shape[0]
    if instance.dim() != 2 or r.shape != (n,) or opacity.shape != (n,):
        raise ValueError(
            f"expected instance [N, F], r [N], opacity [N]; got {tuple(instance.shape)}, {tuple(r.shape)}, {tuple(opacity.shape)}"
        )


def _unit(x: Tensor) -> Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def refine_reference(
    instance: Tensor,
    r: Tensor,
    opacity: Tensor,
    dbar: float,
    *,
    subset: Tensor | None = None,
) -> RefineResult:
    """The literal greedy loop (module docstring), one seed at a time over all Gaussians.

    Args:
        instance: ``[N, F]`` instance features (normalised here).
        r: ``[N]`` normalised relevancy in [0, 1].
        opacity: ``[N]`` activated opacities.
        dbar: the field's compactness ``d̄``.
        subset: optional bool ``[N]`` of allowed Gaussians.
    """
    _check(instance, r, opacity)
    F = _unit(instance)
    r = r.float()
    o = opacity.float()
    n = F.shape[0]
    ts = thresholds(dbar)
    processed = torch.zeros(n, dtype=torch.bool) if subset is None else ~subset.bool().clone()
    selected = torch.zeros(n, dtype=torch.bool)
    ids = torch.arange(n)
    res = RefineResult(selected=torch.zeros(0, dtype=torch.long))
    while True:
        cand = ~processed & (r > R_MIN) & (o > OPACITY_MIN)
        if not bool(cand.any()):
            break
        rmax = r[cand].max()
        seed = int(ids[cand & (r == rmax)].min())
        res.n_seeds += 1
        cos = F @ F[seed]
        for t in ts:
            S = ~processed & (cos > t)
            w = o[S]
            if float((w * r[S]).sum()) >= ACCEPT * float(w.sum()):
                selected |= S
                processed |= S
                res.regions.append(ids[S])
                res.seeds.append(seed)
                res.region_thresholds.append(t)
                break
        else:
            processed[seed] = True
    res.selected = ids[selected]
    return res


class InstanceIndex:
    """Query-independent index of unit instance features for exact ball queries (``cos > t``).

    ``k`` centroids from spherical k-means on a subsample; every Gaussian is assigned to its nearest
    centroid and stores its angle ``β`` to it; members are sorted by (cluster, ``β``). For a seed at angle
    ``α`` to a centroid, a member can only be within angle ``θ = arccos(t)`` of the seed when
    ``|β − α| ≤ θ`` (triangle inequality on the sphere), so each cluster contributes one contiguous range
    of its sorted members (:meth:`candidates`). Exact: no neighbour is ever missed.
    """

    def __init__(self, instance: Tensor, *, k: int | None = None, iters: int = 8, sample: int = 20000,
                 seed: int = 0) -> None:
        F = _unit(instance).detach().cpu()
        n = F.shape[0]
        self.n = n
        k = int(k or max(1, min(512, n // 48)))
        g = torch.Generator().manual_seed(seed)
        S = F[torch.randperm(n, generator=g)[: min(n, max(sample, 4 * k))]] if n else F
        C = S[torch.randperm(len(S), generator=g)[: min(k, len(S))]].clone() if len(S) else torch.zeros(0, F.shape[1])
        for _ in range(iters):  # spherical k-means on the subsample
            a = (S @ C.T).argmax(1)
            sums = torch.zeros_like(C).index_add_(0, a, S)
            ok = sums.norm(dim=1) > 1e-8
            C[ok] = _unit(sums[ok])
        assign = self._assign(F, C)
        beta = torch.arccos((F.double() * C.double()[assign]).sum(1).clamp(-1, 1)).numpy()
        self.centroids = C.numpy().astype(np.float64)
        self.assign = assign.numpy()
        self.beta = beta
        self.radius = np.zeros(len(C))  # largest β per cluster
        np.maximum.at(self.radius, self.assign, beta)
        key = self.assign * 4.0 + beta  # β ∈ [0, π] < 4: keys of one cluster stay in [4k, 4k + π]
        self.order = np.argsort(key, kind="stable")
        self.keys = key[self.order]

    @staticmethod
    def _assign(F: Tensor, C: Tensor, chunk: int = 65536) -> Tensor:
        out = torch.empty(F.shape[0], dtype=torch.long)
        for s in range(0, F.shape[0], chunk):
            out[s : s + chunk] = (F[s : s + chunk] @ C.T).argmax(1)
        return out

    def candidates(self, seeds_F: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        """All (seed, Gaussian) pairs that may have ``cos > t``: ``(seed_index [P], gaussian_id [P])``,
        grouped by seed in order."""
        theta = math.acos(max(-1.0, min(1.0, t))) + 1e-6
        assert theta < 0.85, "thresholds this loose need a different key spacing"
        D = np.asarray(seeds_F, np.float64) @ self.centroids.T  # [B, K] cosines to the centroids
        # clusters that can reach the seed at all: angle(seed, centroid) < θ + the cluster's largest β
        bi, ki = np.nonzero(D > np.cos(np.minimum(np.pi, theta + self.radius))[None, :])
        a = np.arccos(np.clip(D[bi, ki], -1, 1))
        lo = np.searchsorted(self.keys, ki * 4.0 + a - theta, "left")
        hi = np.searchsorted(self.keys, ki * 4.0 + a + theta, "right")
        counts = hi - lo
        if counts.sum() == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        pos = _segments(np.stack([lo, hi], 1).ravel(), np.arange(0, 2 * len(lo), 2))
        return np.repeat(bi, counts), self.order[pos]


def _segments(ptr: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Concatenated ranges ``[ptr[i], ptr[i+1])`` for every ``i`` in ``idx`` (vectorised)."""
    starts = ptr[idx]
    counts = ptr[idx + 1] - starts
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offs = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    return np.arange(total, dtype=np.int64) + offs


def refine_fast(
    instance: Tensor,
    r: Tensor,
    opacity: Tensor,
    dbar: float,
    *,
    subset: Tensor | None = None,
    index: InstanceIndex | None = None,
    unit_instance: np.ndarray | Tensor | None = None,
    max_batch: int = 64,
    pair_budget: int = 1_000_000,
) -> RefineResult:
    """The same selection as :func:`refine_reference`, computed over batches of seeds.

    Args:
        instance, r, opacity, dbar, subset: as :func:`refine_reference`.
        index: a prebuilt :class:`InstanceIndex` of ``instance`` (built here when None; the engine
            caches one per level).
        unit_instance: ``instance`` already as float32 unit rows (numpy or CPU tensor; saves a copy).
        max_batch: the largest seed batch.
        pair_budget: batches are sized so that about this many (seed, candidate) cosines are computed at once.

    A batch takes the next seeds in visiting order. The index gives, per seed, the few Gaussians that can
    lie in its loosest ball; their cosines are computed at once and the ball entries kept by seed, each
    with its threshold level (the tightest of the four thresholds it passes). The seeds are then visited
    in order exactly as the literal loop does: an absorbed seed is skipped; a seed's region sums at the
    four thresholds are a 4-bin histogram of its still-unprocessed entries; an accepted region marks its
    entries processed. The work per seed is proportional to its ball, not to N.
    """
    _check(instance, r, opacity)
    if unit_instance is None:
        F = _unit(instance).cpu().numpy()
    else:
        F = unit_instance.cpu().numpy() if isinstance(unit_instance, Tensor) else unit_instance
    F = np.ascontiguousarray(F, dtype=np.float32)
    rn = r.detach().float().cpu().numpy().astype(np.float64)
    o = opacity.detach().float().cpu().numpy().astype(np.float64)
    n = F.shape[0]
    ts = np.asarray(thresholds(dbar), np.float32)
    nt = len(ts)
    t0 = float(ts[0])
    if index is None:
        index = InstanceIndex(torch.from_numpy(F))
    allowed = np.ones(n, bool) if subset is None else subset.detach().cpu().numpy().astype(bool)
    processed = ~allowed
    res = RefineResult(selected=torch.zeros(0, dtype=torch.long))
    cand = np.nonzero(allowed & (rn > R_MIN) & (o > OPACITY_MIN))[0]
    if len(cand) == 0:
        return res
    # the order step 3 visits seeds in: r descending, then id ascending (cand is id-sorted; stable sort)
    cand = cand[np.argsort(-rn[cand], kind="stable")]
    orr = o * rn
    selected = np.zeros(n, bool)
    regions: list[np.ndarray] = []
    posmap = np.full(n, -1, np.int64)
    flag = np.zeros(n, bool)
    pos = 0  # cursor in cand: every candidate before it has been visited or absorbed
    chunk = 32
    while pos < len(cand):
        window = cand[pos : pos + 4 * chunk]
        unp = np.nonzero(~processed[window])[0]
        if len(unp) == 0:
            cand = cand[pos:][~processed[cand[pos:]]]  # drop absorbed candidates in one pass
            pos = 0
            continue
        take = unp[:chunk]
        sl = window[take]  # this batch's seeds, in visiting order
        pos += int(take[-1]) + 1
        c = len(sl)
        Fs = F[sl]
        pi, pg = index.candidates(Fs, t0)
        keep = ~processed[pg]
        pi, pg = pi[keep], pg[keep]
        cos = np.einsum("ij,ij->i", F[pg], Fs[pi])
        hit = cos > t0
        rows, gid, cos = pi[hit], pg[hit], cos[hit]  # grouped by seed (CSR order)
        lev = (cos[:, None] > ts[None, :]).sum(1) - 1  # 0..3: the tightest threshold passed
        rptr = np.searchsorted(rows, np.arange(c + 1))
        flag[gid] = True  # local column ids without sorting the entries
        cols = np.nonzero(flag)[0]
        flag[cols] = False
        posmap[cols] = np.arange(len(cols))
        jj = posmap[gid]
        seed_local = posmap[sl]
        posmap[cols] = -1
        w_or, w_o = orr[gid], o[gid]  # per entry
        # a ball whose every Gaussian has r >= 0.5 passes at the loosest threshold whatever is processed
        pure = np.bincount(rows, weights=rn[gid] < ACCEPT, minlength=c) == 0
        alive = np.ones(len(cols), bool)
        absorbed = 0
        for k in range(c):
            sk = seed_local[k]
            if not alive[sk]:
                absorbed += 1
                continue
            res.n_seeds += 1
            r0, r1 = rptr[k], rptr[k + 1]
            jk = jj[r0:r1]
            al = alive[jk]
            if pure[k]:
                loc = jk[al]
                alive[loc] = False
                regions.append(cols[loc])
                res.seeds.append(int(sl[k]))
                res.region_thresholds.append(float(ts[0]))
                continue
            lk = lev[r0:r1]
            # sums over the seed's unprocessed ball entries per threshold level (4 values), loosest first
            ha = np.bincount(lk, weights=w_or[r0:r1] * al, minlength=nt).tolist()
            hb = np.bincount(lk, weights=w_o[r0:r1] * al, minlength=nt).tolist()
            ti = -1
            for lv_ in range(nt):
                if sum(ha[lv_:]) >= ACCEPT * sum(hb[lv_:]):
                    ti = lv_
                    break
            if ti >= 0:
                loc = jk[(lk >= ti) & al]
                alive[loc] = False
                regions.append(cols[loc])
                res.seeds.append(int(sl[k]))
                res.region_thresholds.append(float(ts[ti]))
            else:
                alive[sk] = False
        processed[cols[~alive]] = True
        chunk = min(max_batch, 2 * c) if absorbed <= c // 2 else max(8, c // 2)
        chunk = max(8, min(chunk, int(pair_budget / max(1.0, len(keep) / c))))
    res.regions = [torch.from_numpy(np.sort(x).astype(np.int64)) for x in regions]
    if regions:
        selected[np.concatenate(regions)] = True
    res.selected = torch.from_numpy(np.nonzero(selected)[0].astype(np.int64))
    return res
