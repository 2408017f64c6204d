"""The results table shaped like the paper's: rows model x configuration (x view prompt), columns datasets.

Rows are labelled as in the paper: the VLM alone for its origin baseline, "ZeroVLM (<VLM>)" for every
configuration of the method (the VLM is the grid name, e.g. "ZeroVLM (minigpt4_7b)"; the CSV keeps the
grid name alone in its `model` column).

A cell is the accuracy in percent; every configuration other than the baseline also shows its
difference to the origin baseline of the same model, dataset and task in percentage points, with a
significance mark from McNemar's exact test over clusters (score.sampling_unit; p-values as corrected by
score.p_adjust). A dataset with two tasks (the synthetic scenes: true/false and 4-way choice) gets one
column per task. A configuration the model could not be given (a "-separate" configuration for a
one-image model, listed in the instance summary's `not_evaluated`) gets one row whose cells read "n/e",
not 0%.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import pandas as pd

from zerovlm.config import ScoreConfig
from zerovlm.scoring.metrics import BASELINE
from zerovlm.scoring.significance import significance_mark

TASK_ORDER = ("true_false", "multiple_choice")
TASK_LABELS = {"true_false": "true/false", "multiple_choice": "choice"}
TASK_KEYS = {"true_false": "tf", "multiple_choice": "mc"}  # short names in metric keys and task names
PROMPT_ORDER = ("with_view_prompt", "without_view_prompt")
NOT_EVALUATED = "not_evaluated"  # the prompt mode of a not-evaluated configuration's single row


@dataclass(frozen=True)
class Row:
    vlm: str
    configuration: str
    prompt_mode: str

    @property
    def is_baseline(self) -> bool:
        return (self.configuration, self.prompt_mode) == BASELINE

    @property
    def view_prompt(self) -> str:
        if self.is_baseline or self.prompt_mode == NOT_EVALUATED:
            return "-"
        return "yes" if self.prompt_mode == "with_view_prompt" else "no"


def long_form(summaries: dict[tuple[str, str], dict]) -> pd.DataFrame:
    """One row per (dataset, task, VLM, configuration, prompt mode) with its metrics. A configuration the
    model was not given gets, per task of its dataset, prompt mode NOT_EVALUATED and {NOT_EVALUATED: reason}."""
    records = []
    for (dataset, vlm), summary in summaries.items():
        for task in (t for t in TASK_ORDER if t in summary):
            records += [
                (dataset, task, vlm, configuration, mode, metrics)
                for configuration, modes in summary[task].items()
                for mode, metrics in modes.items()
            ]
            records += [
                (dataset, task, vlm, configuration, NOT_EVALUATED, {NOT_EVALUATED: reason})
                for configuration, reason in summary.get(NOT_EVALUATED, {}).items()
            ]
    return pd.DataFrame(records, columns=["dataset", "task", "vlm", "configuration", "prompt_mode", "metrics"])


def layout(
    summaries: dict[tuple[str, str], dict], datasets: list[str], vlms: list[str], configurations: list[str]
) -> pd.DataFrame:
    """The table's metrics (None where absent), in the table's order, rows and columns without a cell dropped.
    Rows (vlm, configuration, prompt mode): per VLM the baseline, then each configuration with and without
    the view prompt or, when the model could not be given it, its not-evaluated row. Columns (dataset, task):
    datasets in grid order, true/false first."""
    keys = [BASELINE] + [
        (configuration, mode)
        for configuration in configurations
        if configuration != BASELINE[0]
        for mode in (*PROMPT_ORDER, NOT_EVALUATED)
    ]
    grid = (
        long_form(summaries)
        .pivot(index=["vlm", "configuration", "prompt_mode"], columns=["dataset", "task"], values="metrics")
        .reindex(
            index=pd.MultiIndex.from_tuples([(vlm, *key) for vlm in vlms for key in keys]),
            columns=pd.MultiIndex.from_product([datasets, TASK_ORDER]),
        )
        .dropna(how="all")
        .dropna(axis=1, how="all")
    )
    return grid.where(grid.notna(), None)


def column_labels(grid: pd.DataFrame) -> list[str]:
    """The dataset, with the task where the dataset has two columns."""
    datasets = list(grid.columns.get_level_values(0))
    return [
        dataset if datasets.count(dataset) == 1 else f"{dataset} ({TASK_LABELS[task]})"
        for dataset, task in grid.columns
    ]


def format_cell(metrics: dict | None, alpha: float) -> str:
    if not metrics:
        return "-"
    if NOT_EVALUATED in metrics:
        return "n/e"
    text = f"{100 * metrics['accuracy']:.1f}"
    if "delta_vs_origin" in metrics:
        mark = significance_mark(metrics.get("mcnemar_p_adjusted"), alpha)
        text += f" ({100 * metrics['delta_vs_origin']:+.1f}{mark})"
    return text


def significance_footnote(score: ScoreConfig) -> str:
    """The footnote's words for the test behind the marks (zerovlm/scoring/significance.py)."""
    correction = "Holm-corrected within each model x dataset x task" if score.p_adjust == "holm" else "uncorrected"
    if score.sampling_unit == "example":
        return f"McNemar's exact test ({correction})"
    return (
        f"McNemar's exact test over clusters: the examples of one image, or one What'sUp set, count as one "
        f"unit ({correction})"
    )


def selection_lines(grid: pd.DataFrame, summaries: dict, oracles: dict, chosen: dict, alpha: float) -> list[str]:
    """Per VLM, the oracle row and the dev-selected row (zerovlm/report/selection.py) over the table's columns.
    `oracles`: (dataset, vlm) -> {task: rate}; `chosen`: (dataset, vlm) -> {task: cell} or the reason for none."""
    lines = []
    for vlm in dict.fromkeys(grid.index.get_level_values(0)):
        oracle_cells, selected_cells = [], []
        for dataset, task in grid.columns:
            rate = oracles.get((dataset, vlm), {}).get(task)
            oracle_cells.append("-" if rate is None else f"{100 * rate:.1f}")
            choice = chosen.get((dataset, vlm), "-")
            if isinstance(choice, str):
                selected_cells.append(choice)
            elif task not in choice:
                selected_cells.append("-")
            else:
                row = Row(vlm, *choice[task])
                metrics = summaries[(dataset, vlm)][task][row.configuration][row.prompt_mode]
                prompt = "" if row.is_baseline else f", view prompt {row.view_prompt}"
                selected_cells.append(f"{format_cell(metrics, alpha)} [{row.configuration}{prompt}]")
        lines.append(f"| {vlm} | oracle (any configuration) | - | " + " | ".join(oracle_cells) + " |")
        lines.append(f"| ZeroVLM ({vlm}) | dev-selected | [chosen] | " + " | ".join(selected_cells) + " |")
    return lines


def markdown(
    summaries: dict,
    datasets: list[str],
    vlms: list[str],
    configurations: list[str],
    score: ScoreConfig,
    oracles: dict | None = None,
    chosen: dict | None = None,
) -> str:
    """The table; `score` (ScoreConfig) gives the significance level, the correction and the sampling unit.
    With `oracles` and `chosen` (see selection_lines), each VLM's oracle and dev-selected rows follow the table."""
    grid = layout(summaries, datasets, vlms, configurations)
    lines = [
        "| model | configuration | view prompt | " + " | ".join(column_labels(grid)) + " |",
        "|---|---|---|" + "---:|" * len(grid.columns),
    ]
    table_rows = [Row(*key) for key in grid.index]
    alpha = score.alpha
    for row, metrics in zip(table_rows, grid.itertuples(index=False)):
        name = f"{row.configuration} (baseline)" if row.is_baseline else row.configuration
        cells = [format_cell(m, alpha) for m in metrics]
        model = row.vlm if row.is_baseline else f"ZeroVLM ({row.vlm})"
        lines.append(f"| {model} | {name} | {row.view_prompt} | " + " | ".join(cells) + " |")
    if oracles is not None and chosen is not None:
        lines += selection_lines(grid, summaries, oracles, chosen, alpha)
    baselines = grid[[row.is_baseline for row in table_rows]]
    chance = sorted(
        {f"{TASK_LABELS[task]} {100 * m['chance']:.0f}%" for (_, task), cells in baselines.items() for m in cells if m}
    )
    lines += [
        "",
        f"Accuracy in %. In parentheses: the difference to the origin baseline of the same model, "
        f"dataset and task in percentage points; {significance_footnote(score)}: "
        f"* p < {alpha:g}, ** p < {alpha / 5:g}, *** p < {alpha / 50:g}. Chance: {', '.join(chance)}. "
        f"Intervals and counts: metrics/results.csv and metrics/grid/<dataset>/<model>/summary.json.",
    ]
    if oracles is not None and chosen is not None:
        lines += [
            "",
            "oracle: the share of examples that at least one configuration (with or without the view prompt, the "
            "baseline included) answers correctly, an upper bound, not a method. dev-selected: the configuration "
            "most accurate on the dataset's dev split (report.selection_datasets), in brackets, with its accuracy "
            "here; never chosen on these examples.",
        ]
    if any(row.prompt_mode == NOT_EVALUATED for row in table_rows):
        lines += [
            "",
            "n/e: not evaluated; the model takes fewer images per request than the configuration "
            "sends (the reason is in summary.json `not_evaluated` and the CSV).",
        ]
    return "\n".join(lines) + "\n"


CSV_FIELDS = (
    "accuracy",
    "accuracy_ci95_low",
    "accuracy_ci95_high",
    "delta_vs_origin",
    "delta_ci95_low",
    "delta_ci95_high",
    "mcnemar_p",
    "mcnemar_p_adjusted",
    "mark",
    "n_total",
    "n_unparseable",
    NOT_EVALUATED,
)


def _csv_values(metrics: dict | None, alpha: float) -> list:
    if not metrics:
        return [""] * len(CSV_FIELDS)
    if NOT_EVALUATED in metrics:
        return [""] * (len(CSV_FIELDS) - 1) + [metrics[NOT_EVALUATED]]
    accuracy_ci = metrics.get("accuracy_ci95") or ["", ""]
    delta_ci = metrics.get("delta_ci95") or ["", ""]
    return [
        metrics["accuracy"],
        *accuracy_ci,
        metrics.get("delta_vs_origin", ""),
        *delta_ci,
        metrics.get("mcnemar_p", ""),
        metrics.get("mcnemar_p_adjusted", ""),
        significance_mark(metrics.get("mcnemar_p_adjusted"), alpha) if "delta_vs_origin" in metrics else "",
        metrics["n_total"],
        metrics["n_unparseable"],
        "",
    ]


def to_csv(summaries: dict, datasets: list[str], vlms: list[str], configurations: list[str], alpha: float) -> str:
    """The same table with numbers (fractions, not percent): one group of columns per dataset column."""
    grid = layout(summaries, datasets, vlms, configurations)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "model",
            "configuration",
            "view_prompt",
            *[f"{label}: {field}" for label in column_labels(grid) for field in CSV_FIELDS],
        ]
    )
    for key, metrics in zip(grid.index, grid.itertuples(index=False)):
        row = Row(*key)
        writer.writerow(
            [row.vlm, row.configuration, row.view_prompt, *[v for m in metrics for v in _csv_values(m, alpha)]]
        )
    return buffer.getvalue()


def headline(summaries: dict, method: tuple[str, str]) -> dict:
    """The DVC metrics: per dataset / VLM / task (`tf`, `mc`) the origin baseline's accuracy (`base`), the method
    configuration's (`method`), their difference (`delta`), its adjusted p-value (`p`) and the examples compared
    (`n`). Keys are short because DVC flattens them into column names (`vsr_random.llava_7b.tf.delta`); a
    number the summary lacks (a method not evaluated, no difference for the baseline itself) is left out."""
    result: dict = {}
    for (dataset, vlm), summary in sorted(summaries.items()):
        for task in TASK_ORDER:
            if task not in summary:
                continue
            baseline = summary[task].get(BASELINE[0], {}).get(BASELINE[1], {})
            chosen = summary[task].get(method[0], {}).get(method[1], {})
            entry = {
                "base": baseline.get("accuracy"),
                "method": chosen.get("accuracy"),
                "delta": chosen.get("delta_vs_origin"),
                "p": chosen.get("mcnemar_p_adjusted"),
                "n": baseline.get("n_total"),
            }
            result.setdefault(dataset, {}).setdefault(vlm, {})[TASK_KEYS[task]] = {
                key: value for key, value in entry.items() if value is not None
            }
    return result
