"""Stage `stitch`: the VLM input images of every view configuration, for one grid dataset.

out/shard-*.{tar,jsonl}  store keys `zerovlm.stitching.input_keys` names: one stitched image per
                         configuration, or a "-separate" configuration's panels one by one
out/summary.json         images, configurations and layout (read by the infer stage)

Images are composed on `workers` threads (decoding, resizing and PNG encoding release the GIL), one image's
configurations per task, and stored in image order, so the store's bytes do not depend on `workers`
(benchmarks/stitch_stage.py measures the gain against one thread).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from zerovlm.config import StitchConfig
from zerovlm.datasets.table import read_table
from zerovlm.io import atomic_dir, load_rgb, safe_join, write_json
from zerovlm.parallel import host_threads
from zerovlm.stage import path_flag
from zerovlm.stitching import needed_views, stitch_summary, stitched_entries
from zerovlm.store import ShardReader, ShardWriter, decode_png, encode_png
from zerovlm.view_configurations import is_gated, view_panels
from zerovlm.views.quality import stored_quality

WORKERS = host_threads()
PENDING_PER_WORKER = 2  # images composed ahead of the writer: memory stays bounded


@dataclass(frozen=True)
class Paths:
    prepared: Path = path_flag("the dataset's prepared folder (examples.jsonl, images/)")
    views: Path = path_flag("the view store")
    out: Path = path_flag("stitched image store")


def run(paths: Paths, cfg: StitchConfig, workers: int = WORKERS) -> dict:
    """Compose every configuration of every unique image of the dataset; return the store's summary."""
    examples = read_table(paths.prepared)
    image_files = dict(sorted({e.image_id: e.image_file for e in examples}.items()))
    names = needed_views(cfg.configurations)
    gated = sorted({view for c in cfg.configurations if is_gated(c) for view in view_panels(c)})

    def compose(image_id: str, image_file: str, view_pngs: dict[str, bytes], qualities: dict[str, dict]):
        origin = load_rgb(safe_join(paths.prepared, image_file), f"image {image_id}")
        view_images = {name: decode_png(png, f"{paths.views}: {image_id}.{name}") for name, png in view_pngs.items()}
        entries = stitched_entries(image_id, origin, view_images, cfg, qualities)
        return [(key, encode_png(image), meta) for key, image, meta in entries]

    # The view store is read on this thread only (ShardReader shares one file handle per shard).
    with ShardReader(paths.views) as views, atomic_dir(paths.out) as tmp:
        pool = ThreadPoolExecutor(workers, thread_name_prefix="stitch")
        try:
            with ShardWriter(tmp) as writer:
                pending = deque()
                for image_id, image_file in image_files.items():
                    view_pngs = {name: views.png(key) for name in names if (key := f"{image_id}.{name}") in views}
                    qualities = {
                        name: stored_quality(views.metadata(key), paths.views)
                        for name in gated
                        if (key := f"{image_id}.{name}") in views
                    }
                    pending.append(pool.submit(compose, image_id, image_file, view_pngs, qualities))
                    if len(pending) >= PENDING_PER_WORKER * workers:
                        _store(writer, pending.popleft().result())
                while pending:
                    _store(writer, pending.popleft().result())
        finally:  # after a failure the output is discarded: compose no more of it
            pool.shutdown(wait=True, cancel_futures=True)
        summary = stitch_summary(len(image_files), cfg)
        write_json(tmp / "summary.json", summary)
    return summary


def _store(writer: ShardWriter, entries: list[tuple[str, bytes, dict]]) -> None:
    for key, png, meta in entries:
        writer.add_png(key, png, meta)
