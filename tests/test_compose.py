"""Stitching layouts."""

import pytest
from PIL import Image

from zerovlm.compose import compose_configuration, stitch
from zerovlm.config import StitchConfig
from zerovlm.io import ZeroVLMError

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
    cfg = StitchConfig(configurations=("all",))
    with pytest.raises(ZeroVLMError, match="add 'random' to views.presets"):
        compose_configuration("all", Image.new("RGB", (4, 4)), {"left": Image.new("RGB", (4, 4)),
                                                                "right": Image.new("RGB", (4, 4))}, cfg)
