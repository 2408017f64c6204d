"""Stage `prepare`: build the normalised example table (and its images) from the configured source."""

import argparse
from pathlib import Path

from zerovlm.config import DataConfig, load_section
from zerovlm.datasets.prepare import prepare_dataset
from zerovlm.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, required=True, help="prepared folder (examples.jsonl, images/)")
    args = parser.parse_args()
    prepare_dataset(load_section("data", DataConfig, args.params), args.out)


if __name__ == "__main__":
    run_stage(main)
