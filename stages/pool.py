"""Stage `pool`: the union of every grid dataset's images, so that views are synthesised once per image."""

import argparse
from pathlib import Path

from zerovlm.config import GridConfig, load_section
from zerovlm.grid import pool_images
from zerovlm.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", type=Path, required=True, help="folder of the prepared datasets")
    parser.add_argument("--out", type=Path, required=True, help="pooled prepared-style folder")
    args = parser.parse_args()
    grid = load_section("grid", GridConfig, args.params)
    pool_images(args.prepared, list(grid.datasets), args.out)


if __name__ == "__main__":
    run_stage(main)
