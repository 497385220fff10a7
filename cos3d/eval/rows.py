"""A row of an evaluation protocol (:class:`EvalQuery`: prompt, kind, ground-truth ids) and the kinds of rows.

Shared by the evaluation protocol (:mod:`cos3d.eval.tabletop`) and the development prompts
(:mod:`cos3d.eval.devprompts`); the ground truth lives only here, never on a query path.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HELD_OUT_KINDS", "KINDS", "NEAR_KINDS", "EvalQuery"]

KINDS = ("name", "paraphrase", "plural", "absent", "part", "part_paraphrase", "absent_part", "near_paraphrase",
         "near_part_paraphrase")
HELD_OUT_KINDS = ("paraphrase", "plural", "absent", "part_paraphrase", "absent_part")
"""Kinds whose prompts no training mask was embedded with and that share no content word with a training name
of their object (the headline numbers)."""
NEAR_KINDS = ("near_paraphrase", "near_part_paraphrase")
"""The near-training phrasings (the held-out set before issue 23: "red mug" for a "red coffee mug"): a row of
their own, in neither the summary nor the held-out numbers."""


@dataclass
class EvalQuery:
    text: str
    kind: str
    """One of :data:`KINDS`."""
    gt_ids: list[int]
    """Instance ids (part ids for part kinds); empty for ``absent``."""
    within: str | None = None
    """Parent prompt for part queries."""

    @property
    def present(self) -> bool:
        return bool(self.gt_ids)

    @property
    def is_part(self) -> bool:
        return self.kind in ("part", "part_paraphrase", "near_part_paraphrase")

    @property
    def label(self) -> str:
        return self.text if self.within is None else f"{self.text} within {self.within}"
