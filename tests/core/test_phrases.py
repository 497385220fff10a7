"""One normal form for prompt comparisons, and the held-out rules of the tabletop catalogue's phrasings."""

from __future__ import annotations

import pytest

from cos3d.core.errors import Cos3dError
from cos3d.eval.heldout import check_disjoint, check_eval_phrasings, eval_phrasing_problems
from cos3d.core.phrases import content_words, normalize, overlapping, singular
from cos3d.query.notarget import NEGATIVE_VOCABULARY, check_held_out


@pytest.mark.parametrize("word, expected", [
    ("boxes", "box"), ("cherries", "cherry"), ("glasses", "glass"), ("knives", "knife"), ("mice", "mouse"),
    ("tomatoes", "tomato"), ("shoes", "shoe"), ("elephants", "elephant"), ("dishes", "dish"), ("cactus", "cactus"),
    ("glass", "glass"), ("bus", "bus"), ("gas", "gas"), ("chopsticks", "chopstick"), ("mug", "mug"),
])
def test_singular(word, expected):
    assert singular(word) == expected


def test_variants_have_one_normal_form():
    forms = {normalize(t) for t in ("elephant", "Elephant.", "an elephant", "elephants", "the ELEPHANTS!", " elephant ")}
    assert forms == {"elephant"}
    assert normalize("robot toy") == normalize("toy robot") == normalize("Toy-Robot")
    assert normalize("red mug") != normalize("mug")
    assert overlapping(["an elephant", "teapot", "Giraffes"], ["elephant", "giraffe"]) == [
        ("Giraffes", "giraffe"), ("an elephant", "elephant")]


def test_content_words_leave_out_function_words_and_optionally_colours():
    assert content_words("something to sip a latte from") == {"sip", "latte"}
    assert content_words("Where is the blue cup?") == {"blue", "cup"}
    assert content_words("Where is the blue cup?", keep_color_size=False) == {"cup"}


@pytest.mark.parametrize("prompt", ["elephants", "an elephant", "Elephant.", "the Giraffes", "traffic-lights"])
def test_variants_of_a_calibration_word_are_refused(prompt):
    with pytest.raises(Cos3dError, match="calibration vocabulary"):
        check_held_out([prompt], NEGATIVE_VOCABULARY)
    with pytest.raises(Cos3dError, match="held out"):
        check_disjoint(["teapot", prompt], NEGATIVE_VOCABULARY, what="absent prompts",
                       reserved_as="the no-target calibration vocabulary")


def test_catalogue_evaluation_phrasings_are_word_disjoint():
    """Every held-out phrasing of the catalogue shares no content word with its object's training names
    (colour and size aside), the calibration vocabulary or the development prompts, and is no training name."""
    check_eval_phrasings()
    assert eval_phrasing_problems() == []


@pytest.mark.parametrize("what, names, phrasing, why", [
    ("lemon", ("lemon", "citrus"), "yellow lemon", "'lemon' with its training name"),
    ("cereal", ("cereal box", "cereal", "box"), "cereal packet", "'cereal' with its training name"),
    ("robot", ("toy robot", "robot", "droid"), "robot toy", "is the training name"),
    ("book", ("white book", "book"), "notebook", "'notebook/book'"),
    ("ketchup", ("ketchup",), "tomato sauce", "calibration word 'tomato'"),
    ("juice", ("juice",), "orange drink box", "calibration word 'orange'"),
    ("mug", ("mug",), "espresso cup", "development prompt 'espresso mug'"),
])
def test_near_copies_are_caught(what, names, phrasing, why):
    problems = eval_phrasing_problems([(what, names, phrasing)])
    assert any(why in p for p in problems), problems


def test_colour_adjectives_may_stay():
    """'blue cup' for a 'blue mug' is fair: the noun changed, the colour is what tells it from the red one."""
    assert eval_phrasing_problems([("blue mug", ("blue mug", "mug", "plain mug"), "blue cup")]) == []
