"""Stitching: compose the VLM's input image for one view configuration.

Two layouts, because the paper and its code disagree (the paper's figure vs the authors' run_llava.py):
- grid:  2 columns, row-major, [origin, left / right, random] as in the paper's figure; a 3-panel set
         leaves the last cell black.
- strip: panels stacked vertically with black gaps, as in the authors' released code.
A single-panel configuration is passed through unchanged: the "origin" baseline is the plain VLM on
the original image, not on a resized copy.

A "-gated" configuration (e.g. "left-gated") passes its view through where the view passes the quality gate
(stitch.gate on the quality the views stage recorded; zerovlm/views/quality.py), and the original image
elsewhere; its entries' metadata say which (`gate_passed`).

A "-separate" configuration (e.g. "all-separate") is not stitched: each panel is stored unchanged as its
own entry `<image_id>.<configuration>.<panel>`, in the configuration's panel order, and the infer stage
sends them as several images of one request (`input_keys` names them). What a VLM accepts is the infer
stage's business, not this one's.

Images in, images out: the stitch stage (zerovlm/pipeline/stitch.py) reads the view store and writes the
stitched store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

from zerovlm.config import StitchConfig
from zerovlm.io import ZeroVLMError
from zerovlm.view_configurations import CONFIGURATIONS, is_gated, is_separate
from zerovlm.views.quality import passes_gate

BACKGROUND = (0, 0, 0)


def _square(image: Image.Image, size_px: int) -> Image.Image:
    """Resize to size x size (Zero123's own views are square; the original is squashed the same way)."""
    return image.convert("RGB").resize((size_px, size_px), Image.Resampling.BICUBIC)


def stitch(panels: Sequence[Image.Image], layout: str, panel_size_px: int, gap_px: int) -> Image.Image:
    if not panels:
        raise ZeroVLMError("stitch: no panels given")
    if len(panels) == 1:
        return panels[0].convert("RGB")
    tiles = [_square(panel, panel_size_px) for panel in panels]
    if layout == "grid":
        columns, rows = 2, math.ceil(len(tiles) / 2)
    elif layout == "strip":
        columns, rows = 1, len(tiles)
    else:
        raise ZeroVLMError(f"stitch.layout: unknown layout {layout!r}; valid: grid, strip")
    width = columns * panel_size_px + (columns - 1) * gap_px
    height = rows * panel_size_px + (rows - 1) * gap_px
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        canvas.paste(tile, (column * (panel_size_px + gap_px), row * (panel_size_px + gap_px)))
    return canvas


def input_keys(image_id: str, configuration: str) -> list[str]:
    """Store keys of the images one VLM request of `configuration` holds, in the order they are sent."""
    if is_separate(configuration):
        return [f"{image_id}.{configuration}.{panel}" for panel in CONFIGURATIONS[configuration]]
    return [f"{image_id}.{configuration}"]


def configuration_panels(configuration: str, origin: Image.Image, views: dict[str, Image.Image]) -> list[Image.Image]:
    """The panels of `configuration` in order, from the original and its synthesised views (by view name)."""
    panels = []
    for name in CONFIGURATIONS[configuration]:
        if name == "origin":
            panels.append(origin)
        elif name in views:
            panels.append(views[name])
        else:
            raise ZeroVLMError(
                f"configuration {configuration!r} needs the {name!r} view, which the views "
                f"stage did not synthesise: add {name!r} to views.presets"
            )
    return panels


def compose_configuration(
    configuration: str, origin: Image.Image, views: dict[str, Image.Image], cfg: StitchConfig
) -> list[Image.Image]:
    """The input images of `configuration`, aligned with `input_keys`: one stitched image, or for a
    -separate configuration each panel unchanged (the VLM's processor resizes each image itself)."""
    panels = configuration_panels(configuration, origin, views)
    if is_separate(configuration):
        return [panel.convert("RGB") for panel in panels]
    return [stitch(panels, cfg.layout, cfg.panel_size_px, cfg.gap_px)]


def needed_views(configurations: Sequence[str]) -> list[str]:
    """The synthesised views (not the original) that `configurations` show, sorted by name."""
    return sorted({panel for c in configurations for panel in CONFIGURATIONS[c]} - {"origin"})


def gate_passed(configuration: str, qualities: dict[str, dict], cfg: StitchConfig) -> bool:
    """Whether a -gated configuration shows its view: the view's recorded quality passes stitch.gate."""
    (view,) = CONFIGURATIONS[configuration]
    if view not in qualities:
        raise ZeroVLMError(
            f"configuration {configuration!r} needs the {view!r} view, which the views "
            f"stage did not synthesise: add {view!r} to views.presets"
        )
    return passes_gate(qualities[view], cfg.gate)


def stitched_entries(
    image_id: str,
    origin: Image.Image,
    views: dict[str, Image.Image],
    cfg: StitchConfig,
    qualities: dict[str, dict] | None = None,
) -> list[tuple[str, Image.Image, dict]]:
    """(store key, image, metadata) of every configuration of one image, in `cfg.configurations` order.
    `qualities`: the recorded quality of each view (by view name), needed by -gated configurations."""
    entries = []
    for configuration in cfg.configurations:
        panels = CONFIGURATIONS[configuration]
        gated = {}
        if is_gated(configuration):
            gated = {"gate_passed": gate_passed(configuration, qualities or {}, cfg)}
            images = [views[panels[0]] if gated["gate_passed"] else origin.convert("RGB")]
        else:
            images = compose_configuration(configuration, origin, views, cfg)
        for index, (key, image) in enumerate(zip(input_keys(image_id, configuration), images)):
            meta = {
                "image_id": image_id,
                "configuration": configuration,
                "panels": list(panels),
                "layout": "separate" if is_separate(configuration) else cfg.layout,
                **gated,
            }
            if is_separate(configuration):
                meta.update(panel=panels[index], index=index)
            entries.append((key, image, meta))
    return entries


def stitch_summary(images: int, cfg: StitchConfig) -> dict:
    """The stitched store's summary.json: what the infer stage reads back (configurations, layout)."""
    return {
        "images": images,
        "configurations": list(cfg.configurations),
        "stitched": images * sum(not is_separate(c) for c in cfg.configurations),
        "separate": images * sum(is_separate(c) for c in cfg.configurations),
        "layout": cfg.layout,
    }
