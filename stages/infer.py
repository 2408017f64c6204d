"""Stage `infer`: the VLM answers every question for every configuration, with and without view prompt."""

from zerovlm.config import InferConfig, load_params, load_section, vlm_config
from zerovlm.pipeline import infer
from zerovlm.stage import run_stage, stage_arguments


def main() -> None:
    args, paths = stage_arguments(__doc__, infer.Paths, grid={"vlm": False})
    cfg = (
        vlm_config(load_params(args.params), args.vlm) if args.vlm else load_section("infer", InferConfig, args.params)
    )
    infer.run(paths, cfg)


if __name__ == "__main__":
    run_stage(main)
