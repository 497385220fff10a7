"""Seeded choice and placement of tabletop objects (pure numpy; no pybullet).

Objects stand upright on the table top. Each one is reduced to its footprint, an oriented rectangle
on the table; rectangles are placed one by one (largest first) by rejection sampling inside the
placement region, with a small gap between neighbours. Everything is drawn from one
:class:`numpy.random.Generator`, so a seed fixes the scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cos3d.core.errors import Cos3dError
from cos3d.tabletop.catalog import CATALOG, PAIR_KINDS, CatalogEntry

MIN_OBJECTS = 3
"""The robot and the same-kind pair are always there."""


@dataclass
class Selection:
    """The objects of one scene, in placement order (robot first, then the pair, then the rest)."""

    entries: list[CatalogEntry]
    """Rigid objects (the robot is not among them)."""
    pair_kind: str
    """The kind present twice."""
    pair: tuple[int, int]
    """Indices into ``entries`` of the two same-kind objects."""


@dataclass
class Footprint:
    """Where an upright object stands: its upright-frame bounds and its pose on the table."""

    lo: np.ndarray
    """[3] bounds in the upright object frame (metres), before yaw and translation."""
    hi: np.ndarray
    xy: np.ndarray | None = None
    """[2] world position of the footprint centre, set by :func:`place`."""
    yaw: float = 0.0
    """Rotation about world +z (radians), set by :func:`place`."""

    @property
    def half(self) -> np.ndarray:
        """[2] half extents of the footprint rectangle."""
        return (self.hi[:2] - self.lo[:2]) / 2

    @property
    def center_local(self) -> np.ndarray:
        """[2] footprint centre in the upright frame."""
        return (self.hi[:2] + self.lo[:2]) / 2

    def corners(self) -> np.ndarray:
        """[4, 2] world corners of the footprint rectangle."""
        assert self.xy is not None
        R = rot2(self.yaw)
        signs = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64)
        return self.xy + (signs * self.half) @ R.T

    def base_position(self, table_top: float, lift: float = 5e-4) -> np.ndarray:
        """[3] world position of the object frame so that the footprint sits at ``xy`` on the table
        (``lift`` metres above it, so no face is coplanar with the table top)."""
        assert self.xy is not None
        c = rot2(self.yaw) @ self.center_local
        return np.array([self.xy[0] - c[0], self.xy[1] - c[1], table_top - self.lo[2] + lift])


def rot2(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def choose_objects(rng: np.random.Generator, count: int) -> Selection:
    """Choose ``count - 1`` rigid objects (the robot is the remaining one) including a same-kind pair."""
    pool_all = list(CATALOG.values())
    max_count = MIN_OBJECTS + max(
        sum(1 for e in pool_all if e.kind != kind and kind not in e.names) for kind in PAIR_KINDS
    )
    if not MIN_OBJECTS <= count <= max_count:
        raise Cos3dError(
            f"--objects must be between {MIN_OBJECTS} and {max_count} (a robot, a same-kind pair and distinct "
            f"others), got {count}"
        )
    kind = PAIR_KINDS[int(rng.integers(len(PAIR_KINDS)))]
    variants = [e for e in pool_all if e.kind == kind]
    pair = [variants[int(i)] for i in rng.integers(len(variants), size=2)]
    pool = [e for e in pool_all if e.kind != kind and kind not in e.names]
    n_other = count - MIN_OBJECTS
    if n_other > len(pool):
        raise Cos3dError(f"--objects {count} is too many for a scene whose pair is {kind!r}; use at most "
                         f"{MIN_OBJECTS + len(pool)}")
    others = [pool[int(i)] for i in rng.choice(len(pool), size=n_other, replace=False)]
    return Selection(entries=pair + others, pair_kind=kind, pair=(0, 1))


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test for two convex polygons ``[4, 2]`` (rectangles)."""
    for poly in (a, b):
        for i in range(len(poly)):
            edge = poly[(i + 1) % len(poly)] - poly[i]
            axis = np.array([-edge[1], edge[0]])
            pa, pb = a @ axis, b @ axis
            if pa.max() < pb.min() or pb.max() < pa.min():
                return False
    return True


def _inflate(f: Footprint, gap: float) -> np.ndarray:
    g = Footprint(lo=f.lo - gap / 2, hi=f.hi + gap / 2, xy=f.xy, yaw=f.yaw)
    return g.corners()


def place(
    rng: np.random.Generator,
    footprints: list[Footprint],
    region: tuple[float, float, float, float],
    *,
    gap: float = 0.015,
    tries: int = 400,
    restarts: int = 30,
) -> list[Footprint]:
    """Set ``xy`` and ``yaw`` of each footprint (in the given order) so that none overlap.

    ``region`` is (x0, y0, x1, y1) on the table; every footprint lies inside it. Raises
    :class:`Cos3dError` if no layout is found (too many or too large objects).
    """
    x0, y0, x1, y1 = region
    for _ in range(restarts):
        placed: list[np.ndarray] = []
        ok = True
        for f in footprints:
            for _ in range(tries):
                f.yaw = float(rng.uniform(0, 2 * math.pi))
                f.xy = rng.uniform([x0, y0], [x1, y1])
                corners = f.corners()
                if corners[:, 0].min() < x0 or corners[:, 0].max() > x1:
                    continue
                if corners[:, 1].min() < y0 or corners[:, 1].max() > y1:
                    continue
                mine = _inflate(f, gap)
                if any(_overlap(mine, other) for other in placed):
                    continue
                placed.append(mine)
                break
            else:
                ok = False
                break
        if ok:
            return footprints
    raise Cos3dError(f"could not place {len(footprints)} objects on the table without overlap; use fewer --objects")
