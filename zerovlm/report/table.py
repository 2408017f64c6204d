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

from zerovlm.config import ScoreConfig
from zerovlm.scoring.metrics import BASELINE
from zerovlm.scoring.significance import significance_mark

TASK_ORDER = ("true_false", "multiple_choice")
TASK_LABELS = {"true_false": "true/false", "multiple_choice": "choice"}
PROMPT_ORDER = ("with_view_prompt", "without_view_prompt")
NOT_EVALUATED = "not_evaluated"  # the prompt mode of a not-evaluated configuration's single row


@dataclass(frozen=True)
class Column:
    dataset: str
    task: str
    label: str


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


def columns(summaries: dict[tuple[str, str], dict], datasets: list[str]) -> list[Column]:
    """One column per (dataset, task) present, datasets in grid order, true/false first."""
    result = []
    for dataset in datasets:
        tasks = [t for t in TASK_ORDER if any(t in s for (d, _), s in summaries.items() if d == dataset)]
        for task in tasks:
            label = dataset if len(tasks) == 1 else f"{dataset} ({TASK_LABELS[task]})"
            result.append(Column(dataset, task, label))
    return result


def rows(summaries: dict[tuple[str, str], dict], vlms: list[str], configurations: list[str]) -> list[Row]:
    """The baseline first, then each configuration with and without the view prompt (or, when the model
    could not be given it, one not-evaluated row), per VLM."""
    present = {(vlm, c, m) for (_, vlm), s in summaries.items() for task in TASK_ORDER
               for c, modes in s.get(task, {}).items() for m in modes}
    present |= {(vlm, c, NOT_EVALUATED) for (_, vlm), s in summaries.items() for c in s.get(NOT_EVALUATED, {})}
    result = []
    for vlm in vlms:
        if (vlm, *BASELINE) in present:
            result.append(Row(vlm, *BASELINE))
        for configuration in configurations:
            if configuration == BASELINE[0]:
                continue
            result += [Row(vlm, configuration, m) for m in (*PROMPT_ORDER, NOT_EVALUATED)
                       if (vlm, configuration, m) in present]
    return result


def cell(summaries: dict, row: Row, column: Column) -> dict | None:
    """The metrics of one cell; {"not_evaluated": reason} for a configuration the model was not given."""
    summary = summaries.get((column.dataset, row.vlm), {})
    if row.prompt_mode == NOT_EVALUATED:
        reason = summary.get(NOT_EVALUATED, {}).get(row.configuration)
        return {NOT_EVALUATED: reason} if reason and column.task in summary else None
    return summary.get(column.task, {}).get(row.configuration, {}).get(row.prompt_mode)


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
    return (f"McNemar's exact test over clusters: the examples of one image, or one What'sUp set, count as one "
            f"unit ({correction})")


def markdown(summaries: dict, datasets: list[str], vlms: list[str], configurations: list[str],
             score: ScoreConfig) -> str:
    """The table; `score` (ScoreConfig) gives the significance level, the correction and the sampling unit."""
    cols = columns(summaries, datasets)
    lines = ["| model | configuration | view prompt | " + " | ".join(c.label for c in cols) + " |",
             "|---|---|---|" + "---:|" * len(cols)]
    table_rows = rows(summaries, vlms, configurations)
    alpha = score.alpha
    for row in table_rows:
        name = f"{row.configuration} (baseline)" if row.is_baseline else row.configuration
        cells = [format_cell(cell(summaries, row, c), alpha) for c in cols]
        model = row.vlm if row.is_baseline else f"ZeroVLM ({row.vlm})"
        lines.append(f"| {model} | {name} | {row.view_prompt} | " + " | ".join(cells) + " |")
    chance = sorted({f"{TASK_LABELS[c.task]} {100 * cell(summaries, Row(v, *BASELINE), c)['chance']:.0f}%"
                     for c in cols for v in vlms if cell(summaries, Row(v, *BASELINE), c)})
    lines += ["", f"Accuracy in %. In parentheses: the difference to the origin baseline of the same model, "
                  f"dataset and task in percentage points; {significance_footnote(score)}: "
                  f"* p < {alpha:g}, ** p < {alpha / 5:g}, *** p < {alpha / 50:g}. Chance: {', '.join(chance)}. "
                  f"Intervals and counts: metrics/results.csv and metrics/grid/<dataset>/<model>/summary.json."]
    if any(row.prompt_mode == NOT_EVALUATED for row in table_rows):
        lines += ["", "n/e: not evaluated; the model takes fewer images per request than the configuration "
                      "sends (the reason is in summary.json `not_evaluated` and the CSV)."]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("accuracy", "accuracy_ci95_low", "accuracy_ci95_high", "delta_vs_origin", "delta_ci95_low",
              "delta_ci95_high", "mcnemar_p", "mcnemar_p_adjusted", "mark", "n_total", "n_unparseable",
              NOT_EVALUATED)


def _csv_values(metrics: dict | None, alpha: float) -> list:
    if not metrics:
        return [""] * len(CSV_FIELDS)
    if NOT_EVALUATED in metrics:
        return [""] * (len(CSV_FIELDS) - 1) + [metrics[NOT_EVALUATED]]
    accuracy_ci = metrics.get("accuracy_ci95") or ["", ""]
    delta_ci = metrics.get("delta_ci95") or ["", ""]
    return [metrics["accuracy"], *accuracy_ci, metrics.get("delta_vs_origin", ""), *delta_ci,
            metrics.get("mcnemar_p", ""), metrics.get("mcnemar_p_adjusted", ""),
            significance_mark(metrics.get("mcnemar_p_adjusted"), alpha) if "delta_vs_origin" in metrics else "",
            metrics["n_total"], metrics["n_unparseable"], ""]


def to_csv(summaries: dict, datasets: list[str], vlms: list[str], configurations: list[str], alpha: float) -> str:
    """The same table with numbers (fractions, not percent): one group of columns per dataset column."""
    cols = columns(summaries, datasets)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "configuration", "view_prompt",
                     *[f"{c.label}: {field}" for c in cols for field in CSV_FIELDS]])
    for row in rows(summaries, vlms, configurations):
        values = [v for c in cols for v in _csv_values(cell(summaries, row, c), alpha)]
        writer.writerow([row.vlm, row.configuration, row.view_prompt, *values])
    return buffer.getvalue()


def headline(summaries: dict, method: tuple[str, str]) -> dict:
    """Per dataset / VLM / task: the baseline, the method configuration, their difference and p-value."""
    result: dict = {}
    for (dataset, vlm), summary in sorted(summaries.items()):
        for task in TASK_ORDER:
            if task not in summary:
                continue
            baseline = summary[task].get(BASELINE[0], {}).get(BASELINE[1])
            chosen = summary[task].get(method[0], {}).get(method[1])
            entry = {"baseline_accuracy": baseline["accuracy"] if baseline else None,
                     "method_accuracy": chosen["accuracy"] if chosen else None}
            if chosen and "delta_vs_origin" in chosen:
                entry.update(delta=chosen["delta_vs_origin"], p_adjusted=chosen["mcnemar_p_adjusted"])
            result.setdefault(dataset, {}).setdefault(vlm, {})[task] = entry
    return result
