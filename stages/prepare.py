"""Stage `prepare`: build the normalised example table (and its images) from the configured source."""

from zerovlm.config import DataConfig, dataset_config, load_params, load_section
from zerovlm.pipeline import prepare
from zerovlm.stage import run_stage, stage_arguments


def main() -> None:
    args, paths = stage_arguments(__doc__, prepare.Paths, grid={"dataset": False})
    cfg = (
        dataset_config(load_params(args.params), args.dataset)
        if args.dataset
        else load_section("data", DataConfig, args.params)
    )
    prepare.run(paths, cfg)


if __name__ == "__main__":
    run_stage(main)
