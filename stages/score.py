"""Stage `score`: per-example verdicts and the metrics of one grid instance (dataset x VLM)."""

from zerovlm.config import SECTIONS, ScoreConfig, dataset_config, load_params, load_section, vlm_config
from zerovlm.pipeline import score
from zerovlm.stage import run_stage, stage_arguments


def main() -> None:
    args, paths = stage_arguments(__doc__, score.Paths, grid={"dataset": True, "vlm": True})
    params = load_params(args.params)
    resolved = {
        "data": dataset_config(params, args.dataset).model_dump(),
        "infer": vlm_config(params, args.vlm).model_dump(),
        **{name: load_section(name, SECTIONS[name], args.params).model_dump() for name in ("views", "stitch", "score")},
    }
    score.run(
        paths,
        load_section("score", ScoreConfig, args.params),
        args.dataset,
        args.vlm,
        resolved,
    )


if __name__ == "__main__":
    run_stage(main)
