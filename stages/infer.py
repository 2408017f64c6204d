"""Stage `infer`: the VLM answers every question for every configuration, with and without view prompt."""

import argparse

from zerovlm.config import InferConfig, load_params, load_section, vlm_config
from zerovlm.pipeline import infer
from zerovlm.stage import add_path_flags, parsed_paths, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--vlm", help="a grid VLM: `vlms.<name>` merged over `infer` (default: `infer`)")
    add_path_flags(parser, infer.Paths)
    args = parser.parse_args()
    cfg = (
        vlm_config(load_params(args.params), args.vlm) if args.vlm else load_section("infer", InferConfig, args.params)
    )
    infer.run(parsed_paths(args, infer.Paths), cfg)


if __name__ == "__main__":
    run_stage(main)
