"""The refinement's greedy loop compiled with numba: one seed at a time, each seed scanning only the
index ranges that can hold its ball.

Same semantics as :func:`cos3d.query.refine.refine_reference` (that module's docstring, steps 1–5), and
the same index (:class:`cos3d.query.refine.InstanceIndex`): members sorted by (cluster, angle β to the
centroid); a seed at angle α to a centroid reaches only ``|β − α| ≤ arccos t₀`` of that cluster. Why
by hand, and why compiled: the loop is sequential by definition (a seed's region depends on every
earlier decision), so numpy can only vectorise it in waves of independent seeds
(:func:`cos3d.query.refine.refine_fast`), and then it lists every (seed, candidate) pair into
temporaries — at 1M Gaussians a query's seeds see ~3M candidate pairs, and copying their features
costs more than the dot products. A compiled loop reads each candidate once, in index order (memory
laid out by cluster, so reads are sequential), and decides a seed the moment its ball is summed. No
library does this loop (faiss and scipy find balls, not the greedy decisions over them).

Everything runs in *sorted position* space (a Gaussian's position in the index order), so the
feature, relevancy, opacity and processed reads of a range are contiguous; ids come back at the end.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cos3d.query.refine import ACCEPT, OPACITY_MIN, R_MIN, InstanceIndex, RefineResult, thresholds


def available() -> bool:
    """Whether numba can be imported (the compiled loop needs it; the engine's ``fast`` refinement uses the
    numpy waves, :func:`cos3d.query.refine.refine_fast`, otherwise)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class SortedField:
    """An index's features and cluster layout in sorted-position space (query-independent; built once per
    level and kept by the engine: :func:`sorted_field`)."""

    features: np.ndarray
    """``[N, F]`` float32 unit instance features in index order (``F[index.order]``)."""
    beta: np.ndarray
    """``[N]`` float64 angle of each member to its cluster's centroid, ascending within a cluster."""
    cluster_start: np.ndarray
    """``[K + 1]`` int64: cluster ``k``'s members are positions ``cluster_start[k]:cluster_start[k + 1]``."""
    centroids: np.ndarray
    """``[K, F]`` float64 unit centroids."""
    radius: np.ndarray
    """``[K]`` float64 largest β of each cluster."""
    order: np.ndarray
    """``[N]`` int64 Gaussian id at each position."""
    position: np.ndarray
    """``[N]`` int64 position of each Gaussian id (the inverse of :attr:`order`)."""


def sorted_field(index: InstanceIndex, unit_features: np.ndarray) -> SortedField:
    """The :class:`SortedField` of ``index`` over ``unit_features [N, F]`` (float32 unit rows)."""
    if unit_features.shape[0] != index.n:
        raise ValueError(f"the index holds {index.n} Gaussians but {unit_features.shape[0]} features were given")
    k = len(index.centroids)
    cluster = np.floor(index.keys / 4.0).astype(np.int64)
    start = np.searchsorted(cluster, np.arange(k + 1), "left").astype(np.int64)
    position = np.empty(index.n, np.int64)
    position[index.order] = np.arange(index.n)
    return SortedField(
        features=np.ascontiguousarray(unit_features[index.order], dtype=np.float32),
        beta=np.ascontiguousarray(index.keys - 4.0 * cluster, dtype=np.float64),
        cluster_start=start,
        centroids=np.ascontiguousarray(index.centroids, dtype=np.float64),
        radius=np.ascontiguousarray(index.radius, dtype=np.float64),
        order=np.ascontiguousarray(index.order, dtype=np.int64),
        position=position,
    )


@functools.cache
def _kernel():
    """The compiled loop (compiled on first use; numba also caches the machine code on disk, next to this
    file, so a later process only loads it)."""
    import numba

    try:
        return numba.njit(cache=True, nogil=True)(_greedy)
    except RuntimeError:  # no writable cache location (a read-only install): compile in each process instead
        return numba.njit(cache=False, nogil=True)(_greedy)


def _greedy(feat, beta, cstart, centroids, cos_reach, theta, ts, visit, r, o, processed,
            member_out, region_out, seed_out, level_out):  # pragma: no cover - runs compiled
    """The greedy loop over positions (module docstring). Writes members (positions) with their region
    number into ``member_out``/``region_out`` and each accepted region's seed position and threshold
    level into ``seed_out``/``level_out``; returns ``(members, regions, seeds tried)``. ``processed`` is
    updated in place."""
    n, d = feat.shape
    k = centroids.shape[0]
    n_levels = ts.shape[0]
    buf_pos = np.empty(n, np.int64)
    buf_level = np.empty(n, np.int8)
    sum_r = np.zeros(n_levels)
    sum_o = np.zeros(n_levels)
    n_members = 0
    n_regions = 0
    n_tried = 0
    for vi in range(visit.shape[0]):
        s = visit[vi]
        if processed[s]:
            continue
        n_tried += 1
        f = feat[s]
        for lv in range(n_levels):
            sum_r[lv] = 0.0
            sum_o[lv] = 0.0
        m = 0
        for c in range(k):
            lo_c = cstart[c]
            hi_c = cstart[c + 1]
            if hi_c == lo_c:
                continue
            cc = 0.0
            for j in range(d):
                cc += f[j] * centroids[c, j]
            if cc <= cos_reach[c]:
                continue
            alpha = math.acos(min(1.0, max(-1.0, cc)))
            # members with |β − α| ≤ θ: binary searches in the cluster's ascending β
            b_lo = alpha - theta
            b_hi = alpha + theta
            a = lo_c
            b = hi_c
            while a < b:
                mid = (a + b) >> 1
                if beta[mid] < b_lo:
                    a = mid + 1
                else:
                    b = mid
            start = a
            b = hi_c
            while a < b:
                mid = (a + b) >> 1
                if beta[mid] <= b_hi:
                    a = mid + 1
                else:
                    b = mid
            for p in range(start, a):
                if processed[p]:
                    continue
                cos = np.float32(0.0)
                for j in range(d):
                    cos += feat[p, j] * f[j]
                if cos <= ts[0]:
                    continue
                lvl = 0
                while lvl + 1 < n_levels and cos > ts[lvl + 1]:
                    lvl += 1
                buf_pos[m] = p
                buf_level[m] = lvl
                m += 1
                sum_r[lvl] += o[p] * r[p]
                sum_o[lvl] += o[p]
        # region sums at threshold level >= l, loosest first: the first that passes is accepted
        acc_r = 0.0
        acc_o = 0.0
        for lv in range(n_levels - 1, -1, -1):
            acc_r += sum_r[lv]
            acc_o += sum_o[lv]
            sum_r[lv] = acc_r
            sum_o[lv] = acc_o
        accepted = -1
        for lv in range(n_levels):
            if sum_r[lv] >= ACCEPT * sum_o[lv]:
                accepted = lv
                break
        if accepted < 0:
            processed[s] = True
            continue
        for i in range(m):
            if buf_level[i] >= accepted:
                p = buf_pos[i]
                processed[p] = True
                member_out[n_members] = p
                region_out[n_members] = n_regions
                n_members += 1
        seed_out[n_regions] = s
        level_out[n_regions] = accepted
        n_regions += 1
    return n_members, n_regions, n_tried


def refine_compiled(
    r: Tensor,
    opacity: Tensor,
    dbar: float,
    field: SortedField,
    *,
    subset: Tensor | None = None,
) -> RefineResult:
    """The selection of :func:`cos3d.query.refine.refine_reference` for normalised relevancy ``r [N]`` and
    activated opacities ``opacity [N]``, computed by the compiled loop over ``field``
    (:func:`sorted_field` of the level's index). ``subset``: optional bool ``[N]`` of allowed Gaussians.

    Decisions match the reference up to float rounding of a cosine exactly at a threshold (float32 dot
    products, as numpy's and torch's)."""
    n = field.order.shape[0]
    if r.shape != (n,) or opacity.shape != (n,):
        raise ValueError(f"expected r [{n}] and opacity [{n}]; got {tuple(r.shape)}, {tuple(opacity.shape)}")
    relevancy = r.detach().float().cpu().numpy()
    opac = opacity.detach().float().cpu().numpy()
    allowed = None if subset is None else subset.detach().cpu().numpy().astype(bool)
    res = RefineResult(selected=torch.zeros(0, dtype=torch.long))
    is_candidate = (relevancy > R_MIN) & (opac > OPACITY_MIN)
    candidates = np.nonzero(is_candidate if allowed is None else is_candidate & allowed)[0]
    if len(candidates) == 0:
        return res
    # step 3's order: r descending, then id ascending (candidates are id-sorted; stable sort)
    visit = field.position[candidates[np.argsort(-relevancy[candidates], kind="stable")]]
    ts = np.asarray(thresholds(dbar), np.float32)
    theta = math.acos(max(-1.0, min(1.0, float(ts[0])))) + 1e-6
    cos_reach = np.cos(np.minimum(np.pi, theta + field.radius))
    order = field.order
    r_sorted = relevancy[order]
    o_sorted = opac[order]
    processed = np.zeros(n, bool) if allowed is None else ~allowed[order]
    member_out = np.empty(n, np.int64)
    region_out = np.empty(n, np.int64)
    seed_out = np.empty(len(candidates), np.int64)
    level_out = np.empty(len(candidates), np.int64)
    n_members, n_regions, n_tried = _kernel()(
        field.features, field.beta, field.cluster_start, field.centroids, cos_reach, theta, ts, visit,
        r_sorted, o_sorted, processed, member_out, region_out, seed_out, level_out)
    res.n_seeds = int(n_tried)
    if n_regions == 0:
        return res
    members = order[member_out[:n_members]]
    region = region_out[:n_members]
    by_region = np.lexsort((members, region))
    members, region = members[by_region], region[by_region]
    counts = np.bincount(region, minlength=n_regions)
    res.regions = list(torch.split(torch.from_numpy(members), counts.tolist()))
    res.seeds = order[seed_out[:n_regions]].tolist()
    all_ts = thresholds(dbar)
    res.region_thresholds = [all_ts[i] for i in level_out[:n_regions].tolist()]
    res.selected = torch.from_numpy(np.sort(members))
    return res
