"""Stage `views`: Zero-1-to-3 novel views of every unique prepared image, for each requested pose.

    out/shard-*.{tar,jsonl}  the views, keys "<image_id>.<view name>" (zerovlm.views.synthesize)
    out/summary.json         what the pixels depend on (settings, fingerprint) and counts: the same for any run
                             that gives the same views, so that downstream stages stay cached
    run_record               this run's timings, peak memory, device, views generated or reused

Work goes to a partial folder beside `out` (zerovlm/partial_run.py), so an interrupted run resumes.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from zerovlm.config import ViewsConfig
from zerovlm.datasets.table import read_table
from zerovlm.io import ZeroVLMError, write_json
from zerovlm.parallel import Worker, current_worker
from zerovlm.partial_run import PartialRun, unfinished
from zerovlm.runtime import code_identity, peak_memory_bytes, pin_revision, resolve_device_dtype
from zerovlm.stage import model_source_flag, path_flag, run_record_flag
from zerovlm.store import BackgroundWriter, ShardReader, ShardWriter, publish
from zerovlm.views.foreground import MaskFn, load_foreground
from zerovlm.views.synthesize import (
    Sampler,
    ViewJob,
    input_image,
    plan_batches,
    plan_view_jobs,
    settings_fingerprint,
    view_metadata,
)
from zerovlm.views.zero123 import Zero123Pipeline

log = logging.getLogger(__name__)

PNG_THREADS = 4
PENDING_BATCHES = 2  # batches of views that may wait for PNG encoding and the store: the GPU loop's slack
# What the view store's own summary.json holds: the same for any run that gives the same views.
STORE_SUMMARY_KEYS = ("examples", "images", "views", "dtype", "recentre_fallbacks", "fingerprint", "settings")


@dataclass(frozen=True)
class Paths:
    prepared: Path = path_flag("prepared-style folder of the images (examples.jsonl, images/): the pool")
    out: Path = path_flag("view store (shards + index)")
    run_record: Path | None = run_record_flag("timings, peak memory and counts")
    model_source: Path | None = model_source_flag("data/inputs/views.json", "at views.revision as it stands")


def views_code_identity() -> str:
    """A content hash of the views code (zerovlm/views/*.py and this stage). It guards resuming only: it stays
    out of the store's fingerprint, which colleagues compare when they share view sets."""
    package = Path(__file__).parents[1]
    return code_identity(package / "views", Path(__file__))


def _load_image(job: ViewJob) -> Image.Image:
    try:
        with Image.open(job.image_path) as image:
            image.load()
            return image.convert("RGBA")  # keeps transparency for compositing on white
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ZeroVLMError(
            f"{job.image_path}: unreadable image for example {job.example_id} "
            f"({type(error).__name__}: {error}); re-run the prepare stage"
        ) from None


def _load_batch(
    jobs: list[ViewJob], foreground: MaskFn | None, size_px: int
) -> tuple[dict[str, Image.Image], dict[str, str]]:
    """The input image of each image id, and its foreground status ("none", "recentred" or "fallback")."""
    images: dict[str, Image.Image] = {}
    status: dict[str, str] = {}
    for job in jobs:
        if job.image_id not in images:
            images[job.image_id], status[job.image_id] = input_image(
                _load_image(job), foreground, size_px, str(job.image_path)
            )
    return images, status


def _count_fallbacks(store: Path) -> int:
    """Images whose foreground step found no object (read from the views' metadata: resume-safe)."""
    with ShardReader(store) as reader:
        return len(
            {
                reader.metadata(key)["image_id"]
                for key in reader.keys()
                if reader.metadata(key).get("foreground") == "fallback"
            }
        )


def _finished_keys(partial: PartialRun) -> set[str]:
    return {key for part in partial.parts() for key in ShardReader(part).keys()}  # the index only: no shard opened


def _store_batch(store: BackgroundWriter, cfg: ViewsConfig, done: set[str], batch, part: str, batches: int) -> None:
    """Hand a queued batch's views, once on the host, to the store (`batch`: as `run` keeps it in flight)."""
    index, jobs, status, pending = batch
    for job, (view, quality) in zip(jobs, pending.result(), strict=True):
        if job.key not in done:  # a resumed batch recomputes views finished before (same bytes)
            store.add(job.key, view, view_metadata(cfg, job, status[job.image_id], quality))
    log.info("views [%s]: batch %d/%d", part, index + 1, batches)


def run(paths: Paths, cfg: ViewsConfig, shard_size: int = 256, worker: Worker | None = None) -> dict | None:
    """Write every view of every unique image to the store `paths.out`; return (and save) a summary.

    Under a multi-process launch each process synthesises the batches it owns (round-robin over the plan's
    batches) into its own part; the main process merges the parts in plan order (None elsewhere).
    """
    worker = worker or current_worker()
    started = time.perf_counter()
    if paths.model_source is not None:
        cfg = pin_revision(cfg, paths.model_source)
    examples = read_table(paths.prepared)
    device, dtype = resolve_device_dtype(cfg.device, cfg.dtype, "views")
    log.info("views: on %s in %s", device, dtype)
    jobs = plan_view_jobs(cfg, examples, paths.prepared)
    fingerprint, settings = settings_fingerprint(cfg, device)
    partial = PartialRun(paths.out, "views", fingerprint, views_code_identity(), {"settings": settings})
    partial.open(worker)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    done = _finished_keys(partial)
    mine = unfinished(worker.owned(plan_batches(jobs, cfg.batch_size)), done, key=lambda job: job.key)
    writer = ShardWriter(partial.part(worker), shard_size)
    sampler, generating, generated, seconds_loading, seconds_first_batch = None, 0.0, 0, 0.0, None
    if mine:
        tick = time.perf_counter()
        pipeline = Zero123Pipeline.from_pretrained(
            cfg.model, dtype, device, variant=cfg.weights_variant, revision=cfg.revision
        )
        if cfg.compile and device.type == "cuda":
            pipeline.compile()
        seconds_loading = time.perf_counter() - tick
        sampler = Sampler(cfg, pipeline, cfg.batch_size, pad_to_batch=cfg.compile and device.type == "cuda")
        foreground = None if cfg.foreground == "none" else load_foreground(cfg.foreground, cfg.foreground_threshold_rgb)
        tick = time.perf_counter()
        # Each batch is queued on the device (Sampler.launch) before the batch before it is taken to the host and
        # stored, so the host's work between batches overlaps the device's. In threads, while the GPU computes:
        # the next batch's images are decoded, and the views PNG-encoded and written to the store. With the
        # encoding and the tar writes on the loop's thread the stage ran at 0.93 of the pipeline's rate on an H200
        # (benchmarks/views_stage.py). At most PENDING_BATCHES batches of views wait in memory for the store,
        # besides the one queued on the device.
        with (
            ThreadPoolExecutor(max_workers=1) as loader,
            BackgroundWriter(writer, PNG_THREADS, PENDING_BATCHES * cfg.batch_size) as store,
        ):
            loading = loader.submit(_load_batch, mine[0], foreground, cfg.image_size_px)
            in_flight = None  # queued and not stored yet: (index, jobs, foreground status, PendingBatch)
            try:
                for index, batch in enumerate(mine):
                    images, status = loading.result()
                    if index + 1 < len(mine):
                        loading = loader.submit(_load_batch, mine[index + 1], foreground, cfg.image_size_px)
                    queued = (index, batch, status, sampler.launch(batch, images))
                    before, in_flight = in_flight, queued
                    if before is not None:
                        _store_batch(store, cfg, done, before, worker.part_name, len(mine))
                    if seconds_first_batch is None:
                        # compilation (or loading its cache) happens in the first call, timed alone until its
                        # views are on the host, before the next batch is queued
                        in_flight = None
                        _store_batch(store, cfg, done, queued, worker.part_name, len(mine))
                        seconds_first_batch = time.perf_counter() - tick
            finally:  # the batch queued last is stored even when a later one fails to load or to queue
                if in_flight is not None:
                    _store_batch(store, cfg, done, in_flight, worker.part_name, len(mine))
        generated = store.added
        generating = time.perf_counter() - tick
    else:
        writer.close()
    worker.barrier()
    if not worker.is_main:
        return None

    reused = len({job.key for job in jobs} & done)  # the partial may hold views a changed plan dropped
    with partial.publish() as tmp:
        publish(partial.parts(), tmp, [job.key for job in jobs], shard_size)
        summary = {
            "examples": len(examples),
            "images": len({job.image_id for job in jobs}),
            "views": len(jobs),
            "views_generated": len(jobs) - reused,
            "views_reused": reused,
            "processes": worker.world_size,
            "seconds": round(time.perf_counter() - started, 3),
            "seconds_loading": round(seconds_loading, 3),  # weights onto the device
            "seconds_first_batch": None if seconds_first_batch is None else round(seconds_first_batch, 3),
            "seconds_generating": round(generating, 3),
            "views_per_second": round(generated / generating, 3) if generating else None,
            "device": str(device),
            "dtype": cfg.dtype,
            "dtype_used": str(dtype).removeprefix("torch."),
            "batch_size": cfg.batch_size,
            "batch_size_final": sampler.batch_size.value if sampler else cfg.batch_size,
            "oom_backoffs": sampler.batch_size.backoffs if sampler else 0,
            "recentre_fallbacks": _count_fallbacks(tmp),
            "peak_memory_bytes": peak_memory_bytes(),
            "fingerprint": fingerprint,
            "settings": settings,
            "model_revision": cfg.revision,  # a hub model's commit under `dvc repro` (pinned by the check stage)
        }
        # The store keeps only what its pixels depend on, so that re-synthesising identical views gives an
        # identical DVC output (downstream stages stay cached); timings and counts of this run go apart.
        write_json(tmp / "summary.json", {key: summary[key] for key in STORE_SUMMARY_KEYS})
        if paths.run_record is not None:
            write_json(paths.run_record, summary)
    return summary
