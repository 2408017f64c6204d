"""Stage `check`: validate params.yaml, then record what each stage reads from outside the pipeline."""

import argparse
from pathlib import Path

from zerovlm.inputs import check_stage
from zerovlm.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="folder of the per-stage input records")
    parser.add_argument("--lock", type=Path, required=True, help="models.lock: hub revisions pinned to commits")
    parser.add_argument("--built-models", type=Path, required=True,
                        help="the models stage's output folder (its models are tracked by DVC already)")
    args = parser.parse_args()
    check_stage(args.params, args.out, args.lock, args.built_models)


if __name__ == "__main__":
    run_stage(main)
