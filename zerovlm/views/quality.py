"""Per-view quality: what the views stage records beside each view, and the gate that reads it.

Recorded (the store index's "quality" of each view, computed on the device from the uint8 views as stored, while
they are still there, so the host does no per-pixel work beside the thread that drives the GPU):
    clip_similarity   cosine similarity in [-1, 1] between the Zero123 checkpoint's own CLIP image embedding
                      (its image_encoder) of the input and of the view as stored (uint8), both prepared the same
                      way (zero123.py, step 6): a view that drifted from its object scores low
    pixel_std         standard deviation of all the view's RGB values, in 8-bit levels (0..127.5): near 0 for a
                      near-uniform (degenerate) view
    background_share  share of the view's pixels whose every channel is >= views.quality_white_min_rgb:
                      Zero-1-to-3 draws its objects on white, so near 1 means almost nothing but background

The gate (stitch.gate): a view passes when clip_similarity >= min_clip_similarity, pixel_std >=
min_pixel_std and background_share <= max_background_share; the last two flag degenerate views whatever
their similarity. On the demo's random tiny models these numbers mean nothing.
"""

from __future__ import annotations

import math

import torch

from zerovlm.io import ZeroVLMError
from zerovlm.store import ShardReader

QUALITY_KEY = "quality"  # the key of a view's quality in the store index


def pixel_sums(views: torch.Tensor, white_min_rgb: int) -> torch.Tensor:
    """(3, B) int64 on the views' device, for `views` (B, H, W, 3) uint8: each view's sum of RGB values, sum of
    their squares, and count of pixels whose every channel is >= white_min_rgb. Integer sums are exact on any
    device; squares fit in int32, their sums need int64."""
    pixels = views.flatten(1).to(torch.int32)  # (B, H*W*3)
    white = (views >= white_min_rgb).all(dim=-1).flatten(1)  # (B, H*W)
    return torch.stack(
        [pixels.sum(dim=1, dtype=torch.int64), (pixels * pixels).sum(dim=1, dtype=torch.int64), white.sum(dim=1)]
    )


def quality_records(clip_similarity: list[float], sums: list[list[int]], height: int, width: int) -> list[dict]:
    """The quality record of each view from its CLIP similarity and its `pixel_sums` (on the host), rounded: the
    index is compared byte for byte across runs."""
    values, area = 3 * height * width, height * width
    return [
        {
            "clip_similarity": round(similarity, 6),
            "pixel_std": round(math.sqrt((values * total_squares - total * total) / (values * values)), 4),
            "background_share": round(background / area, 6),
        }
        for similarity, total, total_squares, background in zip(clip_similarity, *sums, strict=True)
    ]


def stored_quality(metadata: dict, store) -> dict:
    """The quality record of a view from its store metadata; a store written before quality was recorded is
    refused in one line."""
    if QUALITY_KEY not in metadata:
        raise ZeroVLMError(
            f"{store}: view {metadata.get('key')!r} has no quality score (a view store written before quality "
            f"scores were recorded); re-synthesise it (`dvc repro -f views`)"
        )
    return metadata[QUALITY_KEY]


def passes_gate(quality: dict, gate) -> bool:
    """Whether a view passes `gate` (a stitch.gate section): similar enough to its input and not degenerate."""
    return (
        quality["clip_similarity"] >= gate.min_clip_similarity
        and quality["pixel_std"] >= gate.min_pixel_std
        and quality["background_share"] <= gate.max_background_share
    )


def recorded_qualities(store) -> dict[str, dict[str, dict]]:
    """Every view's quality record in a view store's index: image id -> view name -> record."""
    reader = ShardReader(store)  # the index only: no shard is opened
    qualities: dict[str, dict[str, dict]] = {}
    for key in reader.keys():
        metadata = reader.metadata(key)
        qualities.setdefault(metadata["image_id"], {})[metadata["view"]] = stored_quality(metadata, store)
    return qualities
