"""Synthesising views: the (image, view) jobs, their noise, and the sampler that runs them in batches.

Keys are "<image_id>.<view name>", so an image shared by several examples or datasets is synthesised once.
Each (image, view) has its own torch.Generator seeded from (seed, image_id, view), so a view does not
depend on the batch it was drawn in. On CUDA out-of-memory the batch is halved and retried.
With `views.foreground` set, each input image is masked and recentred (foreground.py); each view's metadata
says whether its input was "recentred" or fell back ("fallback") to the image as is.

Images in, images out: the views stage (zerovlm/pipeline/views.py) reads the prepared images and writes the
view store.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from zerovlm.io import safe_join, stable_hash
from zerovlm.runtime import BatchSize, is_out_of_memory, model_identity
from zerovlm.views.foreground import MaskFn, remove_background
from zerovlm.views.poses import ViewPose, pose_vector, resolve_views
from zerovlm.views.quality import QUALITY_KEY
from zerovlm.views.zero123 import PendingViews, Zero123Pipeline, ldm_timesteps

# Settings that change pixels; batch_size, device placement and compile do not enter the fingerprint.
# Presets are poses fixed in poses.py (random: drawn from the seed); custom views are poses from params.
PIXEL_SETTINGS = (
    "model",
    "variant",
    "weights_variant",
    "custom",
    "image_size_px",
    "num_inference_steps",
    "timestep_schedule",
    "guidance_scale",
    "eta",
    "dtype",
    "seed",
    "foreground",
    "foreground_threshold_rgb",
    "quality_white_min_rgb",  # not pixels, but the quality the store records beside them
)


@dataclass(frozen=True)
class ViewJob:
    """One view to synthesise: an image and a pose."""

    image_id: str
    image_path: Path
    example_id: str  # the first example using the image, for error messages
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


def plan_view_jobs(cfg, examples, prepared_dir: Path) -> list[ViewJob]:
    """One job per (unique image, view), in first-appearance order of the images."""
    first: dict[str, tuple[Path, str]] = {}
    for example in examples:
        if example.image_id not in first:
            first[example.image_id] = (safe_join(prepared_dir, example.image_file), example.example_id)
    return [
        ViewJob(image_id, path, example_id, pose)
        for image_id, (path, example_id) in first.items()
        for pose in resolve_views(cfg, image_id)
    ]


def plan_batches(jobs: list[ViewJob], batch_size: int) -> list[list[ViewJob]]:
    """Fixed batches of the whole plan: whatever process runs a batch, and whether it runs in a
    fresh or a resumed run, its views are computed in the same company (same bytes on one device)."""
    return [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]


def input_image(image: Image.Image, foreground: MaskFn | None, size_px: int, name: str) -> tuple[Image.Image, str]:
    """The sampler's input from an RGBA image, and its foreground status ("none", "recentred" or "fallback")."""
    if foreground is None:
        return image, "none"
    image, recentred = remove_background(image, foreground, size_px, name=name)
    return image, "recentred" if recentred else "fallback"


def view_metadata(cfg, job: ViewJob, foreground_status: str, quality: dict) -> dict:
    """What the view store records beside each view, its quality (quality.py) included."""
    return {
        "image_id": job.image_id,
        "view": job.pose.name,
        "polar_deg": job.pose.polar_deg,
        "azimuth_deg": job.pose.azimuth_deg,
        "radius": job.pose.radius,
        "seed": cfg.seed,
        "foreground": foreground_status,
        QUALITY_KEY: quality,
    }


class Sampler:
    """Runs jobs through the pipeline, halving the batch on CUDA out-of-memory (for the rest of the run)."""

    def __init__(self, cfg, pipeline: Zero123Pipeline, batch_size: int, pad_to_batch: bool):
        self.cfg, self.pipeline = cfg, pipeline
        self.batch_size = BatchSize(batch_size, "views", "lower views.image_size_px or use a larger GPU")
        self.pad_to_batch = pad_to_batch  # compiled UNet: keep shapes static, pad the last batch
        self.timesteps = ldm_timesteps(cfg.num_inference_steps) if cfg.timestep_schedule == "ldm" else None

    def _run(self, jobs: list[ViewJob], images: dict[str, Image.Image]) -> tuple[PendingViews, int]:
        padded = jobs + [jobs[-1]] * (self.batch_size.value - len(jobs) if self.pad_to_batch else 0)
        poses = torch.stack([pose_vector(job.pose, self.cfg.variant) for job in padded])  # (B, 4)
        generators = [view_generator(self.cfg.seed, job.image_id, job.pose.name) for job in padded]
        pending = self.pipeline(
            [images[job.image_id] for job in padded],
            poses,
            generators,
            num_inference_steps=self.cfg.num_inference_steps,
            guidance_scale=self.cfg.guidance_scale,
            eta=self.cfg.eta,
            image_size_px=self.cfg.image_size_px,
            timesteps=self.timesteps,
            quality_white_min_rgb=self.cfg.quality_white_min_rgb,
            output_type="pending",
        )
        return pending, len(jobs)

    def launch(self, jobs: list[ViewJob], images: dict[str, Image.Image]) -> PendingBatch:
        """Queue the views of `jobs` on the device and return without waiting for them; `images`: the input image of
        each image id. The inputs' copies to the device wait for the work queued before (pageable host memory),
        so the device is busy with the batch before while this prepares the inputs. Out of memory surfaces
        here, while the work is queued."""
        calls, start = [], 0
        while start < len(jobs):
            chunk = jobs[start : start + self.batch_size.value]
            try:
                calls.append(self._run(chunk, images))
            except Exception as error:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not is_out_of_memory(error):
                    raise
                del error
                self.batch_size.halve()
                continue
            start += len(chunk)
        return PendingBatch(calls)


@dataclass(frozen=True)
class PendingBatch:
    """A batch's pipeline calls, queued on the device: each call's PendingViews and how many of its views are
    jobs (the rest pad a compiled call's shape)."""

    calls: list[tuple[PendingViews, int]]

    def result(self) -> list[tuple[Image.Image, dict]]:
        """(view, its quality record) of each job, in order."""
        views = []
        for pending, count in self.calls:
            images, qualities = pending.result()
            views += list(zip(images, qualities))[:count]
        return views
