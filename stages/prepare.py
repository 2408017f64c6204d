"""Stage `prepare`: build the normalised example table (and its images) from the configured source."""

import argparse

from zerovlm.config import DataConfig, dataset_config, load_params, load_section
from zerovlm.pipeline import prepare
from zerovlm.stage import add_path_flags, parsed_paths, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dataset", help="a grid dataset: `datasets.<name>` merged over `data` (default: `data`)")
    add_path_flags(parser, prepare.Paths)
    args = parser.parse_args()
    cfg = (
        dataset_config(load_params(args.params), args.dataset)
        if args.dataset
        else load_section("data", DataConfig, args.params)
    )
    prepare.run(parsed_paths(args, prepare.Paths), cfg)


if __name__ == "__main__":
    run_stage(main)
