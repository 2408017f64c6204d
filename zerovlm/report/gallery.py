"""A static HTML gallery of sampled examples that opens offline (no server, no network, no CDN).

For each sampled example: the original image, every synthesised view, and per VLM x configuration x
prompt mode a card with the input the model saw (the stitched image, or a "-separate" configuration's
images in the order sent), the full prompt, the model's answer and whether it was right. A
configuration a model was not evaluated on has no records, hence no card. Filters (dataset, VLM,
relation, configuration, view prompt, right/wrong) live in the URL hash, e.g.
`index.html#relation=above&correct=wrong`, so a filtered view can be shared as a link (and a headless
browser can open it: tests/test_report_gallery.py). The page is the Jinja2 template
templates/gallery.html.j2, autoescaped: this module hands it plain text, never markup.

    out_dir/index.html
    out_dir/images/*.jpg   each image once, the longest side at most report.gallery_image_px
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import jinja2
from PIL import Image

from zerovlm.compose import input_keys
from zerovlm.config import ReportConfig
from zerovlm.datasets.table import Example, read_table
from zerovlm.io import ZeroVLMError, atomic_dir, load_rgb, read_jsonl, safe_join
from zerovlm.store import ShardReader

FILTERS = (("dataset", "dataset"), ("vlm", "model"), ("relation", "relation"), ("configuration", "configuration"),
           ("prompt", "view prompt"), ("correct", "verdict"))


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


class _Images:
    """Writes each image once as a JPEG thumbnail; returns its path relative to the gallery."""

    def __init__(self, folder: Path, max_px: int):
        self.folder, self.max_px, self.written = folder, max_px, set()
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, load) -> str:
        relative = f"images/{name}.jpg"
        if name not in self.written:
            image = load().convert("RGB")
            image.thumbnail((self.max_px, self.max_px), Image.Resampling.LANCZOS)
            image.save(self.folder / f"{name}.jpg", format="JPEG", quality=85)
            self.written.add(name)
        return relative


def _answer_text(example: Example, prediction: dict, record: dict) -> str:
    choice = record["predicted_index"]
    parts = []
    if choice is not None:
        parts.append(f"{prediction['answers'][choice]}" + (f" = {example.options[choice]}"
                                                           if example.task == "multiple_choice" else ""))
    else:
        parts.append("(no parseable answer)")
    if "output_text" in prediction:
        parts.append(f"generated: {prediction['output_text']!r}")
    if "option_logprobs" in prediction:
        scores = ", ".join(f"{a} {s:.2f}" for a, s in zip(prediction["answers"], prediction["option_logprobs"]))
        parts.append(f"log-probabilities: {scores}")
    return " | ".join(parts)


def _view_keys(views: ShardReader) -> dict[str, list[tuple[str, str]]]:
    keys: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key in views.keys():
        meta = views.metadata(key)
        keys[meta["image_id"]].append((meta.get("view", key.split(".", 1)[-1]), key))
    return keys


def gallery_stage(datasets: list[str], vlms: list[str], cfg: ReportConfig, prepared_root: Path, views_dir: Path,
                  stitched_root: Path, predictions_root: Path, scored_root: Path, out_dir: Path) -> dict:
    views = ShardReader(views_dir)
    view_keys = _view_keys(views)
    sections = []
    with atomic_dir(out_dir) as tmp:
        images = _Images(tmp / "images", cfg.gallery_image_px)
        for dataset in datasets:
            prepared = Path(prepared_root) / dataset
            examples = sample_examples(read_table(prepared), cfg.gallery_examples, cfg.seed, dataset)
            stitched = ShardReader(Path(stitched_root) / dataset)
            runs = {}
            for vlm in vlms:
                predictions = {r["record_id"]: r for r in read_jsonl(Path(predictions_root) / dataset / vlm
                                                                     / "predictions.jsonl")}
                records: dict[str, list[dict]] = defaultdict(list)
                for record in read_jsonl(Path(scored_root) / dataset / vlm / "records.jsonl"):
                    records[record["example_id"]].append(record)
                runs[vlm] = (predictions, records)
            sections += [_example_section(example, dataset, runs, images, prepared, views,
                                          view_keys[example.image_id], stitched) for example in examples]
            stitched.close()
        (tmp / "index.html").write_text(_page(sections), encoding="utf-8")
        cards_total = sum(len(section["cards"]) for section in sections)
        summary = {"examples": len(sections), "cards": cards_total, "images": len(images.written)}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    views.close()
    if not cards_total:
        raise ZeroVLMError("gallery: no predictions found for the sampled examples; re-run infer and score")
    return summary


def _example_section(example: Example, dataset: str, runs: dict, images: _Images, prepared: Path,
                     views: ShardReader, view_keys: list[tuple[str, str]], stitched: ShardReader) -> dict:
    """One example's section as plain text values for the template (which escapes them)."""
    panels = [{"src": images.add(f"o-{example.image_id}",
                                 lambda: load_rgb(safe_join(prepared, example.image_file), example.example_id)),
               "caption": "original"}]
    for view, key in view_keys:
        panels.append({"src": images.add(f"v-{key}", lambda key=key: views.image(key)), "caption": f"{view} view"})
    question = example.caption if example.task == "true_false" else " / ".join(
        f"{chr(65 + i)}. {o}" for i, o in enumerate(example.options))
    cards = []
    for vlm, (predictions, records) in runs.items():
        for record in records.get(example.example_id, []):
            prediction = predictions[record["record_id"]]
            configuration = record["configuration"]
            inputs = [images.add(f"s-{key}", lambda k=key: stitched.image(k))
                      for key in input_keys(example.image_id, configuration)]
            # the card's data-* attributes, which the page's filters match (keys as in FILTERS)
            attributes = {"dataset": dataset, "vlm": vlm, "relation": example.relation, "configuration": configuration,
                          "prompt": "on" if record["prompt_mode"] == "with_view_prompt" else "off",
                          "correct": "right" if record["correct"] else "wrong"}
            cards.append({"attributes": attributes, "inputs": inputs, "prompt": prediction.get("rendered_prompt", ""),
                          "answer": _answer_text(example, prediction, record)})
    return {"dataset": dataset, "example": example, "question": question, "panels": panels, "cards": cards}


_TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
                                autoescape=jinja2.select_autoescape(["html.j2"]), undefined=jinja2.StrictUndefined,
                                trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def _page(sections: list[dict]) -> str:
    """index.html: the filter bar (each filter offers the values its cards carry) and the sections."""
    filters = [{"key": key, "label": label,
                "options": sorted({card["attributes"][key] for section in sections for card in section["cards"]})}
               for key, label in FILTERS]
    return _TEMPLATES.get_template("gallery.html.j2").render(sections=sections, filters=filters)
