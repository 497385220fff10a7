"""One normal form for every comparison of prompt texts (held-out checks, calibration words, a user's lists).

Two prompts are "the same" for cos3d's disjointness checks when their normal forms are equal:
:func:`normalize` lower-cases, turns punctuation into spaces, drops articles, makes each word singular
(:func:`singular`) and sorts the words, so "Elephant.", "an elephant", "elephants" and "the ELEPHANTS!"
are one prompt, and "robot toy" is "toy robot". :func:`content_words` is the set of a prompt's words that
carry meaning (function words such as "something", "to", "from" left out), for the word-level checks of the
tabletop protocol (an evaluation phrasing shares no content word with its object's training names).

Written for cos3d: a stemmer (NLTK's, say) would be a dependency for three rules of English plurals, and
a stemmer's stems ("batteri") are not what a message should quote.
"""

from __future__ import annotations

import re
from typing import Iterable

ARTICLES = frozenset({"a", "an", "the"})

FUNCTION_WORDS = frozenset({
    "a", "an", "the", "some", "any", "this", "that", "these", "those", "there", "here", "where", "what",
    "which", "who", "whose", "it", "its", "i", "me", "my", "we", "our", "you", "your", "one", "ones",
    "something", "anything", "thing", "things", "stuff", "object", "objects", "item",
    "to", "from", "in", "into", "on", "onto", "of", "for", "with", "by", "at", "off", "out", "up", "around",
    "and", "or", "but", "is", "are", "be", "can", "could", "would", "do", "does", "did", "please", "find",
    "show", "get", "give", "put", "use", "used", "made", "like", "looks", "look", "kind", "sort", "piece",
})
"""Words that say nothing about which object is meant (left out of :func:`content_words`). Their singular
forms are what :func:`content_words` compares, so "things" and "objects" are here too."""

COLOR_SIZE_WORDS = frozenset({
    "red", "blue", "green", "yellow", "white", "black", "orange", "purple", "pink", "brown", "grey", "gray",
    "silver", "golden", "gold", "crimson", "navy", "cobalt", "beige", "dark", "pale",
    "small", "large", "big", "little", "tiny", "huge", "tall", "short", "long", "wide", "narrow",
})
"""Colour and size adjectives: an evaluation phrasing may share these with its object's training names
("blue cup" for a "blue mug" is fair; the noun is what must change)."""

_IRREGULAR = {
    "mice": "mouse", "geese": "goose", "feet": "foot", "teeth": "tooth", "children": "child", "people": "person",
    "men": "man", "women": "woman", "knives": "knife", "leaves": "leaf", "shelves": "shelf", "loaves": "loaf",
    "halves": "half", "wolves": "wolf", "calves": "calf", "scarves": "scarf", "lives": "life", "wives": "wife",
}
_OES = frozenset({"tomatoes", "potatoes", "heroes", "echoes", "volcanoes", "mangoes", "torpedoes", "mosquitoes"})
_KEEP_S = ("ss", "us", "is", "ous", "ics")

_PUNCT = re.compile(r"[^\w\s]|_")


def singular(word: str) -> str:
    """The singular of one lower-case English word by the regular rules (and a short table of irregular
    ones): "boxes" → "box", "cherries" → "cherry", "glasses" → "glass", "knives" → "knife"; words that end
    in -ss/-us/-is and words of three letters or fewer are left alone ("glass", "cactus", "bus", "gas")."""
    w = word
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if len(w) <= 3 or not w.endswith("s") or w.endswith(_KEEP_S):
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w in _OES:
        return w[:-2]
    if w.endswith(("sses", "xes", "zes", "ches", "shes")):
        return w[:-2]
    return w[:-1]


def words(text: str) -> list[str]:
    """The prompt's words, lower-case, punctuation removed, each made singular, in their order; articles
    kept (:func:`normalize` drops them)."""
    return [singular(w) for w in _PUNCT.sub(" ", str(text).lower()).split()]


def normalize(text: str) -> str:
    """The normal form of a prompt (module docstring): ``"The Elephants!"`` → ``"elephant"``, ``"robot toy"``
    → ``"robot toy"`` and ``"toy robot"`` → ``"robot toy"`` (words sorted)."""
    return " ".join(sorted(w for w in words(text) if w not in ARTICLES))


def content_words(text: str, *, keep_color_size: bool = True) -> frozenset[str]:
    """The prompt's meaning-bearing words in singular form: its :func:`words` minus :data:`FUNCTION_WORDS`
    (and minus :data:`COLOR_SIZE_WORDS` when ``keep_color_size`` is False)."""
    out = {w for w in words(text) if w not in FUNCTION_WORDS}
    if not keep_color_size:
        out -= COLOR_SIZE_WORDS
    return frozenset(out)


def same_prompt(a: str, b: str) -> bool:
    """Whether two prompts have one normal form."""
    return normalize(a) == normalize(b)


def overlapping(prompts: Iterable[str], reserved: Iterable[str]) -> list[tuple[str, str]]:
    """``(prompt, reserved text)`` pairs with one normal form, sorted: the prompts that are a reserved text
    up to case, punctuation, articles, number and word order."""
    by_form: dict[str, str] = {}
    for r in reserved:
        by_form.setdefault(normalize(r), r)
    return sorted({(p, by_form[normalize(p)]) for p in prompts if normalize(p) in by_form})
