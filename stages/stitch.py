"""Stage `stitch`: compose the VLM input image of every view configuration (grid or strip layout)."""

import argparse

from zerovlm.config import StitchConfig, load_section
from zerovlm.pipeline import stitch
from zerovlm.stage import add_path_flags, parsed_paths, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    add_path_flags(parser, stitch.Paths)
    args = parser.parse_args()
    stitch.run(parsed_paths(args, stitch.Paths), load_section("stitch", StitchConfig, args.params))


if __name__ == "__main__":
    run_stage(main)
