"""Stage `score`: per-example verdicts and the metrics of one grid instance (dataset x VLM)."""

import argparse
from pathlib import Path

from zerovlm.config import SECTIONS, ScoreConfig, dataset_config, load_params, load_section, vlm_config
from zerovlm.scoring.metrics import score_stage
from zerovlm.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dataset", required=True, help="grid dataset name")
    parser.add_argument("--vlm", required=True, help="grid VLM name")
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--views-summary", type=Path, required=True, help="the views stage's run record (data/views_run.json)")
    parser.add_argument("--infer-run", type=Path, required=True, help="the infer stage's run record")
    parser.add_argument("--metrics", type=Path, required=True, help="folder for this instance's metrics files")
    parser.add_argument("--records", type=Path, required=True, help="per-example JSONL")
    args = parser.parse_args()
    params = load_params(args.params)
    resolved = {"data": dataset_config(params, args.dataset).model_dump(),
                "infer": vlm_config(params, args.vlm).model_dump(),
                **{name: load_section(name, SECTIONS[name], args.params).model_dump()
                   for name in ("views", "stitch", "score")}}
    score_stage(load_section("score", ScoreConfig, args.params), args.prepared, args.predictions, args.metrics,
                args.records, args.views_summary, args.dataset, args.vlm, resolved, args.infer_run)


if __name__ == "__main__":
    run_stage(main)
