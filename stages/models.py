"""Stage `models`: build the demo profile's tiny, randomly initialised models in the real hub layouts."""

import argparse
from pathlib import Path

from zerovlm.config import ModelsConfig, load_section
from zerovlm.stage import run_stage
from zerovlm.tiny import build_tiny_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, required=True, help="folder for the model folders")
    args = parser.parse_args()
    cfg = load_section("models", ModelsConfig, args.params)
    build_tiny_models(args.out, cfg.tiny_seed)


if __name__ == "__main__":
    run_stage(main)
