"""Optional background removal and recentring: the border mask, the demo's crop-fit-centre (against a
transcription of the original), the fallback."""

from __future__ import annotations

import logging
import typing

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tests.views_fixtures import make_prepared, tiny_models, views_config  # noqa: F401  (pytest fixture)
from zerovlm.config import ViewsConfig
from zerovlm.io import ZeroVLMError
from zerovlm.pipeline import views
from zerovlm.store import ShardReader
from zerovlm.views import foreground
from zerovlm.views.foreground import demo_object_px, load_foreground, recentre, remove_background
from zerovlm.views.synthesize import settings_fingerprint
from zerovlm.views.zero123 import prepare_image

BACKGROUND = (235, 235, 230)  # the synthetic scenes' plain background


def object_scene(size: int = 96) -> Image.Image:
    """A red box (x 10..39, y 50..69) on a plain background, off-centre and wider than tall."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    ImageDraw.Draw(image).rectangle([10, 50, 39, 69], fill=(210, 40, 40))
    return image


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1  # x0, y0, x1, y1 (exclusive)


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB picture: a noisy, shaded background and a textured, anti-aliased object on it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    background = np.stack([200 + 20 * x, 205 + 10 * y, 195 + 15 * x * y], -1) + rng.normal(0, 2, (height, width, 3))
    shape = Image.new("L", (4 * width, 4 * height), 0)  # drawn at 4x and shrunk: soft, partial edges
    ImageDraw.Draw(shape).ellipse([4 * width // 5, 4 * height // 4, 4 * width * 3 // 5, 4 * height * 4 // 5], fill=255)
    ImageDraw.Draw(shape).rectangle([4 * width // 2, 4 * height // 3, 4 * width * 4 // 5, 4 * height // 2], fill=255)
    coverage = np.asarray(shape.resize((width, height), Image.Resampling.BOX), dtype=np.float64)[..., None] / 255
    texture = np.stack([150 + 80 * np.sin(40 * x), 40 + 30 * np.cos(25 * y), 60 + 50 * x], -1)
    texture = texture + rng.normal(0, 8, (height, width, 3))
    pixels = coverage * texture + (1 - coverage) * background
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def original_preprocess(raw_im: Image.Image, mask_fn) -> np.ndarray:
    """A transcription of the original demo's path with preprocessing on (cvlab-columbia/zero123:
    gradio_new.py main_run's thumbnail, ldm/util.py load_and_preprocess and add_margin), carvekit replaced by
    an interface whose alpha is `mask_fn` of the image it gets. (256, 256, 3) uint8."""
    raw_im = raw_im.convert("RGBA")  # gr.Image(type='pil', image_mode='RGBA')
    raw_im.thumbnail([1536, 1536], Image.Resampling.LANCZOS)

    def interface(images):  # carvekit's HiInterface: RGBA, alpha = object
        return [Image.fromarray(np.dstack([np.asarray(im), mask_fn(im)]), "RGBA") for im in images]

    image = raw_im.convert("RGB")
    image_without_background = np.array(interface([image])[0])
    est_seg = image_without_background > 127
    image = np.array(image)
    foreground = est_seg[:, :, -1].astype(np.bool_)
    image[~foreground] = [255.0, 255.0, 255.0]
    ys, xs = np.nonzero(foreground.astype(np.uint8))  # cv2.boundingRect: the box of the non-zero pixels
    x, y, w, h = xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    image = image[y : y + h, x : x + w, :]
    image = Image.fromarray(np.array(image))
    image.thumbnail([200, 200], Image.Resampling.LANCZOS)
    result = Image.new(image.mode, (256, 256), (255, 255, 255))  # add_margin(image, white, size=256)
    result.paste(image, ((256 - image.width) // 2, (256 - image.height) // 2))
    return np.array(result)


def test_border_mask_finds_the_object():
    mask = load_foreground("border", threshold_rgb=30.0)(object_scene())
    assert mask.dtype == np.uint8 and mask.shape == (96, 96)
    assert bbox(mask > 127) == (10, 50, 40, 70) and int((mask > 127).sum()) == 30 * 20


@pytest.mark.parametrize("size_px", [256, 64])
def test_recentre_centres_the_object_at_the_demo_ratio(size_px):
    image = Image.new("RGB", (960, 960), BACKGROUND)  # a box of 300 x 200 px, off-centre
    ImageDraw.Draw(image).rectangle([100, 500, 399, 699], fill=(210, 40, 40))
    out = recentre(image, load_foreground("border")(image), size_px, demo_object_px(size_px))
    assert out.mode == "RGB" and out.size == (size_px, size_px)
    rgb = np.asarray(out).astype(int)
    x0, y0, x1, y1 = bbox((rgb != 255).any(axis=-1))
    object_px = demo_object_px(size_px)  # 200 of 256, 50 of 64
    assert object_px == {256: 200, 64: 50}[size_px]
    assert (x1 - x0, y1 - y0) == (object_px, round(object_px * 200 / 300))  # shrunk, aspect ratio kept
    assert abs((x0 + x1) / 2 - size_px / 2) <= 1 and abs((y0 + y1) / 2 - size_px / 2) <= 1
    assert np.abs(rgb[size_px // 2, size_px // 2] - (210, 40, 40)).max() <= 2  # the object's colour


def test_a_small_object_keeps_its_size_as_the_demo_thumbnail():
    out = np.asarray(recentre(object_scene(), load_foreground("border")(object_scene()), 256, 200))
    x0, y0, x1, y1 = bbox((out != 255).any(axis=-1))
    assert (x1 - x0, y1 - y0) == (30, 20) and (x0, y0) == ((256 - 30) // 2, (256 - 20) // 2)


@pytest.mark.parametrize("width, height", [(640, 480), (2000, 1700)])  # the second is shrunk to 1536 first
def test_recentring_equals_the_original_demo(width, height):
    image, mask_fn = photo(width, height), load_foreground("border", threshold_rgb=30.0)
    out, recentred = remove_background(image, mask_fn, 256)
    expected = original_preprocess(image, mask_fn)
    # the sampler gets the original's input tensor (ToTensor of input_im / 255, then * 2 - 1) ...
    demo_tensor = torch.from_numpy((expected / 255.0).astype(np.float32)).permute(2, 0, 1) * 2 - 1
    assert recentred and torch.equal(prepare_image(out, 256), demo_tensor)
    # ... from the original's image
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), expected)


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
    blank = tmp_path / "prepared" / examples[1].image_file  # second image: nothing but background
    Image.new("RGBA", (48, 48), (0, 0, 0, 0)).save(blank)
    cfg = views_config(tiny_models["kxic"], foreground="border", presets=("left",))
    summary = views.run(views.Paths(prepared=tmp_path / "prepared", out=tmp_path / "views"), cfg)
    assert summary["recentre_fallbacks"] == 1 and summary["settings"]["foreground"] == "border"
    reader = ShardReader(tmp_path / "views")
    assert [reader.metadata(key)["foreground"] for key in reader.keys()] == ["recentred", "fallback"]
