"""The absent prompts of the tabletop protocol: things and parts that no tabletop scene holds (the right answer
is empty). Held out from the calibration vocabulary, the scenes' names and the development prompts
(:mod:`cos3d.eval.heldout` checks it)."""

from __future__ import annotations

__all__ = ["ABSENT_PART_PROMPTS", "ABSENT_PROMPTS"]

ABSENT_PROMPTS: tuple[str, ...] = (
    # near-domain: kitchen / table things no tabletop scene holds
    "teapot", "wine glass", "cutting board", "salt shaker", "toaster", "dinner plate", "kettle",
    "pepper grinder", "coffee maker", "napkin", "jam jar", "whisk",
    # far: things of other domains
    "hippopotamus", "lighthouse", "sailboat", "volcano", "accordion", "cactus",
)
"""Absent-object prompts of the tabletop protocol (written for cos3d)."""

ABSENT_PART_PROMPTS: tuple[str, ...] = ("propeller", "tail", "wing", "spout", "zipper", "handlebar")
"""Absent-part prompts of the tabletop protocol (written for cos3d): asked within a parent that has parts
(the toy robot), none of them a part it has; the right answer is empty. Disjoint from the calibration
vocabulary (the part rule compares a part against those words inside the parent), from every name of the
scene and from the development prompts (checked)."""
