"""Stitching layouts (zerovlm/stitching.py) and the stitch stage's store."""

import pytest
from PIL import Image

from zerovlm.config import StitchConfig
from zerovlm.io import ZeroVLMError
from zerovlm.stitching import compose_configuration, stitch

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def _panels(n, size=10):
    return [Image.new("RGB", (size, size * 2), c) for c in COLOURS[:n]]  # non-square on purpose


def test_grid_is_two_columns_row_major_in_paper_order():
    canvas = stitch(_panels(4), "grid", panel_size_px=8, gap_px=2)
    assert canvas.size == (18, 18)
    assert [canvas.getpixel(xy) for xy in [(0, 0), (10, 0), (0, 10), (10, 10)]] == COLOURS
    assert canvas.getpixel((8, 0)) == (0, 0, 0)  # the gap is black


def test_grid_with_three_panels_leaves_last_cell_black():
    canvas = stitch(_panels(3), "grid", panel_size_px=8, gap_px=0)
    assert canvas.size == (16, 16) and canvas.getpixel((12, 12)) == (0, 0, 0)


def test_strip_stacks_vertically_with_gaps():
    canvas = stitch(_panels(3), "strip", panel_size_px=8, gap_px=25)
    assert canvas.size == (8, 3 * 8 + 2 * 25)
    assert canvas.getpixel((0, 33)) == COLOURS[1] and canvas.getpixel((0, 10)) == (0, 0, 0)


def test_single_panel_passes_the_original_through_unchanged():
    original = Image.new("RGB", (37, 21), (1, 2, 3))
    assert stitch([original], "grid", 8, 2).size == (37, 21)


def test_missing_view_names_the_fix():
    cfg = StitchConfig(configurations=("origin", "all"))
    with pytest.raises(ZeroVLMError, match="add 'random' to views.presets"):
        compose_configuration(
            "all", Image.new("RGB", (4, 4)), {"left": Image.new("RGB", (4, 4)), "right": Image.new("RGB", (4, 4))}, cfg
        )


def test_separate_configuration_stores_each_panel_in_order(tmp_path):
    from zerovlm.config import DataConfig, SyntheticSource
    from zerovlm.datasets.table import read_table
    from zerovlm.io import load_rgb
    from zerovlm.pipeline import prepare
    from zerovlm.pipeline import stitch as stitch_stage
    from zerovlm.stitching import input_keys
    from zerovlm.store import ShardReader, ShardWriter

    prepare.run(prepare.Paths(out=tmp_path / "prepared"), DataConfig(synthetic=SyntheticSource(num_scenes=2)))
    examples = read_table(tmp_path / "prepared")
    views = dict(zip(("left", "right", "random"), COLOURS))
    with ShardWriter(tmp_path / "views") as writer:
        for image_id in {e.image_id for e in examples}:
            for name, colour in views.items():
                writer.add(f"{image_id}.{name}", Image.new("RGB", (16, 16), colour))
    cfg = StitchConfig(configurations=("origin", "all", "all-separate"), panel_size_px=16, gap_px=0)
    summary = stitch_stage.run(
        stitch_stage.Paths(prepared=tmp_path / "prepared", views=tmp_path / "views", out=tmp_path / "stitched"), cfg
    )
    images = len({e.image_id for e in examples})
    assert (summary["stitched"], summary["separate"]) == (2 * images, images)  # origin and all; all-separate
    example = examples[0]
    keys = input_keys(example.image_id, "all-separate")
    assert keys == [f"{example.image_id}.all-separate.{p}" for p in ("origin", "left", "right", "random")]
    assert input_keys(example.image_id, "all") == [f"{example.image_id}.all"]
    store = ShardReader(tmp_path / "stitched")
    images = [store.image(k) for k in keys]
    original = load_rgb(tmp_path / "prepared" / example.image_file, "original")
    assert images[0].tobytes() == original.tobytes()  # panels unchanged: the VLM's processor resizes
    assert [i.getpixel((0, 0)) for i in images[1:]] == list(views.values())
    meta = store.metadata(keys[2])
    assert (meta["configuration"], meta["panel"], meta["index"], meta["layout"]) == (
        "all-separate",
        "right",
        2,
        "separate",
    )
    store.close()


def _stage_inputs(root, num_scenes):
    """A prepared synthetic dataset and a view store of distinct noisy views (left, right, random), each with
    a quality that passes the gate for some images and fails it for others."""
    import numpy as np

    from zerovlm.config import DataConfig, SyntheticSource
    from zerovlm.datasets.table import read_table
    from zerovlm.pipeline import prepare
    from zerovlm.store import ShardWriter

    prepare.run(prepare.Paths(out=root / "prepared"), DataConfig(synthetic=SyntheticSource(num_scenes=num_scenes)))
    image_ids = sorted({e.image_id for e in read_table(root / "prepared")})
    rng = np.random.default_rng(0)
    with ShardWriter(root / "views", shard_size=5) as writer:
        for index, image_id in enumerate(image_ids):
            quality = {"clip_similarity": 0.9 if index % 2 else 0.1, "pixel_std": 40.0, "background_share": 0.1}
            for name in ("left", "right", "random"):
                pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
                writer.add(f"{image_id}.{name}", Image.fromarray(pixels), {"view": name, "quality": quality})
    return image_ids


def test_the_stage_writes_the_same_bytes_on_any_number_of_threads(tmp_path):
    from zerovlm.pipeline import stitch as stitch_stage

    _stage_inputs(tmp_path, num_scenes=7)
    cfg = StitchConfig(configurations=("origin", "left", "left-gated", "all", "all-separate"), panel_size_px=16)
    stores = []
    for workers in (1, 3):
        out = tmp_path / f"out-{workers}"
        stitch_stage.run(
            stitch_stage.Paths(prepared=tmp_path / "prepared", views=tmp_path / "views", out=out), cfg, workers
        )
        stores.append({path.name: path.read_bytes() for path in sorted(out.iterdir())})
    assert stores[0] == stores[1]  # the tar holds its members in write order: image order kept


def test_an_error_on_a_worker_thread_is_one_line_and_leaves_no_output(tmp_path):
    from zerovlm.pipeline import stitch as stitch_stage

    _stage_inputs(tmp_path, num_scenes=6)
    cfg = StitchConfig(configurations=("origin", "top"))  # no "top" view was synthesised
    out = tmp_path / "out"
    with pytest.raises(ZeroVLMError, match="add 'top' to views.presets"):
        stitch_stage.run(stitch_stage.Paths(prepared=tmp_path / "prepared", views=tmp_path / "views", out=out), cfg, 3)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_a_damaged_view_is_named_in_one_error_line(tmp_path):
    from zerovlm.pipeline import stitch as stitch_stage
    from zerovlm.store import ShardWriter, encode_png

    image_ids = _stage_inputs(tmp_path, num_scenes=4)
    with ShardWriter(tmp_path / "views") as writer:  # appends a shard of "top" views; one is not a PNG
        for image_id in image_ids:
            good = image_id != image_ids[2]
            writer.add_png(f"{image_id}.top", encode_png(Image.new("RGB", (8, 8))) if good else b"not a png")
    cfg = StitchConfig(configurations=("origin", "top"))
    out = tmp_path / "out"
    with pytest.raises(ZeroVLMError, match=rf"views: {image_ids[2]}\.top: not a readable PNG .*re-run its stage"):
        stitch_stage.run(stitch_stage.Paths(prepared=tmp_path / "prepared", views=tmp_path / "views", out=out), cfg, 3)
    assert not out.exists()
