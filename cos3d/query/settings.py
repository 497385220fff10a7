"""The query engine's tunable settings, and the record of how each was chosen (``tuned.json``).

Every setting that decides an answer and could be tuned (presence margin and top-k, the part rule's
quantile, the weaker-object filter, what parts and objects are refined on) lives in :class:`QuerySettings`.
Its shipped values are the ``choice`` of each entry of ``tuned.json`` beside this file, written by
``scripts/tune_dev.py``: each candidate's score on the **development prompts** (:mod:`cos3d.eval.devprompts`,
disjoint from every evaluation prompt), the chosen one and its score. The evaluation prompts never take part
in a choice. Settings that are COS3D's or COS3D's released defaults (the refinement thresholds, r > 0.5, opacity
> 0.1) are not tunables here.

A caller may pass its own settings (``QueryEngine(source, settings=QuerySettings(...))``); the tuning script
does so to score each candidate.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, fields
from pathlib import Path

TUNED_FILE = Path(__file__).with_name("tuned.json")
"""The record of the shipped choices (package data)."""

RULES: tuple[str, ...] = ("relevancy", "cosine", "relative")
"""Object-level presence rules, each with one parameter (:func:`cos3d.query.notarget.decide`):

- ``relevancy`` (margin ``m``): the top-k mean raw LERF relevancy ``s(p)`` ≥ the calibrated threshold
  ``q_hi + m (p_lo − q_hi)`` in logit space (the module docstring; ``m = 0.15`` before issue 13);
- ``cosine`` (margin ``m``): the same calibration on the top-k mean **cosine** ``c(p) = topk(L·p)``: the
  canonical negatives' term ``max_k L·n_k`` differs from object to object (0.29 for a bowl, 0.54 for a
  robot under the ``labels`` embedder), so the relevancy favours some objects whatever the prompt;
- ``relative`` (margin ``δ``): ``c(p) − w(p) ≥ δ`` with ``w(p) = max_v p·v`` over the kept calibration
  vocabulary (the words that resemble nothing in the scene): the prompt must match something in the scene
  better than it matches anything else it could mean. The negatives move to the prompt's side. When the
  masks are images (CLIP, SigLIP, the modality-gap stand-in: :attr:`cos3d.vision.base.Embedder.mask_embeddings_are_text`
  False), ``p·v`` is text-to-text and on another scale than ``c(p)``, so ``w(p)`` is instead the field's
  top-k cosine ``c(v*)`` of the word ``v*`` the prompt resembles most (text-to-field on both sides).

Which positives each rule is calibrated on (issue 26; :data:`cos3d.query.notarget.POSITIVES`): ``labels`` (its
mask embeddings are text) keeps the Ins2Lang targets; every embedder whose masks are images uses text words of
the calibration vocabulary that resemble the targets, scored text-to-field like a user's query. The part rule
``inner``, the canonical negatives of the relevancy and the weaker-object filter already compare text with the
field on both sides (the prompt against vocabulary words, fixed phrases, or the same prompt on other objects)."""
PART_RULES: tuple[str, ...] = ("scene", "inner")
"""Presence rules of a part inside a found parent (:func:`cos3d.query.notarget.decide`):

- ``scene``: the object rule on the part level over the whole scene, and inside the parent at least as
  relevant as the negatives' 95th percentile (before issue 13);
- ``inner`` (quantile ``q``): only inside the parent: ``c_parent(p)`` (top-k mean cosine over the parent's
  Gaussians) ≥ the ``q``-quantile of the kept vocabulary words' ``c_parent``: the parent is there (the user
  named it and it was found), so the question is whether the prompt is more like one of its parts than an
  unrelated word is."""

WEAKER_MODES = ("cosine", "relevancy", "off")
SELECT_ON = ("cosine", "relevancy")


@dataclass(frozen=True)
class QuerySettings:
    """What the engine's answers depend on besides the fields and the prompt (module docstring). The field
    defaults are the values shipped before the development tuning (each tunable's ``before`` in ``tuned.json``);
    the engine uses :meth:`shipped`, the recorded choices."""

    presence_rule: str = "cosine"
    """Object-level presence rule (:data:`RULES`)."""
    presence_margin: float = 0.15
    """The rule's margin: the threshold sits this far from the negatives' 95th percentile towards the
    positives' 10th (:func:`cos3d.query.notarget.decide`)."""
    presence_words_quantile: float = 0.95
    """When the masks are images (the calibration's positives are text words, :data:`cos3d.query.notarget.POSITIVES`)
    and those words do not stand clear of the negatives: the object threshold is this quantile of the calibration
    vocabulary's text-to-field scores (:func:`cos3d.query.notarget.words_threshold`). Chosen on the development
    prompts on runs trained with the modality-gap stand-in (``labels-gap``); ``labels`` never reads it."""
    presence_top_k: int = 32
    """How many of the most similar Gaussians the presence statistic averages."""
    part_rule: str = "inner"
    """Presence rule of a part inside its found parent (:data:`PART_RULES`)."""
    part_quantile: float = 0.9
    """The part rule's quantile of the calibration words' scores inside the parent."""
    weaker_on: str = "cosine"
    """What the weaker-object filter compares (:data:`WEAKER_MODES`; ``off``: no filter)."""
    weaker_logit: float = 0.75
    """An object is dropped when its median score (10 × cosine, or the relevancy logit) is this far below the
    best object's."""
    select_parts_on: str = "cosine"
    """What a part query inside its parent normalises and refines (:data:`SELECT_ON`)."""
    select_objects_on: str = "relevancy"
    """What a whole-object query normalises and refines (:data:`SELECT_ON`; COS3D's is the relevancy)."""
    attach_thin_parts: bool = False
    """Grow each object of a whole-object text answer by the thin parts its instance-space refinement left out
    (a toy robot's arm and claw; :mod:`cos3d.query.thin_parts`). The robot API's pick targets always do."""

    def __post_init__(self) -> None:
        for name, value, allowed in (("presence_rule", self.presence_rule, RULES), ("part_rule", self.part_rule, PART_RULES),
                                     ("weaker_on", self.weaker_on, WEAKER_MODES),
                                     ("select_parts_on", self.select_parts_on, SELECT_ON),
                                     ("select_objects_on", self.select_objects_on, SELECT_ON)):
            if value not in allowed:
                raise ValueError(f"QuerySettings.{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.presence_top_k < 1:
            raise ValueError(f"QuerySettings.presence_top_k must be >= 1, got {self.presence_top_k}")

    @classmethod
    def shipped(cls) -> "QuerySettings":
        """The settings recorded as chosen in :data:`TUNED_FILE` (the dataclass defaults where it has none)."""
        return _shipped()

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def read_record(path: Path = TUNED_FILE) -> dict:
    """The tuning record: ``{"tunables": {name: {"choice", "score", "candidates": [{value, score, ...}]}}, ...}``."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {"tunables": {}}


@functools.lru_cache(maxsize=1)
def _shipped() -> QuerySettings:
    rec = read_record().get("tunables", {})
    names = {f.name for f in fields(QuerySettings)}
    return QuerySettings(**{k: v["choice"] for k, v in rec.items() if k in names})
