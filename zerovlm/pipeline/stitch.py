"""Stage `stitch`: the VLM input images of every view configuration, for one grid dataset.

out/shard-*.{tar,jsonl}  store keys `zerovlm.stitching.input_keys` names: one stitched image per
                         configuration, or a "-separate" configuration's panels one by one
out/summary.json         images, configurations and layout (read by the infer stage)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zerovlm.config import StitchConfig
from zerovlm.datasets.table import read_table
from zerovlm.io import atomic_dir, load_rgb, safe_join, write_json
from zerovlm.stage import path_flag
from zerovlm.stitching import needed_views, stitch_summary, stitched_entries
from zerovlm.store import ShardReader, ShardWriter
from zerovlm.view_configurations import is_gated, view_panels
from zerovlm.views.quality import stored_quality


@dataclass(frozen=True)
class Paths:
    prepared: Path = path_flag("the dataset's prepared folder (examples.jsonl, images/)")
    views: Path = path_flag("the view store")
    out: Path = path_flag("stitched image store")


def run(paths: Paths, cfg: StitchConfig) -> dict:
    """Compose every configuration of every unique image of the dataset; return the store's summary."""
    examples = read_table(paths.prepared)
    image_files = dict(sorted({e.image_id: e.image_file for e in examples}.items()))
    names = needed_views(cfg.configurations)
    gated = sorted({view for c in cfg.configurations if is_gated(c) for view in view_panels(c)})
    with ShardReader(paths.views) as views, atomic_dir(paths.out) as tmp:
        with ShardWriter(tmp) as writer:
            for image_id, image_file in image_files.items():
                origin = load_rgb(safe_join(paths.prepared, image_file), f"image {image_id}")
                view_images = {
                    name: views.image(f"{image_id}.{name}") for name in names if f"{image_id}.{name}" in views
                }
                qualities = {
                    name: stored_quality(views.metadata(f"{image_id}.{name}"), paths.views)
                    for name in gated
                    if f"{image_id}.{name}" in views
                }
                for key, image, meta in stitched_entries(image_id, origin, view_images, cfg, qualities):
                    writer.add(key, image, meta)
        summary = stitch_summary(len(image_files), cfg)
        write_json(tmp / "summary.json", summary)
    return summary
