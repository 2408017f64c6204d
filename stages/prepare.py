"""Stage `prepare`: build the normalised example table (and its images) from the configured source."""

import argparse
from pathlib import Path

from zerovlm.config import DataConfig, dataset_config, load_params, load_section
from zerovlm.datasets.prepare import prepare_dataset
from zerovlm.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dataset", help="a grid dataset: `datasets.<name>` merged over `data` (default: `data`)")
    parser.add_argument("--raw", type=Path, help="download folder shared by datasets (default: beside --out)")
    parser.add_argument("--out", type=Path, required=True, help="prepared folder (examples.jsonl, images/)")
    args = parser.parse_args()
    cfg = (dataset_config(load_params(args.params), args.dataset) if args.dataset
           else load_section("data", DataConfig, args.params))
    prepare_dataset(cfg, args.out, args.raw)


if __name__ == "__main__":
    run_stage(main)
