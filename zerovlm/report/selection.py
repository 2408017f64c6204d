"""The oracle and the dev-selected configuration, from per-example verdicts (the score stage's records.jsonl).

oracle        per dataset x VLM x task: the share of examples that at least one evaluated cell (configuration x
              view prompt, the baseline included) answers correctly; the upper bound of choosing the best input
              per example, not a method.
dev-selected  per dataset x VLM x task: the cell with the highest accuracy on the dataset's selection dataset (a
              grid dataset holding its dev split, report.selection_datasets), reported with its metrics on the
              evaluated dataset. `selected_cells` loads the selection dataset's verdicts only: the evaluated
              dataset's verdicts never reach `select_cell`. Ties go to the earlier cell in the table's order
              (the baseline, then stitch.configurations, each with the view prompt before without).
A dataset without a selection dataset in the grid gets a reason instead of a cell, never a choice made on its own
verdicts.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from zerovlm.scoring.metrics import BASELINE, PROMPT_MODES

Cell = tuple[str, str]  # (configuration, prompt mode)


def cell_order(configurations: list[str]) -> list[Cell]:
    """The table's row order of the cells: the baseline first."""
    return [BASELINE] + [(c, mode) for c in configurations if c != BASELINE[0] for mode in PROMPT_MODES]


def oracle(verdicts: pd.DataFrame) -> dict[str, float]:
    """task -> share of examples that some cell answers correctly (`verdicts`: one instance's records)."""
    any_correct = verdicts.groupby(["task", "example_id"])["correct"].any()
    return {task: round(float(rate), 4) for task, rate in any_correct.groupby(level="task").mean().items()}


def select_cell(selection_verdicts: pd.DataFrame, order: list[Cell]) -> dict[str, Cell]:
    """task -> the most accurate cell of `order` on the selection dataset's verdicts (earlier cell on ties)."""
    accuracy = selection_verdicts.groupby(["task", "configuration", "prompt_mode"])["correct"].mean()
    chosen = {}
    for task, cells in accuracy.groupby(level="task"):
        by_cell = {(configuration, mode): value for (_, configuration, mode), value in cells.items()}
        candidates = [cell for cell in order if cell in by_cell]
        chosen[task] = max(candidates, key=lambda cell: (by_cell[cell], -candidates.index(cell)))
    return chosen


def selected_cells(
    load: Callable[[str, str], pd.DataFrame],
    datasets: list[str],
    vlms: list[str],
    selection_datasets: dict[str, str],
    configurations: list[str],
) -> dict[tuple[str, str], dict[str, Cell] | str]:
    """(dataset, vlm) -> {task: chosen cell}, or the reason there is none. `load(dataset, vlm)`: that instance's
    verdicts; it is called for selection datasets only."""
    order = cell_order(configurations)
    result: dict[tuple[str, str], dict[str, Cell] | str] = {}
    for dataset in datasets:
        source = selection_datasets.get(dataset)
        for vlm in vlms:
            if source is None:
                result[(dataset, vlm)] = "no dev split"
            elif source not in datasets:
                result[(dataset, vlm)] = f"no dev split in the grid (add {source} to grid.datasets)"
            else:
                result[(dataset, vlm)] = select_cell(load(source, vlm), order)
    return result
