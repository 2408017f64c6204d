"""Stage `gallery`: a static HTML gallery of sampled examples (inputs, prompts, answers), opens offline."""

import argparse

from zerovlm.config import GridConfig, ReportConfig, load_section
from zerovlm.pipeline import gallery
from zerovlm.stage import add_path_flags, parsed_paths, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    add_path_flags(parser, gallery.Paths)
    args = parser.parse_args()
    grid = load_section("grid", GridConfig, args.params)
    gallery.run(
        parsed_paths(args, gallery.Paths),
        list(grid.datasets),
        list(grid.vlms),
        load_section("report", ReportConfig, args.params),
    )


if __name__ == "__main__":
    run_stage(main)
