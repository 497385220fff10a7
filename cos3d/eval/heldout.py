"""Held-out evaluation prompts, by construction (DESIGN.md §5).

Evaluation prompts must never reach a training target or a calibration vocabulary:

- **absent prompts** (things not in the scene) must not be words of the no-target calibration
  vocabulary (:data:`cos3d.query.notarget.NEGATIVE_VOCABULARY`), nor names of anything in the scene;
- **paraphrases** must not be training names (``labels.json`` / ``parts.json``: what the oracle-2D
  ``labels`` embedder embeds for the training masks).

:func:`check_disjoint` raises on any overlap; the evaluators call it before they query anything.
:data:`ABSENT_PROMPTS` mixes near-domain things (kitchen and table objects that no tabletop scene
holds) with far ones; none is in the calibration vocabulary (a test checks it).
"""

from __future__ import annotations

from typing import Iterable

from cos3d.errors import Cos3dError

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


def _norm(t: str) -> str:
    return " ".join(t.lower().split())


def check_disjoint(prompts: Iterable[str], reserved: Iterable[str], *, what: str, reserved_as: str) -> None:
    """Raise :class:`Cos3dError` (one line) when a prompt equals (case and spacing aside) a reserved text.

    Args:
        what: what the prompts are ("absent prompts"); reserved_as: what the reserved texts are
            ("the no-target calibration vocabulary").
    """
    res = {_norm(r) for r in reserved}
    clash = sorted({p for p in prompts if _norm(p) in res})
    if clash:
        shown = ", ".join(repr(c) for c in clash[:6]) + (f" and {len(clash) - 6} more" if len(clash) > 6 else "")
        raise Cos3dError(f"{what} overlap {reserved_as}: {shown}; evaluation prompts must be held out")


def calibration_vocabulary() -> tuple[str, ...]:
    """The no-target calibration vocabulary the query engine embeds."""
    from cos3d.query.notarget import NEGATIVE_VOCABULARY

    return NEGATIVE_VOCABULARY
