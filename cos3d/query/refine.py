"""Adaptive Lang2Ins refinement: from per-Gaussian relevancy to a selection, grown in instance space.

The greedy loop (COS3D; docs/architecture.md "Query"), with the exact semantics both implementations follow:

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
  kept by the index (:class:`BallGraph`, :meth:`InstanceIndex.ball_graph`): later queries on the level
  only gather it;
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

from typing import Any

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

    The index also owns the :class:`BallGraph` of each threshold set it has served
    (:meth:`ball_graph`): the seeds' loosest balls, kept across queries.
    """

    def __init__(self, instance: Tensor, *, k: int | None = None, iters: int = 8, sample: int = 20000,
                 seed: int = 0) -> None:
        F = _unit(instance).detach().cpu()
        n = F.shape[0]
        self.n = n
        """Number of Gaussians indexed."""
        k = int(k or max(1, min(512, n // 48)))
        g = torch.Generator().manual_seed(seed)
        S = F[torch.randperm(n, generator=g)[: min(n, max(sample, 4 * k))]] if n else F
        C = S[torch.randperm(len(S), generator=g)[: min(k, len(S))]].clone() if len(S) else torch.zeros(0, F.shape[1])
        for _ in range(iters):  # spherical k-means on the subsample
            a = (S @ C.T).argmax(1)
            sums = torch.zeros_like(C).index_add_(0, a, S)
            ok = sums.norm(dim=1) > 1e-8
            C[ok] = _unit(sums[ok])
        assign = self._assign(F, C).numpy()
        beta = torch.arccos((F.double() * C.double()[assign]).sum(1).clamp(-1, 1)).numpy()
        self.centroids = C.numpy().astype(np.float64)
        """``[K, F]`` unit centroids."""
        self.radius = np.zeros(len(C))
        """``[K]`` largest β of each cluster."""
        np.maximum.at(self.radius, assign, beta)
        key = assign * 4.0 + beta  # β ∈ [0, π] < 4: keys of one cluster stay in [4k, 4k + π]
        self.order = np.argsort(key, kind="stable")
        """Gaussian ids sorted by (cluster, β)."""
        self.keys = key[self.order]
        """``cluster · 4 + β`` of :attr:`order`, ascending."""
        self.ball_graphs: dict[tuple[float, ...], BallGraph] = {}
        """The :class:`BallGraph` of each threshold set served so far (:meth:`ball_graph`)."""

    def state_dict(self) -> dict[str, Any]:
        """The index as tensors (what :meth:`from_state_dict` rebuilds it from; no ball graphs)."""
        return {
            "n": self.n,
            "centroids": torch.from_numpy(self.centroids),
            "radius": torch.from_numpy(self.radius),
            "order": torch.from_numpy(self.order),
            "keys": torch.from_numpy(self.keys),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "InstanceIndex":
        """An index saved by :meth:`state_dict` (e.g. in the run folder), without re-clustering."""
        index = cls.__new__(cls)
        index.n = int(state["n"])
        index.centroids = state["centroids"].numpy().astype(np.float64)
        index.radius = state["radius"].numpy().astype(np.float64)
        index.order = state["order"].numpy()
        index.keys = state["keys"].numpy().astype(np.float64)
        if not (len(index.order) == len(index.keys) == index.n and len(index.radius) == len(index.centroids)):
            raise ValueError("inconsistent InstanceIndex state")
        index.ball_graphs = {}
        return index

    @staticmethod
    def _assign(F: Tensor, C: Tensor, chunk: int = 65536) -> Tensor:
        out = torch.empty(F.shape[0], dtype=torch.long)
        for s in range(0, F.shape[0], chunk):
            out[s : s + chunk] = (F[s : s + chunk] @ C.T).argmax(1)
        return out

    def candidates(self, seed_features: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        """All (seed, Gaussian) pairs that may have ``cos > t``: ``(seed_index [P], gaussian_id [P])``,
        grouped by seed in order."""
        return self.pairs(*self.ranges(seed_features, t))

    def pairs(self, seed_row: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (seed, Gaussian) pairs of :meth:`ranges`' output (``hi - lo`` of them per range)."""
        counts = hi - lo
        if counts.sum() == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        pos = _concat_ranges(np.stack([lo, hi], 1).ravel(), np.arange(0, 2 * len(lo), 2))
        return np.repeat(seed_row, counts), self.order[pos]

    def ranges(self, seed_features: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(seed row, lo, hi): for each reachable (seed, cluster), the range of :attr:`order` to scan (cheap:
        no pair is made, so a caller can count the pairs before deciding to list them)."""
        theta = math.acos(max(-1.0, min(1.0, t))) + 1e-6
        cos_to_centroid = np.asarray(seed_features, np.float64) @ self.centroids.T  # [B, K]
        # clusters that can reach the seed at all: angle(seed, centroid) < θ + the cluster's largest β
        reach = cos_to_centroid > np.cos(np.minimum(np.pi, theta + self.radius))[None, :]
        seed_row, cluster = np.nonzero(reach)
        alpha = np.arccos(np.clip(cos_to_centroid[seed_row, cluster], -1, 1))
        # a cluster's keys lie in [4c, 4c + π]: clamping the range there keeps loose thresholds (θ ≥ 0.85,
        # i.e. d̄ ≥ 0.85) from reaching into a neighbouring cluster's keys, which would list members twice
        base = cluster * 4.0
        lo = np.searchsorted(self.keys, np.maximum(base + alpha - theta, base), "left")
        hi = np.searchsorted(self.keys, np.minimum(base + alpha + theta, base + np.pi), "right")
        return seed_row, lo, hi

    def ball_graph(self, unit_features: np.ndarray, dbar: float) -> BallGraph:
        """The :class:`BallGraph` for compactness ``dbar``'s thresholds (created empty on first use, then
        kept here and filled as seeds need balls).

        Args:
            unit_features: ``[N, F]`` float32 unit rows: the features this index was built from.
        """
        if unit_features.shape[0] != self.n:
            raise ValueError(f"the index holds {self.n} Gaussians but {unit_features.shape[0]} features were given")
        ts = np.asarray(thresholds(dbar), np.float32)
        key = tuple(ts.tolist())
        graph = self.ball_graphs.get(key)
        if graph is None:
            graph = self.ball_graphs[key] = BallGraph(self, unit_features, ts)
        return graph


def _concat_ranges(ptr: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Concatenated ranges ``[ptr[i], ptr[i+1])`` for every ``i`` in ``idx`` (vectorised)."""
    starts = ptr[idx]
    counts = ptr[idx + 1] - starts
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offs = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    return np.arange(total, dtype=np.int64) + offs


BRUTE_FORCE_RATIO = 0.1
"""Balls are found by one matmul of every feature against the seeds (no index) when the index would list
more than this fraction of all N × seeds pairs: gathering a candidate's feature costs about ten
multiply-adds of a matmul row. Large, loose balls (a 1M-Gaussian field's floor) go that way: 10× faster
there (docs/benchmarks.md, "Real-size scenes")."""
_BRUTE_CHUNK = 65536


def _loosest_balls(index: InstanceIndex, F: np.ndarray, seeds: np.ndarray, ts: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loosest-ball entries of ``seeds``: ``(row [P], gaussian [P], level [P])`` grouped by row in order;
    ``level`` = the tightest of the thresholds ``ts`` the cosine passes (0..len(ts)-1)."""
    seed_features = F[seeds]
    t0 = float(ts[0])
    ranges = index.ranges(seed_features, t0)
    if int((ranges[2] - ranges[1]).sum()) > BRUTE_FORCE_RATIO * F.shape[0] * len(seeds):
        row, gaussian, cos = _balls_by_matmul(F, seed_features, t0)
    else:
        row, gaussian = index.pairs(*ranges)
        cos = np.einsum("ij,ij->i", F[gaussian], seed_features[row])
        hit = cos > t0
        row, gaussian, cos = row[hit], gaussian[hit], cos[hit]
    level = (cos[:, None] > ts[None, :]).sum(1).astype(np.int8) - 1
    return row, gaussian, level


def _balls_by_matmul(F: np.ndarray, seed_features: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (seed row, Gaussian, cos) with ``cos > t``, grouped by row (Gaussian ids ascending within)."""
    Ft = torch.from_numpy(np.ascontiguousarray(F, dtype=np.float32))
    S = torch.from_numpy(np.ascontiguousarray(seed_features, dtype=np.float32))
    rows, gids, coss = [], [], []
    for s in range(0, Ft.shape[0], _BRUTE_CHUNK):
        cos = Ft[s : s + _BRUTE_CHUNK] @ S.T  # [c, B]
        g, r = (cos > t).nonzero(as_tuple=True)
        rows.append(r)
        gids.append(g + s)
        coss.append(cos[g, r])
    row, gid, cos = torch.cat(rows), torch.cat(gids), torch.cat(coss)
    order = torch.argsort(row, stable=True)  # gids ascend within each row (chunks are in order)
    return row[order].numpy(), gid[order].numpy(), cos[order].numpy()


class BallGraph:
    """Loosest balls of Gaussians for one set of thresholds (query-independent), computed on first need and
    kept: a Gaussian's ball (ids and threshold levels) is computed once per level, whatever query seeds it.
    Owned by an :class:`InstanceIndex` (:meth:`InstanceIndex.ball_graph`)."""

    def __init__(self, index: InstanceIndex, F: np.ndarray, ts: np.ndarray) -> None:
        n = F.shape[0]
        self.index, self.F, self.ts = index, F, ts
        self.start = np.zeros(n, np.int64)
        """Per Gaussian, where its ball starts in :attr:`neighbour` / :attr:`level`."""
        self.count = np.full(n, -1, np.int64)
        """Per Gaussian, its ball's size (−1: not computed yet)."""
        self.neighbour = np.zeros(1024, np.int32)
        """Ball entries: Gaussian ids (the first :attr:`size` are used)."""
        self.level = np.zeros(1024, np.int8)
        """Ball entries: the tightest threshold level each entry passes."""
        self.size = 0

    def _add(self, seeds: np.ndarray) -> None:
        row, gaussian, level = _loosest_balls(self.index, self.F, seeds, self.ts)
        m = len(gaussian)
        if self.size + m > len(self.neighbour):
            cap = max(2 * len(self.neighbour), self.size + m)
            self.neighbour = np.resize(self.neighbour, cap)
            self.level = np.resize(self.level, cap)
        self.neighbour[self.size : self.size + m] = gaussian
        self.level[self.size : self.size + m] = level
        cnt = np.bincount(row, minlength=len(seeds))
        self.start[seeds] = self.size + np.concatenate([[0], np.cumsum(cnt)[:-1]])
        self.count[seeds] = cnt
        self.size += m

    def balls(self, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        return np.repeat(np.arange(len(seeds)), counts), self.neighbour[pos].astype(np.int64), self.level[pos]


_NO_ROW = np.iinfo(np.int64).max


@dataclass
class _SeedBatch:
    """Seeds taken together by :func:`refine_fast`, with the still-unprocessed entries of their balls.

    Entries are grouped by row (the seed's index in the batch) in order."""

    seeds: np.ndarray
    """``[C]`` Gaussian ids of the seeds, in visiting order."""
    row: np.ndarray
    """``[P]`` the seed (batch row) each entry belongs to."""
    gaussian: np.ndarray
    """``[P]`` the entry's Gaussian."""
    level: np.ndarray
    """``[P]`` int8 the tightest threshold level the entry passes."""
    weighted_r: np.ndarray
    """``[P]`` opacity × relevancy of the entry's Gaussian (numerator of a region's mean)."""
    opacity: np.ndarray
    """``[P]`` opacity of the entry's Gaussian (denominator of a region's mean)."""


@dataclass
class _AcceptedRegions:
    """Accepted regions as the waves and single seeds decide them; :meth:`fill` orders them by seed rank.

    A seed's rank is its position in the visiting order (over all batches)."""

    seed_rank: list[np.ndarray] = field(default_factory=list)
    seed_id: list[np.ndarray] = field(default_factory=list)
    level: list[np.ndarray] = field(default_factory=list)
    """Per region, the threshold level it was accepted at."""
    members: list[np.ndarray] = field(default_factory=list)
    """The regions' Gaussians, concatenated."""
    member_rank: list[np.ndarray] = field(default_factory=list)
    """Per member, the rank of its region's seed."""

    def add(self, seed_rank: np.ndarray, seed_id: np.ndarray, level: np.ndarray, members: np.ndarray,
            member_rank: np.ndarray) -> None:
        self.seed_rank.append(seed_rank)
        self.seed_id.append(seed_id)
        self.level.append(level)
        self.members.append(members)
        self.member_rank.append(member_rank)

    def fill(self, res: RefineResult, n: int, dbar: float) -> None:
        """Write the regions, their seeds and thresholds and the selection into ``res``, in visiting order."""
        if not self.seed_rank:
            return
        by_rank = np.argsort(np.concatenate(self.seed_rank), kind="stable")
        seed_rank = np.concatenate(self.seed_rank)[by_rank]
        level = np.concatenate(self.level)[by_rank]
        members = np.concatenate(self.members)
        member_rank = np.concatenate(self.member_rank)
        by_region = np.lexsort((members, member_rank))  # by region (seed rank), then Gaussian id
        members, member_rank = members[by_region], member_rank[by_region]
        bounds = np.searchsorted(member_rank, seed_rank, "left")
        counts = np.diff(np.append(bounds, len(member_rank)))
        res.regions = list(torch.split(torch.from_numpy(members.astype(np.int64)), counts.tolist()))
        res.seeds = np.concatenate(self.seed_id)[by_rank].tolist()
        ts = thresholds(dbar)
        res.region_thresholds = [ts[i] for i in level.tolist()]
        selected = np.zeros(n, bool)
        selected[members] = True
        res.selected = torch.from_numpy(np.nonzero(selected)[0].astype(np.int64))


def _decide_in_waves(batch: _SeedBatch, rank0: int, processed: np.ndarray, first_row: np.ndarray,
                     res: RefineResult, regions: _AcceptedRegions) -> tuple[np.ndarray, int]:
    """Decide the batch's seeds wave by wave (the :func:`refine_fast` docstring) until a wave is smaller
    than ``_MIN_WAVE``; returns (bool ``[C]`` seeds still undecided, how many seeds were found absorbed).

    ``rank0`` is the visiting rank of the batch's first seed; ``first_row`` a scratch ``[N]`` array full
    of ``_NO_ROW`` (left so); ``processed`` is updated in place.
    """
    n_seeds, n_levels = len(batch.seeds), len(THRESHOLD_STEPS)
    bin_of_entry = batch.row * n_levels + batch.level
    undecided = np.ones(n_seeds, bool)
    absorbed = 0
    pending = np.ones(len(batch.row), bool)  # entries of undecided seeds
    while True:
        # a seed is blocked when an earlier undecided seed of the batch shares one of its entries
        pending_row, pending_gaussian = batch.row[pending], batch.gaussian[pending]
        np.minimum.at(first_row, pending_gaussian, pending_row)
        blocked = first_row[pending_gaussian] != pending_row
        first_row[pending_gaussian] = _NO_ROW
        ready = undecided.copy()
        ready[pending_row[blocked]] = False
        ready_rows = np.nonzero(ready)[0]
        if len(ready_rows) < _MIN_WAVE:  # a chain: the caller finishes the batch one seed at a time
            break
        # decide every ready seed from the current processed set; absorbed seeds are skipped
        alive = ~processed[batch.seeds[ready_rows]]
        absorbed += len(ready_rows) - int(alive.sum())
        ready_rows = ready_rows[alive]
        in_wave = ready[batch.row] & pending
        live = in_wave & ~processed[batch.gaussian]
        if len(ready_rows):
            size = n_seeds * n_levels
            sum_r = np.bincount(bin_of_entry[live], weights=batch.weighted_r[live], minlength=size)
            sum_o = np.bincount(bin_of_entry[live], weights=batch.opacity[live], minlength=size)
            sum_r = sum_r.reshape(n_seeds, n_levels)[ready_rows]
            sum_o = sum_o.reshape(n_seeds, n_levels)[ready_rows]
            sum_r = np.cumsum(sum_r[:, ::-1], 1)[:, ::-1]  # region sums at threshold level >= l
            sum_o = np.cumsum(sum_o[:, ::-1], 1)[:, ::-1]
            passes = sum_r >= ACCEPT * sum_o
            accepted = passes.any(1)
            accepted_level = np.where(accepted, passes.argmax(1), n_levels)
            level_of_row = np.full(n_seeds, n_levels, np.int64)
            level_of_row[ready_rows] = accepted_level
            in_region = live & (batch.level >= level_of_row[batch.row])
            processed[batch.gaussian[in_region]] = True
            processed[batch.seeds[ready_rows[~accepted]]] = True  # rejected: only the seed
            res.n_seeds += len(ready_rows)
            regions.add(rank0 + ready_rows[accepted], batch.seeds[ready_rows[accepted]], accepted_level[accepted],
                        batch.gaussian[in_region], rank0 + batch.row[in_region])
        undecided &= ~ready
        pending &= ~in_wave
        if not undecided.any():
            break
    return undecided, absorbed


def _decide_one_by_one(batch: _SeedBatch, rows: np.ndarray, rank0: int, relevancy: np.ndarray,
                       processed: np.ndarray, res: RefineResult, regions: _AcceptedRegions) -> int:
    """Decide the seeds ``rows`` of the batch one at a time, in order (the literal loop on their balls);
    returns how many were found absorbed. ``processed`` is updated in place."""
    n_seeds, n_levels = len(batch.seeds), len(THRESHOLD_STEPS)
    row_start = np.searchsorted(batch.row, np.arange(n_seeds + 1)).tolist()
    # a ball whose Gaussians all have r >= ACCEPT is accepted at the loosest threshold without summing
    all_relevant = (np.bincount(batch.row, weights=relevancy[batch.gaussian] < ACCEPT, minlength=n_seeds) == 0).tolist()
    masses = np.stack([batch.weighted_r, batch.opacity])
    at_or_above_level = (batch.level[:, None] >= np.arange(n_levels)[None, :]).astype(np.float64)
    absorbed = 0
    for k in rows.tolist():
        seed = batch.seeds[k]
        if processed[seed]:
            absorbed += 1
            continue
        res.n_seeds += 1
        lo, hi = row_start[k], row_start[k + 1]
        ball = batch.gaussian[lo:hi]
        live = ~processed[ball]
        if all_relevant[k]:
            level = 0
            members = ball[live]
        else:
            sums = (masses[:, lo:hi] * live) @ at_or_above_level[lo:hi]  # region sums at threshold level >= l
            passes = sums[0] >= ACCEPT * sums[1]
            level = int(passes.argmax())
            if not passes[level]:
                processed[seed] = True
                continue
            members = ball[live & (batch.level[lo:hi] >= level)]
        processed[members] = True
        regions.add(np.array([rank0 + k]), np.array([seed]), np.array([level]), members,
                    np.full(len(members), rank0 + k))
    return absorbed


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
            keeps one per level). Seeds' loosest balls are kept on it per ``dbar``
            (:meth:`InstanceIndex.ball_graph`): a Gaussian's ball is computed the first time it is a
            seed, later queries only gather it.
        unit_instance: ``instance`` already as float32 unit rows (numpy or CPU tensor; saves a copy).
        max_batch: the largest seed batch.
        pair_budget: batches are sized so that about this many (seed, ball entry) pairs are held at once.

    A batch takes the next unprocessed candidates in visiting order with their ball entries (each with
    its threshold level: the tightest of the four thresholds it passes). The batch is then decided in
    waves (:func:`_decide_in_waves`): a seed is decided as soon as no earlier undecided seed of the
    batch shares a ball entry with it (only such seeds can change what its ball holds, or absorb it), so
    every wave is decided at once from the current processed set — exactly the decisions of the
    one-seed-at-a-time loop. A seed's region sums at the four thresholds are a 4-bin histogram of its
    still-unprocessed entries. Once waves get small, the rest goes one seed at a time
    (:func:`_decide_one_by_one`).
    """
    _check(instance, r, opacity)
    if unit_instance is None:
        F = _unit(instance).cpu().numpy()
    else:
        F = unit_instance.cpu().numpy() if isinstance(unit_instance, Tensor) else unit_instance
    F = np.ascontiguousarray(F, dtype=np.float32)
    relevancy = r.detach().float().cpu().numpy().astype(np.float64)
    opac = opacity.detach().float().cpu().numpy().astype(np.float64)
    n = F.shape[0]
    res = RefineResult(selected=torch.zeros(0, dtype=torch.long))
    allowed = np.ones(n, bool) if subset is None else subset.detach().cpu().numpy().astype(bool)
    candidates = np.nonzero(allowed & (relevancy > R_MIN) & (opac > OPACITY_MIN))[0]
    if len(candidates) == 0:
        return res
    if index is None:
        index = InstanceIndex(torch.from_numpy(F))
    graph = index.ball_graph(F, dbar)
    processed = ~allowed
    # the order step 3 visits seeds in: r descending, then id ascending (candidates are id-sorted; stable sort)
    visit_order = candidates[np.argsort(-relevancy[candidates], kind="stable")]
    weighted_r = opac * relevancy
    first_row = np.full(n, _NO_ROW, np.int64)
    regions = _AcceptedRegions()
    batch_size = 64
    pos = 0
    rank0 = 0  # visiting rank of the batch's first seed (orders the regions)
    while pos < len(visit_order):
        window = visit_order[pos : pos + 4 * batch_size]
        unprocessed = np.nonzero(~processed[window])[0]
        if len(unprocessed) == 0:
            pos += len(window)
            continue
        take = unprocessed[:batch_size]
        seeds = window[take]
        pos += int(take[-1]) + 1
        row, gaussian, level = graph.balls(seeds)
        keep = ~processed[gaussian]
        row, gaussian, level = row[keep], gaussian[keep], level[keep]
        batch = _SeedBatch(seeds, row, gaussian, level, weighted_r[gaussian], opac[gaussian])
        undecided, absorbed = _decide_in_waves(batch, rank0, processed, first_row, res, regions)
        if undecided.any():
            absorbed += _decide_one_by_one(batch, np.nonzero(undecided)[0], rank0, relevancy, processed, res, regions)
        n_seeds = len(seeds)
        rank0 += n_seeds
        # grow the batch while few of its seeds were absorbed, shrink it otherwise; keep the pairs in budget
        batch_size = min(max_batch, 2 * n_seeds) if absorbed <= n_seeds // 2 else max(8, n_seeds // 2)
        batch_size = max(8, min(batch_size, int(pair_budget / max(1.0, len(row) / n_seeds))))
    regions.fill(res, n, dbar)
    return res
