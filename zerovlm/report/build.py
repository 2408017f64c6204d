"""The report stage: read every grid instance's metrics and write the grid-wide reports.

    out_dir/results.md       the paper-shaped table (`zerovlm show` prints it)
    out_dir/results.csv      the same table with numbers, intervals, p-values and counts
    out_dir/headline.json    baseline vs method configuration per dataset / VLM / task (a DVC metric)
    out_dir/provenance.json  library versions, git revision, and every instance's resolved config,
                             fingerprints and prompt hashes
    out_dir/plots/           data of the DVC plots (see plots.py)
"""

from __future__ import annotations

import shutil
from pathlib import Path

from zerovlm.config import ReportConfig, ScoreConfig, check_report_method
from zerovlm.io import atomic_path, read_json, write_json
from zerovlm.report import table
from zerovlm.report.plots import write_plots
from zerovlm.report.provenance import git_revision, library_versions

INSTANCE_FILES = ("summary.json", "per_relation.json", "breakdown.json", "provenance.json")


def read_instances(grid_dir: Path, datasets: list[str], vlms: list[str]) -> dict[str, dict]:
    """file name -> {(dataset, vlm): contents} for every instance of the grid; missing files are an error."""
    found: dict[str, dict] = {name: {} for name in INSTANCE_FILES}
    for dataset in datasets:
        for vlm in vlms:
            folder = grid_dir / dataset / vlm
            for name in INSTANCE_FILES:
                found[name][(dataset, vlm)] = read_json(folder / name, f"run `dvc repro score@{dataset}-{vlm}`")
    return found


def report_stage(datasets: list[str], vlms: list[str], configurations: list[str], score: ScoreConfig,
                 cfg: ReportConfig, grid_dir: Path, out_dir: Path) -> dict:
    check_report_method(cfg, tuple(configurations))
    instances = read_instances(Path(grid_dir), datasets, vlms)
    summaries = instances["summary.json"]
    method = (cfg.method_configuration, "with_view_prompt" if cfg.method_view_prompt else "without_view_prompt")
    out_dir = Path(out_dir)

    with atomic_path(out_dir / "results.md") as tmp:
        tmp.write_text(table.markdown(summaries, datasets, vlms, configurations, score))
    with atomic_path(out_dir / "results.csv") as tmp:
        tmp.write_text(table.to_csv(summaries, datasets, vlms, configurations, score.alpha))
    headline = table.headline(summaries, method)
    write_json(out_dir / "headline.json", headline)
    write_json(out_dir / "provenance.json", {
        "git": git_revision(), "libraries": library_versions(),
        "grid": {"datasets": datasets, "vlms": vlms, "configurations": configurations,
                 "method": list(method)},
        "instances": {f"{d}-{v}": p for (d, v), p in sorted(instances["provenance.json"].items())}})

    plots = out_dir / "plots"
    shutil.rmtree(plots, ignore_errors=True)  # no stale files from an earlier grid
    write_plots(plots, instances["per_relation.json"], instances["breakdown.json"], method)
    return headline
