"""Development prompts: where presence settings are chosen, disjoint from every evaluation prompt.

Issue 13 asks for a presence test that keeps recall on held-out phrasings without giving up no-target
answers, with the trade-off curve in the docs. A threshold or margin chosen on the evaluation prompts
(``eval_prompts.json``, :data:`cos3d.eval.heldout.ABSENT_PROMPTS`) would overstate both, so the choice is
made here instead, on lists written for cos3d and kept disjoint (by string, case and spacing aside) from:

- every evaluation phrasing of the tabletop catalogue (objects, the robot, its parts, floor, table);
- every training name (what the ``labels`` embedder embeds for masks);
- the held-out absent prompts and the no-target calibration vocabulary.

Beyond the string check, no development phrasing contains an evaluation phrasing as a word ("soup tin"
would shadow "tin"), so the choice is not made on near-copies of the evaluation prompts.

:func:`check_dev_disjoint` raises on any overlap (a test calls it). These prompts are scored for the
presence decision (:mod:`cos3d.eval.presence`) and, with their catalogue entries as ground truth, for IoU
(:func:`dev_tabletop_queries`, ``cos3d eval tabletop --prompts dev``); no query path reads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cos3d.core.errors import Cos3dError
from cos3d.core.phrases import normalize as _norm

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.eval.rows import EvalQuery
    from cos3d.data.scene import Scene

DEV_PARAPHRASES: dict[str, tuple[str, ...]] = {
    "red_coffee_mug": ("espresso mug", "drinking mug"),
    "white_bowl": ("soup bowl", "serving bowl"),
    "frying_pan": ("saucepan", "griddle"),
    "ketchup": ("catsup", "squeeze bottle"),
    "butter": ("block of butter", "margarine"),
    "green_butter": ("margarine tub", "green package"),
    "orange_juice": ("juice pack", "orange drink"),
    "milk": ("milk container", "milk jug"),
    "popcorn": ("popcorn bag", "popped corn"),
    "alphabet_soup": ("soup container", "canister"),
    "white_book": ("paperback", "novel"),
    "cereal": ("cornflakes", "cereal carton"),
    "soda_can": ("soft drink", "cola can"),
    "bread": ("bun", "baguette"),
    "lemon": ("lime", "citron"),
    "rubber_duck": ("duckling", "squeaky toy"),
    "soccer_ball": ("sports ball", "footy"),
    "tray": ("platter",),
    "blue_mug": ("cobalt mug", "ceramic mug"),
    "toy_robot": ("android", "little robot"),
    "floor": ("floorboards", "tiles"),
    "table": ("tabletop", "work surface"),
}
"""Catalogue key (``meta.json`` ``objects[].key``) → development phrasings of the whole object."""

DEV_PART_PARAPHRASES: dict[str, tuple[str, ...]] = {
    "head": ("cap", "crown"),
    "body": ("trunk", "chassis"),
    "left leg": ("left wheel",),
    "right leg": ("right wheel",),
    "gripper": ("pincer", "grabber"),
}
"""The robot's canonical part name (``parts.json``) → development phrasings of the part."""

DEV_ABSENT: tuple[str, ...] = (
    # near-domain: kitchen / table things no tabletop scene holds
    "ladle", "colander", "blender", "rolling pin", "oven mitt", "tea bag", "paper towel", "cheese grater",
    "corkscrew", "thermos", "place mat", "sponge",
    # far
    "windmill", "saxophone", "octopus", "skyscraper", "canoe", "pyramid",
)
"""Development absent things (disjoint from :data:`cos3d.eval.heldout.ABSENT_PROMPTS`)."""


def dev_prompts() -> list[str]:
    """Every development prompt, as written."""
    out = [p for ps in DEV_PARAPHRASES.values() for p in ps]
    out += [p for ps in DEV_PART_PARAPHRASES.values() for p in ps]
    return out + list(DEV_ABSENT)


def dev_texts() -> set[str]:
    """Every development prompt, normalised (:func:`cos3d.core.phrases.normalize`)."""
    return {_norm(p) for p in dev_prompts()}


def reserved_texts() -> dict[str, set[str]]:
    """What the development prompts must not be: evaluation prompts, training names, calibration words."""
    from cos3d.eval.absent import ABSENT_PART_PROMPTS, ABSENT_PROMPTS
    from cos3d.query.notarget import NEGATIVE_VOCABULARY
    from cos3d.tabletop.catalog import (
        CATALOG,
        FLOOR_EVAL_NAMES,
        FLOOR_NEAR_NAMES,
        ROBOT,
        TABLE_EVAL_NAMES,
        TABLE_NEAR_NAMES,
        training_names,
    )

    evaluation = {_norm(n) for e in CATALOG.values() for n in e.eval_names + e.near_names}
    evaluation |= {_norm(n) for n in ROBOT.eval_names + ROBOT.near_names}
    evaluation |= {_norm(n) for p in ROBOT.parts for n in p.eval_names + p.near_names}
    evaluation |= {_norm(n) for n in FLOOR_EVAL_NAMES + TABLE_EVAL_NAMES + FLOOR_NEAR_NAMES + TABLE_NEAR_NAMES}
    return {
        "evaluation phrasings (eval_prompts.json)": evaluation,
        "held-out absent prompts": {_norm(n) for n in ABSENT_PROMPTS + ABSENT_PART_PROMPTS},
        "training names": {_norm(n) for n in training_names()},
        "the no-target calibration vocabulary": {_norm(n) for n in NEGATIVE_VOCABULARY},
    }


def _contains(a: str, b: str) -> bool:
    """Whether the word sequence ``b`` occurs in ``a`` (both normalised)."""
    return f" {b} " in f" {a} "


def check_dev_disjoint() -> None:
    """Raise :class:`Cos3dError` when a development prompt is an evaluation prompt, a training name or a
    calibration word, or contains (or is contained in) an evaluation phrasing or absent prompt as words."""
    dev = dev_texts()
    reserved = reserved_texts()
    for what, res in reserved.items():
        clash = sorted(dev & res)
        if clash:
            raise Cos3dError(f"development prompts overlap {what}: {', '.join(map(repr, clash[:6]))}; "
                             "choose other development phrasings")
    evaluation = reserved["evaluation phrasings (eval_prompts.json)"] | reserved["held-out absent prompts"]
    near = sorted(f"{d!r} ~ {e!r}" for d in dev for e in evaluation if _contains(d, e) or _contains(e, d))
    if near:
        raise Cos3dError(f"development prompts share a phrase with evaluation prompts: {', '.join(near[:6])}; "
                         "choose other development phrasings")


DEV_ABSENT_PARTS = 6
"""How many of :data:`DEV_ABSENT` (the first ones) are also asked as parts of the scene's articulated object."""


def dev_tabletop_queries(scene: "Scene", *, absent_parts: int = DEV_ABSENT_PARTS) -> "list[EvalQuery]":
    """The development prompts of a tabletop ``scene`` as protocol rows with their ground truth, so a setting
    can be chosen on development IoU as well as on presence (``cos3d eval tabletop --prompts dev``): each
    development phrasing of an object the scene holds (``meta.json`` keys) with every instance of that
    catalogue entry as its target (kind ``paraphrase``); each phrasing of a robot part within the parent's
    canonical name (``part_paraphrase``; the parts whose canonical name it paraphrases); every development
    absent thing (``absent``) and the first ``absent_parts`` of them within the parent (``absent_part``).
    Disjoint from every evaluation prompt (:func:`check_dev_disjoint`)."""
    import json
    from pathlib import Path

    from cos3d.eval.rows import EvalQuery

    check_dev_disjoint()
    try:
        objects = json.loads((Path(scene.root) / "meta.json").read_text()).get("objects", [])
    except (OSError, ValueError):
        objects = []
    ids_of: dict[str, list[int]] = {}
    for o in objects:
        ids_of.setdefault(str(o.get("key")), []).append(int(o["id"]))
    out: list[EvalQuery] = []
    seen: set[tuple[str, str | None]] = set()

    def add(q: EvalQuery) -> None:
        if (q.text, q.within) not in seen:
            seen.add((q.text, q.within))
            out.append(q)

    for key, ids in ids_of.items():
        for p in DEV_PARAPHRASES.get(key, ()):
            add(EvalQuery(p, "paraphrase", sorted(ids)))
    parent = None
    if scene.parts:
        pid = next(iter(scene.parts.values())).parent
        names = scene.labels.get(int(pid)) or []
        parent = names[0] if names else None
        if parent:
            for part, phrasings in DEV_PART_PARAPHRASES.items():
                pids = sorted(int(k) for k, info in scene.parts.items() if info.names and info.names[0] == part)
                for p in phrasings if pids else ():
                    add(EvalQuery(p, "part_paraphrase", pids, parent))
    for a in DEV_ABSENT:
        add(EvalQuery(a, "absent", []))
    if parent:
        for a in DEV_ABSENT[:absent_parts]:
            add(EvalQuery(a, "absent_part", [], parent))
    return out
