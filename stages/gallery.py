"""Stage `gallery`: a static HTML gallery of sampled examples (inputs, prompts, answers), opens offline."""

import argparse
from pathlib import Path

from zerovlm.config import GridConfig, ReportConfig, load_section
from zerovlm.report.gallery import gallery_stage
from zerovlm.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", type=Path, required=True, help="folder of the prepared datasets")
    parser.add_argument("--views", type=Path, required=True, help="the view store")
    parser.add_argument("--stitched", type=Path, required=True, help="folder of the stitched stores")
    parser.add_argument("--predictions", type=Path, required=True, help="folder of the predictions")
    parser.add_argument("--scored", type=Path, required=True, help="folder of the scored records")
    parser.add_argument("--out", type=Path, required=True, help="gallery folder (index.html, images/)")
    args = parser.parse_args()
    grid = load_section("grid", GridConfig, args.params)
    gallery_stage(list(grid.datasets), list(grid.vlms), load_section("report", ReportConfig, args.params),
                  args.prepared, args.views, args.stitched, args.predictions, args.scored, args.out)


if __name__ == "__main__":
    run_stage(main)
