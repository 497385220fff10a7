"""2D masks of a selection of Gaussians in any camera, under two protocols.

- ``"selected"`` (the COS3D/OpenGaussian 3D-selection protocol): render only the selected Gaussians;
  mask = accumulated alpha > 0.7. Ignores occlusion by the rest of the scene.
- ``"occlusion"`` (what a person or a robot sees): render the whole scene with a one-channel feature
  that is 1 on selected Gaussians and 0 elsewhere; keep pixels where the selected blending weight is more
  than half the pixel's total alpha (``Σ_sel w_i / Σ_all w_i > 0.5``).

The occlusion protocol only needs the view's blending weights, which do not depend on the selection:
:class:`MaskRenderer` records them once per camera (:func:`cos3d.render.compute_contributions`) and
then every mask of that view is a sparse product. The first mask asked of a view comes from a forward
render of the whole view instead: the indicator as a one-channel feature (a render of only the
selection's window took 0.2–0.4 s at 1296×968 with 25k Gaussians against 10–13 s for recording the weights;
the whole view has not been timed there). The second ask of a view records its weights, so evaluations and the
viewer, which ask a view many times, get sparse products. Both compute ``Σ_sel w_i / Σ_all w_i`` over the
same projection of the same camera, so ``cos3d query --masks-out`` (a fresh process: forward renders) and
``cos3d eval`` (recorded weights) score the same masks; the recorded weights leave out those below 1e-4,
which can flip a pixel whose ratio sits within that of 0.5 (at most two pixels a view on the test scene,
tests/test_masks2d.py). A render of
only the selection's window would be cheaper but changes the projection's frustum clamp
(:meth:`Camera.cropped`): up to a tenth of a small object's mask differed that way.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor

from cos3d.core.errors import Cos3dError
from cos3d.data.scene import Camera

PROTOCOLS = ("occlusion", "selected")
SELECTED_ALPHA = 0.7
OCCLUSION_RATIO = 0.5


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise Cos3dError(f"unknown mask protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return protocol


class MaskRenderer:
    """Renders selection masks of one set of Gaussians; caches each camera's blending weights.

    Args:
        gaussians: the scene's :class:`~cos3d.data.gaussians.Gaussians`.
        max_cached_views: how many cameras' weights to keep (LRU).
    """

    def __init__(self, gaussians, *, max_cached_views: int = 16) -> None:
        self.gaussians = gaussians
        self.max_cached_views = int(max_cached_views)
        self._contrib: OrderedDict[str, object] = OrderedDict()
        self._asked: set[str] = set()
        """Camera keys asked for an occlusion mask once already (the next ask records their weights)."""

    def contributions(self, camera: Camera):
        """The view's :class:`~cos3d.render.Contributions` (computed once per camera)."""
        from cos3d.render import compute_contributions

        key = camera.key()
        c = self._contrib.get(key)
        if c is None:
            c = compute_contributions(self.gaussians, camera)
            self._contrib[key] = c
            while len(self._contrib) > self.max_cached_views:
                self._contrib.popitem(last=False)
        else:
            self._contrib.move_to_end(key)
        return c

    def _indicator(self, selected: Tensor) -> Tensor:
        n = self.gaussians.num
        ind = torch.zeros(n, dtype=torch.float32, device=self.gaussians.device)
        if selected.numel():
            sel = selected.to(self.gaussians.device).long()
            if int(sel.min()) < 0 or int(sel.max()) >= n:
                raise ValueError(f"selection holds Gaussian ids outside [0, {n})")
            ind[sel] = 1.0
        return ind

    def footprint(self, selected: Tensor, camera: Camera) -> tuple[int, int, int, int] | None:
        """The pixel window ``(x0, y0, x1, y1)`` that ``selected``'s 3σ footprints can reach in ``camera``
        (None when none lies in front of it and inside the image)."""
        g = self.gaussians
        sel = selected.to(g.device).long()
        uv, z = camera.project(g.means[sel].detach().double().cpu().numpy())
        sigma = g.log_scales[sel].detach().exp().amax(1).double().cpu().numpy()
        front = z > 1e-6
        if not front.any():
            return None
        r = 3.0 * sigma[front] * max(camera.K[0, 0], camera.K[1, 1]) / z[front] + 2.0
        uv = uv[front]
        x0, y0 = np.floor((uv - r[:, None]).min(0)).astype(int)
        x1, y1 = np.ceil((uv + r[:, None]).max(0)).astype(int) + 1
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(camera.width, x1), min(camera.height, y1)
        return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None

    def occlusion(self, selected: Tensor, camera: Camera, *, ratio: float = OCCLUSION_RATIO) -> np.ndarray:
        """bool ``[H, W]``: pixels whose blending weight is mostly (> ``ratio``) from ``selected``: a forward
        render of the view the first time it is asked, the view's recorded weights (recorded on the second
        ask) after that (module docstring)."""
        h, w = camera.height, camera.width
        if selected.numel() == 0:
            return np.zeros((h, w), bool)
        key = camera.key()
        if key not in self._contrib and key not in self._asked:
            self._asked.add(key)
            return self._occlusion_forward(selected, camera, ratio)
        c = self.contributions(camera)
        ind = self._indicator(selected)
        sel_w = torch.zeros(h * w, dtype=c.weight.dtype, device=c.weight.device)
        sel_w.index_add_(0, c.pixel, c.weight * ind[c.gaussian].to(c.weight.dtype))
        alpha = c.alpha()
        m = (sel_w > ratio * alpha) & (alpha > 1e-6)
        return m.reshape(h, w).cpu().numpy()

    def _occlusion_forward(self, selected: Tensor, camera: Camera, ratio: float) -> np.ndarray:
        from cos3d.render import render

        if self.footprint(selected, camera) is None:  # the selection cannot reach this view
            return np.zeros((camera.height, camera.width), bool)
        ind = self._indicator(selected)[:, None].to(self.gaussians.means.dtype)
        with torch.no_grad():
            r = render(self.gaussians, camera, features=ind, render_rgb=False)
        sel_w, alpha = r.features[0, ..., 0], r.alpha[0]
        return ((sel_w > ratio * alpha) & (alpha > 1e-6)).cpu().numpy()

    def occlusion_many(self, selections: list[Tensor], camera: Camera, *, ratio: float = OCCLUSION_RATIO) -> list[np.ndarray]:
        """:meth:`occlusion` for several selections at once (one sparse product)."""
        h, w = camera.height, camera.width
        if not selections:
            return []
        c = self.contributions(camera)
        ind = torch.stack([self._indicator(s) for s in selections], 1)  # [N, Q]
        sel_w = c.render(ind)  # [H*W, Q]
        alpha = c.alpha()[:, None]
        m = (sel_w > ratio * alpha) & (alpha > 1e-6)
        return [m[:, q].reshape(h, w).cpu().numpy() for q in range(len(selections))]

    def selected(self, selected: Tensor, camera: Camera, *, alpha_threshold: float = SELECTED_ALPHA) -> np.ndarray:
        """bool ``[H, W]``: alpha of the selected Gaussians rendered alone > ``alpha_threshold``."""
        from cos3d.render import render

        h, w = camera.height, camera.width
        if selected.numel() == 0:
            return np.zeros((h, w), bool)
        sub = self.gaussians.subset(selected.to(self.gaussians.device).long())
        with torch.no_grad():
            out = render(sub, camera, render_rgb=False)
        return (out.alpha[0] > alpha_threshold).cpu().numpy()

    def mask(self, selected: Tensor, camera: Camera, protocol: str = "occlusion") -> np.ndarray:
        """bool ``[H, W]`` mask of ``selected`` in ``camera`` under ``protocol``."""
        if check_protocol(protocol) == "selected":
            return self.selected(selected, camera)
        return self.occlusion(selected, camera)
