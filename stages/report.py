"""Stage `report`: the paper-shaped results table, headline metrics, lm-eval-shaped results, DVC plot data and
provenance over the whole grid."""

from zerovlm.config import GridConfig, ReportConfig, ScoreConfig, StitchConfig, load_section
from zerovlm.pipeline import report
from zerovlm.stage import run_stage, stage_arguments


def main() -> None:
    args, paths = stage_arguments(__doc__, report.Paths)
    report.run(
        paths,
        load_section("grid", GridConfig, args.params),
        list(load_section("stitch", StitchConfig, args.params).configurations),
        load_section("score", ScoreConfig, args.params),
        load_section("report", ReportConfig, args.params),
    )


if __name__ == "__main__":
    run_stage(main)
