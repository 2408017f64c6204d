"""View prompts and questions rendered from prompts.yaml."""

import pytest

from zerovlm.datasets.table import Example
from zerovlm.io import ZeroVLMError
from zerovlm.prompts import question, user_message, view_prompt

PAPER_SINGLE = "This is a 3D single-view image generated from the original image. Centered on the Object."
PAPER_ALL = (
    "The original image in the upper left corner, the left view image in the upper right corner, "
    "the right view image in the lower left corner, and the random view image in the lower right "
    "corner. Based on these four images."
)


def _true_false(caption="The keyboard is at the bottom of the computer screen."):
    return Example("t/test/0", "t", "test", "true_false", "0" * 16, "images/x.png", caption, ("yes", "no"), 0, "below")


def test_paper_prompts_are_verbatim():
    assert view_prompt(("left",), "grid") == PAPER_SINGLE
    assert view_prompt(("origin", "left", "right", "random"), "grid") == PAPER_ALL


def test_baseline_has_no_view_prompt():
    assert view_prompt(("origin",), "grid") == ""
    text, _ = user_message(_true_false(), "yes_no", ("origin",), "grid", with_view_prompt=True)
    assert text == "The keyboard is at the bottom of the computer screen., please answer me yes or no"


def test_derived_prompts_follow_the_panels_present():
    assert view_prompt(("origin", "left"), "grid") == (
        "The original image on the left, and the left view image on the right. Based on these two images."
    )
    assert view_prompt(("left", "right", "random"), "strip") == (
        "The left view image at the top, the right view image in the middle, and the random view image "
        "at the bottom. Based on these three images."
    )


@pytest.mark.parametrize(
    "caption",
    ["The keyboard is at the bottom of the computer screen.", "There are no white horses around the brown horses"],
)
def test_yes_no_asks_the_authors_evaluator_text(caption):
    # their evaluator: inp = caption + ", please answer me yes or no" (the caption verbatim, no question mark)
    asked = question(_true_false(caption), "yes_no")
    assert asked.text == caption + ", please answer me yes or no"
    assert asked.answers == ("Yes", "No")


def test_paper_example_question_with_four_panels():
    # the paper figure's example with the evaluator's question text: only the view prompt and the lead differ
    text, asked = user_message(_true_false(), "yes_no", ("origin", "left", "right", "random"), "grid", True)
    assert text == PAPER_ALL + (
        " Judging by these four pictures, the keyboard is at the bottom of the computer "
        "screen., please answer me yes or no"
    )
    assert asked.answers == ("Yes", "No")
    plain, _ = user_message(_true_false(), "yes_no", ("origin", "left", "right", "random"), "grid", False)
    assert plain == "The keyboard is at the bottom of the computer screen., please answer me yes or no"


def test_multiple_choice_lists_lettered_options():
    example = Example(
        "w/test/0",
        "w",
        "test",
        "multiple_choice",
        "0" * 16,
        "images/x.png",
        "",
        ("A mug on a table", "A mug under a table"),
        1,
        "under",
    )
    asked = question(example, "yes_no")
    assert "A. A mug on a table\nB. A mug under a table" in asked.text
    assert asked.answers == ("A", "B")


def test_separate_images_are_described_by_their_order():
    # golden: the wording of prompts.yaml with the "separate" positions (the images in the order sent)
    assert view_prompt(("origin", "left", "right", "random"), "separate") == (
        "The original image first, the left view image second, the right view image third, and the random "
        "view image fourth. Based on these four images."
    )
    text, _ = user_message(_true_false(), "yes_no", ("origin", "left"), "separate", True)
    assert text == (
        "The original image first, and the left view image second. Based on these two images. "
        "Judging by these two pictures, the keyboard is at the bottom of the computer screen., "
        "please answer me yes or no"
    )
    with pytest.raises(ZeroVLMError, match="unknown layout 'mosaic'"):
        view_prompt(("origin", "left"), "mosaic")
