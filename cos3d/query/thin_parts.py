"""Thin parts back into their object (issue 28, item 4): a toy robot's arm and claw, a few pixels wide in the
training views, have blurred instance features, so the query's instance-space refinement leaves them out of
the robot it finds. :func:`attach_thin_parts` grows an answered object through the Gaussians that

- the language field gives the prompt about as much as the object itself (relevancy at least the 10th
  percentile of the object's own, less a tenth of its lead over the scene's median Gaussian),
- whose instance feature is not another object's (cosine ≥ :data:`ATTACH_COSINE` to the object's mean),
- that no other object of the answer holds (``taken``),
- within :data:`ATTACH_SPAN` × the object's largest extent of it,

linked by touching steps (:data:`ATTACH_REACH`, the rule :func:`cos3d.query.objects.split_objects` links by).

It reads the prompt's relevancy and the field, never ground truth. The engine applies it to whole-object text
answers when :attr:`cos3d.query.settings.QuerySettings.attach_thin_parts` says so (chosen on the development
prompts); the robot API's pick targets always apply it (:mod:`cos3d.robot.targets`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from scipy.spatial import cKDTree

from cos3d.query.objects import Object3D, make_object

ATTACH_REACH = 2.0
"""Two Gaussians touch when their distance is below this × the sum of their largest standard deviations."""
ATTACH_COSINE = 0.5
"""A Gaussian attached to an object must have an instance feature at least this close (cosine) to the
object's mean one: far looser than the query's refinement, which a thin part's blurred features miss, and
still far from a neighbour's (a table's measured 0.15-0.5 against the toy robot's)."""
ATTACH_SPAN = 0.5
"""Attached Gaussians lie within this share of the object's largest extent of its query points."""


def attach_thin_parts(obj: Object3D, *, relevancy: np.ndarray, unit: np.ndarray, means: np.ndarray,
                      scales: np.ndarray, opacity: np.ndarray, taken: np.ndarray) -> Object3D:
    """``obj`` grown by the thin parts the refinement left out (module docstring); ``obj`` itself when none.

    Args:
        relevancy: ``[N]`` the prompt's raw relevancy per Gaussian; unit: ``[N, F]`` unit instance features
            of the answer's level; means: ``[N, 3]``; scales: ``[N]`` each Gaussian's largest standard
            deviation; opacity: ``[N]``; taken: bool ``[N]`` Gaussians of the answer's other objects.
    """
    ids = obj.gaussians.detach().cpu().numpy().astype(np.int64)
    if len(ids) < 3:
        return obj
    R = np.asarray(relevancy, np.float64)
    X = np.asarray(means, np.float64)
    s = np.asarray(scales, np.float64)
    op = np.asarray(opacity, np.float64)
    mine = np.zeros(len(X), bool)
    mine[ids] = True
    mf = (unit[ids] * op[ids, None]).sum(0)
    mf /= max(float(np.linalg.norm(mf)), 1e-12)
    extent = float(np.max(X[ids].max(0) - X[ids].min(0)))
    r10 = float(np.percentile(R[ids], 10))
    r_min = r10 - 0.1 * max(r10 - float(np.median(R)), 0.0)
    cand_idx = np.nonzero((R >= r_min) & (unit @ mf >= ATTACH_COSINE) & ~mine & ~taken)[0]
    if len(cand_idx) == 0:
        return obj
    d0, _ = cKDTree(X[ids]).query(X[cand_idx], k=1)
    cand_idx = cand_idx[d0 <= ATTACH_SPAN * extent]
    if len(cand_idx) == 0:
        return obj
    tree = cKDTree(X[cand_idx])
    smax = float(s[cand_idx].max())
    joined = np.zeros(len(cand_idx), bool)
    frontier = ids
    while len(frontier):
        nxt = set()
        for f, nb in zip(frontier, tree.query_ball_point(X[frontier], ATTACH_REACH * (s[frontier] + smax))):
            for j in nb:
                if not joined[j] and np.linalg.norm(X[cand_idx[j]] - X[f]) < ATTACH_REACH * (s[f] + s[cand_idx[j]]):
                    joined[j] = True
                    nxt.add(j)
        frontier = cand_idx[sorted(nxt)]
    if not joined.any():
        return obj
    whole = torch.from_numpy(np.concatenate([ids, cand_idx[joined]]))
    full = make_object(whole, torch.from_numpy(X), torch.from_numpy(op), torch.from_numpy(R))
    return dataclasses.replace(obj, gaussians=full.gaussians, centroid=full.centroid, box=full.box, points=full.points)
