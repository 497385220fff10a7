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
makes the same decisions (up to float rounding of a cosine exactly at a threshold, or of a region mean
exactly at 0.5), at O(ball) per seed:

- :class:`InstanceIndex` (built once per field, query-independent) gives a seed the few Gaussians that
  can lie within its loosest ball — exactly, via the triangle inequality on the sphere (members of a
  cluster sorted by their angle β to the centroid; a seed at angle α reaches only ``|β − α| ≤ arccos t₀``,
  one contiguous range per cluster);
- a Gaussian's loosest ball, with each entry's threshold level (the tightest of the four thresholds it
  passes), depends only on the field and d̄, so it is computed the first time the Gaussian is a seed and
  kept on the index (:class:`_BallGraph`): later queries on the level only gather it;
- seeds are taken in batches in the order step 3 picks them (sorted by ``−r``, then id; a seed already
  absorbed by an accepted region is skipped, as in the loop). A batch is decided in waves: a seed whose
  ball shares no Gaussian with an earlier undecided seed of the batch cannot be affected by it (nor
  absorbed by it), so all such seeds are decided at once, vectorised, from the current processed set;
  once the waves get small (chains of overlapping balls) the rest of the batch goes one seed at a time;
- a seed's region sums at all four thresholds are a 4-bin histogram of its still-unprocessed entries; a
  ball whose Gaussians all have ``r ≥ 0.5`` is accepted at the loosest threshold without summing (any
  part of it has mean ``r ≥ 0.5``).
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
_MIN_WAVE = 8
"""refine_fast: a wave deciding fewer seeds than this ends the batch's wave phase (one seed at a time after)."""


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


def _balls_direct(index: InstanceIndex, F: np.ndarray, seeds: np.ndarray, ts: np.ndarray):
    """Loosest-ball entries of ``seeds``: ``(row [P], gaussian [P], level [P])`` grouped by row in order;
    ``level`` = the tightest of the thresholds ``ts`` the cosine passes (0..len(ts)-1)."""
    Fs = F[seeds]
    pi, pg = index.candidates(Fs, float(ts[0]))
    cos = np.einsum("ij,ij->i", F[pg], Fs[pi])
    hit = cos > ts[0]
    pi, pg, cos = pi[hit], pg[hit], cos[hit]
    lev = (cos[:, None] > ts[None, :]).sum(1).astype(np.int8) - 1
    return pi, pg, lev


class _BallGraph:
    """Loosest balls of Gaussians for one set of thresholds (query-independent), computed on first need and
    kept: a Gaussian's ball (ids and threshold levels) is computed once per level, whatever query seeds it."""

    def __init__(self, index: InstanceIndex, F: np.ndarray, ts: np.ndarray) -> None:
        n = F.shape[0]
        self.index, self.F, self.ts = index, F, ts
        self.start = np.zeros(n, np.int64)
        self.count = np.full(n, -1, np.int64)  # -1: not computed yet
        self.nbr = np.zeros(1024, np.int32)
        self.lev = np.zeros(1024, np.int8)
        self.size = 0

    def _add(self, seeds: np.ndarray) -> None:
        pi, pg, lev = _balls_direct(self.index, self.F, seeds, self.ts)
        m = len(pg)
        if self.size + m > len(self.nbr):
            cap = max(2 * len(self.nbr), self.size + m)
            self.nbr = np.resize(self.nbr, cap)
            self.lev = np.resize(self.lev, cap)
        self.nbr[self.size : self.size + m] = pg
        self.lev[self.size : self.size + m] = lev
        cnt = np.bincount(pi, minlength=len(seeds))
        self.start[seeds] = self.size + np.concatenate([[0], np.cumsum(cnt)[:-1]])
        self.count[seeds] = cnt
        self.size += m

    def balls(self, seeds: np.ndarray):
        """``(row [P], gaussian [P], level [P])`` of ``seeds``' balls, grouped by row in order."""
        todo = np.unique(seeds[self.count[seeds] < 0])
        if len(todo):
            self._add(todo)
        starts, counts = self.start[seeds], self.count[seeds]
        total = int(counts.sum())
        if total == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8)
        offs = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        pos = np.arange(total, dtype=np.int64) + offs
        return np.repeat(np.arange(len(seeds)), counts), self.nbr[pos].astype(np.int64), self.lev[pos]


def ball_graph(index: InstanceIndex, F: np.ndarray, dbar: float) -> _BallGraph:
    """The :class:`_BallGraph` cached on ``index`` for compactness ``dbar`` (filled lazily)."""
    ts = np.asarray(thresholds(dbar), np.float32)
    cache = index.__dict__.setdefault("_graphs", {})
    key = tuple(ts.tolist())
    if key not in cache:
        cache[key] = _BallGraph(index, F, ts)
    return cache[key]


def refine_fast(
    instance: Tensor,
    r: Tensor,
    opacity: Tensor,
    dbar: float,
    *,
    subset: Tensor | None = None,
    index: InstanceIndex | None = None,
    unit_instance: np.ndarray | Tensor | None = None,
    max_batch: int = 256,
    pair_budget: int = 1_000_000,
) -> RefineResult:
    """The same selection as :func:`refine_reference`, computed over batches of seeds.

    Args:
        instance, r, opacity, dbar, subset: as :func:`refine_reference`.
        index: a prebuilt :class:`InstanceIndex` of ``instance`` (built here when None; the engine
            caches one per level). Seeds' loosest balls are kept on it per ``dbar`` (:func:`ball_graph`):
            a Gaussian's ball is computed the first time it is a seed, later queries only gather it.
        unit_instance: ``instance`` already as float32 unit rows (numpy or CPU tensor; saves a copy).
        max_batch: the largest seed batch.
        pair_budget: batches are sized so that about this many (seed, ball entry) pairs are held at once.

    A batch takes the next unprocessed candidates in visiting order with their ball entries (each with
    its threshold level: the tightest of the four thresholds it passes). The batch is then decided in
    waves: a seed is decided as soon as no earlier undecided seed of the batch shares a ball entry with
    it (only such seeds can change what its ball holds, or absorb it), so every wave is decided at once
    from the current processed set — exactly the decisions of the one-seed-at-a-time loop. A seed's
    region sums at the four thresholds are a 4-bin histogram of its still-unprocessed entries.
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
    res = RefineResult(selected=torch.zeros(0, dtype=torch.long))
    allowed = np.ones(n, bool) if subset is None else subset.detach().cpu().numpy().astype(bool)
    cand = np.nonzero(allowed & (rn > R_MIN) & (o > OPACITY_MIN))[0]
    if len(cand) == 0:
        return res
    if index is None:
        index = InstanceIndex(torch.from_numpy(F))
    graph = ball_graph(index, F, dbar)
    processed = ~allowed
    # the order step 3 visits seeds in: r descending, then id ascending (cand is id-sorted; stable sort)
    cand = cand[np.argsort(-rn[cand], kind="stable")]
    orr = o * rn
    minrow = np.full(n, np.iinfo(np.int64).max, np.int64)
    # accepted regions, per wave or seed: seed visiting rank, seed id, level, Gaussians, their region's rank
    reg_seed: list[np.ndarray] = []
    reg_ent: list[np.ndarray] = []
    reg_lab: list[np.ndarray] = []
    reg_lev: list[np.ndarray] = []
    reg_sid: list[np.ndarray] = []
    chunk = 64
    pos = 0
    base = 0  # visiting rank of the batch's first seed (for ordering regions)
    while pos < len(cand):
        window = cand[pos : pos + 4 * chunk]
        unp = np.nonzero(~processed[window])[0]
        if len(unp) == 0:
            pos += len(window)
            continue
        take = unp[:chunk]
        sl = window[take]  # this batch's seeds, in visiting order
        pos += int(take[-1]) + 1
        c = len(sl)
        rows, gid, lev = graph.balls(sl)
        keep = ~processed[gid]
        rows, gid, lev = rows[keep], gid[keep], lev[keep]
        npairs = len(rows)
        w_or, w_o = orr[gid], o[gid]
        key = rows * nt + lev
        undecided = np.ones(c, bool)
        absorbed = 0
        eu = np.ones(len(rows), bool)  # entries of undecided rows
        while True:
            ru, gu = rows[eu], gid[eu]
            np.minimum.at(minrow, gu, ru)
            blocked = minrow[gu] != ru
            minrow[gu] = np.iinfo(np.int64).max
            ready = undecided.copy()
            ready[ru[blocked]] = False
            rk = np.nonzero(ready)[0]
            if len(rk) < _MIN_WAVE:  # a chain: finish the batch one seed at a time
                break
            # decide every ready seed from the current processed set
            alive_seed = ~processed[sl[rk]]
            absorbed += len(rk) - int(alive_seed.sum())
            rk = rk[alive_seed]
            ent = ready[rows] & eu
            al = ent & ~processed[gid]
            if len(rk):
                ha = np.bincount(key[al], weights=w_or[al], minlength=c * nt).reshape(c, nt)[rk]
                hb = np.bincount(key[al], weights=w_o[al], minlength=c * nt).reshape(c, nt)[rk]
                ha = np.cumsum(ha[:, ::-1], 1)[:, ::-1]  # sums at threshold level >= l
                hb = np.cumsum(hb[:, ::-1], 1)[:, ::-1]
                ok = ha >= ACCEPT * hb
                acc = ok.any(1)
                ti = np.where(acc, ok.argmax(1), nt)
                tirow = np.full(c, nt, np.int64)
                tirow[rk] = ti
                inreg = al & (lev >= tirow[rows])
                processed[gid[inreg]] = True
                processed[sl[rk[~acc]]] = True  # rejected: only the seed
                res.n_seeds += len(rk)
                reg_seed.append(base + rk[acc])
                reg_sid.append(sl[rk[acc]])
                reg_lev.append(ti[acc])
                reg_ent.append(gid[inreg])
                reg_lab.append(base + rows[inreg])
            undecided &= ~ready
            eu &= ~ent
            if not undecided.any():
                break
        rest = np.nonzero(undecided)[0]
        if len(rest):
            rptr = np.searchsorted(rows, np.arange(c + 1)).tolist()
            pure = (np.bincount(rows, weights=rn[gid] < ACCEPT, minlength=c) == 0).tolist()
            W = np.stack([w_or, w_o])
            M = (lev[:, None] >= np.arange(nt)[None, :]).astype(np.float64)
            for k in rest.tolist():
                sk = sl[k]
                if processed[sk]:
                    absorbed += 1
                    continue
                res.n_seeds += 1
                r0, r1 = rptr[k], rptr[k + 1]
                g = gid[r0:r1]
                al = ~processed[g]
                if pure[k]:
                    ti = 0
                    loc = g[al]
                else:
                    h = (W[:, r0:r1] * al) @ M[r0:r1]  # region sums at threshold level >= l
                    ok = h[0] >= ACCEPT * h[1]
                    ti = int(ok.argmax())
                    if not ok[ti]:
                        processed[sk] = True
                        continue
                    loc = g[al & (lev[r0:r1] >= ti)]
                processed[loc] = True
                reg_seed.append(np.array([base + k]))
                reg_sid.append(np.array([sk]))
                reg_lev.append(np.array([ti]))
                reg_ent.append(loc)
                reg_lab.append(np.full(len(loc), base + k))
        base += c
        chunk = min(max_batch, 2 * c) if absorbed <= c // 2 else max(8, c // 2)
        chunk = max(8, min(chunk, int(pair_budget / max(1.0, npairs / c))))
    if reg_seed:
        seeds_rank = np.concatenate(reg_seed)
        seeds_lev = np.concatenate(reg_lev)
        ent = np.concatenate(reg_ent)
        lab = np.concatenate(reg_lab)
        o_s = np.argsort(seeds_rank, kind="stable")
        seeds_rank, seeds_lev = seeds_rank[o_s], seeds_lev[o_s]
        o_e = np.lexsort((ent, lab))  # by region (visiting rank), then Gaussian id
        ent, lab = ent[o_e], lab[o_e]
        bounds = np.searchsorted(lab, seeds_rank, "left")
        counts = np.diff(np.append(bounds, len(lab)))
        seed_ids = np.concatenate(reg_sid)[o_s]
        tens = torch.from_numpy(ent.astype(np.int64))
        res.regions = list(torch.split(tens, counts.tolist()))
        res.seeds = seed_ids.tolist()
        tl = thresholds(dbar)
        res.region_thresholds = [tl[i] for i in seeds_lev.tolist()]
        sel = np.zeros(n, bool)
        sel[ent] = True
        res.selected = torch.from_numpy(np.nonzero(sel)[0].astype(np.int64))
    return res
