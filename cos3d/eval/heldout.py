"""Held-out evaluation prompts, by construction (README "What is measured").

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

from typing import Iterable, Sequence

from cos3d.core.errors import Cos3dError
from cos3d.core.phrases import content_words, normalize, overlapping
from cos3d.eval.devprompts import dev_prompts
from cos3d.eval.absent import ABSENT_PART_PROMPTS, ABSENT_PROMPTS

def check_disjoint(prompts: Iterable[str], reserved: Iterable[str], *, what: str, reserved_as: str) -> None:
    """Raise :class:`Cos3dError` (one line) when a prompt is a reserved text up to case, punctuation, articles,
    number and word order (:func:`cos3d.core.phrases.normalize`: "Elephants." is "elephant").

    Args:
        what: what the prompts are ("absent prompts"); reserved_as: what the reserved texts are
            ("the no-target calibration vocabulary").
    """
    clash = overlapping(prompts, reserved)
    if clash:
        shown = ", ".join(f"{p!r}" + (f" (~ {r!r})" if p != r else "") for p, r in clash[:6])
        shown += f" and {len(clash) - 6} more" if len(clash) > 6 else ""
        raise Cos3dError(f"{what} overlap {reserved_as}: {shown}; evaluation prompts must be held out")


def _phrasings(near: bool = False) -> list[tuple[str, tuple[str, ...], str]]:
    """``(what, its training names, phrasing)`` for every held-out phrasing of the tabletop catalogue (objects,
    the robot, its parts, floor, table); the near-training ones when ``near``."""
    from cos3d.tabletop import catalog as cat

    pick = (lambda x: x.near_names) if near else (lambda x: x.eval_names)
    rows = [(e.key, e.names, p) for e in cat.CATALOG.values() for p in pick(e)]
    rows += [(cat.ROBOT.key, cat.ROBOT.names, p) for p in pick(cat.ROBOT)]
    rows += [(f"{cat.ROBOT.key} part {part.names[0]!r}", part.names, p) for part in cat.ROBOT.parts for p in pick(part)]
    rows += [("floor", cat.FLOOR_NAMES, p) for p in (cat.FLOOR_NEAR_NAMES if near else cat.FLOOR_EVAL_NAMES)]
    rows += [("table", cat.TABLE_NAMES, p) for p in (cat.TABLE_NEAR_NAMES if near else cat.TABLE_EVAL_NAMES)]
    return rows


def _compound(a: str, b: str) -> bool:
    """Whether one word holds the other inside it ("notebook" / "book", "football" / "ball"); words of
    four letters or more."""
    short, longer = sorted((a, b), key=len)
    return a != b and len(short) >= 4 and short in longer


def eval_phrasing_problems(phrasings: Iterable[tuple[str, Sequence[str], str]] | None = None) -> list[str]:
    """Every way an evaluation phrasing fails to be held out (empty when none). ``phrasings``: ``(what, its
    training names, phrasing)`` rows; default: every held-out phrasing of the tabletop catalogue.

    - its normal form (:func:`cos3d.core.phrases.normalize`) is a training name of any catalogue entry;
    - it shares a content word (:func:`cos3d.core.phrases.content_words`; colour and size adjectives aside) with a
      training name of its own object, or one word holds the other ("notebook" for a "book");
    - it shares a content word with the no-target calibration vocabulary (colour words included: "orange" is a
      calibration word) or with any development prompt (:mod:`cos3d.eval.devprompts`; colour and size aside).
    """
    from cos3d.tabletop.catalog import training_names

    train_forms = {normalize(n): n for n in training_names()}
    vocab_words: dict[str, str] = {}
    for v in calibration_vocabulary():
        for w in content_words(v):
            vocab_words.setdefault(w, v)
    dev_words: dict[str, str] = {}
    for d in dev_prompts():
        for w in content_words(d, keep_color_size=False):
            dev_words.setdefault(w, d)
    out = []
    for what, names, p in (_phrasings() if phrasings is None else phrasings):
        if normalize(p) in train_forms:
            out.append(f"{what}: {p!r} is the training name {train_forms[normalize(p)]!r}")
        cw = content_words(p, keep_color_size=False)
        for n in names:
            nw = content_words(n, keep_color_size=False)
            shared = sorted(cw & nw) + sorted(f"{a}/{b}" for a in cw for b in nw if _compound(a, b))
            if shared:
                out.append(f"{what}: {p!r} shares {', '.join(map(repr, shared))} with its training name {n!r}")
        for w in sorted(content_words(p) & vocab_words.keys()):
            out.append(f"{what}: {p!r} shares {w!r} with the calibration word {vocab_words[w]!r}")
        for w in sorted(cw & dev_words.keys()):
            out.append(f"{what}: {p!r} shares {w!r} with the development prompt {dev_words[w]!r}")
    return out


def check_eval_phrasings() -> None:
    """Raise :class:`Cos3dError` when an evaluation phrasing of the catalogue is not held out
    (:func:`eval_phrasing_problems`)."""
    bad = eval_phrasing_problems()
    if bad:
        raise Cos3dError(f"{len(bad)} evaluation phrasings are not held out: {'; '.join(bad[:4])}"
                         f"{' and more' if len(bad) > 4 else ''}")


def project_vocabularies() -> dict[str, tuple[str, ...]]:
    """Every list of words the project ships, by name: the calibration vocabulary, the relevancy's canonical
    negatives, the held-out absent things and parts, the development prompts, and the tabletop catalogue's
    training, held-out and near-training names. A test of absence that wants a word the system has never seen
    picks one outside all of them (:func:`in_project_vocabulary`)."""
    from cos3d.query.relevancy import CANONICAL_NEGATIVES
    from cos3d.tabletop.catalog import training_names

    return {
        "calibration vocabulary": calibration_vocabulary(),
        "canonical negatives": tuple(CANONICAL_NEGATIVES),
        "held-out absent prompts": ABSENT_PROMPTS + ABSENT_PART_PROMPTS,
        "development prompts": tuple(dev_prompts()),
        "catalogue training names": tuple(sorted(training_names())),
        "catalogue held-out phrasings": tuple(p for _, _, p in _phrasings()),
        "catalogue near-training phrasings": tuple(p for _, _, p in _phrasings(near=True)),
    }


def in_project_vocabulary(prompt: str) -> list[str]:
    """The names of the :func:`project_vocabularies` that hold ``prompt`` (up to :func:`cos3d.core.phrases.normalize`)
    or share a content word with it."""
    cw = content_words(prompt)
    return [name for name, words in project_vocabularies().items()
            if overlapping([prompt], words) or any(cw & content_words(w) for w in words)]


def calibration_vocabulary() -> tuple[str, ...]:
    """The no-target calibration vocabulary the query engine embeds."""
    from cos3d.query.notarget import NEGATIVE_VOCABULARY

    return NEGATIVE_VOCABULARY
