"""Stage `report`: the paper-shaped results table, DVC plot data and provenance over the whole grid."""

import argparse
from pathlib import Path

from zerovlm.config import GridConfig, ReportConfig, ScoreConfig, StitchConfig, load_section
from zerovlm.report.build import report_stage
from zerovlm.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--grid-metrics", type=Path, required=True, help="folder of the per-instance metrics")
    parser.add_argument("--out", type=Path, required=True, help="folder for the reports")
    args = parser.parse_args()
    grid = load_section("grid", GridConfig, args.params)
    report_stage(list(grid.datasets), list(grid.vlms),
                 list(load_section("stitch", StitchConfig, args.params).configurations),
                 load_section("score", ScoreConfig, args.params), load_section("report", ReportConfig, args.params),
                 args.grid_metrics, args.out)


if __name__ == "__main__":
    run_stage(main)
