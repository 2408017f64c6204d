"""A static HTML gallery of sampled examples that opens offline (no server, no network, no CDN).

For each sampled example: the original image, every synthesised view, and per VLM x configuration x
prompt mode a card with the input the model saw (the stitched image, or a "-separate" configuration's
images in the order sent), the full prompt, the model's answer and whether it was right. A
configuration a model was not evaluated on has no records, hence no card. Filters (dataset, VLM,
relation, configuration, view prompt, right/wrong) live in the URL hash, e.g.
`index.html#relation=above&correct=wrong`, so a filtered view can be shared as a link (and a headless
browser can open it: tests/test_report_gallery.py).

    out_dir/index.html
    out_dir/images/*.jpg   each image once, the longest side at most report.gallery_image_px
"""

from __future__ import annotations

import html
import json
import random
from collections import defaultdict
from pathlib import Path

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


def _figure(src: str, caption: str) -> str:
    return (f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def gallery_stage(datasets: list[str], vlms: list[str], cfg: ReportConfig, prepared_root: Path, views_dir: Path,
                  stitched_root: Path, predictions_root: Path, scored_root: Path, out_dir: Path) -> dict:
    views = ShardReader(views_dir)
    view_keys = _view_keys(views)
    sections, cards_total = [], 0
    values: dict[str, set[str]] = defaultdict(set)  # filter -> the values cards carry
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
            for example in examples:
                section, count = _example_section(example, dataset, runs, images, prepared, views,
                                                  view_keys[example.image_id], stitched, values)
                sections.append(section)
                cards_total += count
            stitched.close()
        (tmp / "index.html").write_text(_page(sections, values), encoding="utf-8")
        summary = {"examples": len(sections), "cards": cards_total, "images": len(images.written)}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    views.close()
    if not cards_total:
        raise ZeroVLMError("gallery: no predictions found for the sampled examples; re-run infer and score")
    return summary


def _example_section(example: Example, dataset: str, runs: dict, images: _Images, prepared: Path,
                     views: ShardReader, view_keys: list[tuple[str, str]], stitched: ShardReader,
                     values: dict[str, set[str]]) -> tuple[str, int]:
    panels = [_figure(images.add(f"o-{example.image_id}",
                                 lambda: load_rgb(safe_join(prepared, example.image_file), example.example_id)),
                      "original")]
    for view, key in view_keys:
        panels.append(_figure(images.add(f"v-{key}", lambda key=key: views.image(key)), f"{view} view"))
    question = example.caption if example.task == "true_false" else " / ".join(
        f"{chr(65 + i)}. {o}" for i, o in enumerate(example.options))
    cards = []
    for vlm, (predictions, records) in runs.items():
        for record in records.get(example.example_id, []):
            prediction = predictions[record["record_id"]]
            configuration, mode = record["configuration"], record["prompt_mode"]
            keys = input_keys(example.image_id, configuration)
            inputs = "".join(
                f'<img src="{html.escape(images.add(f"s-{key}", lambda k=key: stitched.image(k)))}" '
                f'alt="{html.escape(configuration)} input{f" {n} of {len(keys)}" if len(keys) > 1 else ""}">'
                for n, key in enumerate(keys, start=1))
            verdict = "right" if record["correct"] else "wrong"
            prompt = "on" if mode == "with_view_prompt" else "off"
            attributes = {"dataset": dataset, "vlm": vlm, "relation": example.relation,
                          "configuration": configuration, "prompt": prompt, "correct": verdict}
            data = " ".join(f'data-{k}="{html.escape(v)}"' for k, v in attributes.items())
            for key, value in attributes.items():
                values[key].add(value)
            cards.append(
                f'<article class="card {verdict}" {data}>'
                f'<div class="inputs{" several" if len(keys) > 1 else ""}">{inputs}</div>'
                f'<div class="meta"><b>{html.escape(configuration)}</b> · view prompt {prompt} · {html.escape(vlm)}</div>'
                f'<pre class="prompt">{html.escape(prediction.get("rendered_prompt", ""))}</pre>'
                f'<div class="answer">answer: {html.escape(_answer_text(example, prediction, record))}</div>'
                f'<div class="verdict">{"✓ right" if record["correct"] else "✗ wrong"}</div></article>')
    header = (f'<h2>{html.escape(dataset)} · {html.escape(example.example_id)}</h2>'
              f'<p><b>{html.escape(example.task.replace("_", "/"))}</b>, relation <b>{html.escape(example.relation)}'
              f'</b>{f", {example.num_objects} objects" if example.num_objects else ""}: {html.escape(question)}'
              f'<br>gold answer: <b>{html.escape(example.answer)}</b></p>')
    section = (f'<section class="example" data-dataset="{html.escape(dataset)}">{header}'
               f'<div class="panels">{"".join(panels)}</div><div class="cards">{"".join(cards)}</div></section>')
    return section, len(cards)


STYLE = """
body{font:14px system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccc;padding:8px 16px;z-index:1}
header label{margin-right:12px} main{padding:8px 16px}
.example{background:#fff;border:1px solid #ddd;border-radius:6px;margin:12px 0;padding:8px 12px}
.example h2{font-size:15px;margin:4px 0} .panels,.cards{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;text-align:center;font-size:12px} img{display:block}
.panels img{height:128px;width:auto} .card img{max-width:248px;max-height:248px}
.inputs{display:flex;flex-wrap:wrap;gap:2px} .inputs.several img{max-width:122px;max-height:122px}
.card{width:260px;border:2px solid #ccc;border-radius:6px;padding:6px;font-size:12px}
.card.right{border-color:#3a3} .card.wrong{border-color:#c33}
.prompt{white-space:pre-wrap;background:#f2f2f2;padding:4px;max-height:140px;overflow:auto;font-size:11px}
.verdict{font-weight:bold} .right .verdict{color:#282} .wrong .verdict{color:#b22}
"""

SCRIPT = """
const KEYS = %s;
function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  return Object.fromEntries(KEYS.map(k => [k, params.get(k) || ""]));
}
function apply() {
  const state = readHash();
  let shown = 0;
  KEYS.forEach(k => { document.getElementById("f-" + k).value = state[k]; });
  document.querySelectorAll(".card").forEach(card => {
    const match = KEYS.every(k => !state[k] || card.dataset[k] === state[k]);
    card.hidden = !match;
    if (match) shown++;
  });
  document.querySelectorAll(".example").forEach(section => {
    section.hidden = !section.querySelector(".card:not([hidden])");
  });
  document.getElementById("shown").textContent = shown;
  document.body.dataset.cardsShown = shown;
}
function onSelect() {
  const params = new URLSearchParams();
  KEYS.forEach(k => { const v = document.getElementById("f-" + k).value; if (v) params.set(k, v); });
  location.hash = params.toString();
}
KEYS.forEach(k => document.getElementById("f-" + k).addEventListener("change", onSelect));
window.addEventListener("hashchange", apply);
apply();
window.addEventListener("load", () => {
  const all = Array.from(document.images);
  const loaded = all.filter(img => img.complete && img.naturalWidth > 0).length;
  document.body.dataset.imagesLoaded = loaded;
  document.body.dataset.imagesFailed = all.length - loaded;
});
"""


def _page(sections: list[str], values: dict[str, set[str]]) -> str:
    body = "".join(sections)
    selects = []
    for key, label in FILTERS:
        options = "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>'
                          for v in sorted(values.get(key, ())))
        selects.append(f'<label>{label} <select id="f-{key}"><option value="">all</option>{options}</select></label>')
    keys = json.dumps([key for key, _ in FILTERS])
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>zerovlm gallery</title>'
            f'<style>{STYLE}</style></head><body><header><b>zerovlm gallery</b> · {"".join(selects)} '
            f'<span id="shown"></span> cards shown</header><main>{body}</main>'
            f'<script>{SCRIPT % keys}</script></body></html>\n')
