"""Stage `models`: build the demo profile's tiny, randomly initialised models in the real hub layouts."""

import argparse

from zerovlm.config import ModelsConfig, load_section
from zerovlm.pipeline import models
from zerovlm.stage import add_path_flags, parsed_paths, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    add_path_flags(parser, models.Paths)
    args = parser.parse_args()
    models.run(parsed_paths(args, models.Paths), load_section("models", ModelsConfig, args.params))


if __name__ == "__main__":
    run_stage(main)
