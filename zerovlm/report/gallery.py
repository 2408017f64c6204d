"""A static HTML gallery of sampled examples that opens offline (no server, no network, no CDN).

For each sampled example: the original image, every synthesised view, and per VLM x configuration x
prompt mode a card with the input the model saw (the stitched image, or a "-separate" configuration's
images in the order sent), the full prompt, the model's answer and whether it was right. A
configuration a model was not evaluated on has no records, hence no card. Filters (dataset, VLM,
relation, configuration, view prompt, right/wrong) live in the URL hash, e.g.
`index.html#relation=above&correct=wrong`, so a filtered view can be shared as a link (and a headless
browser can open it: tests/test_report_gallery.py). The page is the Jinja2 template
templates/gallery.html.j2, autoescaped: this module hands it plain text, never markup. The gallery stage
(zerovlm/pipeline/gallery.py) reads the examples, answers and images, and writes the page and thumbnails.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import jinja2

from zerovlm.datasets.table import Example
from zerovlm.stitching import input_keys

FILTERS = (
    ("dataset", "dataset"),
    ("vlm", "model"),
    ("relation", "relation"),
    ("configuration", "configuration"),
    ("prompt", "view prompt"),
    ("correct", "verdict"),
)


def sample_examples(examples: list[Example], count: int, seed: int, dataset: str) -> list[Example]:
    """`count` examples drawn round-robin across relations (seeded), in table order."""
    rng = random.Random(f"zerovlm-gallery:{seed}:{dataset}")
    by_relation: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_relation[example.relation].append(example)
    queues = [rng.sample(members, len(members)) for _, members in sorted(by_relation.items())]
    rng.shuffle(queues)
    chosen: list[Example] = []
    while len(chosen) < min(count, len(examples)):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop())
    order = {e.example_id: i for i, e in enumerate(examples)}
    return sorted(chosen, key=lambda e: order[e.example_id])


def quality_text(quality: dict | None) -> str:
    """A view's recorded quality in a caption (zerovlm/views/quality.py)."""
    if quality is None:
        return "quality not recorded (a view store from before quality scores)"
    return (
        f"CLIP similarity {quality['clip_similarity']:.3f}, pixel std {quality['pixel_std']:.1f}, "
        f"background {quality['background_share']:.0%}"
    )


def _answer_text(example: Example, prediction: dict, record: dict) -> str:
    choice = record["predicted_index"]
    parts = []
    if choice is not None:
        parts.append(
            f"{prediction['answers'][choice]}"
            + (f" = {example.options[choice]}" if example.task == "multiple_choice" else "")
        )
    else:
        parts.append("(no parseable answer)")
    if "output_text" in prediction:
        parts.append(f"generated: {prediction['output_text']!r}")
    if "option_logprobs" in prediction:
        scores = ", ".join(f"{a} {s:.2f}" for a, s in zip(prediction["answers"], prediction["option_logprobs"]))
        parts.append(f"log-probabilities: {scores}")
    return " | ".join(parts)


def example_section(
    example: Example,
    dataset: str,
    runs: dict,
    view_keys: list[tuple[str, str, dict | None]],
    thumbnail: Callable[[str, str], str],
) -> dict:
    """One example's section as plain text values for the template (which escapes them).

    runs: vlm -> (predictions by record id, scored records by example id); view_keys: (view name, view store
    key, recorded quality or None) of the example's image; thumbnail(source, key): the gallery path of an
    image, `source` being "original" (key: the image id), "views" or "stitched" (key: a store key).
    """
    panels = [{"src": thumbnail("original", example.image_id), "caption": "original"}]
    for view, key, quality in view_keys:
        panels.append({"src": thumbnail("views", key), "caption": f"{view} view, {quality_text(quality)}"})
    question = (
        example.caption
        if example.task == "true_false"
        else " / ".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(example.options))
    )
    cards = []
    for vlm, (predictions, records) in runs.items():
        for record in records.get(example.example_id, []):
            prediction = predictions[record["record_id"]]
            configuration = record["configuration"]
            inputs = [thumbnail("stitched", key) for key in input_keys(example.image_id, configuration)]
            # the card's data-* attributes, which the page's filters match (keys as in FILTERS)
            attributes = {
                "dataset": dataset,
                "vlm": vlm,
                "relation": example.relation,
                "configuration": configuration,
                "prompt": "on" if record["prompt_mode"] == "with_view_prompt" else "off",
                "correct": "right" if record["correct"] else "wrong",
            }
            cards.append(
                {
                    "attributes": attributes,
                    "inputs": inputs,
                    "prompt": prediction.get("rendered_prompt", ""),
                    "answer": _answer_text(example, prediction, record),
                }
            )
    return {"dataset": dataset, "example": example, "question": question, "panels": panels, "cards": cards}


_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=jinja2.select_autoescape(["html.j2"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def page(sections: list[dict]) -> str:
    """index.html: the filter bar (each filter offers the values its cards carry) and the sections."""
    filters = [
        {
            "key": key,
            "label": label,
            "options": sorted({card["attributes"][key] for section in sections for card in section["cards"]}),
        }
        for key, label in FILTERS
    ]
    return _TEMPLATES.get_template("gallery.html.j2").render(sections=sections, filters=filters)
