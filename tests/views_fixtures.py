"""Fixtures for the views tests: tiny Zero123 folders in both layouts and a small prepared dataset.

Import the fixtures into a test module with `from views_fixtures import *  # noqa: F401,F403`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from zerovlm.config import ViewsConfig
from zerovlm.datasets.table import Example, write_table
from zerovlm.views.tiny import build_tiny_zero123

torch.set_num_threads(2)  # the CI machine has 2 cores


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """{"kxic": folder, "bennyguo": folder}: the same random weights (seed 0) in both layouts."""
    root = tmp_path_factory.mktemp("tiny_zero123")
    return {layout: build_tiny_zero123(root / layout, seed=0, layout=layout) for layout in ("kxic", "bennyguo")}


def scene(index: int, size: int = 48) -> Image.Image:
    """A small RGBA test picture: two coloured shapes on a transparent background."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rectangle([4 + index, 10, 20 + index, 30], fill=(200, 40 + 20 * index, 40, 255))
    draw.ellipse([26, 8 + index, 44, 26 + index], fill=(30, 60, 220, 200))
    return image


def make_prepared(folder: Path, num_images: int = 3, examples_per_image: int = 2) -> list[Example]:
    """Write `num_images` PNGs under folder/images and the table of examples sharing them; return the examples."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    examples = []
    for index in range(num_images):
        image_id = f"{index:016x}"
        scene(index).save(folder / "images" / f"{image_id}.png")
        for copy in range(examples_per_image):
            examples.append(
                Example(
                    example_id=f"synthetic/test/{index}-{copy}",
                    dataset="synthetic",
                    split="test",
                    task="true_false",
                    image_id=image_id,
                    image_file=f"images/{image_id}.png",
                    caption="the red box is left of the blue ball",
                    options=("yes", "no"),
                    answer_index=0,
                    relation="left of",
                )
            )
    write_table(folder, examples)
    return examples


def views_config(model: Path, **overrides) -> ViewsConfig:
    """Small, fast settings on the CPU (32 px -> 8x8 latents, 2 DDIM steps)."""
    values = dict(
        model=str(model),
        image_size_px=32,
        num_inference_steps=2,
        guidance_scale=3.0,
        eta=1.0,
        dtype="float32",
        device="cpu",
        batch_size=4,
        seed=0,
    )
    values.update(overrides)
    return ViewsConfig(**values)
