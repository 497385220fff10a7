"""Image prompts on a posed scene view, answered without any 2D model or ground truth: lift the prompted
region into 3D through the view's blending weights and answer in instance space.

For a region ``M`` (bool ``[H, W]``: a box, mask, scribble or points made into a mask) of a view with a
known camera (one of the scene's frames):

1. ``w_in(g)`` = the blending weight Gaussian ``g`` contributes to the pixels of ``M``, ``w_all(g)`` = to the
   whole view (the cached per-view weights, :mod:`cos3d.render.contributions`);
2. the up to :data:`MAX_CANDIDATES` Gaussians of largest ``w_in`` are the candidates; each candidate ``i`` scores
   its instance-space neighbourhood ``B_i`` = candidates with ``cos(f_i, f_j) > 1 − 0.4 d̄`` (the loosest
   refinement threshold) by ``in_i · in_i / all_i`` with ``in_i = Σ_{j∈B_i} w_in(j)`` and
   ``all_i = Σ_{j∈B_i} w_all(j)``: the neighbourhood that carries most of the region's weight *and* lies
   mostly inside the region (a table under a box around a mug carries weight in the box too, but far
   more outside it);
3. the best candidate is the seed; the prompt is the region's rendered language feature over the seed's
   neighbourhood (``Σ w_in(j) L_j``); the object is grown from the seed exactly as a click grows
   (the engine's ``grow``, voting with ``w_in``).

The functions take what they read (the view's contributions, the level's features), not the engine:
:class:`cos3d.query.engine.QueryEngine` calls them.

Nothing here reads instance maps, names or any other ground truth: it is the held-out image-prompt path
of the evaluation (the oracle-2D ``labels`` embedder's name look-up is a different path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from cos3d.core.errors import Cos3dError

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from cos3d.render.contributions import Contributions

MAX_CANDIDATES = 1024


def region_weights(c: "Contributions", n: int, region: np.ndarray) -> tuple["Tensor", "Tensor", "Tensor"]:
    """``(Gaussian ids [K], w_in [K], w_all [K])`` of the Gaussians contributing to ``region`` (bool
    ``[H, W]``) in a view whose contributions (of ``n`` Gaussians) are ``c``."""
    region = np.asarray(region, bool)
    if region.shape != (c.height, c.width):
        raise Cos3dError(f"the prompt region is {region.shape[1]}x{region.shape[0]} but the view is "
                         f"{c.width}x{c.height}")
    if not region.any():
        raise Cos3dError("the image prompt's region is empty")
    inside = torch.from_numpy(region.reshape(-1)).to(c.pixel.device)[c.pixel]
    w = c.weight.float()
    w_all = torch.zeros(n).index_add_(0, c.gaussian.cpu(), w.cpu())
    w_in = torch.zeros(n).index_add_(0, c.gaussian[inside].cpu(), w[inside].cpu())
    ids = torch.nonzero(w_in > 0).flatten()
    if ids.numel() == 0:
        raise Cos3dError("no Gaussian is visible inside the image prompt's region; prompt on an object")
    return ids, w_in[ids], w_all[ids]


def region_prompt(c: "Contributions", unit: "Tensor", language: "Tensor", dbar: float, region: np.ndarray,
                  subset: "Tensor | None" = None) -> tuple[int, "Tensor", tuple["Tensor", "Tensor"]]:
    """Steps 1-2 of the module docstring on one level (unit instance features ``unit`` [N, d], language
    features ``language`` [N, D], compactness ``dbar``) and a view's contributions ``c``: ``(seed Gaussian,
    prompt [D] (the region's rendered language feature over the seed's neighbourhood, not normalised),
    (candidate ids [K], w_in [K]))``. ``subset``: bool [N], the Gaussians allowed (a parent object)."""
    from cos3d.query.refine import thresholds

    ids, w_in, w_all = region_weights(c, int(unit.shape[0]), region)
    if subset is not None:
        keep = subset[ids]
        if not bool(keep.any()):
            raise Cos3dError("the image prompt's region holds none of the parent's Gaussians")
        ids, w_in, w_all = ids[keep], w_in[keep], w_all[keep]
    if ids.numel() > MAX_CANDIDATES:
        top = torch.topk(w_in, MAX_CANDIDATES).indices
        ids, w_in, w_all = ids[top], w_in[top], w_all[top]
    U = unit[ids]
    B = (U @ U.T) > thresholds(dbar)[0]  # [K, K] neighbourhoods in instance space
    Bf = B.float()
    inn = Bf @ w_in
    alll = (Bf @ w_all).clamp_min(1e-12)
    score = inn * (inn / alll)
    best = int(torch.argmax(score))
    seed = int(ids[best])
    members = B[best]
    prompt = (w_in[members, None] * language[ids[members]].float()).sum(0)
    return seed, prompt, (ids, w_in)
