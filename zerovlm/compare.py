"""Paired comparison of two runs of the grid: two git revisions, DVC experiments or the workspace.

`dvc metrics diff` shows how far an accuracy moved between two runs, not whether the move is more than
noise. Two runs on the same dataset selection answered the same examples, so each cell (dataset x VLM x
task x configuration x view prompt) is compared example by example, with the statistics the score stage
uses against the origin baseline (zerovlm/scoring/significance.py): the difference of accuracy B - A, its
paired bootstrap 95% interval, and McNemar's exact test over clusters, corrected by `score.p_adjust` within
each dataset x VLM x task (the family of the baseline comparisons). The `score` settings are B's.

A cell whose examples differ between A and B (another selection: other example ids, or the same ids on
other images, What'sUp sets or answers) is refused with the counts, never compared as unpaired numbers;
a cell of one side only is listed as such.
"""

from __future__ import annotations

import json
import textwrap
from collections import defaultdict
from dataclasses import dataclass

import pandas as pd
import yaml

from zerovlm.config import GridConfig, ScoreConfig, parse_section
from zerovlm.io import ZeroVLMError
from zerovlm.report.table import TASK_LABELS, significance_footnote
from zerovlm.scoring import metrics
from zerovlm.scoring.significance import discordant_counts, holm, mcnemar_p, paired_bootstrap_ci, significance_mark

WORKSPACE = "workspace"  # the working tree, named as `dvc exp show` names it
RECORDS = "data/scored/{dataset}/{vlm}/records.jsonl"  # the score stage's verdicts (dvc.yaml)
CELL = ["dataset", "vlm", *metrics.CELL]
FAMILY = CELL[:3]  # dataset, VLM, task: the cells one correction covers
# the same example: the same question (id and answer) about the same image of the same What'sUp set
IDENTITY = ["example_id", "image_id", "group_id", "answer_index"]
COMPARED, REFUSED, ONLY_IN_A, ONLY_IN_B = "compared", "refused", "only_in_a", "only_in_b"


def example_mismatch(a: pd.DataFrame, b: pd.DataFrame) -> str | None:
    """Why the verdicts of one cell in A and in B cannot be paired; None when both hold the same examples once."""
    for side, rows in (("A", a), ("B", b)):
        repeated = int(rows["example_id"].duplicated().sum())
        if repeated:
            return f"{repeated} example(s) answered twice in {side}; re-run its score stage"
    in_a, in_b = (
        set(rows[IDENTITY].astype(object).where(rows[IDENTITY].notna(), None).itertuples(False, None))
        for rows in (a, b)
    )  # None for every missing value: NaN != NaN would make no two sets equal
    if in_a == in_b:
        return None
    reason = f"examples differ: {len(in_a - in_b)} only in A, {len(in_b - in_a)} only in B"
    if set(a["example_id"]) == set(b["example_id"]):
        reason += " (the same ids on other images, sets or answers)"
    return reason


def compare_cell(a: pd.DataFrame, b: pd.DataFrame, cfg: ScoreConfig) -> dict:
    """Accuracies, B - A with its paired bootstrap interval, and McNemar's test of one cell's paired verdicts
    (the same examples, once each: `example_mismatch` is None). `mcnemar_b`/`mcnemar_c`: examples right
    only in A / only in B."""
    a = a.sort_values("example_id", kind="stable")  # pairs, clusters and resamples do not depend on row order
    right_a = a["correct"].to_numpy(dtype=bool)
    right_b = b.set_index("example_id")["correct"].loc[a["example_id"]].to_numpy(dtype=bool)
    clusters = metrics.cluster_ids(a, cfg)
    only_a, only_b = discordant_counts(right_a, right_b)
    return {
        "n_total": len(a),
        "accuracy_a": round(float(right_a.mean()), 4),
        "accuracy_b": round(float(right_b.mean()), 4),
        "delta": round(float(right_b.mean() - right_a.mean()), 4),
        "delta_ci95": paired_bootstrap_ci(
            right_a.astype(float), right_b.astype(float), cfg.bootstrap_samples, cfg.seed, clusters
        ),
        "mcnemar_b": only_a,
        "mcnemar_c": only_b,
        "mcnemar_p": mcnemar_p(right_a, right_b, clusters),
    }


def _cells(records: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    return {} if records.empty else dict(iter(records.groupby(CELL, sort=False)))


def compare_records(a: pd.DataFrame, b: pd.DataFrame, cfg: ScoreConfig) -> list[dict]:
    """One entry per cell of A or B: its CELL keys, a `status` (compared, refused with a `reason`, only_in_a,
    only_in_b) and, when compared, the `compare_cell` numbers with `mcnemar_p_adjusted` (per dataset x VLM x
    task) and the significance `mark`. Sorted by dataset, VLM, task, configuration, view prompt, each in
    order of first appearance (A, then B)."""
    cells_a, cells_b = _cells(a), _cells(b)
    keys = list(dict.fromkeys([*cells_a, *cells_b]))
    ranks = [
        {value: rank for rank, value in enumerate(dict.fromkeys(key[i] for key in keys))} for i in range(len(CELL))
    ]
    results = []
    for key in sorted(keys, key=lambda key: tuple(rank[value] for rank, value in zip(ranks, key))):
        cell: dict = dict(zip(CELL, key))
        if key not in cells_b:
            cell["status"] = ONLY_IN_A
        elif key not in cells_a:
            cell["status"] = ONLY_IN_B
        elif (reason := example_mismatch(cells_a[key], cells_b[key])) is not None:
            cell.update(status=REFUSED, reason=reason)
        else:
            cell.update(status=COMPARED, **compare_cell(cells_a[key], cells_b[key], cfg))
        results.append(cell)
    families: dict[tuple, list[dict]] = defaultdict(list)
    for cell in results:
        if cell["status"] == COMPARED:
            families[tuple(cell[k] for k in FAMILY)].append(cell)
    for family in families.values():
        raw = [cell["mcnemar_p"] for cell in family]
        for cell, p in zip(family, holm(raw) if cfg.p_adjust == "holm" else raw):
            cell.update(mcnemar_p_adjusted=p, mark=significance_mark(p, cfg.alpha))
    return results


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def _row(cell: dict) -> list[str]:
    """The table's cells of one compared cell; of another, the first three and its status."""
    keys = [
        TASK_LABELS.get(cell["task"], cell["task"]),
        cell["configuration"],
        "yes" if cell["prompt_mode"] == "with_view_prompt" else "no",
    ]
    if cell["status"] in (ONLY_IN_A, ONLY_IN_B):
        return [*keys, "only in A" if cell["status"] == ONLY_IN_A else "only in B"]
    if cell["status"] == REFUSED:
        return [*keys, f"refused: {cell['reason']}"]
    interval = cell["delta_ci95"]
    return [
        *keys,
        f"{100 * cell['accuracy_a']:.1f}",
        f"{100 * cell['accuracy_b']:.1f}",
        _points(cell["delta"]) + cell["mark"].ljust(3),  # numbers aligned with or without a mark
        f"[{_points(interval[0])}, {_points(interval[1])}]" if interval else "-",
        str(cell["n_total"]),
        f"{cell['mcnemar_b']}/{cell['mcnemar_c']}",
        f"{cell['mcnemar_p']:.3g}",
        f"{cell['mcnemar_p_adjusted']:.3g}",
    ]


HEADER = ["task", "configuration", "view prompt", "A %", "B %", "B - A", "95% interval", "n", "only A/B", "p", "p adj"]
LEFT = 3  # text columns, left-aligned; the numbers are right-aligned


def format_comparison(cells: list[dict], a_label: str, b_label: str, cfg: ScoreConfig) -> str:
    """A table per dataset x VLM for a terminal of 120 columns, with a legend (see `compare_records`)."""
    rows = {id(cell): _row(cell) for cell in cells}
    full = [HEADER, *(row for row in rows.values() if len(row) == len(HEADER))]
    widths = [max(len(row[i]) for row in full) for i in range(len(HEADER))]

    def line(row: list[str]) -> str:
        aligned = [
            text.ljust(width) if i < LEFT else text.rjust(width) for i, (text, width) in enumerate(zip(row, widths))
        ]
        if len(row) < len(HEADER):  # a status instead of the numbers
            aligned[LEFT] = row[LEFT]
        return "  " + "  ".join(aligned).rstrip()

    lines = [f"A: {a_label}   B: {b_label}"]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for cell in cells:
        groups[(cell["dataset"], cell["vlm"])].append(cell)
    for (dataset, vlm), group in groups.items():
        lines += ["", f"{dataset} / {vlm}"]
        statuses = {(cell["status"], cell.get("reason")) for cell in group}
        if len(statuses) == 1 and group[0]["status"] != COMPARED:  # e.g. a grid instance of one side: one line
            lines.append(f"  all cells ({len(group)}) {_row(group[0])[LEFT]}")
            continue
        lines += [line(HEADER), *(line(rows[id(cell)]) for cell in group)]
    alpha = cfg.alpha
    settings = ", ".join(f"{key}={value}" for key, value in cfg.model_dump().items())
    legend = (
        f"Accuracy in % in A and in B; B - A in percentage points with its paired bootstrap 95% interval; n examples; "
        f"only A/B: examples right only in A / only in B; p: {significance_footnote(cfg)}; marks on B - A from "
        f"p adj: * p < {alpha:g}, ** p < {alpha / 5:g}, *** p < {alpha / 50:g}. Refused: the two runs answered "
        f"other examples (another dataset selection), so their verdicts cannot be paired. B's score settings: "
        f"{settings}."
    )
    return "\n".join([*lines, "", textwrap.fill(legend, width=120)])


# ---------------------------------------------------------------- reading a revision through DVC


@dataclass(frozen=True)
class Revision:
    """What one side of a comparison holds: its grid, its `score` settings and the verdicts of every instance."""

    label: str  # as the user named it: a git revision, an experiment, or WORKSPACE
    grid: GridConfig
    score: ScoreConfig
    records: pd.DataFrame  # the records.jsonl rows of every grid instance, with `dataset` and `vlm` set


def read_revision(label: str) -> Revision:
    """Read params.yaml and every grid instance's records at `label` with `dvc.api.open`: from the working
    tree for WORKSPACE, else from git and the DVC cache or remote. Errors name the revision and the fix."""
    import dvc.api
    from dvc.exceptions import DvcException, PathMissingError
    from dvc.scm import RevError

    rev = None if label == WORKSPACE else label
    where = "in the workspace" if rev is None else f"at revision {label!r}"

    def read(path: str, problem: str) -> str:
        try:
            with dvc.api.open(path, rev=rev) as f:
                return f.read()
        except PathMissingError:
            raise ZeroVLMError(f"{path} {where}: {problem}") from None
        except RevError as error:
            raise ZeroVLMError(
                f"revision {label!r}: {error}; name a commit, branch, tag or experiment (`dvc exp list`), "
                f"or `{WORKSPACE}`"
            ) from None
        except DvcException as error:  # not in a git + DVC repository, an unreadable dvc.yaml
            raise ZeroVLMError(f"{path} {where}: {error}; run from the root of the repository") from None

    try:
        params = yaml.safe_load(read("params.yaml", "not found; is this a revision of the pipeline?")) or {}
    except yaml.YAMLError as error:
        raise ZeroVLMError(f"params.yaml {where}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(params, dict):
        raise ZeroVLMError(f"params.yaml {where}: expected a mapping of sections, got {type(params).__name__}")
    try:
        grid = parse_section("grid", params.get("grid"))
        score = parse_section("score", params.get("score"))
    except ZeroVLMError as error:
        raise ZeroVLMError(f"params.yaml {where}: {error}") from None
    missing_records = (
        "not found; run the pipeline (`dvc repro`) or fetch its outputs (`dvc pull`)"
        if rev is None
        else "neither in that revision's dvc.lock nor in the DVC cache or remote; fetch it (`dvc exp pull "
        "<remote> <experiment>`, or `dvc pull` with the commit checked out) or run the pipeline there "
        "(`dvc exp apply <experiment>` or `git checkout <commit>`, then `dvc repro`)"
    )
    frames = []
    for dataset in grid.datasets:
        for vlm in grid.vlms:
            path = RECORDS.format(dataset=dataset, vlm=vlm)
            text = read(path, missing_records)
            try:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as error:
                raise ZeroVLMError(f"{path} {where}: malformed JSON ({error.msg}); re-run its score stage") from None
            if not all(isinstance(row, dict) for row in rows):
                raise ZeroVLMError(f"{path} {where}: a line is not a JSON object; re-run its score stage")
            frame = pd.DataFrame(rows)
            missing = [key for key in [*metrics.CELL, *IDENTITY, "correct"] if key not in frame.columns]
            if missing:
                raise ZeroVLMError(f"{path} {where}: no field {', '.join(missing)}; re-run its score stage")
            frames.append(frame.assign(dataset=dataset, vlm=vlm))
    return Revision(label, grid, score, pd.concat(frames, ignore_index=True))


def comparison_json(cells: list[dict], a: Revision, b: Revision) -> str:
    """The machine-readable comparison: both labels, the score settings used (B's) and every cell."""
    return json.dumps({"a": a.label, "b": b.label, "score": b.score.model_dump(), "cells": cells}, indent=2)
