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


def choose_objects(rng: np.random.Generator, count: int, include: tuple[str, ...] = ()) -> Selection:
    """Choose ``count - 1`` rigid objects (the robot is the remaining one) including a same-kind pair.

    ``include``: catalogue keys that must be among them (the others are drawn as usual); empty, the
    draw is the one every scene had before the option existed (same seed, same objects)."""
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
    if include:
        unknown = [k for k in include if k not in CATALOG]
        if unknown:
            raise Cos3dError(f"--include: unknown catalogue keys {unknown}; known: {', '.join(sorted(CATALOG))}")
        forced = [CATALOG[k] for k in dict.fromkeys(include) if CATALOG[k] in pool]
        if len(forced) > n_other:
            raise Cos3dError(f"--include names {len(forced)} objects besides the pair; raise --objects to at least "
                             f"{MIN_OBJECTS + len(forced)}")
        rest = [e for e in pool if e not in forced]
        others = forced + [rest[int(i)] for i in rng.choice(len(rest), size=n_other - len(forced), replace=False)]
        return Selection(entries=pair + others, pair_kind=kind, pair=(0, 1))
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
    touching: float = 0.0,
) -> list[Footprint]:
    """Set ``xy`` and ``yaw`` of each footprint (in the given order) so that none overlap.

    ``region`` is (x0, y0, x1, y1) on the table; every footprint lies inside it. Raises
    :class:`Cos3dError` if no layout is found (too many or too large objects).

    ``touching`` (clutter): the share of footprints after the first that are set against an already
    placed one (:func:`_place_touching`: their rectangles within :data:`TOUCH_GAP` of each other, none
    overlapping); 0 draws exactly what it drew before the option existed.
    """
    x0, y0, x1, y1 = region
    for _ in range(restarts):
        placed: list[np.ndarray] = []
        ok = True
        for n, f in enumerate(footprints):
            if touching > 0 and n > 0 and rng.uniform() < touching:
                if _place_touching(rng, f, footprints[:n], placed, region, gap, tries):
                    continue
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


TOUCH_GAP = 0.002
"""Metres between the footprint rectangles of two objects placed touching (:func:`_place_touching`): their
bounding rectangles all but meet (the meshes inside may stand a little apart where they are round)."""


def _place_touching(rng: np.random.Generator, f: Footprint, before: list[Footprint], placed: list[np.ndarray],
                    region: tuple[float, float, float, float], gap: float, tries: int) -> bool:
    """Set ``f`` against one of the footprints ``before`` (drawn at random): a random yaw and direction, then
    a bisection along that direction for the distance where the rectangles are :data:`TOUCH_GAP` apart. It
    must lie inside ``region`` and keep ``gap`` from every other placed footprint. Appends its inflated
    corners to ``placed`` and returns True, or False after ``tries // 10`` attempts."""
    x0, y0, x1, y1 = region
    for _ in range(max(1, tries // 10)):
        k = int(rng.integers(len(before)))
        nb = before[k]
        f.yaw = float(rng.uniform(0, 2 * math.pi))
        th = float(rng.uniform(0, 2 * math.pi))
        d = np.array([math.cos(th), math.sin(th)])
        assert nb.xy is not None
        nb_poly = nb.corners()
        lo, hi = 0.0, float(np.linalg.norm(nb.half) + np.linalg.norm(f.half)) + 0.01
        for _ in range(30):  # the largest distance at which the two rectangles still overlap
            mid = (lo + hi) / 2
            f.xy = nb.xy + mid * d
            if _overlap(f.corners(), nb_poly):
                lo = mid
            else:
                hi = mid
        f.xy = nb.xy + (hi + TOUCH_GAP) * d
        corners = f.corners()
        if corners[:, 0].min() < x0 or corners[:, 0].max() > x1 or corners[:, 1].min() < y0 or corners[:, 1].max() > y1:
            continue
        if _overlap(corners, nb_poly):
            continue
        mine = _inflate(f, gap)
        if any(_overlap(mine, other) for j, other in enumerate(placed) if j != k):
            continue
        placed.append(mine)
        return True
    return False
