"""Data files for the DVC plots declared at the top of dvc.yaml (`dvc plots show` / `dvc plots diff`).

    plots/per_relation/<dataset>.<vlm>.<task>.json    rows {relation, accuracy, n, series}: the origin
                                                      baseline and the method configuration
                                                      (template .dvc/plots/grouped_bars.json)
    plots/confusion/<dataset>.<vlm>.<task>.<series>.json  one row {actual, predicted} per example
                                                      (DVC's confusion template)
    plots/objects/<vlm>.<task>.json                   rows {num_objects, baseline, method, n} over every
                                                      grid dataset that knows its object counts
                                                      (synthetic scenes): does the method survive clutter?
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


def objects_rows(breakdowns: dict, method: tuple[str, str]) -> dict[tuple[str, str], list[dict]]:
    """(vlm, task) -> rows {num_objects, baseline, method, n}: accuracy from the (correct, total) counts
    summed over the grid datasets; a series without examples at a count is left out, n is the baseline's."""
    tallies = pd.DataFrame(
        [
            (vlm, task, int(num_objects), name, correct, total)
            for (_, vlm), data in breakdowns.items()
            for task, configurations in data.get("objects", {}).items()
            for name, key in (("baseline", BASELINE), ("method", method))
            for num_objects, (correct, total) in configurations.get(key[0], {}).get(key[1], {}).items()
        ],
        columns=["vlm", "task", "num_objects", "series", "correct", "total"],
    )
    sums = (
        tallies.groupby(["vlm", "task", "num_objects", "series"])[["correct", "total"]]
        .sum()
        .unstack("series", fill_value=0)
    )
    plots: dict[tuple[str, str], list[dict]] = {}
    for (vlm, task, num_objects), counts in sums.iterrows():
        totals = counts["total"]
        plots.setdefault((vlm, task), []).append(
            {
                "num_objects": int(num_objects),
                **{
                    name: round(int(counts["correct", name]) / int(total), 4) for name, total in totals.items() if total
                },
                "n": int(totals.get("baseline", 0)),
            }
        )
    return plots


def plot_files(per_relation: dict, breakdowns: dict, method: tuple[str, str]) -> dict[str, list[dict]]:
    """Every plot data file: its path under plots/ -> its rows (per_relation/breakdowns: (dataset, vlm) ->
    file contents)."""
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
    objects = objects_rows(breakdowns, method)
    if not objects:  # no dataset knows its object counts: an empty plot keeps the declared folder in git
        files["objects/no-dataset-with-object-counts.json"] = []
    for (vlm, task), rows in objects.items():
        files[f"objects/{vlm}.{task}.json"] = rows
    return files
