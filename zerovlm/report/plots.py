"""Data files for the DVC plots declared at the top of dvc.yaml (`dvc plots show` / `dvc plots diff`).

    plots/per_relation/<dataset>.<vlm>.<task>.json    rows {relation, accuracy, n, series}: the origin
                                                      baseline and the method configuration
                                                      (template .dvc/plots/grouped_bars.json)
    plots/confusion/<dataset>.<vlm>.<task>.<series>.json  one row {actual, predicted} per example
                                                      (DVC's confusion template)
    plots/objects/<source>.<vlm>.<task>.json          rows {num_objects, baseline, method, gain, n} summed over
                                                      the grid datasets of one source that know their object
                                                      counts (synthetic scenes; VSR: COCO instances per image):
                                                      does the method survive clutter?
    plots/quality/<dataset>.<vlm>.<task>.json         rows {quality, gain, n, quality_min, quality_max} per
                                                      quantile bin of the method configuration's view quality
                                                      (its mean CLIP similarity) from the score stage's
                                                      quality_bins.json: is the gain larger where views are good?
Each folder is declared once in dvc.yaml, so the files follow the grid without editing dvc.yaml. The report
stage (zerovlm/pipeline/report.py) writes what `plot_files` returns.
"""

from __future__ import annotations

import pandas as pd

from zerovlm.scoring.metrics import BASELINE


def series_name(configuration: str, prompt_mode: str) -> str:
    if (configuration, prompt_mode) == BASELINE:
        return "origin (baseline)"
    return f"{configuration} {'+' if prompt_mode == 'with_view_prompt' else 'without'} view prompt"


def _slug(configuration: str, prompt_mode: str) -> str:
    return f"{configuration}-{'vp' if prompt_mode == 'with_view_prompt' else 'novp'}"


def objects_rows(
    breakdowns: dict, method: tuple[str, str], sources: dict[str, str]
) -> dict[tuple[str, str, str], list[dict]]:
    """(source, vlm, task) -> rows {num_objects, baseline, method, gain, n}: accuracy from the (correct, total)
    counts summed over the grid datasets of one source (`sources`: dataset -> its source, so that synthetic scenes
    and COCO images are never mixed); a series without examples at a count is left out, and so is the gain then;
    n is the baseline's."""
    tallies = pd.DataFrame(
        [
            (sources[dataset], vlm, task, int(num_objects), name, correct, total)
            for (dataset, vlm), data in breakdowns.items()
            for task, configurations in data.get("objects", {}).items()
            for name, key in (("baseline", BASELINE), ("method", method))
            for num_objects, (correct, total) in configurations.get(key[0], {}).get(key[1], {}).items()
        ],
        columns=["source", "vlm", "task", "num_objects", "series", "correct", "total"],
    )
    sums = (
        tallies.groupby(["source", "vlm", "task", "num_objects", "series"])[["correct", "total"]]
        .sum()
        .unstack("series", fill_value=0)
    )
    plots: dict[tuple[str, str, str], list[dict]] = {}
    for (source, vlm, task, num_objects), counts in sums.iterrows():
        totals = counts["total"]
        accuracy = {name: int(counts["correct", name]) / int(total) for name, total in totals.items() if total}
        gain = {"gain": round(accuracy["method"] - accuracy["baseline"], 4)} if len(accuracy) == 2 else {}
        plots.setdefault((source, vlm, task), []).append(
            {
                "num_objects": int(num_objects),
                **{name: round(value, 4) for name, value in accuracy.items()},
                **gain,
                "n": int(totals.get("baseline", 0)),
            }
        )
    return plots


def quality_rows(quality_bins: dict, method: tuple[str, str]) -> dict[str, list[dict]]:
    """plots/quality files of the method configuration: (dataset, vlm) -> quality_bins.json contents in."""
    files = {}
    for (dataset, vlm), tasks in sorted(quality_bins.items()):
        for task, configurations in tasks.items():
            bins = configurations.get(method[0], {}).get(method[1])
            if bins:
                files[f"quality/{dataset}.{vlm}.{task}.json"] = [
                    {
                        "quality": b["quality_mean"],
                        "gain": b["delta_vs_origin"],
                        "n": b["n"],
                        "quality_min": b["quality_min"],
                        "quality_max": b["quality_max"],
                    }
                    for b in bins
                ]
    if not files:  # the method shows no synthesised view: an empty plot keeps the declared folder in git
        files["quality/method-shows-no-view.json"] = []
    return files


def plot_files(
    per_relation: dict, breakdowns: dict, quality_bins: dict, method: tuple[str, str], sources: dict[str, str]
) -> dict[str, list[dict]]:
    """Every plot data file: its path under plots/ -> its rows (per_relation/breakdowns/quality_bins:
    (dataset, vlm) -> file contents; sources: dataset -> its source)."""
    files: dict[str, list[dict]] = {}
    series = [BASELINE] if method == BASELINE else [BASELINE, method]
    for (dataset, vlm), tasks in sorted(per_relation.items()):
        for task, configurations in tasks.items():
            rows = [
                {
                    "relation": relation,
                    "accuracy": values["accuracy"],
                    "n": values["n_total"],
                    "series": series_name(*key),
                }
                for key in series
                for relation, values in configurations.get(key[0], {}).get(key[1], {}).items()
            ]
            if rows:
                files[f"per_relation/{dataset}.{vlm}.{task}.json"] = rows
    for (dataset, vlm), data in sorted(breakdowns.items()):
        for task, configurations in data.get("confusion", {}).items():
            for key in series:
                counts = configurations.get(key[0], {}).get(key[1])
                if not counts:
                    continue
                files[f"confusion/{dataset}.{vlm}.{task}.{_slug(*key)}.json"] = [
                    {"actual": pair.split("|", 1)[0], "predicted": pair.split("|", 1)[1]}
                    for pair, count in sorted(counts.items())
                    for _ in range(count)
                ]
    objects = objects_rows(breakdowns, method, sources)
    if not objects:  # no dataset knows its object counts: an empty plot keeps the declared folder in git
        files["objects/no-dataset-with-object-counts.json"] = []
    for (source, vlm, task), rows in objects.items():
        files[f"objects/{source}.{vlm}.{task}.json"] = rows
    return {**files, **quality_rows(quality_bins, method)}
