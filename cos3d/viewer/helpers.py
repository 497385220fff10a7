"""Pure helpers of the viewer: numpy in, numpy out, no server and no run.

Frames: everything is in the scene's world frame (the frame of ``gaussians.means`` and of the cameras'
``c2w``, OpenCV camera axes: +x right, +y down, +z forward, which is also viser's camera convention).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from cos3d.core.rotations import quat_to_rotmat

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.data.gaussians import Gaussians
    from cos3d.data.scene import Camera

DEFAULT_MAX_SPLATS = 300_000
"""Splats sent to the browser by default (the most opaque ones)."""


def _np(x: Any, dtype: Any = np.float32) -> np.ndarray:
    """A numpy copy-or-view of a tensor or array-like."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


# ----------------------------------------------------------------------------- splats
def quats_scales_to_covariances(quats: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """World covariances ``Σ = R S Sᵀ Rᵀ`` ``[N, 3, 3]`` float32.

    Args:
        quats: ``[N, 4]`` wxyz rotations, not necessarily normalised.
        scales: ``[N, 3]`` standard deviations along the local axes (``Gaussians.scales``, not logs).
    """
    quats, scales = _np(quats, np.float64), _np(scales, np.float64)
    n = quats.shape[0]
    if quats.shape != (n, 4) or scales.shape != (n, 3):
        raise ValueError(f"quats must be [N, 4] and scales [N, 3], got {list(quats.shape)} and {list(scales.shape)}")
    M = quat_to_rotmat(quats) * scales[:, None, :]  # R S (scale the columns)
    return (M @ np.swapaxes(M, 1, 2)).astype(np.float32)


def top_opacity_ids(opacities: np.ndarray, max_splats: int) -> np.ndarray:
    """Sorted int64 ids of the ``max_splats`` most opaque Gaussians (all of them when fewer)."""
    op = _np(opacities).reshape(-1)
    n = op.shape[0]
    if max_splats <= 0:
        raise ValueError(f"max_splats must be positive, got {max_splats}")
    if n <= max_splats:
        return np.arange(n, dtype=np.int64)
    keep = np.argpartition(-op, max_splats - 1)[:max_splats]
    return np.sort(keep).astype(np.int64)


@dataclass
class SplatArrays:
    """What ``scene.add_gaussian_splats`` takes, for a subset of a scene's Gaussians."""

    ids: np.ndarray
    """[K] int64 Gaussian ids (rows of the full scene) in display order."""
    centers: np.ndarray
    """[K, 3] float32 world positions."""
    covariances: np.ndarray
    """[K, 3, 3] float32 world covariances."""
    rgbs: np.ndarray
    """[K, 3] float32 DC colours in [0, 1]."""
    opacities: np.ndarray
    """[K, 1] float32."""


def splat_arrays(gaussians: Gaussians, ids: np.ndarray) -> SplatArrays:
    """Splat arrays of ``gaussians`` (a :class:`cos3d.data.gaussians.Gaussians`) rows ``ids``."""
    import torch

    idx = torch.as_tensor(np.asarray(ids, np.int64), device=gaussians.means.device)
    return SplatArrays(
        ids=np.asarray(ids, np.int64),
        centers=_np(gaussians.means[idx]),
        covariances=quats_scales_to_covariances(gaussians.quats[idx], gaussians.scales[idx]),
        rgbs=np.clip(_np(gaussians.rgb()[idx]), 0.0, 1.0),
        opacities=_np(gaussians.opacities[idx]).reshape(-1, 1),
    )


# ----------------------------------------------------------------------------- colours
def object_colors(k: int) -> np.ndarray:
    """``[k, 3]`` float32 distinct saturated colours in [0, 1], the same for the same ``k`` (golden-ratio hues)."""
    hues = (0.02 + 0.618033988749895 * np.arange(k)) % 1.0
    return np.array([colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues], np.float32).reshape(k, 3)


def tint_rgbs(
    rgbs: np.ndarray,
    rows_per_object: Sequence[np.ndarray],
    colors: np.ndarray,
    *,
    strength: float = 0.7,
    others: float = 1.0,
) -> np.ndarray:
    """Highlight: a copy of ``rgbs`` with object ``k``'s rows blended towards ``colors[k]``.

    Args:
        rgbs: ``[N, 3]`` colours in [0, 1].
        rows_per_object: per object, the row indices (into ``rgbs``) of its Gaussians. Where objects
            overlap the earlier (better) object wins.
        colors: ``[K, 3]`` object colours in [0, 1] (``K >= len(rows_per_object)``).
        strength: blend weight of the object colour (0 = unchanged, 1 = flat colour).
        others: multiplier for the rows of no object (1 = unchanged: only selected rows change;
            < 1 dims the rest of the scene).

    Returns:
        ``[N, 3]`` float32.
    """
    base = np.asarray(rgbs, np.float32)
    out = base * np.float32(others) if others != 1.0 else base.copy()
    colors = np.asarray(colors, np.float32)
    if len(rows_per_object) > len(colors):
        raise ValueError(f"{len(rows_per_object)} objects but only {len(colors)} colours")
    for k in reversed(range(len(rows_per_object))):  # best object last, so it wins overlaps
        rows = np.asarray(rows_per_object[k], np.int64)
        out[rows] = (1.0 - strength) * base[rows] + strength * colors[k]
    return out


_HEAT = np.array(  # dark blue → blue → cyan → yellow → red: a perceptually ordered heat ramp
    [[0.05, 0.03, 0.25], [0.13, 0.30, 0.85], [0.10, 0.80, 0.85], [0.98, 0.90, 0.15], [0.90, 0.10, 0.05]],
    np.float32,
)


def heatmap_colors(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """``[N, 3]`` float32 heat colours of ``values [N]``: ``lo`` (default the minimum) is dark blue, ``hi``
    (default the maximum) red; values outside are clipped. A constant input is all ``lo`` colour."""
    v = _np(values, np.float64).reshape(-1)
    if len(v) == 0:
        return np.zeros((0, 3), np.float32)
    lo = float(np.min(v)) if lo is None else float(lo)
    hi = float(np.max(v)) if hi is None else float(hi)
    t = np.zeros_like(v) if hi <= lo else np.clip((v - lo) / (hi - lo), 0.0, 1.0)
    x = t * (len(_HEAT) - 1)
    i = np.minimum(x.astype(np.int64), len(_HEAT) - 2)
    f = (x - i)[:, None]
    return ((1 - f) * _HEAT[i] + f * _HEAT[i + 1]).astype(np.float32)


def pca_colors(features: np.ndarray, *, sample: int = 20_000, seed: int = 0) -> np.ndarray:
    """Instance features ``[N, F]`` → ``[N, 3]`` float32 RGB in [0, 1] that tell instances apart: rows
    normalised and projected on their top three principal axes (fitted on at most ``sample`` rows), each
    axis scaled to [−1, 1] by its 1–99 % points; the first two axes give the **hue** (their angle) and the
    saturation (their radius), the third the brightness within [0.55, 1]. No colour is near-black (the
    brightest channel is at least 0.55), so every instance stays visible and distinct hues separate
    instances that a plain RGB map of the axes shows as dark greys."""
    f = _np(features, np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be [N, F], got {list(f.shape)}")
    n, d = f.shape
    if n == 0:
        return np.zeros((0, 3), np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    rows = np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False)
    mu = f[rows].mean(0)
    _, _, vt = np.linalg.svd(f[rows] - mu, full_matrices=False)
    axes = np.zeros((3, d))
    axes[: min(3, len(vt))] = vt[:3]
    proj = (f - mu) @ axes.T  # [N, 3]
    lo, hi = np.percentile(proj[rows], 1, axis=0), np.percentile(proj[rows], 99, axis=0)
    mid, half = 0.5 * (lo + hi), np.maximum(0.5 * (hi - lo), 1e-9)
    u = np.clip((proj - mid) / half, -1.0, 1.0)  # [N, 3] in [-1, 1]
    hue = (np.arctan2(u[:, 1], u[:, 0]) / (2 * np.pi)) % 1.0
    sat = np.clip(0.35 + 0.65 * np.hypot(u[:, 0], u[:, 1]) / np.sqrt(2.0), 0.0, 1.0)
    val = 0.55 + 0.45 * 0.5 * (u[:, 2] + 1.0)
    return hsv_to_rgb(hue, sat, val)


def instance_colors(features: np.ndarray, *, k: int = 24, iters: int = 12, sample: int = 20_000,
                    seed: int = 0, merge: float = 0.9) -> np.ndarray:
    """Instance features ``[N, F]`` → ``[N, 3]`` float32 RGB that tells instances apart: the unit features
    are clustered in instance space (spherical k-means, ``k`` clusters fitted on at most ``sample`` rows;
    clusters whose centres have cosine > ``merge`` are joined: one instance split in two stays one colour);
    each cluster gets its own hue (golden-ratio steps, the biggest cluster first, so neighbours in the list
    differ most) and each Gaussian is shaded by its cosine to its cluster's centre (brightness 0.6–1). No
    colour is near-black, and two instances share a colour only when the field puts them in one cluster
    (which a plain RGB map of the principal axes does for most small objects)."""
    f = _np(features, np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be [N, F], got {list(f.shape)}")
    n = f.shape[0]
    if n == 0:
        return np.zeros((0, 3), np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    rows = rng.choice(n, size=min(n, sample), replace=False)
    x = f[rows]
    k = max(1, min(k, len(x)))
    # k-means++ seeding on cosine distance, then Lloyd steps on the sphere
    cent = [x[int(rng.integers(len(x)))]]
    d = 1.0 - x @ cent[0]
    for _ in range(1, k):
        p = np.maximum(d, 0.0) ** 2
        cent.append(x[int(rng.choice(len(x), p=p / p.sum()))] if p.sum() > 0 else x[int(rng.integers(len(x)))])
        d = np.minimum(d, 1.0 - x @ cent[-1])
    C = np.stack(cent)
    for _ in range(iters):
        a = np.argmax(x @ C.T, axis=1)
        for j in range(k):
            m = x[a == j]
            if len(m):
                c = m.sum(0)
                C[j] = c / max(float(np.linalg.norm(c)), 1e-12)
    # clusters whose centres nearly coincide (one big instance split in k-means) become one: one colour each
    parent = np.arange(k)

    def root(i: int) -> int:
        while parent[i] != i:
            i = int(parent[i])
        return i

    cc = C @ C.T
    for i in range(k):
        for j in range(i):
            if cc[i, j] > merge:
                parent[root(i)] = root(j)
    roots = np.array([root(i) for i in range(k)])
    _, group = np.unique(roots, return_inverse=True)
    G = np.zeros((int(group.max()) + 1, C.shape[1]))
    np.add.at(G, group, C)
    C = G / np.maximum(np.linalg.norm(G, axis=1, keepdims=True), 1e-12)
    k = len(C)
    sims = f @ C.T
    lab = np.argmax(sims, axis=1)
    order = np.argsort(-np.bincount(lab, minlength=k), kind="stable")
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)
    hue = (0.02 + 0.618033988749895 * rank[lab]) % 1.0
    cos = sims[np.arange(n), lab]
    val = 0.6 + 0.4 * np.clip((cos - 0.5) / 0.5, 0.0, 1.0)
    sat = np.full(n, 0.8)
    return hsv_to_rgb(hue, sat, val)


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV → RGB: ``h, s, v [N]`` in [0, 1] → ``[N, 3]`` float32."""
    h, s, v = (np.asarray(x, np.float64).reshape(-1) for x in (h, s, v))
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return table[i, np.arange(len(h))].astype(np.float32)


HIGHLIGHTS = np.array(  # saturated, bright, far apart: one of them contrasts with any object colour
    [[1.0, 0.9, 0.0], [0.0, 0.95, 1.0], [1.0, 0.0, 0.9], [0.1, 1.0, 0.2], [1.0, 0.45, 0.0], [0.45, 0.35, 1.0]],
    np.float32)


def contrast_colors(object_rgbs: Sequence[np.ndarray]) -> np.ndarray:
    """A highlight colour per object that stands out against **that object's own colours**:
    ``object_rgbs[k]`` is ``[M_k, 3]`` (the object's splat colours in [0, 1]); each object gets the
    :data:`HIGHLIGHTS` colour farthest (in RGB) from its median colour, preferring colours no earlier object
    took. A red can is tinted cyan or yellow, never red; a blue mug yellow, never blue. Returns ``[K, 3]``
    float32."""
    out = np.zeros((len(object_rgbs), 3), np.float32)
    used: set[int] = set()
    for k, rgbs in enumerate(object_rgbs):
        r = np.asarray(rgbs, np.float32).reshape(-1, 3)
        med = np.median(r, axis=0) if len(r) else np.full(3, 0.5, np.float32)
        dist = np.linalg.norm(HIGHLIGHTS - med, axis=1)
        dist = dist - np.array([0.25 if i in used else 0.0 for i in range(len(HIGHLIGHTS))])
        best = int(np.argmax(dist))
        used.add(best)
        out[k] = HIGHLIGHTS[best]
    return out


def colorbar_image(width: int = 240, height: int = 14) -> np.ndarray:
    """uint8 ``[height, width, 3]``: the relevancy heat ramp (:func:`heatmap_colors`), low on the left."""
    row = (heatmap_colors(np.linspace(0.0, 1.0, width), 0.0, 1.0) * 255).round().astype(np.uint8)
    return np.repeat(row[None], height, axis=0)


def label_colors(labels: np.ndarray, base: np.ndarray, *, rest: float = 0.35) -> np.ndarray:
    """The scene-wide decomposition: label ``k > 0`` gets ``object_colors`` colour ``k − 1``, label 0
    keeps ``base`` darkened by ``rest``. ``labels [N]`` int, ``base [N, 3]`` → ``[N, 3]`` float32."""
    labels = np.asarray(labels, np.int64).reshape(-1)
    out = np.asarray(base, np.float32) * np.float32(rest)
    k = int(labels.max()) if len(labels) else 0
    if k > 0:
        cols = object_colors(k)
        on = labels > 0
        out[on] = cols[labels[on] - 1]
    return out


# ----------------------------------------------------------------------------- poses and framing
def rotmat_to_wxyz(R: np.ndarray) -> np.ndarray:
    """``[3, 3]`` rotation → ``[4]`` wxyz quaternion (via ``viser.transforms``)."""
    import viser.transforms as vtf

    R = np.asarray(R, np.float64)
    u, _, vt = np.linalg.svd(R)  # nearest rotation: tolerate float error in PCA axes
    R = u @ vt
    if np.linalg.det(R) < 0:
        R = u @ np.diag([1.0, 1.0, -1.0]) @ vt
    return np.asarray(vtf.SO3.from_matrix(R).wxyz, np.float64)


def box_pose(center: np.ndarray, R: np.ndarray, extent: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An oriented box ``T_world_box`` → ``(wxyz, position, dimensions)`` for ``scene.add_box``.

    Zero extents (one-Gaussian objects) get a tiny positive size so the box stays visible.
    """
    dims = np.maximum(np.asarray(extent, np.float64).reshape(3), 1e-3)
    return rotmat_to_wxyz(R), np.asarray(center, np.float64).reshape(3), dims


def frustum_pose(camera: Camera) -> tuple[float, float, np.ndarray, np.ndarray]:
    """A :class:`cos3d.data.scene.Camera` → ``(fov_y, aspect, wxyz, position)`` for ``scene.add_camera_frustum``.

    cos3d cameras and viser frustums share the OpenCV axes (+z forward, +y down), so ``T_world_camera``
    is ``camera.c2w`` as is.
    """
    fy = float(camera.K[1, 1])
    fov = 2.0 * float(np.arctan2(camera.height / 2.0, fy))
    c2w = np.asarray(camera.c2w, np.float64)
    return fov, camera.width / camera.height, rotmat_to_wxyz(c2w[:3, :3]), c2w[:3, 3].copy()


def guess_up_direction(c2ws: Sequence[np.ndarray]) -> np.ndarray | None:
    """The world's up as the mean camera up (−y in OpenCV); ``None`` when cameras disagree or are absent."""
    if len(c2ws) == 0:
        return None
    ups = -np.stack([np.asarray(c, np.float64)[:3, 1] for c in c2ws])
    m = ups.mean(0)
    norm = float(np.linalg.norm(m))
    if norm < 0.3:  # cameras rolled every which way: no reliable up
        return None
    return m / norm


def scene_extent(points: np.ndarray) -> float:
    """A robust size of a point set (diagonal of its 2–98 % box), at least 1e-3."""
    p = np.asarray(points, np.float64)
    if len(p) == 0:
        return 1.0
    lo, hi = np.percentile(p, 2, axis=0), np.percentile(p, 98, axis=0)
    return max(float(np.linalg.norm(hi - lo)), 1e-3)


@dataclass
class Framing:
    """How the viewer opens: what the first view looks at and how big the helpers are drawn."""

    look_at: np.ndarray
    """[3] centre of the scene's content (world)."""
    position: np.ndarray
    """[3] the first view's camera position (world)."""
    up: np.ndarray | None
    """[3] unit world up (from the cameras), or None."""
    extent: float
    """Diagonal of the content's robust box, metres (or scene units)."""
    frustum_scale: float
    """Depth of a drawn camera frustum."""
    axes_length: float
    """Length of the drawn world axes."""
    inliers: np.ndarray
    """[N] bool: the points that count as content (far floaters are False)."""


def axes_focus(c2ws: Sequence[np.ndarray]) -> np.ndarray | None:
    """The point closest (least squares) to every camera's optical axis: what the cameras look at.
    ``None`` with fewer than two cameras or (near) parallel axes."""
    if len(c2ws) < 2:
        return None
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c in c2ws:
        c = np.asarray(c, np.float64)
        o, d = c[:3, 3], c[:3, 2] / np.linalg.norm(c[:3, 2])
        P = np.eye(3) - np.outer(d, d)  # distance to the axis = |P (x - o)|
        A += P
        b += P @ o
    w = np.linalg.eigvalsh(A)
    if w[0] < 1e-3 * len(c2ws):  # all axes (nearly) parallel: no single focus
        return None
    return np.linalg.solve(A, b)


def scene_framing(
    points: np.ndarray,
    c2ws: Sequence[np.ndarray],
    *,
    fov_y: float = np.deg2rad(50.0),
    back_off: float = 0.85,
) -> Framing:
    """A first view that frames the scene, from the cameras' bounds and the splat centres ``points [N, 3]``.

    With cameras: the view looks at what they look at (:func:`axes_focus`, else the content's centre)
    from the direction of the camera closest to the mean camera direction, ``back_off`` times that camera's distance, and in front of every
    camera inside the view cone (what a training view holds, with no frustum in the way). Splats count as content only inside the
    cameras' bounds grown by half their size on every side, then inside the 2–98 % box of those: far
    floaters neither move nor widen the first view. Frustums are drawn 6 % of the cameras' distance
    deep, the axes 15 % long. Without cameras, the view frames the content's robust box from +z.
    """
    p = np.asarray(points, np.float64).reshape(-1, 3)
    cams = np.array([np.asarray(c, np.float64)[:3, 3] for c in c2ws]).reshape(-1, 3)
    keep = np.ones(len(p), bool)
    if len(cams) and len(p):
        lo, hi = cams.min(0), cams.max(0)
        grow = 0.5 * max(float(np.linalg.norm(hi - lo)), 1e-3)
        inside = np.all((p >= lo - grow) & (p <= hi + grow), axis=1)
        if inside.sum() >= max(10, 0.05 * len(p)):  # else the cameras say nothing about the content
            keep = inside
    if keep.sum() >= 10:
        q = p[keep]
        plo, phi = np.percentile(q, 2, axis=0), np.percentile(q, 98, axis=0)
        keep &= np.all((p >= plo) & (p <= phi), axis=1)
    content = p[keep] if keep.any() else p
    if len(content):
        clo, chi = content.min(0), content.max(0)
        center = 0.5 * (clo + chi)
        extent = max(float(np.linalg.norm(chi - clo)), 1e-3)
    else:
        center, extent = (cams.mean(0) if len(cams) else np.zeros(3)), 1.0
    up = guess_up_direction(list(c2ws))
    if len(cams):
        focus = axes_focus(c2ws)
        if focus is None or (len(content) and np.any(np.abs(focus - center) > extent)):
            focus = center  # parallel axes, or a focus far outside the content
        # from the training camera whose direction is closest to the mean one: a view like the training
        # views (a ring of cameras has a mean straight above the focus, a view no camera had)
        dirs = cams - focus
        dirs /= np.maximum(np.linalg.norm(dirs, axis=1, keepdims=True), 1e-12)
        m = dirs.mean(0)
        direction = dirs[int(np.argmax(dirs @ m))] if np.linalg.norm(m) > 1e-9 else dirs[0]
        cam_dist = float(np.median(np.linalg.norm(cams - focus, axis=1)))
        t = back_off * float(np.linalg.norm(cams[int(np.argmax(dirs @ m))] - focus)) if np.linalg.norm(m) > 1e-9 \
            else back_off * cam_dist
        # stay in front of every camera (and its frustum) inside the view cone: no grey bars across the view
        rel = cams - focus
        along = rel @ direction
        lateral = np.linalg.norm(rel - along[:, None] * direction, axis=1)
        ahead = (along > 0) & (lateral < 0.6 * along)
        if ahead.any():
            t = min(t, float(along[ahead].min()) - 0.1 * cam_dist)
        t = max(t, 0.4 * cam_dist)
        return Framing(
            look_at=focus, position=focus + direction * t, up=up, extent=extent,
            frustum_scale=float(max(0.06 * cam_dist, 1e-4)), axes_length=float(max(0.15 * cam_dist, 1e-4)),
            inliers=keep,
        )
    dist = 1.15 * 0.5 * extent / np.tan(0.5 * fov_y)
    return Framing(look_at=center, position=center + np.array([0.0, 0.0, 1.0]) * dist, up=up, extent=extent,
                   frustum_scale=0.05 * extent, axes_length=0.1 * extent, inliers=keep)


def upright_box(points: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The box of ``points [K, 3]`` standing on the world's ``up``: its third axis is ``up``, the other two
    the principal axes of the points seen from above (their horizontal spread). Returns ``(center [3],
    R [3, 3] (columns: box axes in world), extent [3])`` covering every point."""
    p = np.asarray(points, np.float64).reshape(-1, 3)
    z = np.asarray(up, np.float64).reshape(3)
    z = z / max(float(np.linalg.norm(z)), 1e-12)
    a = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(z, a)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(z, e1)
    h = np.stack([p @ e1, p @ e2], 1)
    if len(p) >= 3:
        w, v = np.linalg.eigh(np.cov((h - h.mean(0)).T))
        d = v[:, int(np.argmax(w))]
    else:
        d = np.array([1.0, 0.0])
    x = d[0] * e1 + d[1] * e2
    y = np.cross(z, x)
    R = np.stack([x, y, z], 1)
    local = p @ R
    lo, hi = local.min(0), local.max(0)
    return R @ (0.5 * (lo + hi)), R, hi - lo


def display_box(points: np.ndarray, box: tuple[np.ndarray, np.ndarray, np.ndarray], up: np.ndarray | None,
                *, slack: float = 1.6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The box the viewer draws for an object: :func:`upright_box` when the world's ``up`` is known and the
    upright box is at most ``slack`` times the volume of the object's own (PCA-oriented) ``box`` — an object
    resting on a surface, whose PCA box looks tilted — else ``box`` unchanged (an object lying askew)."""
    if up is None or len(np.asarray(points).reshape(-1, 3)) < 3:
        return box
    c, R, e = upright_box(points, up)

    def volume(ext: np.ndarray) -> float:  # thin sides floored at 5 % of the longest: flat boxes compare fairly
        ext = np.asarray(ext, np.float64).reshape(3)
        return float(np.prod(np.maximum(ext, max(0.05 * float(ext.max()), 1e-9))))

    v_up, v_own = volume(e), volume(np.asarray(box[2]))
    return (c, R, e) if v_up <= slack * v_own else box


def view_camera(wxyz: Sequence[float], position: Sequence[float], fov_y: float, width: int, height: int,
                *, max_side: int = 256) -> Camera:
    """A browser's current view (viser camera: OpenCV axes, vertical field of view ``fov_y`` radians,
    canvas ``width`` × ``height`` pixels) as a :class:`cos3d.data.scene.Camera` at most ``max_side``
    pixels on its longer side (same field of view): the camera the viewer renders blending weights in
    for a box dragged or a pixel clicked in the 3D view."""
    import viser.transforms as vtf

    from cos3d.data.scene import Camera

    if width <= 0 or height <= 0:
        raise ValueError(f"the view has no size yet ({width}x{height}); wait for the page to draw")
    s = min(1.0, max_side / float(max(width, height)))
    w, h = max(8, int(round(width * s))), max(8, int(round(height * s)))
    f = 0.5 * h / np.tan(0.5 * float(fov_y))
    c2w = np.eye(4)
    c2w[:3, :3] = vtf.SO3(np.asarray(wxyz, np.float64)).as_matrix()
    c2w[:3, 3] = np.asarray(position, np.float64)
    K = np.array([[f, 0, (w - 1) / 2.0], [0, f, (h - 1) / 2.0], [0, 0, 1]], np.float64)
    return Camera(K=K, c2w=c2w, width=w, height=h)


@dataclass
class ImagePlane:
    """An image shown in the 3D scene (``scene.add_image``): viser draws it in the node's local xy plane,
    pixel column ``u`` at ``x = (u / width − ½) · render_width``, row ``v`` at ``y = (v / height − ½) ·
    render_height`` (rows down +y, the OpenCV way), seen from the node's −z side."""

    R: np.ndarray
    """[3, 3] the node's rotation (columns: local x, y, z in world)."""
    center: np.ndarray
    """[3] the node's position (the image's centre), world."""
    render_width: float
    render_height: float
    width: int
    """The image's pixels."""
    height: int

    def pixels_of_screen(self, camera: Camera, xy: np.ndarray) -> np.ndarray:
        """``[K, 2]`` image pixels (u, v) hit by the rays through ``camera``'s pixels ``xy [K, 2]`` (NaN where
        a ray misses the plane or runs parallel to it); values outside ``[0, width] × [0, height]`` lie
        beside the image."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        K = np.asarray(camera.K, np.float64)
        c2w = np.asarray(camera.c2w, np.float64)
        rays = np.stack([(xy[:, 0] - K[0, 2]) / K[0, 0], (xy[:, 1] - K[1, 2]) / K[1, 1], np.ones(len(xy))], 1)
        d = rays @ c2w[:3, :3].T
        o = c2w[:3, 3]
        n = self.R[:, 2]
        den = d @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((self.center - o) @ n) / den
        hit = o + t[:, None] * d
        local = (hit - self.center) @ self.R
        u = (local[:, 0] / self.render_width + 0.5) * self.width
        v = (local[:, 1] / self.render_height + 0.5) * self.height
        out = np.stack([u, v], 1)
        out[~((t > 0) & (np.abs(den) > 1e-12))] = np.nan
        return out


def image_plane_beside(framing: Framing, width: int, height: int, *, size: float = 0.4) -> ImagePlane:
    """Where the viewer shows an uploaded reference image in the 3D scene: upright and facing the first
    view (:class:`Framing`), ``size`` × the scene's extent tall, just right of the scene's content."""
    z = np.asarray(framing.look_at, np.float64) - np.asarray(framing.position, np.float64)
    z /= max(float(np.linalg.norm(z)), 1e-12)
    up = np.asarray(framing.up, np.float64) if framing.up is not None else np.array([0.0, 0.0, 1.0])
    y = -(up - (up @ z) * z)
    if np.linalg.norm(y) < 1e-6:
        y = np.array([0.0, 1.0, 0.0]) - z[1] * z
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    R = np.stack([x, y, z], 1)
    rh = size * framing.extent
    rw = rh * width / max(height, 1)
    center = np.asarray(framing.look_at, np.float64) + x * (0.5 * framing.extent + 0.5 * rw) - y * 0.25 * rh
    return ImagePlane(R=R, center=center, render_width=float(rw), render_height=float(rh), width=int(width),
                      height=int(height))


def ray_camera(origin: np.ndarray, direction: np.ndarray, *, size: int = 33, fov_deg: float = 4.0) -> Camera:
    """A small pinhole camera at ``origin`` looking along ``direction``: its centre pixel
    ``((size − 1) / 2, (size − 1) / 2)`` lies on the ray. How a click in the 3D view (a viser scene click:
    a world ray) becomes a click in a view, answered by the engine's click semantics."""
    from cos3d.data.scene import Camera

    o = np.asarray(origin, np.float64).reshape(3)
    z = np.asarray(direction, np.float64).reshape(3)
    n = float(np.linalg.norm(z))
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"ray direction must be a non-zero vector, got {z.tolist()}")
    z = z / n
    a = np.array([0.0, 0.0, 1.0]) if abs(z[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(a, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, o
    f = 0.5 * size / np.tan(0.5 * np.deg2rad(fov_deg))
    c = (size - 1) / 2.0
    return Camera(K=[[f, 0, c], [0, f, c], [0, 0, 1]], c2w=c2w, width=size, height=size)


def parse_box(text: str, width: int, height: int) -> list[float] | None:
    """``"x0,y0,x1,y1"`` pixels → a box inside a ``width`` × ``height`` image; ``""`` → None.

    Raises ValueError naming the problem (the app shows it)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        v = [float(t) for t in text.replace(" ", ",").split(",") if t]
    except ValueError:
        raise ValueError(f"box {text!r}: give four numbers x0,y0,x1,y1 in pixels") from None
    if len(v) != 4:
        raise ValueError(f"box {text!r}: give four numbers x0,y0,x1,y1 in pixels")
    x0, y0, x1, y1 = v
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError(f"box {text!r} is empty inside the {width}x{height} image")
    return [x0, y0, x1, y1]


def draw_prompt(image: np.ndarray, box: Sequence[float] | None = None, points: np.ndarray | None = None,
                mask: np.ndarray | None = None) -> np.ndarray:
    """A copy of ``image`` uint8 ``[H, W, 3]`` with a prompt drawn on it: ``box`` (green outline),
    ``points [K, 2]`` (x, y: yellow squares) and ``mask`` bool ``[H, W]`` (red overlay, half opaque)."""
    out = np.array(image, np.uint8, copy=True)
    h, w = out.shape[:2]
    if mask is not None:
        m = np.asarray(mask, bool)
        if m.shape == (h, w):
            out[m] = (0.5 * out[m] + 0.5 * np.array([255, 40, 40])).astype(np.uint8)
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, x1 = np.clip([x0, x1 - 1], 0, w - 1)
        y0, y1 = np.clip([y0, y1 - 1], 0, h - 1)
        t = max(1, min(h, w) // 120)
        g = np.array([40, 230, 40], np.uint8)
        out[y0 : y0 + t, x0 : x1 + 1] = g
        out[max(y1 - t + 1, 0) : y1 + 1, x0 : x1 + 1] = g
        out[y0 : y1 + 1, x0 : x0 + t] = g
        out[y0 : y1 + 1, max(x1 - t + 1, 0) : x1 + 1] = g
    if points is not None:
        r = max(1, min(h, w) // 80)
        for x, y in np.asarray(points, np.float64).reshape(-1, 2):
            xi, yi = int(round(x)), int(round(y))
            out[max(yi - r, 0) : yi + r + 1, max(xi - r, 0) : xi + r + 1] = (255, 220, 0)
    return out
