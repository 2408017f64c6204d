"""Stage `score`: per-example verdicts and the metrics of one grid instance (dataset x VLM)."""

import argparse

from zerovlm.config import SECTIONS, ScoreConfig, dataset_config, load_params, load_section, vlm_config
from zerovlm.pipeline import score
from zerovlm.stage import add_path_flags, parsed_paths, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dataset", required=True, help="grid dataset name")
    parser.add_argument("--vlm", required=True, help="grid VLM name")
    add_path_flags(parser, score.Paths)
    args = parser.parse_args()
    params = load_params(args.params)
    resolved = {
        "data": dataset_config(params, args.dataset).model_dump(),
        "infer": vlm_config(params, args.vlm).model_dump(),
        **{name: load_section(name, SECTIONS[name], args.params).model_dump() for name in ("views", "stitch", "score")},
    }
    score.run(
        parsed_paths(args, score.Paths),
        load_section("score", ScoreConfig, args.params),
        args.dataset,
        args.vlm,
        resolved,
    )


if __name__ == "__main__":
    run_stage(main)
