"""Stage `report`: read every grid instance's metrics and write the grid-wide reports.

out/results.md       the paper-shaped table (`zerovlm show` prints it)
out/results.csv      the same table with numbers, intervals, p-values and counts
out/headline.json    baseline vs method configuration per dataset / VLM / task (the only DVC metric)
out/provenance.json  library versions, git revision, and every instance's resolved config,
                     fingerprints and prompt hashes
out/plots/           data of the DVC plots (zerovlm/report/plots.py)
out/lm_eval/<vlm>/results_<date>.json   the results in lm-evaluation-harness's schema (zerovlm/report/lm_eval.py)
samples/<vlm>/samples_<task>_<date>.jsonl  their per-sample records (large: a DVC-cached output)
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from zerovlm.config import GridConfig, ReportConfig, ScoreConfig, check_report_method
from zerovlm.datasets.table import read_table
from zerovlm.io import atomic_dir, atomic_path, read_json, read_jsonl, write_json, write_jsonl
from zerovlm.provenance import git_revision, library_versions
from zerovlm.report import lm_eval, selection, table
from zerovlm.report.plots import plot_files
from zerovlm.stage import path_flag

INSTANCE_FILES = ("summary.json", "per_relation.json", "breakdown.json", "provenance.json", "quality_bins.json")


@dataclass(frozen=True)
class Paths:
    grid_metrics: Path = path_flag("folder of the per-instance metrics (<dataset>/<vlm>/)")
    prepared: Path = path_flag("folder of the prepared datasets (<dataset>/examples.jsonl)")
    predictions: Path = path_flag(
        "folder of the predictions (<dataset>/<vlm>/predictions.jsonl, <dataset>/<vlm>_run.json)"
    )
    scored: Path = path_flag("folder of the scored records (<dataset>/<vlm>/records.jsonl)")
    out: Path = path_flag("folder for the reports")
    samples: Path = path_flag("folder for the per-sample records of the lm-eval-shaped results (<vlm>/)")


def read_instances(grid_dir: Path, datasets: list[str], vlms: list[str]) -> dict[str, dict]:
    """file name -> {(dataset, vlm): contents} for every instance of the grid; missing files are an error."""
    found: dict[str, dict] = {name: {} for name in INSTANCE_FILES}
    for dataset in datasets:
        for vlm in vlms:
            folder = grid_dir / dataset / vlm
            for name in INSTANCE_FILES:
                found[name][(dataset, vlm)] = read_json(folder / name, f"run `dvc repro score@{dataset}-{vlm}`")
    return found


def write_lm_eval(
    paths: Paths, datasets: list[str], vlms: list[str], provenance: dict, git_hash: str | None, date: float
) -> None:
    """Per VLM, the lm-eval results file under out/lm_eval/<vlm>/ and its samples files under samples/<vlm>/;
    each folder is replaced whole, so no file of an earlier run or grid stays."""
    stamp = lm_eval.date_id(date)
    with atomic_dir(paths.out / "lm_eval") as results_dir, atomic_dir(paths.samples) as samples_dir:
        for vlm in vlms:
            instances, tasks = [], {}
            for dataset in datasets:
                records = paths.scored / dataset / vlm / "records.jsonl"
                predictions = paths.predictions / dataset / vlm
                instance = lm_eval.Instance(
                    dataset=dataset,
                    examples=read_table(paths.prepared / dataset),
                    records=list(read_jsonl(records)),
                    predictions={r["record_id"]: r for r in read_jsonl(predictions / "predictions.jsonl")},
                    provenance=provenance[(dataset, vlm)],
                    run=read_json(predictions.with_name(f"{vlm}_run.json"), f"run `dvc repro infer@{dataset}-{vlm}`"),
                )
                instances.append(instance)
                tasks.update(lm_eval.instance_tasks(instance, str(records)))
            for name, task in tasks.items():
                write_jsonl(samples_dir / vlm / f"samples_{name}_{stamp}.jsonl", task.samples)
            write_json(
                results_dir / vlm / f"results_{stamp}.json", lm_eval.vlm_results(vlm, tasks, instances, git_hash, date)
            )


def run(paths: Paths, grid: GridConfig, configurations: list[str], score: ScoreConfig, cfg: ReportConfig) -> dict:
    """Write every report; return the headline metrics."""
    datasets, vlms = list(grid.datasets), list(grid.vlms)
    date = time.time()
    check_report_method(cfg, tuple(configurations))
    instances = read_instances(paths.grid_metrics, datasets, vlms)
    summaries = instances["summary.json"]
    method = (cfg.method_configuration, "with_view_prompt" if cfg.method_view_prompt else "without_view_prompt")

    verdicts = {}  # (dataset, vlm) -> records, read once each: the oracle reads every instance's

    def load(dataset: str, vlm: str) -> pd.DataFrame:
        if (dataset, vlm) not in verdicts:
            verdicts[(dataset, vlm)] = pd.DataFrame(read_jsonl(paths.scored / dataset / vlm / "records.jsonl"))
        return verdicts[(dataset, vlm)]

    chosen = selection.selected_cells(load, datasets, vlms, cfg.selection_datasets, configurations)
    oracles = {(d, v): selection.oracle(load(d, v)) for d in datasets for v in vlms}
    with atomic_path(paths.out / "results.md") as tmp:
        tmp.write_text(table.markdown(summaries, datasets, vlms, configurations, score, oracles, chosen))
    with atomic_path(paths.out / "results.csv") as tmp:
        tmp.write_text(table.to_csv(summaries, datasets, vlms, configurations, score.alpha))
    headline = table.headline(summaries, method)
    write_json(paths.out / "headline.json", headline)
    git = git_revision()
    write_json(
        paths.out / "provenance.json",
        {
            "git": git,
            "libraries": library_versions(),
            "grid": {"datasets": datasets, "vlms": vlms, "configurations": configurations, "method": list(method)},
            "instances": {f"{d}-{v}": p for (d, v), p in sorted(instances["provenance.json"].items())},
        },
    )

    plots = paths.out / "plots"
    shutil.rmtree(plots, ignore_errors=True)  # no stale files from an earlier grid
    sources = {  # the objects plot sums datasets of one source; an instance scored without a prepare summary: itself
        dataset: provenance["prepare"]["source"] or dataset
        for (dataset, _), provenance in instances["provenance.json"].items()
    }
    for name, rows in plot_files(
        instances["per_relation.json"], instances["breakdown.json"], instances["quality_bins.json"], method, sources
    ).items():
        write_json(plots / name, rows)
    write_lm_eval(paths, datasets, vlms, instances["provenance.json"], git["revision"], date)
    return headline
