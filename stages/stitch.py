"""Stage `stitch`: compose the VLM input image of every view configuration (grid or strip layout)."""

import argparse
from pathlib import Path

from zerovlm.compose import stitch_stage
from zerovlm.config import StitchConfig, load_section
from zerovlm.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--views", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="stitched image store")
    args = parser.parse_args()
    stitch_stage(load_section("stitch", StitchConfig, args.params), args.prepared, args.views, args.out)


if __name__ == "__main__":
    run_stage(main)
