"""Optional background removal and recentring: the border mask, the demo's crop-fit-centre, the fallback."""

from __future__ import annotations

import logging
import typing

import numpy as np
import torch
import pytest
from PIL import Image, ImageDraw

from tests.views_fixtures import make_prepared, tiny_models, views_config  # noqa: F401  (pytest fixture)
from zerovlm.config import ViewsConfig
from zerovlm.io import ZeroVLMError
from zerovlm.store import ShardReader
from zerovlm.views import foreground
from zerovlm.views.foreground import demo_object_px, load_foreground, recentre, remove_background
from zerovlm.views.synthesize import settings_fingerprint, synthesize_views

BACKGROUND = (235, 235, 230)  # the synthetic scenes' plain background


def object_scene(size: int = 96) -> Image.Image:
    """A red box (x 10..39, y 50..69) on a plain background, off-centre and wider than tall."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    ImageDraw.Draw(image).rectangle([10, 50, 39, 69], fill=(210, 40, 40))
    return image


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1  # x0, y0, x1, y1 (exclusive)


def test_border_mask_finds_the_object():
    mask = load_foreground("border", threshold_rgb=30.0)(object_scene())
    assert mask.dtype == np.uint8 and mask.shape == (96, 96)
    assert bbox(mask > 127) == (10, 50, 40, 70) and int((mask > 127).sum()) == 30 * 20


@pytest.mark.parametrize("size_px", [256, 64])
def test_recentre_centres_the_object_at_the_demo_ratio(size_px):
    image = object_scene()
    out = recentre(image, load_foreground("border")(image), size_px, demo_object_px(size_px))
    assert out.mode == "RGBA" and out.size == (size_px, size_px)
    alpha = np.asarray(out)[:, :, 3]
    x0, y0, x1, y1 = bbox(alpha > 127)
    object_px = demo_object_px(size_px)                     # 200 of 256, 50 of 64
    assert object_px == {256: 200, 64: 50}[size_px]
    assert abs((x1 - x0) - object_px) <= 1                  # the longer side (width 30 -> object_px)
    assert abs((y1 - y0) - object_px * 20 / 30) <= 1        # aspect ratio kept
    assert abs((x0 + x1) / 2 - size_px / 2) <= 1 and abs((y0 + y1) / 2 - size_px / 2) <= 1
    rgb = np.asarray(out)[:, :, :3].astype(int)
    assert (rgb[alpha == 0] == 255).all()                   # padding on white
    assert np.abs(rgb[size_px // 2, size_px // 2] - (210, 40, 40)).max() <= 2  # the object's colour


def test_transparent_background_counts_as_white_background():
    image = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse([5, 5, 20, 15], fill=(30, 60, 220, 255))
    mask = load_foreground("border")(image)
    assert bbox(mask > 127) == (5, 5, 21, 16)


def test_all_background_falls_back_with_a_warning(caplog):
    image = Image.new("RGB", (32, 32), BACKGROUND)
    assert recentre(image, load_foreground("border")(image), 32, 25) is None
    with caplog.at_level(logging.WARNING, logger=foreground.__name__):
        out, recentred = remove_background(image, load_foreground("border"), 32, name="plain.png")
    assert out is image and not recentred
    assert "no object found in plain.png" in caplog.text


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ZeroVLMError, match=r"unknown backend 'boarder'\. Did you mean 'border'\? Valid: none, border"):
        load_foreground("boarder")


def test_config_choices_match_the_registry():
    choices = typing.get_args(ViewsConfig.model_fields["foreground"].annotation)
    assert set(choices) == {"none", *foreground.BACKENDS}
    assert ViewsConfig().foreground == "none"


def test_foreground_settings_change_the_fingerprint():
    cpu = torch.device("cpu")
    base = settings_fingerprint(ViewsConfig(), cpu)[0]
    assert settings_fingerprint(ViewsConfig(foreground="border"), cpu)[0] != base
    assert settings_fingerprint(ViewsConfig(foreground_threshold_rgb=40.0), cpu)[0] != base
    assert settings_fingerprint(ViewsConfig(batch_size=7), cpu)[0] == base


def test_views_stage_records_recentring_and_fallbacks(tmp_path, tiny_models):  # noqa: F811
    examples = make_prepared(tmp_path / "prepared", num_images=2, examples_per_image=1)
    blank = tmp_path / "prepared" / examples[1].image_file   # second image: nothing but background
    Image.new("RGBA", (48, 48), (0, 0, 0, 0)).save(blank)
    cfg = views_config(tiny_models["kxic"], foreground="border", presets=("left",))
    summary = synthesize_views(cfg, examples, tmp_path / "prepared", tmp_path / "views")
    assert summary["recentre_fallbacks"] == 1 and summary["settings"]["foreground"] == "border"
    reader = ShardReader(tmp_path / "views")
    assert [reader.metadata(key)["foreground"] for key in reader.keys()] == ["recentred", "fallback"]
