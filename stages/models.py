"""Stage `models`: build the demo profile's tiny, randomly initialised models in the real hub layouts."""

from zerovlm.config import ModelsConfig, load_section
from zerovlm.pipeline import models
from zerovlm.stage import run_stage, stage_arguments


def main() -> None:
    args, paths = stage_arguments(__doc__, models.Paths)
    models.run(paths, load_section("models", ModelsConfig, args.params))


if __name__ == "__main__":
    run_stage(main)
