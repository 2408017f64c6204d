"""Stage `pool`: the union of every grid dataset's images, so that views are synthesised once per image."""

import argparse

from zerovlm.config import GridConfig, load_section
from zerovlm.pipeline import pool
from zerovlm.stage import add_path_flags, parsed_paths, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    add_path_flags(parser, pool.Paths)
    args = parser.parse_args()
    pool.run(parsed_paths(args, pool.Paths), list(load_section("grid", GridConfig, args.params).datasets))


if __name__ == "__main__":
    run_stage(main)
