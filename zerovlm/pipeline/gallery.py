"""Stage `gallery`: a static HTML gallery of sampled examples that opens offline (zerovlm/report/gallery.py).

out/index.html
out/images/*.jpg   each image once, the longest side at most report.gallery_image_px
out/summary.json   examples, cards and images in the gallery
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from zerovlm.config import GridConfig, ReportConfig
from zerovlm.datasets.table import Example, read_table
from zerovlm.io import ZeroVLMError, atomic_dir, load_rgb, read_jsonl, safe_join
from zerovlm.report.gallery import example_section, page, sample_examples
from zerovlm.stage import path_flag
from zerovlm.store import ShardReader
from zerovlm.views.quality import QUALITY_KEY

PREFIXES = {"original": "o", "views": "v", "stitched": "s"}  # thumbnail names: images/<prefix>-<key>.jpg


@dataclass(frozen=True)
class Paths:
    prepared: Path = path_flag("folder of the prepared datasets")
    views: Path = path_flag("the view store")
    stitched: Path = path_flag("folder of the stitched stores")
    predictions: Path = path_flag("folder of the predictions")
    scored: Path = path_flag("folder of the scored records")
    out: Path = path_flag("gallery folder (index.html, images/)")


class _Thumbnails:
    """Writes each image once as a JPEG thumbnail; returns its path relative to the gallery."""

    def __init__(self, folder: Path, max_px: int):
        self.folder, self.max_px, self.written = folder, max_px, set()
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, load: Callable[[], Image.Image]) -> str:
        relative = f"images/{name}.jpg"
        if name not in self.written:
            image = load().convert("RGB")
            image.thumbnail((self.max_px, self.max_px), Image.Resampling.LANCZOS)
            image.save(self.folder / f"{name}.jpg", format="JPEG", quality=85)
            self.written.add(name)
        return relative


def _view_keys(views: ShardReader) -> dict[str, list[tuple[str, str, dict | None]]]:
    """image id -> (view name, store key, recorded quality or None) of each of its views, in store order."""
    keys: dict[str, list[tuple[str, str, dict | None]]] = defaultdict(list)
    for key in views.keys():
        meta = views.metadata(key)
        keys[meta["image_id"]].append((meta.get("view", key.split(".", 1)[-1]), key, meta.get(QUALITY_KEY)))
    return keys


def _thumbnail(
    thumbnails: _Thumbnails, example: Example, prepared: Path, views: ShardReader, stitched: ShardReader
) -> Callable[[str, str], str]:
    """example_section's `thumbnail` for one example: writes the image once, returns its gallery path."""

    def load(source: str, key: str) -> Image.Image:
        if source == "original":
            return load_rgb(safe_join(prepared, example.image_file), example.example_id)
        return (views if source == "views" else stitched).image(key)

    return lambda source, key: thumbnails.add(f"{PREFIXES[source]}-{key}", lambda: load(source, key))


def _runs(paths: Paths, dataset: str, vlms: list[str]) -> dict:
    """vlm -> (predictions by record id, scored records by example id) of one dataset."""
    runs = {}
    for vlm in vlms:
        predictions = {r["record_id"]: r for r in read_jsonl(paths.predictions / dataset / vlm / "predictions.jsonl")}
        records: dict[str, list[dict]] = defaultdict(list)
        for record in read_jsonl(paths.scored / dataset / vlm / "records.jsonl"):
            records[record["example_id"]].append(record)
        runs[vlm] = (predictions, records)
    return runs


def run(paths: Paths, grid: GridConfig, cfg: ReportConfig) -> dict:
    """Write the gallery of `report.gallery_examples` examples per dataset; return its summary."""
    datasets, vlms = list(grid.datasets), list(grid.vlms)
    sections = []
    with ShardReader(paths.views) as views, atomic_dir(paths.out) as tmp:
        view_keys = _view_keys(views)
        thumbnails = _Thumbnails(tmp / "images", cfg.gallery_image_px)
        for dataset in datasets:
            prepared = paths.prepared / dataset
            examples = sample_examples(read_table(prepared), cfg.gallery_examples, cfg.seed, dataset)
            runs = _runs(paths, dataset, vlms)
            with ShardReader(paths.stitched / dataset) as stitched:
                sections += [
                    example_section(
                        example,
                        dataset,
                        runs,
                        view_keys[example.image_id],
                        _thumbnail(thumbnails, example, prepared, views, stitched),
                    )
                    for example in examples
                ]
        (tmp / "index.html").write_text(page(sections), encoding="utf-8")
        cards_total = sum(len(section["cards"]) for section in sections)
        summary = {"examples": len(sections), "cards": cards_total, "images": len(thumbnails.written)}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not cards_total:
        raise ZeroVLMError("gallery: no predictions found for the sampled examples; re-run infer and score")
    return summary
