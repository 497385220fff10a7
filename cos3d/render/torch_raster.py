"""A differentiable tile rasterizer for 3D Gaussians in pure torch (CPU or any device).

It follows gsplat's conventions so that both backends render the same image:

- projection: EWA splatting, ``cov2d = J W Σ Wᵀ Jᵀ + 0.3 I`` (the 3DGS low-pass "blur"), with the
  Jacobian evaluated at the mean clamped to 1.3× the field of view; Gaussians closer than
  ``near_plane`` (0.01) or farther than ``far_plane`` are culled, as are those with opacity < 1/255;
- one departure from gsplat (:func:`around_camera`): a Gaussian whose 3σ ellipsoid holds the camera centre
  and whose mean lies outside the field of view widened by 30 % is culled. EWA linearises the projection at
  the (clamped) mean, which says nothing about a Gaussian around the camera seen from the side: a 50 m
  "background" Gaussian grown in stage 0, its mean 22 m to the side of a held-out camera and 0.65 m ahead of
  its image plane, was splatted over the whole view in front of every object (every occlusion mask of that
  view came out empty). Such Gaussians inside the field of view are kept: they are the background that
  training views fitted. :func:`cos3d.render.render`'s gsplat path culls the same Gaussians;
- footprint: an axis-aligned box of half-size ``ceil(extend · sqrt(cov2d_ii))`` with
  ``extend = min(3.33, sqrt(2 ln(255 · opacity)))`` (gsplat's radii). Every pixel where a Gaussian
  reaches ``alpha >= 1/255`` lies inside that box, so the image does not depend on how pixels are
  grouped into tiles: we use 4×4 tiles (gsplat: 16×16) and drop a Gaussian from tiles where it
  reaches no pixel centre with ``alpha >= 1/255``;
- pixel centres: pixel (row i, column j) is sampled at ``(j + 0.5, i + 0.5)`` in the coordinates of
  the intrinsics handed to this module (gsplat's convention). :func:`cos3d.render.render` passes
  ``Camera.K`` shifted by +0.5 (OpenCV centre convention → corner convention), so a world point
  that ``Camera.project`` maps to integer pixel (u, v) lands on the centre of that pixel;
- compositing front to back in depth order: ``alpha = min(0.999, o · exp(-σ))``, Gaussians with
  ``alpha < 1/255`` are skipped, and a pixel stops *before* the Gaussian that would bring its
  transmittance to ``T <= 1e-4`` (exclusive, as gsplat). The rendered value is ``Σ w_i c_i`` with
  ``w_i = alpha_i T_i`` and no normalisation; ``alpha = 1 - T_final``.

Work is vectorised over all active tiles of all cameras at once: in round r each tile evaluates the
next ``16 · 2^r`` (up to 256) Gaussians of its depth-sorted list at all its pixels; tiles whose
pixels are all finished drop out (early termination). σ is evaluated as one batched matmul of
per-Gaussian quadratic-form coefficients with pixel monomials, and ``alpha = exp2(log2(o) - σ log2 e)``.

The rasterization step is one ``torch.autograd.Function`` with a hand-written backward pass
(front to back, using ``Σ_{j>k} w_j c_j = C - Σ_{j<=k} w_j c_j``); it reuses the forward pass's
alphas and weights (up to ``STORE_BUDGET`` elements, else it recomputes them). The projection
(EWA, SH) is plain torch autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cos3d.core.rotations import quat_to_rotmat

TILE = 4
"""Tile edge in pixels. Results do not depend on it (see :func:`intersect_tiles`); smaller tiles
evaluate fewer pixels outside each Gaussian's footprint. gsplat uses 16 on the GPU."""
ALPHA_MAX = 0.999
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
EPS2D = 0.3
NEAR_PLANE = 0.01
ENCLOSE_SIGMAS = 3.0
"""A Gaussian whose ``ENCLOSE_SIGMAS``-σ ellipsoid holds a camera's centre is not splatted in that camera."""
FAR_PLANE = 1e10

DEFAULT_CHUNK = 16
"""Gaussians per tile walked together in the first round (tuned on a 2-core CPU, docs/benchmarks.md)."""
MAX_ROUND_CHUNK = 256
"""Later rounds double the chunk up to this many Gaussians."""
STORE_BUDGET = 1 << 27
"""Most weight/alpha elements kept from the forward pass for the backward pass (2 × 512 MiB in
float32); beyond it the backward pass recomputes them."""
MAX_CHUNK_ELEMS = 1 << 22
"""Upper bound on tiles × pixels × chunk elements per step (bounds temporary memory, ~16 MiB each)."""


# --------------------------------------------------------------------------- projection
@dataclass
class Projection:
    """Per-camera screen-space Gaussians (all tensors [C, N, ...])."""

    means2d: Tensor  # [C, N, 2] pixels (corner convention)
    conics: Tensor  # [C, N, 3] inverse 2D covariance (a, b, c) = [[a, b], [b, c]]
    depths: Tensor  # [C, N] camera-space z of the means
    radii: Tensor  # [C, N, 2] int32 footprint half-sizes, 0 = culled


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    eps2d: float = EPS2D,
    near_plane: float = NEAR_PLANE,
    far_plane: float = FAR_PLANE,
) -> Projection:
    """EWA projection of N Gaussians into C pinhole cameras (differentiable except ``radii``).

    Args:
        means: [N, 3]; quats: [N, 4] wxyz; scales: [N, 3] (activated); opacities: [N] (activated).
        viewmats: [C, 4, 4] world-to-camera (OpenCV axes); Ks: [C, 3, 3] (corner pixel convention).
    """
    R = quat_to_rotmat(quats)  # [N, 3, 3]
    M = R * scales[:, None, :]  # R S, cov = M Mᵀ
    Rw = viewmats[:, :3, :3]  # [C, 3, 3]
    tw = viewmats[:, :3, 3]  # [C, 3]
    pc = torch.einsum("cij,nj->cni", Rw, means) + tw[:, None, :]  # [C, N, 3]
    x, y, z = pc.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    in_depth = (z >= near_plane) & (z <= far_plane)
    zs = torch.where(in_depth, z, torch.ones_like(z))
    rz = 1.0 / zs
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    tx = zs * torch.minimum(lim_xp, torch.maximum(-lim_xn, x * rz))
    ty = zs * torch.minimum(lim_yp, torch.maximum(-lim_yn, y * rz))
    # J = [[fx/z, 0, -fx tx/z²], [0, fy/z, -fy ty/z²]];  T = J Rw  (rows [C, N, 3])
    j00, j02 = fx * rz, -fx * tx * rz * rz
    j11, j12 = fy * rz, -fy * ty * rz * rz
    T0 = j00[..., None] * Rw[:, None, 0, :] + j02[..., None] * Rw[:, None, 2, :]
    T1 = j11[..., None] * Rw[:, None, 1, :] + j12[..., None] * Rw[:, None, 2, :]
    TM0 = torch.einsum("cnj,njk->cnk", T0, M)  # [C, N, 3]
    TM1 = torch.einsum("cnj,njk->cnk", T1, M)
    a = (TM0 * TM0).sum(-1) + eps2d
    b = (TM0 * TM1).sum(-1)
    c = (TM1 * TM1).sum(-1) + eps2d
    det = a * c - b * b
    ok = in_depth & (det > 0) & ~around_camera(means, quats, scales, viewmats, Ks, width, height)
    det_s = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_s, -b / det_s, a / det_s], dim=-1)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)
    with torch.no_grad():
        op = opacities.detach().expand(z.shape)
        extend = torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_MIN) / ALPHA_MIN)).clamp_max(3.33)
        rx = torch.ceil(extend * torch.sqrt(a.detach().clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.detach().clamp_min(0)))
        m2 = means2d.detach()
        onscreen = (m2[..., 0] + rx > 0) & (m2[..., 0] - rx < width) & (m2[..., 1] + ry > 0) & (m2[..., 1] - ry < height)
        valid = ok & (op >= ALPHA_MIN) & ((rx > 0) | (ry > 0)) & onscreen
        radii = torch.stack([rx, ry], dim=-1).masked_fill(~valid[..., None], 0).to(torch.int32)
    return Projection(means2d=means2d, conics=conics, depths=z, radii=radii)


def _take(t: Tensor, idx: Tensor) -> Tensor:
    """``t[idx]`` along dim 0 for an index tensor of any shape (index_select: much faster on CPU)."""
    return t.index_select(0, idx.reshape(-1)).reshape(idx.shape + t.shape[1:])


@torch.no_grad()
def encloses_camera(means: Tensor, quats: Tensor, scales: Tensor, viewmats: Tensor,
                    sigmas: float = ENCLOSE_SIGMAS) -> Tensor:
    """``[C, N]`` bool: whether camera c's centre lies inside Gaussian n's ``sigmas``-σ ellipsoid, i.e. the
    Mahalanobis distance ``|S⁻¹ Rᵀ (o_c − μ_n)| < sigmas`` (module docstring: such Gaussians are culled).

    Args:
        means: [N, 3]; quats: [N, 4] wxyz; scales: [N, 3] (activated); viewmats: [C, 4, 4] world-to-camera.
    """
    Rw, tw = viewmats[:, :3, :3], viewmats[:, :3, 3]
    centres = -torch.einsum("cji,cj->ci", Rw, tw)  # [C, 3]: o = -Rᵀ t for a rigid world-to-camera
    R = quat_to_rotmat(quats.detach())  # [N, 3, 3]
    d = centres[:, None, :] - means.detach()[None]  # [C, N, 3]
    local = torch.einsum("nji,cnj->cni", R, d) / scales.detach().clamp_min(1e-12)[None]
    return (local * local).sum(-1) < sigmas * sigmas


@torch.no_grad()
def around_camera(means: Tensor, quats: Tensor, scales: Tensor, viewmats: Tensor, Ks: Tensor, width: int,
                  height: int) -> Tensor:
    """``[C, N]`` bool: the Gaussians culled in each camera besides gsplat's rules (module docstring): their
    3σ ellipsoid holds the camera centre (:func:`encloses_camera`) and their mean lies outside the field of
    view widened by 30 % (where EWA clamps the Jacobian), or behind the camera."""
    Rw, tw = viewmats[:, :3, :3], viewmats[:, :3, 3]
    pc = torch.einsum("cij,nj->cni", Rw, means.detach()) + tw[:, None, :]
    x, y, z = pc.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    zs = torch.where(z > 0, z, torch.ones_like(z))
    u, v = x / zs, y / zs
    outside = ((z <= 0) | (u > (width - cx) / fx + 0.3 * tan_x) | (u < -(cx / fx + 0.3 * tan_x))
               | (v > (height - cy) / fy + 0.3 * tan_y) | (v < -(cy / fy + 0.3 * tan_y)))
    return outside & encloses_camera(means, quats, scales, viewmats)


@torch.no_grad()
def visible_mask(
    means: Tensor,
    log_scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    eps2d: float = EPS2D,
    near_plane: float = NEAR_PLANE,
    far_plane: float = FAR_PLANE,
) -> Tensor:
    """[N] bool: Gaussians that may touch the image of at least one camera (a conservative test:
    every Gaussian :func:`project_gaussians` keeps is kept). Lets :func:`cos3d.render.render` skip
    the projection, SH and gradients of the rest."""
    Rw, tw = viewmats[:, :3, :3], viewmats[:, :3, 3]
    pc = torch.einsum("cij,nj->cni", Rw, means) + tw[:, None, :]
    x, y, z = pc.unbind(-1)
    ok = (z >= near_plane) & (z <= far_plane) & (opacities >= ALPHA_MIN)
    zs = torch.where(ok, z, torch.ones_like(z))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    tx = torch.minimum((width - cx) / fx + 0.3 * tan_x, torch.maximum(-(cx / fx + 0.3 * tan_x), x / zs))
    ty = torch.minimum((height - cy) / fy + 0.3 * tan_y, torch.maximum(-(cy / fy + 0.3 * tan_y), y / zs))
    fmax = torch.maximum(fx, fy)
    s_max = torch.exp(log_scales.max(dim=-1).values)
    # ||J||_F^2 s_max^2 bounds the largest eigenvalue of the projected covariance
    var = (fmax / zs) ** 2 * (2.0 + tx * tx + ty * ty) * (s_max * s_max) + eps2d
    r = 3.33 * torch.sqrt(var) + 1.0
    u, v = fx * x / zs + cx, fy * y / zs + cy
    ok &= (u + r > 0) & (u - r < width) & (v + r > 0) & (v - r < height)
    return ok.any(dim=0)


# --------------------------------------------------------------------------- tile intersection
@dataclass
class TileIsect:
    """Depth-sorted Gaussian lists per (camera, tile); all ids index the flattened [C*N] arrays."""

    ids: Tensor  # [M] flat Gaussian ids, grouped by tile, front to back within a tile
    offsets: Tensor  # [C*T] start of each tile's list in ``ids``
    counts: Tensor  # [C*T]
    tile: int  # tile edge in pixels
    tiles_x: int
    tiles_y: int
    n_cameras: int
    width: int
    height: int

    @property
    def n_tiles(self) -> int:
        return self.tiles_x * self.tiles_y * self.n_cameras


def _min_sigma_over_rect(mx, my, a, b, c, dx0, dx1, dy0, dy1) -> Tensor:
    """min of σ(d) = ½(a dx² + 2b dx dy + c dy²) over the box dx ∈ [dx0, dx1], dy ∈ [dy0, dy1]."""

    def q(dx, dy):
        return 0.5 * (a * dx * dx + 2 * b * dx * dy + c * dy * dy)

    best = None
    for e in (dx0, dx1):  # edges dx = e: the best dy is -b e / c, clamped
        dy = torch.minimum(torch.maximum(-b * e / c, dy0), dy1)
        v = q(e, dy)
        best = v if best is None else torch.minimum(best, v)
    for e in (dy0, dy1):
        dx = torch.minimum(torch.maximum(-b * e / a, dx0), dx1)
        best = torch.minimum(best, q(dx, e))
    inside = (dx0 <= 0) & (dx1 >= 0) & (dy0 <= 0) & (dy1 >= 0)
    return best.masked_fill(inside, 0.0)


def intersect_tiles(
    proj: Projection, opacities: Tensor, width: int, height: int, *, tile: int = TILE, cull: bool = True
) -> TileIsect:
    """Which Gaussians touch which ``tile``×``tile`` pixel block, sorted front to back per block.

    A Gaussian is listed on the tiles its footprint box (``radii``) overlaps, as gsplat does; with
    ``cull`` it is dropped from tiles where no pixel centre reaches ``alpha >= 1/255`` (the minimum
    of σ over the tile's pixel centres is computed exactly). Neither choice changes the image: a
    pixel with ``alpha >= 1/255`` always lies inside the box (|dx| <= extend·sqrt(Σxx)), so the
    tile size is a pure speed knob.
    """
    C, N = proj.depths.shape
    tw, th = math.ceil(width / tile), math.ceil(height / tile)
    dev = proj.depths.device
    with torch.no_grad():
        m2 = proj.means2d.detach().reshape(-1, 2)
        r = proj.radii.reshape(-1, 2).to(m2.dtype)
        cx, cy = m2[:, 0] / tile, m2[:, 1] / tile
        rx, ry = r[:, 0] / tile, r[:, 1] / tile
        x0 = torch.floor(cx - rx).clamp(0, tw).long()
        x1 = torch.ceil(cx + rx).clamp(0, tw).long()
        y0 = torch.floor(cy - ry).clamp(0, th).long()
        y1 = torch.ceil(cy + ry).clamp(0, th).long()
        valid = (proj.radii.reshape(-1, 2) > 0).any(-1)
        nx = (x1 - x0).clamp_min(0)
        cnt = nx * (y1 - y0).clamp_min(0) * valid
        sel = cnt.nonzero().squeeze(1)
        cnt_s = cnt[sel]
        M = int(cnt_s.sum())
        empty = torch.zeros(C * tw * th, dtype=torch.long, device=dev)
        if M == 0:
            return TileIsect(torch.zeros(0, dtype=torch.long, device=dev), empty, empty.clone(), tile, tw, th, C, width, height)
        gid = torch.repeat_interleave(sel, cnt_s)  # [M] flat ids
        start = torch.cumsum(cnt_s, 0) - cnt_s
        local = torch.arange(M, device=dev) - torch.repeat_interleave(start, cnt_s)
        nxg = _take(nx, gid)
        tx = _take(x0, gid) + local % nxg
        ty = _take(y0, gid) + torch.div(local, nxg, rounding_mode="floor")
        if cull:
            con = _take(proj.conics.detach().reshape(-1, 3), gid)
            mg = _take(m2, gid)
            px0 = (tx * tile).to(m2.dtype) + 0.5
            py0 = (ty * tile).to(m2.dtype) + 0.5
            span = tile - 1.0
            smin = _min_sigma_over_rect(
                mg[:, 0], mg[:, 1], con[:, 0], con[:, 1], con[:, 2],
                mg[:, 0] - px0 - span, mg[:, 0] - px0, mg[:, 1] - py0 - span, mg[:, 1] - py0,
            )  # fmt: skip
            op = _take(opacities.detach().expand(C, N).reshape(-1), gid)
            keep = smin <= torch.log(op.clamp_min(ALPHA_MIN) / ALPHA_MIN) + 1e-3
            gid, tx, ty = gid[keep], tx[keep], ty[keep]
            if gid.numel() == 0:
                return TileIsect(gid, empty, empty.clone(), tile, tw, th, C, width, height)
        cam = torch.div(gid, N, rounding_mode="floor")
        tid = (cam * th + ty) * tw + tx
        # depth rank over all cameras' Gaussians (ties: stable)
        rank = torch.empty(C * N, dtype=torch.long, device=dev)
        rank[torch.argsort(proj.depths.detach().reshape(-1), stable=True)] = torch.arange(C * N, device=dev)
        order = torch.argsort(tid * (C * N) + _take(rank, gid))
        ids = _take(gid, order)
        counts = torch.bincount(tid, minlength=C * tw * th)
        offsets = torch.cumsum(counts, 0) - counts
    return TileIsect(ids, offsets, counts, tile, tw, th, C, width, height)


# --------------------------------------------------------------------------- the chunk walker
_LOG2E = 1.4426950408889634


class _Walker:
    """Shared machinery of the forward, backward and contribution passes.

    In round r every active tile evaluates the next ``K_r`` Gaussians of its depth-sorted list at
    all of its P = tile² pixels: ``[A, K_r, P]`` alphas for a group of A tiles (A bounded for
    memory). ``K_r = chunk · 2^r`` up to ``MAX_ROUND_CHUNK``: tiles that survive the first rounds
    are the deep ones, and fewer, longer rounds cost less Python overhead.
    """

    def __init__(self, isect: TileIsect, means2d: Tensor, conics: Tensor, opacities: Tensor, chunk: int):
        self.isect = isect
        self.chunk = chunk
        dtype, dev = means2d.dtype, means2d.device
        T = isect.tile
        self.P = T * T
        # per-Gaussian table (mean x, mean y, conic a, b, c, log2 opacity), plus a transparent dummy row
        tab = torch.cat([means2d, conics, torch.log2(opacities.clamp_min(1e-30))[:, None]], dim=1)
        dummy = torch.zeros(1, 6, dtype=dtype, device=dev)
        dummy[0, 5] = -1e4
        self.tab = torch.cat([tab, dummy])
        self.inv_op = torch.cat([1.0 / opacities.clamp_min(1e-30), opacities.new_zeros(1)])
        self.dummy = means2d.shape[0]
        t = torch.arange(isect.n_tiles, device=dev)
        tl = t % (isect.tiles_x * isect.tiles_y)
        self.tile_x = tl % isect.tiles_x
        self.tile_y = torch.div(tl, isect.tiles_x, rounding_mode="floor")
        self.tile_cx = (self.tile_x * T + T / 2).to(dtype)
        self.tile_cy = (self.tile_y * T + T / 2).to(dtype)
        j = torch.arange(T, device=dev, dtype=dtype) + 0.5 - T / 2  # pixel centres relative to the tile centre
        py, px = torch.meshgrid(j, j, indexing="ij")
        px, py = px.reshape(-1), py.reshape(-1)
        # σ is a quadratic form in these monomials of the pixel offsets
        self.monoT = torch.stack([px * px, px * py, py * py, px, py, torch.ones_like(px)], dim=0)  # [6, P]

    def schedule(self, r: int) -> tuple[int, int]:
        """(first list position, number of Gaussians K) of round r."""
        K = min(self.chunk << min(r, 20), max(self.chunk, MAX_ROUND_CHUNK))
        start = sum(min(self.chunk << i, max(self.chunk, MAX_ROUND_CHUNK)) for i in range(r))
        return start, K

    def groups(self, active: Tensor, K: int):
        n = max(1, MAX_CHUNK_ELEMS // (self.P * K))
        for s in range(0, active.numel(), n):
            yield active[s : s + n]

    def gather(self, tiles: Tensor, start: int, K: int) -> Tensor:
        """[A, K] flat Gaussian ids at list positions [start, start + K) (the dummy past a list's end)."""
        iso = self.isect
        k = torch.arange(start, start + K, device=tiles.device)
        pos = (_take(iso.offsets, tiles)[:, None] + k).clamp_max(iso.ids.numel() - 1)
        return torch.where(k < _take(iso.counts, tiles)[:, None], _take(iso.ids, pos), self.dummy)

    def alphas(self, tiles: Tensor, gid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Alpha [A, K, P] (skipped → 0, clamped at 0.999), local means mx, my and conics a, b, c [A, K]."""
        tab = _take(self.tab, gid)  # [A, K, 6]
        mx = tab[..., 0] - _take(self.tile_cx, tiles)[:, None]
        my = tab[..., 1] - _take(self.tile_cy, tiles)[:, None]
        a, b, c = tab[..., 2], tab[..., 3], tab[..., 4]
        # log2(o) - σ·log2(e) as coefficients of (px², px py, py², px, py, 1)
        coef = torch.stack(
            [
                (-0.5 * _LOG2E) * a,
                (-_LOG2E) * b,
                (-0.5 * _LOG2E) * c,
                _LOG2E * (a * mx + b * my),
                _LOG2E * (c * my + b * mx),
                tab[..., 5] - _LOG2E * (0.5 * a * mx * mx + b * mx * my + 0.5 * c * my * my),
            ],
            dim=-1,
        )  # [A, K, 6]
        A = gid.shape[0]
        alpha = torch.bmm(coef, self.monoT.expand(A, 6, self.P)).exp2_().clamp_max_(ALPHA_MAX)
        torch.nn.functional.threshold_(alpha, ALPHA_MIN, 0.0)
        return alpha, mx, my, a, b, c

    @staticmethod
    def transmittance(alpha: Tensor, Tc: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Given alphas [A, K, P] and the carried transmittance Tc [A, P] (0 = pixel finished):
        (1 - alpha, T before each Gaussian, T after it, mask of the entries past a pixel's end
        (T after <= 1e-4; None when there are none))."""
        one_m = 1.0 - alpha
        after = torch.cumprod(one_m, dim=1).mul_(Tc[:, None, :])
        before = torch.cat([Tc[:, None, :], after[:, :-1]], dim=1)
        if bool((after[:, -1] > T_MIN).all()):
            return one_m, before, after, None  # nothing terminates in this chunk
        return one_m, before, after, after <= T_MIN


def _tiles_to_image(x: Tensor, isect: TileIsect) -> Tensor:
    """[C*T, D, P] per-tile pixels → [C, H, W, D]."""
    C, tw, th, T = isect.n_cameras, isect.tiles_x, isect.tiles_y, isect.tile
    D = x.shape[1]
    x = x.reshape(C, th, tw, D, T, T).permute(0, 1, 4, 2, 5, 3).reshape(C, th * T, tw * T, D)
    return x[:, : isect.height, : isect.width].contiguous()


def _image_to_tiles(x: Tensor, isect: TileIsect) -> Tensor:
    """[C, H, W, D] → [C*T, D, P] (zero padded at the borders)."""
    C, tw, th, T = isect.n_cameras, isect.tiles_x, isect.tiles_y, isect.tile
    D = x.shape[3]
    pad = x.new_zeros(C, th * T, tw * T, D)
    pad[:, : isect.height, : isect.width] = x
    return pad.reshape(C, th, T, tw, T, D).permute(0, 1, 3, 5, 2, 4).reshape(C * th * tw, D, T * T).contiguous()


def _forward_pass(walker: _Walker, colors: Tensor, record=None, store: list | None = None) -> tuple[Tensor, Tensor, list | None]:
    """Composite ``colors`` [CN+1, D] (give a channel of ones to accumulate alpha).

    Returns per-tile sums [CT, D, P], the number of rounds each tile walked [CT] and, when ``store``
    is a list, the per-group ``(tiles, gid, alpha, w)`` for the backward pass (None if they would
    exceed ``STORE_BUDGET`` elements: the backward pass then recomputes them).
    ``record(tiles, gid, w)`` receives every group's weights w [A, K, P].
    """
    iso = walker.isect
    out = colors.new_zeros(iso.n_tiles, colors.shape[-1], walker.P)
    Tc = colors.new_ones(iso.n_tiles, walker.P)
    n_rounds = torch.zeros(iso.n_tiles, dtype=torch.long, device=colors.device)
    active = (iso.counts > 0).nonzero().squeeze(1)
    stored = 0
    r = 0
    while active.numel():
        start, K = walker.schedule(r)
        still = []
        for tiles in walker.groups(active, K):
            gid = walker.gather(tiles, start, K)
            alpha = walker.alphas(tiles, gid)[0]
            one_m, before, after, dead = walker.transmittance(alpha, _take(Tc, tiles))
            tc_new = after[:, -1]
            if dead is not None:
                alpha.masked_fill_(dead, 0.0)  # finished pixels: no weight, no gradient
                tc_new = tc_new.masked_fill(dead[:, -1], 0.0)
            w = alpha * before
            out.index_add_(0, tiles, torch.bmm(_take(colors, gid).transpose(1, 2), w))
            if record is not None:
                record(tiles, gid, w)
            if store is not None:
                stored += 2 * w.numel()
                if stored > STORE_BUDGET:
                    store = None
                else:
                    store.append((tiles, gid, alpha, w))
            Tc.index_copy_(0, tiles, tc_new)
            still.append(tiles[(tc_new > 0).any(1)])
        n_rounds[active] = r + 1
        r += 1
        active = torch.cat(still)
        active = active[iso.counts[active] > start + K]
    return out, n_rounds, store


def _recompute(walker: _Walker, n_rounds: Tensor):
    """Yield the forward pass's ``(tiles, gid, alpha, w)`` groups again, in the same order."""
    Tc = walker.tab.new_ones(walker.isect.n_tiles, walker.P)
    active = (n_rounds > 0).nonzero().squeeze(1)
    r = 0
    while active.numel():
        start, K = walker.schedule(r)
        for tiles in walker.groups(active, K):
            gid = walker.gather(tiles, start, K)
            alpha = walker.alphas(tiles, gid)[0]
            one_m, before, after, dead = walker.transmittance(alpha, _take(Tc, tiles))
            tc_new = after[:, -1]
            if dead is not None:
                alpha.masked_fill_(dead, 0.0)
                tc_new = tc_new.masked_fill(dead[:, -1], 0.0)
            Tc.index_copy_(0, tiles, tc_new)
            yield tiles, gid, alpha, alpha * before
        r += 1
        active = active[n_rounds[active] > r]


def _backward_pass(walker: _Walker, colors: Tensor, out: Tensor, n_rounds: Tensor, g: Tensor, store: list | None):
    """Gradients w.r.t. means2d, conics, opacities, colors (flat, with the dummy row).

    ``g`` [CT, D, P] is the gradient of the per-tile sums ``out``. With a channel of ones in
    ``colors`` the alpha gradient is handled like any colour channel.
    """
    n1, D = colors.shape
    grads = colors.new_zeros(n1, 6 + D)  # means2d (2), conics (3), opacity (1), colours (D)
    # dL/dα_k = T_k (g·c_k) - (g·Σ_{j>k} w_j c_j) / (1 - α_k),  Σ_{j>k} w_j c_j = out - Σ_{j<=k} w_j c_j
    q = (g * out).sum(1)  # [CT, P]
    gP = colors.new_zeros(walker.isect.n_tiles, walker.P)
    groups = store if store is not None else _recompute(walker, n_rounds)
    for tiles, gid, alpha, w in groups:
        A, K = gid.shape
        gt = _take(g, tiles)  # [A, D, P]
        tab = _take(walker.tab, gid)
        mx = tab[..., 0] - _take(walker.tile_cx, tiles)[:, None]
        my = tab[..., 1] - _take(walker.tile_cy, tiles)[:, None]
        a, b, c = tab[..., 2], tab[..., 3], tab[..., 4]
        gcol = torch.bmm(w, gt.transpose(1, 2))  # [A, K, D]
        wu = torch.bmm(_take(colors, gid), gt).mul_(w)  # [A, K, P]  w_k (g · c_k)
        cs = torch.cumsum(wu, dim=1).add_(_take(gP, tiles)[:, None, :])  # g · Σ_{j<=k} w_j c_j
        gP.index_copy_(0, tiles, cs[:, -1].contiguous())
        # v = α dL/dα = w_k (g·c_k) - α_k/(1-α_k) (q - g·P_k); alpha is already 0 where skipped/finished
        cs.neg_().add_(_take(q, tiles)[:, None, :]).mul_(alpha).div_(1.0 - alpha)
        v = wu.sub_(cs)
        clamped = alpha >= ALPHA_MAX
        if bool(clamped.any()):
            v.masked_fill_(clamped, 0.0)
        S = torch.bmm(walker.monoT.expand(A, 6, walker.P), v.transpose(1, 2))  # [A, 6, K]
        Sxx, Sxy, Syy, Sx, Sy, S0 = S.unbind(1)
        vdx = mx * S0 - Sx  # Σ_p v dx   (dx = mean - pixel)
        vdy = my * S0 - Sy
        vdxx = mx * mx * S0 - 2 * mx * Sx + Sxx
        vdxy = mx * my * S0 - mx * Sy - my * Sx + Sxy
        vdyy = my * my * S0 - 2 * my * Sy + Syy
        # dL/dσ = -v with σ = ½(a dx² + 2b dx dy + c dy²); dL/do = Σ v / o
        pair = torch.cat(
            [
                torch.stack(
                    [
                        -(a * vdx + b * vdy),
                        -(b * vdx + c * vdy),
                        -0.5 * vdxx,
                        -vdxy,
                        -0.5 * vdyy,
                        S0 * _take(walker.inv_op, gid),
                    ],
                    dim=-1,
                ),
                gcol,
            ],
            dim=-1,
        )
        grads.index_add_(0, gid.reshape(-1), pair.reshape(A * K, 6 + D))
    return grads[:, 0:2], grads[:, 2:5], grads[:, 5], grads[:, 6:]


class _RasterizeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, isect: TileIsect, chunk: int):
        walker = _Walker(isect, means2d.detach(), conics.detach(), opacities.detach(), chunk)
        cols = colors.detach()
        cols = torch.cat([cols, cols.new_ones(cols.shape[0], 1)], dim=1)  # ones → accumulated alpha
        cols = torch.cat([cols, cols.new_zeros(1, cols.shape[1])])  # dummy row
        out, n_rounds, store = _forward_pass(walker, cols, store=[] if any(ctx.needs_input_grad) else None)
        ctx.walker = walker
        ctx.isect = isect
        ctx.store = store
        ctx.save_for_backward(cols, out, n_rounds)
        img = _tiles_to_image(out, isect)
        return img[..., :-1].contiguous(), img[..., -1].contiguous()

    @staticmethod
    def backward(ctx, g_img, gA_img):
        cols, out, n_rounds = ctx.saved_tensors
        g = _image_to_tiles(torch.cat([g_img, gA_img[..., None]], dim=-1), ctx.isect)
        gm, gc, go, gcol = _backward_pass(ctx.walker, cols, out, n_rounds, g, ctx.store)
        ctx.store = None
        return gm[:-1], gc[:-1], go[:-1], gcol[:-1, :-1], None, None


def rasterize(
    proj: Projection,
    opacities: Tensor,
    colors: Tensor,
    width: int,
    height: int,
    *,
    chunk: int | None = None,
    tile: int | None = None,
    isect: TileIsect | None = None,
) -> tuple[Tensor, Tensor, TileIsect]:
    """Composite per-camera ``colors`` [C, N, D] (any D) with ``opacities`` [N] or [C, N].

    Returns ``(render [C, H, W, D], alpha [C, H, W], isect)``; differentiable w.r.t.
    ``proj.means2d``, ``proj.conics``, ``opacities`` and ``colors``.
    """
    C, N = proj.depths.shape
    if isect is None:
        isect = intersect_tiles(proj, opacities, width, height, tile=tile or TILE)
    op = opacities.expand(C, N).reshape(-1)
    cols = colors.expand(C, N, colors.shape[-1]).reshape(C * N, colors.shape[-1])
    img, alpha = _RasterizeFn.apply(
        proj.means2d.reshape(-1, 2), proj.conics.reshape(-1, 3), op, cols, isect, chunk or DEFAULT_CHUNK
    )
    return img, alpha, isect


def contributions_from_projection(
    proj: Projection,
    opacities: Tensor,
    width: int,
    height: int,
    *,
    min_weight: float = 0.0,
    chunk: int | None = None,
    tile: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """All (pixel, Gaussian, weight) triples with weight > ``min_weight`` of one camera (C = 1).

    Returns ``pixel`` (flat ``y * W + x``) [M], ``gaussian`` [M] and ``weight`` [M], unsorted.
    """
    C, N = proj.depths.shape
    assert C == 1, "contributions are per camera"
    with torch.no_grad():
        op = opacities.detach().expand(C, N).reshape(-1)
        isect = intersect_tiles(proj, op, width, height, tile=tile or TILE)
        walker = _Walker(
            isect, proj.means2d.detach().reshape(-1, 2), proj.conics.detach().reshape(-1, 3), op, chunk or DEFAULT_CHUNK
        )
        T = isect.tile
        pix_l, gau_l, w_l = [], [], []

        def record(tiles: Tensor, gid: Tensor, w: Tensor) -> None:
            A, K, P = w.shape
            flat = (w.reshape(-1) > min_weight).nonzero().squeeze(1)
            w_l.append(w.reshape(-1).index_select(0, flat))
            a_i = torch.div(flat, K * P, rounding_mode="floor")
            k_i = torch.div(flat, P, rounding_mode="floor") - a_i * K
            p_i = flat % P
            gau_l.append(gid.reshape(-1).index_select(0, a_i * K + k_i))
            t = tiles.index_select(0, a_i)
            x = walker.tile_x.index_select(0, t) * T + p_i % T
            y = walker.tile_y.index_select(0, t) * T + torch.div(p_i, T, rounding_mode="floor")
            pix_l.append(torch.where((x < width) & (y < height), y * width + x, -1))

        _forward_pass(walker, op.new_ones(C * N + 1, 1), record=record)
    if not pix_l:
        e = torch.zeros(0, dtype=torch.long, device=op.device)
        return e, e.clone(), op.new_zeros(0)
    pix, gau, wts = torch.cat(pix_l), torch.cat(gau_l), torch.cat(w_l)
    inside = (pix >= 0).nonzero().squeeze(1)  # drop the padding pixels of border tiles
    if inside.numel() < pix.numel():
        pix, gau, wts = pix.index_select(0, inside), gau.index_select(0, inside), wts.index_select(0, inside)
    return pix, gau, wts
    return torch.cat(pix_l), torch.cat(gau_l), torch.cat(w_l)
