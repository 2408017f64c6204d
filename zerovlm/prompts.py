"""View prompts and question templates, rendered from the data in prompts.yaml.

The paper published the single-view prompt and the four-panel grid prompt; prompts for the other
panel sets and for the strip layout are derived from the panels present with the same wording
(one clause per panel, then "Based on these N images."), so the grid "all" case is verbatim.
Layout "separate" describes the images of a "-separate" configuration by their order ("The original
image first, the left view image second, ...").
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from zerovlm.datasets.table import Example
from zerovlm.io import ZeroVLMError, sha256_file

PROMPTS_FILE = Path(__file__).with_name("prompts.yaml")


@functools.cache
def load_prompts(path: str = str(PROMPTS_FILE)) -> dict:
    return yaml.safe_load(Path(path).read_text())


def prompts_sha256() -> str:
    """Hash of the prompt data, recorded with every result so prompt edits are traceable."""
    return sha256_file(PROMPTS_FILE)


def view_prompt(panels: tuple[str, ...], layout: str) -> str:
    """The text telling the VLM what it is looking at; "" for the original image alone (baseline).

    layout: "grid" or "strip" (one stitched image), or "separate" (one image per panel, in order)."""
    data = load_prompts()["view_prompt"]
    if panels == ("origin",):
        return ""
    if len(panels) == 1:
        return data["single_view"]
    if layout not in data["positions"]:
        raise ZeroVLMError(f"view prompt: unknown layout {layout!r}; valid: {', '.join(data['positions'])}")
    positions = data["positions"][layout][len(panels)]
    clauses = [
        data["panel_clause"].format(panel=data["panel_names"][p], position=pos) for p, pos in zip(panels, positions)
    ]
    listing = ", ".join(clauses[:-1]) + ", and " + clauses[-1]
    return f"{listing[0].upper()}{listing[1:]}. " + data["closing"].format(count=data["counts"][len(panels)])


def question_lead(panels: tuple[str, ...]) -> str:
    if len(panels) == 1:
        return ""
    data = load_prompts()["view_prompt"]
    return data["question_lead"].format(count=data["counts"][len(panels)])


@dataclass(frozen=True)
class Question:
    text: str  # the question as asked, without any view prompt
    answers: tuple[str, ...]  # the continuations scored, aligned with the example's options


def _template(name: str) -> dict:
    """A question template by name (InferConfig checked the name against prompts.yaml)."""
    return load_prompts()["question_templates"][name]


def question(example: Example, template_name: str) -> Question:
    template = _template(template_name)[example.task]
    if example.task == "true_false":
        statement = example.caption.strip().rstrip(".")
        text = template["text"].format(caption=example.caption, statement=statement)
        return Question(text, tuple(template["answers"]))
    letters = string.ascii_uppercase[: len(example.options)]
    choices = "\n".join(f"{letter}. {option}" for letter, option in zip(letters, example.options))
    return Question(template["text"].format(choices=choices), tuple(letters))


def lower_first(text: str) -> str:
    """Lower-case a sentence's first letter when it follows a lead-in ("Judging by ..., the cat ...")."""
    first_word = text.split(" ", 1)[0]
    if len(first_word) > 1 and first_word.isupper():  # an acronym ("TV is ...") keeps its case
        return text
    return text[:1].lower() + text[1:]


def user_message(
    example: Example, template_name: str, panels: tuple[str, ...], layout: str, with_view_prompt: bool
) -> tuple[str, Question]:
    """The full user text for one example and one view configuration, and its question."""
    asked = question(example, template_name)
    if not with_view_prompt:
        return asked.text, asked
    prefix = view_prompt(panels, layout)
    lead = question_lead(panels)
    body = lead + lower_first(asked.text) if lead else asked.text
    return (f"{prefix} {body}" if prefix else body), asked
