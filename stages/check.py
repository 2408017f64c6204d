"""Stage `check`: validate params.yaml, then record what each stage reads from outside the pipeline."""

import argparse

from zerovlm.pipeline import check
from zerovlm.stage import add_path_flags, parsed_paths, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_path_flags(parser, check.Paths)
    args = parser.parse_args()
    check.run(parsed_paths(args, check.Paths))


if __name__ == "__main__":
    run_stage(main)
