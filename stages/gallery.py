"""Stage `gallery`: a static HTML gallery of sampled examples (inputs, prompts, answers), opens offline."""

from zerovlm.config import GridConfig, ReportConfig, load_section
from zerovlm.pipeline import gallery
from zerovlm.stage import run_stage, stage_arguments


def main() -> None:
    args, paths = stage_arguments(__doc__, gallery.Paths)
    gallery.run(paths, load_section("grid", GridConfig, args.params), load_section("report", ReportConfig, args.params))


if __name__ == "__main__":
    run_stage(main)
