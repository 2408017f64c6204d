"""Prepare's image checks (zerovlm/datasets/examples.py: image_problem) on a tiny What'sUp-style set built
here: each case refused with one error line by default, skipped and counted with data.skip_bad."""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
from pathlib import Path

import pytest
from PIL import Image

from zerovlm.config import PILLOW_MAX_IMAGE_PIXELS, DataConfig
from zerovlm.datasets.examples import image_problem
from zerovlm.datasets.table import read_table
from zerovlm.io import ZeroVLMError, pillow_pixel_limit
from zerovlm.pipeline import prepare

# One What'sUp A set (file-name relation token -> the gold caption's relation words).
SET = {
    "mug_on_table": "on",
    "mug_under_table": "under",
    "mug_left_of_table": "to the left of",
    "mug_right_of_table": "to the right of",
}


def picture(size=(48, 32), name: str = "", mode: str = "RGB") -> Image.Image:
    """A two-colour image (left half / right half, colours from `name`): never blank."""
    colour = hashlib.sha256(name.encode()).digest()[:3]
    image = Image.new("RGB", size, tuple(colour))
    image.paste(tuple((c + 128) % 256 for c in colour), (size[0] // 2, 0, size[0], size[1]))
    return image.convert(mode)


def picture_jpeg(name: str, size=(48, 32)) -> bytes:
    buffer = io.BytesIO()
    picture(size, name).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def whatsup_set(root: Path, images: dict[str, Image.Image], **params) -> DataConfig:
    """Annotations and a flat image folder for SET; `images` (stem -> image) replaces some of its default
    pictures. Returns the config of a strict run over them, with `params` (data.*)."""
    (root / "images").mkdir(parents=True)
    records = []
    for stem, words in SET.items():
        gold = f"A mug {words} a table"
        records.append(
            {
                "image_path": f"data/controlled_images/{stem}.png",
                "caption_options": [gold, *(f"A mug {w} a table" for w in SET.values() if w != words)],
            }
        )
        image = images.get(stem)
        (picture(name=stem) if image is None else image).save(root / "images" / f"{stem}.png")
    (root / "controlled_images_dataset.json").write_text(json.dumps(records))
    return DataConfig(source="whatsup_a", annotations_dir=str(root), images_dir=str(root / "images"), **params)


CASES = {  # stem -> (bad image, check, what the error states)
    "mug_on_table": (
        Image.new("RGBA", (64, 64), (0, 0, 0, 0)),
        "blank_max_range",
        r"64x64 px, blank: every channel's max - min is 0 <= data\.blank_max_range=2",
    ),
    "mug_under_table": (
        picture((1, 1), "one"),
        "min_image_side_px",
        r"1x1 px: shorter side 1 < data\.min_image_side_px=32",
    ),
    "mug_left_of_table": (
        picture((8000, 20), "strip"),
        "max_aspect_ratio",
        r"8000x20 px: aspect ratio 400\.00 > data\.max_aspect_ratio=5",
    ),
    "mug_right_of_table": (
        Image.new("RGB", (64, 64), (200, 30, 30)),
        "blank_max_range",
        r"64x64 px, blank: every channel's max - min is 0",
    ),
}


@pytest.mark.parametrize("stem", list(CASES))
def test_each_bad_image_stops_prepare_with_one_line_naming_record_file_check_and_param(tmp_path, stem):
    image, check, stated = CASES[stem]
    cfg = whatsup_set(tmp_path / "data", {stem: image})
    position = list(SET).index(stem) + 1
    with pytest.raises(ZeroVLMError) as error:
        prepare.run(prepare.Paths(out=tmp_path / "prepared", raw=tmp_path / "raw"), cfg)
    message = str(error.value)
    assert "\n" not in message and f"data.{check}" in message and "data.skip_bad" in message
    assert f"controlled_images_dataset.json:{position}: field 'image_path': " in message
    assert str(tmp_path / "data/images" / f"{stem}.png") in message
    assert re.search(stated, message), message
    assert not (tmp_path / "prepared").exists()


def test_skip_bad_skips_and_counts_every_bad_image_by_check(tmp_path):
    bad = {stem: image for stem, (image, _, _) in CASES.items() if stem != "mug_on_table"}
    cfg = whatsup_set(tmp_path / "data", bad)
    summary = prepare.run(
        prepare.Paths(out=tmp_path / "prepared", raw=tmp_path / "raw"), cfg.model_copy(update={"skip_bad": True})
    )
    assert summary["examples"] == 1 and [e.example_id for e in read_table(tmp_path / "prepared")] == [
        "whatsup_a/test/mug_on_table"
    ]
    skipped = summary["skipped"]
    assert skipped["count"] == 3 and skipped["by_field"] == {"image_path": 3}
    assert skipped["by_check"] == {"blank_max_range": 1, "max_aspect_ratio": 1, "min_image_side_px": 1}
    assert [(r["line"], r["check"]) for r in skipped["records"]] == [
        (2, "min_image_side_px"),
        (3, "max_aspect_ratio"),
        (4, "blank_max_range"),
    ]
    on_disk = json.loads((tmp_path / "prepared/summary.json").read_text())["skipped"]
    assert on_disk == skipped  # what the score stage reads as counts.n_skipped


def test_the_params_decide_and_blank_detection_can_be_turned_off(tmp_path):
    images = {stem: image for stem, (image, _, _) in CASES.items()}
    cfg = whatsup_set(tmp_path / "data", images, min_image_side_px=1, max_aspect_ratio=400.0, blank_max_range=None)
    assert prepare.run(prepare.Paths(out=tmp_path / "prepared", raw=tmp_path / "raw"), cfg)["examples"] == 4


@pytest.mark.parametrize("step, blank", [(0, True), (2, True), (3, False)])
def test_blank_means_every_channel_spans_at_most_blank_max_range(tmp_path, step, blank):
    image = Image.new("RGB", (64, 64), (100, 100, 100))
    image.paste((100, 100 + step, 100), (0, 0, 8, 8))  # one channel of one corner differs by `step`
    image.save(tmp_path / "a.png")
    problem = image_problem(tmp_path / "a.png", DataConfig())
    assert (problem is not None and problem[0] == "blank_max_range") == blank
    assert image_problem(tmp_path / "a.png", DataConfig(blank_max_range=None)) is None


def test_a_144_megapixel_png_is_refused_undecoded_without_a_pillow_warning(tmp_path):
    huge = Image.new("1", (12000, 12000))  # 18 MB as 1-bit; 432 MB once decoded to RGB
    huge.paste(1, (0, 0, 6000, 12000))
    cfg = whatsup_set(tmp_path / "data", {"mug_left_of_table": huge})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail the test
        with pytest.raises(
            ZeroVLMError,
            match=r"controlled_images_dataset\.json:3: field 'image_path': .*"
            r"mug_left_of_table\.png: more than 100000000 pixels .*"
            r"data\.max_image_pixels=50000000",
        ):
            prepare.run(prepare.Paths(out=tmp_path / "prepared", raw=tmp_path / "raw"), cfg)
        summary = prepare.run(
            prepare.Paths(out=tmp_path / "prepared", raw=tmp_path / "raw"), cfg.model_copy(update={"skip_bad": True})
        )
    assert summary["skipped"]["by_check"] == {"max_image_pixels": 1} and summary["examples"] == 3


def test_pixels_over_the_param_are_counted_exactly_below_twice_it(tmp_path):
    path = tmp_path / "a.png"
    picture((40, 40)).save(path)  # 1600 pixels: over 1000, under Pillow's refusal at 2000
    cfg = DataConfig(max_image_pixels=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pillow_pixel_limit(cfg.max_image_pixels):
            check, problem = image_problem(path, cfg)
    assert check == "max_image_pixels" and "40x40 px = 1600 pixels > data.max_image_pixels=1000" in problem
    assert Image.MAX_IMAGE_PIXELS == PILLOW_MAX_IMAGE_PIXELS  # restored


def test_pillows_own_limit_does_not_preempt_the_param(tmp_path, monkeypatch):
    """Images within data.max_image_pixels are accepted whatever PIL.Image.MAX_IMAGE_PIXELS was set to."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 48 x 32 = 1536 pixels: Pillow alone would refuse
    cfg = whatsup_set(tmp_path / "data", {})
    assert prepare.run(prepare.Paths(out=tmp_path / "prepared", raw=tmp_path / "raw"), cfg)["examples"] == 4
    assert Image.MAX_IMAGE_PIXELS == 100


def test_an_unreadable_image_is_a_bad_record_too(tmp_path):
    cfg = whatsup_set(tmp_path / "data", {})
    (tmp_path / "data/images/mug_on_table.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ZeroVLMError, match=r"json:1: field 'image_path': .*mug_on_table\.png: not a readable image"):
        prepare.run(prepare.Paths(out=tmp_path / "prepared", raw=tmp_path / "raw"), cfg)
    summary = prepare.run(
        prepare.Paths(out=tmp_path / "prepared", raw=tmp_path / "raw"), cfg.model_copy(update={"skip_bad": True})
    )
    assert summary["skipped"]["by_check"] == {"readable": 1}


def test_the_pixel_limit_param_cannot_exceed_pillows_default():
    assert PILLOW_MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS  # the value later stages decode under
    with pytest.raises(ValueError, match=r"max_image_pixels\s+Input should be less than or equal to 89478485"):
        DataConfig(max_image_pixels=PILLOW_MAX_IMAGE_PIXELS + 1)
