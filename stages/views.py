"""Stage `views`: Zero-1-to-3 novel views of every unique prepared image, for each requested pose."""

import argparse

from zerovlm.config import ViewsConfig, load_section
from zerovlm.pipeline import views
from zerovlm.stage import add_path_flags, parsed_paths, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    add_path_flags(parser, views.Paths)
    args = parser.parse_args()
    views.run(parsed_paths(args, views.Paths), load_section("views", ViewsConfig, args.params))


if __name__ == "__main__":
    run_stage(main)
