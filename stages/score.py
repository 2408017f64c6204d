"""Stage `score`: per-example verdicts and accuracy metrics (overall, per relation, with counts)."""

import argparse
from pathlib import Path

from zerovlm.config import ScoreConfig, load_section
from zerovlm.scoring.metrics import score_stage
from zerovlm.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True, help="folder for the metrics files")
    parser.add_argument("--records", type=Path, required=True, help="per-example JSONL")
    args = parser.parse_args()
    score_stage(load_section("score", ScoreConfig, args.params), args.prepared, args.predictions,
                args.metrics, args.records)


if __name__ == "__main__":
    run_stage(main)
