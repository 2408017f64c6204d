"""Stage `report`: the paper-shaped results table, DVC plot data and provenance over the whole grid."""

import argparse

from zerovlm.config import GridConfig, ReportConfig, ScoreConfig, StitchConfig, load_section
from zerovlm.pipeline import report
from zerovlm.stage import add_path_flags, parsed_paths, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    add_path_flags(parser, report.Paths)
    args = parser.parse_args()
    grid = load_section("grid", GridConfig, args.params)
    report.run(
        parsed_paths(args, report.Paths),
        list(grid.datasets),
        list(grid.vlms),
        list(load_section("stitch", StitchConfig, args.params).configurations),
        load_section("score", ScoreConfig, args.params),
        load_section("report", ReportConfig, args.params),
    )


if __name__ == "__main__":
    run_stage(main)
