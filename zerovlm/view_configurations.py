"""The view configurations: which panels each VLM input shows, and in which order.

Read by the stitch stage (one image per configuration) and the infer stage (its prompts and, for the
"-separate" configurations, its images): dvc.yaml lists this file as a dependency of both.
"""

from __future__ import annotations

# The baseline every configuration is compared with: the plain VLM on the original image, asked without
# the view prompt (the infer stage always asks it, whatever infer.view_prompt says).
BASELINE_CONFIGURATION = "origin"
# Stitched configurations of the paper (figure DataSet.png) plus "top": the panels each one shows.
STITCHED_CONFIGURATIONS: dict[str, tuple[str, ...]] = {
    "origin": ("origin",),
    "left": ("left",),
    "right": ("right",),
    "random": ("random",),
    "top": ("top",),
    "no-origin": ("left", "right", "random"),
    "origin+left": ("origin", "left"),
    "origin+left+right": ("origin", "left", "right"),
    "all": ("origin", "left", "right", "random"),
}
# Every multi-panel configuration also exists as "<name>-separate": the same panels in the same order,
# sent to the VLM as several images in one request instead of one stitched image.
SEPARATE_SUFFIX = "-separate"
# Every single-view configuration also exists as "<name>-gated" (e.g. left-gated): its view where the view passes
# the quality gate (stitch.gate, zerovlm/views/quality.py), the original image elsewhere; the view prompt is the
# view's either way (prompts are planned per configuration). Only single views: a multi-panel input whose failed
# view became a second copy of the original would no longer show what its view prompt describes.
GATED_SUFFIX = "-gated"
CONFIGURATIONS: dict[str, tuple[str, ...]] = {
    **STITCHED_CONFIGURATIONS,
    **{name + SEPARATE_SUFFIX: panels for name, panels in STITCHED_CONFIGURATIONS.items() if len(panels) > 1},
    **{
        name + GATED_SUFFIX: (name,)
        for name, panels in STITCHED_CONFIGURATIONS.items()
        if panels == (name,) != ("origin",)
    },
}


def is_separate(configuration: str) -> bool:
    """True when the configuration's panels reach the VLM as separate images, not one stitched image."""
    return configuration.endswith(SEPARATE_SUFFIX)


def images_per_request(configuration: str) -> int:
    """How many images one VLM request of this configuration holds."""
    return len(CONFIGURATIONS[configuration]) if is_separate(configuration) else 1


def is_gated(configuration: str) -> bool:
    """True when the configuration shows its view only where the view passes the quality gate."""
    return configuration.endswith(GATED_SUFFIX)


def view_panels(configuration: str) -> tuple[str, ...]:
    """The synthesised views (not the original) a configuration shows, in panel order."""
    return tuple(panel for panel in CONFIGURATIONS[configuration] if panel != "origin")
