"""Split a selection of Gaussians into 3D objects, each with a centroid, an oriented box and points.

:func:`split_objects`:

1. **Graph.** Over the selected Gaussians, connect each to its 8 nearest neighbours in xyz when the two
   *touch* (distance < 2 × the sum of their largest standard deviations: scale-free, unlike a fixed
   distance, because splats are dense clumps on surfaces and sparse in between) **and** their unit
   instance features agree (``1 − cos < max(0.1, 10 d̄)``).
2. **Components** of that graph are object fragments; those holding ≥ 5 % of the selection's opacity mass
   are objects.
3. **Merge** objects of one instance: two whose closest points are within 2 × the touching distance and
   whose opacity-weighted mean instance features agree (``1 − cos < 1.5 × link``) are one (a frying pan's
   handle, a robot's head; a k-NN graph alone misses links between dense clumps). Two same-kind objects
   (two mugs, two cans) stay apart: they do not touch.
4. **Fragments** join the object holding their nearest point when that is within 2 × the touching
   distance; the others (floaters) are dropped.

A selection of more than :data:`SPLIT_GRAPH_MAX` Gaussians (a floor of a 1M-Gaussian field) runs steps 1–4
on a fixed random sample of that many, touching distances scaled by the sample's spacing; every other
Gaussian then follows a sampled one in its voxel (side: the sample's median touching distance), else in a
neighbouring voxel, and is dropped as a floater when there is none.

Objects are ordered by score (then size). An object's ``id`` is the id of its highest-scoring
Gaussian: stable for a given run and prompt, and a valid ``within_object=`` / ``--within-object``
handle (the parent is re-grown from that Gaussian like a click).

Oriented boxes come from PCA of the object's Gaussian centres: ``R``'s columns are the principal
axes (right-handed), ``extent`` the full side lengths covering every centre, ``center`` the box
middle (not the centroid).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class OrientedBox:
    """A box ``T_world_box``: ``x_world = center + R @ x_box`` with ``|x_box_i| <= extent_i / 2``."""

    center: np.ndarray
    """[3] box centre (world)."""
    R: np.ndarray
    """[3, 3] rotation, columns = the box axes in world coordinates (det +1)."""
    extent: np.ndarray
    """[3] full side lengths along R's columns (metres)."""

    def corners(self) -> np.ndarray:
        """[8, 3] world corners."""
        s = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], np.float64) * 0.5
        return self.center + (s * self.extent) @ self.R.T

    def contains(self, points: np.ndarray, tol: float = 1e-6) -> np.ndarray:
        """[P] bool: which world ``points [P, 3]`` lie inside."""
        local = (np.asarray(points, np.float64) - self.center) @ self.R
        return np.all(np.abs(local) <= self.extent / 2 + tol, axis=1)

    def to_dict(self) -> dict:
        return {"center": self.center.tolist(), "R": self.R.tolist(), "extent": self.extent.tolist()}


@dataclass
class Object3D:
    """One object of a query answer."""

    id: int
    """The id of the object's highest-scoring Gaussian (a handle for ``within_object``)."""
    gaussians: Tensor
    """LongTensor [K] sorted Gaussian ids."""
    score: float
    """Opacity-weighted mean score of its Gaussians (raw relevancy R for text/image prompts,
    instance-feature cosine to the clicked Gaussian for clicks)."""
    centroid: np.ndarray
    """[3] opacity-weighted mean of the Gaussian centres (world)."""
    box: OrientedBox
    points: np.ndarray
    """[K, 3] float32 Gaussian centres (world)."""

    @property
    def num(self) -> int:
        return int(self.gaussians.numel())

    def to_dict(self, points: bool = False) -> dict:
        d = {
            "id": int(self.id),
            "num_gaussians": self.num,
            "score": float(self.score),
            "centroid": self.centroid.tolist(),
            "box": self.box.to_dict(),
        }
        if points:
            d["points"] = self.points.tolist()
        return d


def oriented_box(points: np.ndarray) -> OrientedBox:
    """PCA box covering all ``points [K, 3]`` (K ≥ 1)."""
    p = np.asarray(points, np.float64)
    mu = p.mean(0)
    if len(p) < 3:
        lo, hi = p.min(0), p.max(0)
        return OrientedBox(center=(lo + hi) / 2, R=np.eye(3), extent=hi - lo)
    cov = np.cov((p - mu).T)
    evals, evecs = np.linalg.eigh(cov)
    R = evecs[:, ::-1].copy()  # descending variance
    # deterministic signs: the largest component of each axis positive, then right-handed
    for i in range(3):
        if R[np.argmax(np.abs(R[:, i])), i] < 0:
            R[:, i] *= -1
    if np.linalg.det(R) < 0:
        R[:, 2] *= -1
    local = (p - mu) @ R
    lo, hi = local.min(0), local.max(0)
    return OrientedBox(center=mu + R @ ((lo + hi) / 2), R=R, extent=hi - lo)


def make_object(
    ids: Tensor, means: Tensor, opacity: Tensor, scores: Tensor
) -> Object3D:
    """An :class:`Object3D` for Gaussian ids ``ids`` (any order)."""
    ids = torch.sort(ids.long()).values
    X = means[ids].double()
    w = opacity[ids].double().clamp_min(1e-8)
    s = scores[ids].double()
    pts = X.numpy()
    return Object3D(
        id=int(ids[int(torch.argmax(s))]),
        gaussians=ids,
        score=float((w * s).sum() / w.sum()),
        centroid=((w[:, None] * X).sum(0) / w.sum()).numpy(),
        box=oriented_box(pts),
        points=pts.astype(np.float32),
    )


def _components(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    return connected_components(g, directed=False)[1]


SPLIT_GRAPH_MAX = 8192
"""Selections larger than this are split on a fixed random sample of this many Gaussians (their touching
distances scaled by the sample's spacing, ``(n / SPLIT_GRAPH_MAX)^(1/3)``); every other Gaussian follows a
sampled one in its own or a neighbouring voxel (module docstring). Bounds the work of a floor-sized
selection of a 1M-Gaussian field."""


def split_objects(
    selected: Tensor,
    means: Tensor,
    instance_unit: Tensor,
    opacity: Tensor,
    scores: Tensor,
    dbar: float,
    *,
    scales: Tensor | None = None,
    k: int = 8,
    reach: float = 2.0,
    link: float | None = None,
    min_fraction: float = 0.05,
    min_gaussians: int = 8,
    graph_max: int = SPLIT_GRAPH_MAX,
) -> list[Object3D]:
    """Split ``selected`` (LongTensor of Gaussian ids) into objects (module docstring).

    Args:
        means: ``[N, 3]`` Gaussian centres; instance_unit: ``[N, F]`` unit instance features;
        opacity: ``[N]``; scores: ``[N]`` per-Gaussian score used for the objects' ``score``/``id``.
        dbar: the field's compactness ``d̄`` (``1 − cos`` units).
        scales: ``[N]`` each Gaussian's largest standard deviation; two Gaussians touch when their
            distance is below ``reach × (s_i + s_j)``. None: ``reach ×`` the selection's median distance to
            its 4th nearest neighbour instead.
        link: feature link, in ``1 − cos``; default ``max(0.1, 10 d̄)``.
        min_fraction: components with less opacity mass than this share are fragments.
        graph_max: the largest selection split Gaussian by Gaussian (:data:`SPLIT_GRAPH_MAX`).
    """
    sel = torch.sort(selected.long()).values
    n = int(sel.numel())
    if n == 0:
        return []
    if n == 1:
        return [make_object(sel, means, opacity, scores)]
    X = means[sel].double().numpy()
    w = opacity[sel].double().numpy().clip(1e-8)
    s = None if scales is None else scales[sel].double().numpy()
    if link is None:
        link = max(0.1, 10.0 * float(dbar))
    if n > graph_max:
        pick = np.sort(np.random.default_rng(0).choice(n, graph_max, replace=False))
        spread = (n / graph_max) ** (1.0 / 3.0)  # the sample's spacing grows with the cube root of the thinning
        final_s, labels_s, mass_s, s_used = _object_labels(X[pick], instance_unit[sel[pick]].float(), w[pick],
                                                           None if s is None else s[pick] * spread, k, reach,
                                                           link, min_fraction)
        near = _sampled_neighbour(X, X[pick], reach * 2.0 * float(np.median(s_used)))
        final = np.where(near >= 0, final_s[near], -1)  # no sampled Gaussian near: a floater
        final[pick] = final_s
        # a floater's component only weighs in the fallback below (every component a speck)
        labels = np.where(near >= 0, labels_s[near], labels_s[0])
        labels[pick] = labels_s
        mass = np.bincount(labels, weights=w, minlength=len(mass_s))
    else:
        final, labels, mass, _ = _object_labels(X, instance_unit[sel].float(), w, s, k, reach, link, min_fraction)
    objs = []
    for rt in np.unique(final[final >= 0]):
        m = final == rt
        if m.sum() >= min(min_gaussians, n):
            objs.append(make_object(sel[torch.from_numpy(m)], means, opacity, scores))
    if not objs:  # everything is specks: keep the heaviest fragment rather than nothing
        c = int(np.argmax(mass))
        objs.append(make_object(sel[torch.from_numpy(labels == c)], means, opacity, scores))
    objs.sort(key=lambda o: (-o.score, -o.num))
    return objs


def _sampled_neighbour(X: np.ndarray, S: np.ndarray, h: float) -> np.ndarray:
    """int64 ``[n]``: for each point of ``X [n, 3]``, a point of ``S [m, 3]`` in its own voxel of side ``h``
    (the lowest such index), else in one of the 26 neighbouring voxels, else −1. A hash look-up: at 500k
    points a k-d tree's nearest-neighbour query costs ~5× more."""
    n = len(X)
    out = np.full(n, -1, np.int64)
    if not h > 0 or len(S) == 0:
        return out
    lo = np.minimum(X.min(0), S.min(0))
    base = np.floor((np.maximum(X.max(0), S.max(0)) - lo) / h).astype(np.int64) + 3

    def key(v: np.ndarray) -> np.ndarray:  # cells are offset by 1, so a neighbour's key never wraps
        return (v[..., 0] * base[1] + v[..., 1]) * base[2] + v[..., 2]

    cell_keys, first = np.unique(key(np.floor((S - lo) / h).astype(np.int64) + 1), return_index=True)
    query = key(np.floor((X - lo) / h).astype(np.int64) + 1)
    offsets = np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij"), -1).reshape(-1, 3)
    offsets = offsets[np.argsort(np.abs(offsets).sum(1), kind="stable")]  # own voxel first, then faces, ...
    todo = np.arange(n)
    for off in key(offsets):
        q = query[todo] + off
        at = np.minimum(np.searchsorted(cell_keys, q), len(cell_keys) - 1)
        found = cell_keys[at] == q
        out[todo[found]] = first[at[found]]
        todo = todo[~found]
        if len(todo) == 0:
            break
    return out


def _object_labels(X: np.ndarray, Fs: Tensor, w: np.ndarray, s: np.ndarray | None, k: int, reach: float,
                   link: float, min_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps 1–4 of the module docstring over points ``X [n, 3]`` with unit features ``Fs [n, F]``,
    opacities ``w [n]`` and largest standard deviations ``s [n]`` (None: from the spacing) →
    ``(object [n]`` (its root component, −1: a dropped floater), ``component [n]``, ``mass [C]``, the
    ``s [n]`` used)."""
    from scipy.spatial import cKDTree

    n = X.shape[0]
    kk = min(k, n - 1)
    tree = cKDTree(X)
    dist, nb = tree.query(X, k=kk + 1)
    dist, nb = dist[:, 1:], nb[:, 1:]
    if s is None:
        s = np.full(n, 0.5 * float(np.median(dist[:, min(3, kk - 1)])) + 1e-12)
    rows = np.repeat(np.arange(n), kk)
    cols = nb.reshape(-1)
    near = dist.reshape(-1) < reach * (s[rows] + s[cols])
    rows, cols = rows[near], cols[near]
    cos = (Fs[torch.from_numpy(rows)] * Fs[torch.from_numpy(cols)]).sum(1).numpy()
    keep = cos > 1.0 - link
    labels = _components(n, rows[keep], cols[keep])
    ncomp = int(labels.max()) + 1
    mass = np.bincount(labels, weights=w, minlength=ncomp)
    big = np.nonzero(mass >= min_fraction * mass.sum())[0]
    if len(big) == 0:
        big = np.array([int(np.argmax(mass))])
    parent = np.arange(ncomp)
    # big components of one instance: close (nearest points within 2 × reach of their sizes; a k-NN
    # graph misses links between dense clumps) and with agreeing mean features
    if len(big) > 1:
        lab_t = torch.from_numpy(labels)
        mf = torch.zeros(ncomp, Fs.shape[1], dtype=Fs.dtype).index_add_(0, lab_t, Fs * torch.from_numpy(w).float()[:, None])
        mf = torch.nn.functional.normalize(mf, dim=1)
        bt = torch.from_numpy(big)
        C = (mf[bt] @ mf[bt].T).numpy()
        members = {int(c): np.nonzero(labels == c)[0] for c in big}
        trees = {c: cKDTree(X[m]) for c, m in members.items()}
        mr, mc = [], []
        for i, a in enumerate(big):
            for j in range(i + 1, len(big)):
                if C[i, j] <= 1.0 - 1.5 * link:
                    continue
                b_ = big[j]
                d, jj = trees[int(b_)].query(X[members[int(a)]], k=1)
                q = int(np.argmin(d))
                if d[q] < 2.0 * reach * (s[members[int(a)][q]] + s[members[int(b_)][jj[q]]]):
                    mr.append(i)
                    mc.append(j)
        if mr:
            cc = _components(len(big), np.array(mr), np.array(mc))
            for i, a in enumerate(big):
                parent[a] = big[int(np.nonzero(cc == cc[i])[0][0])]
    # fragments join the big component holding their nearest point when it is within 2 × reach, else drop
    is_big = np.zeros(ncomp, bool)
    is_big[big] = True
    in_big = is_big[labels]
    final = np.full(n, -1, np.int64)
    final[in_big] = parent[labels[in_big]]
    small = np.nonzero(~in_big)[0]
    if len(small) and in_big.any():
        big_idx = np.nonzero(in_big)[0]
        d, j = cKDTree(X[big_idx]).query(X[small], k=1)
        host = final[big_idx[j]]
        ok_pt = d < 2.0 * reach * (s[small] + s[big_idx[j]])
        frag = labels[small]
        for c in np.unique(frag):
            m = frag == c
            if ok_pt[m].mean() >= 0.5:
                final[small[m]] = np.bincount(host[m][ok_pt[m]]).argmax()
    return final, labels, mass, s
