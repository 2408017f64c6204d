"""The views stage: synthesise every requested view of every unique image into a shard store.

Keys are "<image_id>.<view name>", so an image shared by several examples or datasets is synthesised once.
Work goes to a sibling partial folder together with a fingerprint of the settings that change pixels;
a re-run with the same fingerprint keeps the finished shards (resume), another fingerprint discards them.
Each (image, view) has its own torch.Generator seeded from (seed, image_id, view), so a view does not
depend on the batch it was drawn in. On CUDA out-of-memory the batch is halved and retried.
With `views.foreground` set, each input image is masked and recentred as it is loaded (foreground.py);
each view's metadata says whether its input was "recentred" or fell back ("fallback") to the image as is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from zerovlm.io import ZeroVLMError, safe_join, stable_hash, write_json
from zerovlm.parallel import Worker, current_worker
from zerovlm.runtime import code_identity, model_identity, peak_memory_bytes, resolve_device
from zerovlm.store import ShardReader, ShardWriter, encode_png, publish
from zerovlm.views.foreground import MaskFn, load_foreground, remove_background
from zerovlm.views.poses import ViewPose, pose_vector, resolve_views
from zerovlm.views.zero123 import Zero123Pipeline, ldm_timesteps

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FINGERPRINT_FILE = "settings.json"
PNG_THREADS = 4
# What the view store's own summary.json holds: the same for any run that gives the same views.
STORE_SUMMARY_KEYS = ("examples", "images", "views", "dtype", "recentre_fallbacks", "fingerprint", "settings")
# Settings that change pixels; batch_size, device placement and compile do not enter the fingerprint.
# Presets are poses fixed in poses.py (random: drawn from the seed); custom views are poses from params.
PIXEL_SETTINGS = ("model", "variant", "weights_variant", "custom", "image_size_px", "num_inference_steps",
                  "timestep_schedule", "guidance_scale", "eta", "dtype", "seed", "foreground",
                  "foreground_threshold_rgb")


@dataclass(frozen=True)
class Job:
    image_id: str
    image_path: Path
    example_id: str   # the first example using the image, for error messages
    pose: ViewPose

    @property
    def key(self) -> str:
        return f"{self.image_id}.{self.pose.name}"


def settings_fingerprint(cfg, device: torch.device) -> tuple[str, dict]:
    """(hash, settings) of what the pixels depend on: the settings, a local model folder's content or a hub
    model's commit, and the kind of device (views are the same bytes only on the same kind of device and dtype)."""
    settings = cfg.model_dump(mode="json", include=set(PIXEL_SETTINGS))
    return stable_hash([settings, model_identity(cfg.model, cfg.revision), device.type]), settings


def view_generator(seed: int, image_id: str, view_name: str) -> torch.Generator:
    """The CPU generator of one (image, view): its noise is the same on any device and in any batch."""
    digest = hashlib.sha256(f"zero123\x00{seed}\x00{image_id}\x00{view_name}".encode()).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def plan_jobs(cfg, examples, prepared_dir: Path) -> list[Job]:
    """One job per (unique image, view), in first-appearance order of the images."""
    first: dict[str, tuple[Path, str]] = {}
    for example in examples:
        if example.image_id not in first:
            first[example.image_id] = (safe_join(prepared_dir, example.image_file), example.example_id)
    return [Job(image_id, path, example_id, pose)
            for image_id, (path, example_id) in first.items() for pose in resolve_views(cfg, image_id)]


def load_image(job: Job) -> Image.Image:
    try:
        with Image.open(job.image_path) as image:
            image.load()
            return image.convert("RGBA")  # keeps transparency for compositing on white
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ZeroVLMError(f"{job.image_path}: unreadable image for example {job.example_id} "
                           f"({type(error).__name__}: {error}); re-run the prepare stage") from None


def sampler_code_identity() -> str:
    """A content hash of the views code (zerovlm/views/*.py). It guards resuming only: it stays out of the
    store's fingerprint, which colleagues compare when they share view sets."""
    return code_identity(Path(__file__).parent)


def _open_partial(partial: Path, fingerprint: str, settings: dict) -> None:
    """Keep a partial folder written with the same settings and code; otherwise start it afresh."""
    stamp = partial / FINGERPRINT_FILE
    key = {"fingerprint": fingerprint, "code": sampler_code_identity()}
    if partial.exists():
        previous = json.loads(stamp.read_text()) if stamp.is_file() else {}
        if all(previous.get(k) == v for k, v in key.items()):
            log.info("views: resuming from %s", partial)
            return
        log.warning("views: discarding %s (written with other settings or code)", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    write_json(stamp, {**key, "settings": settings})


class _Sampler:
    """Runs jobs through the pipeline, halving the batch on CUDA out-of-memory (sticky for the run)."""

    def __init__(self, cfg, pipeline: Zero123Pipeline, batch_size: int, pad_to_batch: bool):
        self.cfg, self.pipeline, self.batch_size = cfg, pipeline, batch_size
        self.pad_to_batch = pad_to_batch  # compiled UNet: keep shapes static, pad the last batch
        self.backoffs = 0
        self.timesteps = (ldm_timesteps(cfg.num_inference_steps) if cfg.timestep_schedule == "ldm" else None)

    def _run(self, jobs: list[Job], images: dict[str, Image.Image]) -> list[Image.Image]:
        padded = jobs + [jobs[-1]] * (self.batch_size - len(jobs) if self.pad_to_batch else 0)
        poses = torch.stack([pose_vector(job.pose, self.cfg.variant) for job in padded])  # (B, 4)
        generators = [view_generator(self.cfg.seed, job.image_id, job.pose.name) for job in padded]
        views = self.pipeline([images[job.image_id] for job in padded], poses, generators,
                              num_inference_steps=self.cfg.num_inference_steps,
                              guidance_scale=self.cfg.guidance_scale, eta=self.cfg.eta,
                              image_size_px=self.cfg.image_size_px, timesteps=self.timesteps)
        return views[:len(jobs)]

    def __call__(self, jobs: list[Job], images: dict[str, Image.Image]) -> list[Image.Image]:
        views, start = [], 0
        while start < len(jobs):
            chunk = jobs[start:start + self.batch_size]
            try:
                views += self._run(chunk, images)
            except torch.cuda.OutOfMemoryError:
                if self.batch_size == 1:
                    raise ZeroVLMError("views: CUDA out of memory with one view per batch; lower "
                                       "views.image_size_px or use a larger GPU") from None
                self.batch_size //= 2
                self.backoffs += 1
                torch.cuda.empty_cache()
                log.warning("views: CUDA out of memory, retrying with batch_size %d", self.batch_size)
                continue
            start += len(chunk)
        return views


def _load_batch(jobs: list[Job], foreground: MaskFn | None,
                size_px: int) -> tuple[dict[str, Image.Image], dict[str, str]]:
    """The input image of each image id, and its foreground status ("none", "recentred" or "fallback")."""
    images: dict[str, Image.Image] = {}
    status: dict[str, str] = {}
    for job in jobs:
        if job.image_id in images:
            continue
        images[job.image_id], status[job.image_id] = load_image(job), "none"
        if foreground is not None:
            images[job.image_id], recentred = remove_background(images[job.image_id], foreground, size_px,
                                                                name=str(job.image_path))
            status[job.image_id] = "recentred" if recentred else "fallback"
    return images, status


def _count_fallbacks(store: Path) -> int:
    """Images whose foreground step found no object (read from the views' metadata: resume-safe)."""
    reader = ShardReader(store)
    try:
        return len({reader.metadata(key)["image_id"] for key in reader.keys()
                    if reader.metadata(key).get("foreground") == "fallback"})
    finally:
        reader.close()


def plan_batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """Fixed batches of the whole plan: whatever process runs a batch, and whether it runs in a
    fresh or a resumed run, its views are computed in the same company (same bytes on one device)."""
    return [jobs[i:i + batch_size] for i in range(0, len(jobs), batch_size)]


def _view_metadata(cfg, job: Job, foreground_status: str) -> dict:
    return {"image_id": job.image_id, "view": job.pose.name, "polar_deg": job.pose.polar_deg,
            "azimuth_deg": job.pose.azimuth_deg, "radius": job.pose.radius, "seed": cfg.seed,
            "foreground": foreground_status}


def _store_encoded(writer: ShardWriter, encoding: list[tuple[Job, Future, dict]]) -> int:
    """Add a batch's views, in plan order, once their PNG encodings are done; return how many."""
    for job, png, metadata in encoding:
        writer.add_png(job.key, png.result(), metadata)
    return len(encoding)


def _finished_keys(partial: Path) -> set[str]:
    return {key for part in sorted(partial.glob("part-*")) for key in ShardReader(part).keys()}


def synthesize_views(cfg, examples, prepared_dir: Path, out_dir: Path, shard_size: int = 256,
                     worker: Worker | None = None, run_record: Path | None = None) -> dict | None:
    """Write every view of every unique image to the store `out_dir`; return (and save) a summary.

    Under a multi-process launch each process synthesises the batches it owns (by the batch's first
    image id) into its own part; the main process merges the parts in plan order (None elsewhere).
    `out_dir/summary.json` holds the deterministic part of the summary; `run_record`, if given, the
    whole of it (timings, peak memory, views generated or reused).
    """
    worker = worker or current_worker()
    started = time.perf_counter()
    prepared_dir, out_dir = Path(prepared_dir), Path(out_dir)
    device, dtype = resolve_device(cfg.device, "views"), DTYPES[cfg.dtype]
    if device.type == "cpu" and dtype == torch.float16:
        log.warning("views: float16 on the CPU is several times slower than float32 (set views.dtype)")
    jobs = plan_jobs(cfg, examples, prepared_dir)
    fingerprint, settings = settings_fingerprint(cfg, device)
    partial = out_dir.parent / f".{out_dir.name}.partial"
    if worker.is_main:
        _open_partial(partial, fingerprint, settings)
    worker.barrier()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    done = _finished_keys(partial)
    batches = [batch for batch in plan_batches(jobs, cfg.batch_size) if any(j.key not in done for j in batch)]
    mine = worker.owned(batches, key=lambda batch: batch[0].image_id)
    writer = ShardWriter(partial / worker.part_name, shard_size)
    sampler, generating, generated = None, 0.0, 0
    if mine:
        pipeline = Zero123Pipeline.from_pretrained(cfg.model, dtype, device, variant=cfg.weights_variant,
                                                   revision=cfg.revision)
        if cfg.compile and device.type == "cuda":
            pipeline.compile()
        sampler = _Sampler(cfg, pipeline, cfg.batch_size, pad_to_batch=cfg.compile and device.type == "cuda")
        foreground = None if cfg.foreground == "none" else load_foreground(cfg.foreground,
                                                                           cfg.foreground_threshold_rgb)
        tick = time.perf_counter()
        # Threads (both release the GIL in C): the next batch's images are decoded, and the last batch's
        # views PNG-encoded, while the GPU computes this batch. On one core the encoding alone would idle an
        # H200 for 1.3 s per 128 views, a fifth of the batch (benchmarks/views_stage.py).
        with ThreadPoolExecutor(max_workers=1) as loader, ThreadPoolExecutor(max_workers=PNG_THREADS) as encoder:
            pending = loader.submit(_load_batch, mine[0], foreground, cfg.image_size_px)
            encoding: list[tuple[Job, Future, dict]] = []
            for index, batch in enumerate(mine):
                images, status = pending.result()
                if index + 1 < len(mine):
                    pending = loader.submit(_load_batch, mine[index + 1], foreground, cfg.image_size_px)
                try:
                    views = sampler(batch, images)
                finally:  # the last batch's views are kept even if this one fails
                    generated += _store_encoded(writer, encoding)
                # a resumed batch recomputes views finished before (same bytes): only the others are new
                encoding = [(job, encoder.submit(encode_png, view), _view_metadata(cfg, job, status[job.image_id]))
                            for job, view in zip(batch, views, strict=True) if job.key not in done]
                log.info("views [%s]: batch %d/%d", worker.part_name, index + 1, len(mine))
            generated += _store_encoded(writer, encoding)
        generating = time.perf_counter() - tick
    writer.close()
    worker.barrier()
    if not worker.is_main:
        return None

    publish(sorted(partial.glob("part-*")), out_dir, [job.key for job in jobs], shard_size)
    shutil.rmtree(partial)
    reused = len({job.key for job in jobs} & done)  # the partial may hold views a changed plan dropped
    summary = {
        "examples": len(examples), "images": len({job.image_id for job in jobs}), "views": len(jobs),
        "views_generated": len(jobs) - reused, "views_reused": reused, "processes": worker.world_size,
        "seconds": round(time.perf_counter() - started, 3), "seconds_generating": round(generating, 3),
        "views_per_second": round(generated / generating, 3) if generating else None,
        "device": str(device), "dtype": cfg.dtype,
        "batch_size": cfg.batch_size, "batch_size_final": sampler.batch_size if sampler else cfg.batch_size,
        "oom_backoffs": sampler.backoffs if sampler else 0, "recentre_fallbacks": _count_fallbacks(out_dir),
        "peak_memory_bytes": peak_memory_bytes(), "fingerprint": fingerprint, "settings": settings,
        "model_revision": cfg.revision,  # a hub model's commit under `dvc repro` (pinned by the check stage)
    }
    # The store keeps only what its pixels depend on, so that re-synthesising identical views gives an
    # identical DVC output (downstream stages stay cached); timings and counts of this run go apart.
    write_json(out_dir / "summary.json", {key: summary[key] for key in STORE_SUMMARY_KEYS})
    if run_record is not None:
        write_json(run_record, summary)
    return summary
