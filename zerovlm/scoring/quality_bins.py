"""Accuracy by view quality: does a configuration gain where its synthesised views are good?

A verdict's view quality is the CLIP similarity the views stage recorded (zerovlm/views/quality.py) of the
view its configuration shows, or of the weakest of its views when it shows several (one bad panel can
mislead the VLM); None for the origin configuration, which shows none. A -gated configuration's quality is
its view's, whether the gate let the view through or not.

Per (task, configuration, prompt mode) with a view quality, the verdicts fall into `score.quality_bins`
quantile bins of that quality (pandas.qcut; bins merge where edges tie, so there can be fewer); per bin:
its quality range and mean, n, accuracy, the origin baseline's accuracy on the same examples, and the
difference. Written as quality_bins.json by the score stage; the report stage plots gain against quality.
"""

from __future__ import annotations

import pandas as pd

from zerovlm.io import ZeroVLMError
from zerovlm.view_configurations import view_panels


def view_quality(configuration: str, image_id: str, qualities: dict[str, dict[str, dict]]) -> float | None:
    """The recorded CLIP similarity of the configuration's view (the weakest of several) for one image;
    `qualities`: image id -> view name -> quality record."""
    views = view_panels(configuration)
    if not views:
        return None
    recorded = qualities.get(image_id, {})
    missing = [view for view in views if view not in recorded]
    if missing:
        raise ZeroVLMError(
            f"view store: no {missing[0]!r} view of image {image_id} for configuration {configuration!r}; "
            f"re-run the views stage (`dvc repro views`)"
        )
    return min(recorded[view]["clip_similarity"] for view in views)


def quality_bins(verdicts: pd.DataFrame, bins: int, baseline: tuple[str, str]) -> dict:
    """task -> configuration -> prompt mode -> list of bins (see the module docstring), low quality first;
    `baseline`: the (configuration, prompt mode) every cell is compared with."""
    result: dict = {}
    for task, rows in verdicts.groupby("task"):
        reference = rows[(rows["configuration"] == baseline[0]) & (rows["prompt_mode"] == baseline[1])]
        reference = dict(zip(reference["example_id"], reference["correct"]))
        if not reference:
            continue
        for (configuration, mode), cell in rows.dropna(subset=["view_quality"]).groupby(
            ["configuration", "prompt_mode"]
        ):
            cell = cell.assign(
                baseline_correct=cell["example_id"].map(reference).astype(float),
                bin=pd.qcut(cell["view_quality"], bins, labels=False, duplicates="drop"),
            )
            result.setdefault(task, {}).setdefault(configuration, {})[mode] = [
                {
                    "quality_min": round(float(group["view_quality"].min()), 6),
                    "quality_max": round(float(group["view_quality"].max()), 6),
                    "quality_mean": round(float(group["view_quality"].mean()), 6),
                    "n": len(group),
                    "accuracy": round(float(group["correct"].mean()), 4),
                    "baseline_accuracy": round(float(group["baseline_correct"].mean()), 4),
                    "delta_vs_origin": round(float(group["correct"].mean() - group["baseline_correct"].mean()), 4),
                }
                for _, group in cell.groupby("bin", sort=True)
            ]
    return result
