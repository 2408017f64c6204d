"""Answer parsing (zerovlm.scoring.answers): a corpus of realistic generated answers, and edge cases."""

from pathlib import Path

import pytest
import yaml

from zerovlm.scoring.answers import (
    best_option,
    paper_contains_yes,
    parse_option_letter,
    parse_option_text,
    parse_true_false,
    parse_yes_no,
)

CORPUS = yaml.safe_load((Path(__file__).parent / "answers_corpus.yaml").read_text(encoding="utf-8"))
LETTERS = CORPUS["option_letter"]
OPTION_TEXTS = [
    (group["options"], text, expected) for group in CORPUS["option_text"] for text, expected in group["cases"]
]


def test_the_corpus_has_at_least_60_answers_per_task():
    sizes = [len(CORPUS["yes_no"]), len(CORPUS["true_false"]), len(LETTERS["cases"]), len(OPTION_TEXTS)]
    assert min(sizes) >= 60, sizes


@pytest.mark.parametrize("text, expected", CORPUS["yes_no"])
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) is expected


@pytest.mark.parametrize("text, expected", CORPUS["true_false"])
def test_parse_true_false(text, expected):
    assert parse_true_false(text) is expected


@pytest.mark.parametrize("text, expected", LETTERS["cases"])
def test_parse_option_letter(text, expected):
    assert parse_option_letter(text, LETTERS["n_options"]) == expected


@pytest.mark.parametrize("options, text, expected", OPTION_TEXTS)
def test_parse_option_text(options, text, expected):
    assert parse_option_text(text, options) == expected


def test_missing_input_reads_as_no_answer():
    assert parse_yes_no(None) is None and parse_true_false(None) is None
    assert parse_option_letter(None, 4) is None and parse_option_letter("B", 0) is None
    assert parse_option_letter("C", 2) is None  # out of range
    assert parse_option_text(None, ["a mug"]) is None and parse_option_text("a mug", []) is None


def test_paper_contains_yes_is_the_authors_substring_rule():
    assert paper_contains_yes("yesterday") is True  # the documented defect, kept for parity
    assert paper_contains_yes("No, not YES") is True
    assert paper_contains_yes("No.") is False
    assert paper_contains_yes("") is False and paper_contains_yes(None) is False
    assert parse_yes_no("yesterday") is None and parse_yes_no("No, not YES") is False


def test_best_option():
    assert best_option([-3.0, -1.0, -2.0]) == 1
    assert best_option([-1.0, -1.0]) == 0
    assert best_option([]) is None
    assert best_option([float("nan"), -1.0]) is None
