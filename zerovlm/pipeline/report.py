"""Stage `report`: read every grid instance's metrics and write the grid-wide reports.

out/results.md       the paper-shaped table (`zerovlm show` prints it)
out/results.csv      the same table with numbers, intervals, p-values and counts
out/headline.json    baseline vs method configuration per dataset / VLM / task (a DVC metric)
out/provenance.json  library versions, git revision, and every instance's resolved config,
                     fingerprints and prompt hashes
out/plots/           data of the DVC plots (zerovlm/report/plots.py)
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from zerovlm.config import ReportConfig, ScoreConfig, check_report_method
from zerovlm.io import atomic_path, read_json, write_json
from zerovlm.provenance import git_revision, library_versions
from zerovlm.report import table
from zerovlm.report.plots import plot_files
from zerovlm.stage import path_flag

INSTANCE_FILES = ("summary.json", "per_relation.json", "breakdown.json", "provenance.json")


@dataclass(frozen=True)
class Paths:
    grid_metrics: Path = path_flag("folder of the per-instance metrics (<dataset>/<vlm>/)")
    out: Path = path_flag("folder for the reports")


def read_instances(grid_dir: Path, datasets: list[str], vlms: list[str]) -> dict[str, dict]:
    """file name -> {(dataset, vlm): contents} for every instance of the grid; missing files are an error."""
    found: dict[str, dict] = {name: {} for name in INSTANCE_FILES}
    for dataset in datasets:
        for vlm in vlms:
            folder = grid_dir / dataset / vlm
            for name in INSTANCE_FILES:
                found[name][(dataset, vlm)] = read_json(folder / name, f"run `dvc repro score@{dataset}-{vlm}`")
    return found


def run(
    paths: Paths, datasets: list[str], vlms: list[str], configurations: list[str], score: ScoreConfig, cfg: ReportConfig
) -> dict:
    """Write every report; return the headline metrics."""
    check_report_method(cfg, tuple(configurations))
    instances = read_instances(paths.grid_metrics, datasets, vlms)
    summaries = instances["summary.json"]
    method = (cfg.method_configuration, "with_view_prompt" if cfg.method_view_prompt else "without_view_prompt")

    with atomic_path(paths.out / "results.md") as tmp:
        tmp.write_text(table.markdown(summaries, datasets, vlms, configurations, score))
    with atomic_path(paths.out / "results.csv") as tmp:
        tmp.write_text(table.to_csv(summaries, datasets, vlms, configurations, score.alpha))
    headline = table.headline(summaries, method)
    write_json(paths.out / "headline.json", headline)
    write_json(
        paths.out / "provenance.json",
        {
            "git": git_revision(),
            "libraries": library_versions(),
            "grid": {"datasets": datasets, "vlms": vlms, "configurations": configurations, "method": list(method)},
            "instances": {f"{d}-{v}": p for (d, v), p in sorted(instances["provenance.json"].items())},
        },
    )

    plots = paths.out / "plots"
    shutil.rmtree(plots, ignore_errors=True)  # no stale files from an earlier grid
    for name, rows in plot_files(instances["per_relation.json"], instances["breakdown.json"], method).items():
        write_json(plots / name, rows)
    return headline
