"""Answer parsing edge cases (zerovlm.scoring.answers)."""

import pytest

from zerovlm.scoring.answers import (best_option, paper_contains_yes, parse_option_letter, parse_option_text,
                                     parse_true_false, parse_yes_no)


@pytest.mark.parametrize("text, expected", [
    ("Yes.", True), ("yes", True), ("YES!", True), ("yes, but only partly", True), (" \n**Yes**", True),
    ("no", False), ("No.", False), ("No, it is not.", False), ("I think the answer is no.", False),
    ("Yes and no", True), ("It could be yes or no", None),
    ("", None), (None, None), ("   ", None), ("...", None), ("maybe", None),
    ("yesterday", None), ("nobody knows", None), ("Nope", None), ("eyes", None),
])
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) is expected


@pytest.mark.parametrize("text, expected", [
    ("True", True), ("true.", True), ("False", False), ("\"False\"", False), ("It is false.", False),
    ("untrue", None), ("", None), ("True or false", True), ("either true or false", None),
])
def test_parse_true_false(text, expected):
    assert parse_true_false(text) is expected


@pytest.mark.parametrize("text, n, expected", [
    ("B", 4, 1), ("(B)", 4, 1), ("B)", 4, 1), ("b)", 4, 1), ("B.", 4, 1), ("(c) a mug", 4, 2),
    ("The answer is (B)", 4, 1), ("The answer is (B).", 4, 1), ("Answer: D", 4, 3), ("answer: C.", 4, 2),
    ("I choose option A", 4, 0), ("I think (B) is right", 4, 1),
    ("A mug is on the table", 4, None), ("a mug", 4, None), ("The answer is a mug", 4, None),
    ("E", 4, None), ("(E)", 4, None), ("(A) or (B)", 4, 0), ("either (A) or (B)?", 4, None),
    ("", 4, None), (None, 4, None), ("B", 0, None),
])
def test_parse_option_letter(text, n, expected):
    assert parse_option_letter(text, n) == expected


def test_parse_option_text():
    options = ("A mug on a table", "A mug under a table", "A mug to the left of a table", "A mug to the right of a table")
    assert parse_option_text("a mug under a table.", options) == 1
    assert parse_option_text("I see a mug to the left of a table!", options) == 2
    assert parse_option_text("a mug on a table or a mug under a table", options) is None
    assert parse_option_text("a cup", options) is None
    assert parse_option_text("", options) is None
    assert parse_option_text("mug on table edge", ("mug on table", "mug on table edge")) == 1
    assert parse_option_text("the mug on table", ("mug on table", "mug on table edge")) == 0


def test_paper_contains_yes_is_the_authors_substring_rule():
    assert paper_contains_yes("yesterday") is True      # the documented defect, kept for parity
    assert paper_contains_yes("No, not YES") is True
    assert paper_contains_yes("No.") is False
    assert paper_contains_yes("") is False and paper_contains_yes(None) is False
    assert parse_yes_no("yesterday") is None


def test_best_option():
    assert best_option([-3.0, -1.0, -2.0]) == 1
    assert best_option([-1.0, -1.0]) == 0
    assert best_option([]) is None
    assert best_option([float("nan"), -1.0]) is None
