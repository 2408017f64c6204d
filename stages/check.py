"""Stage `check`: validate params.yaml, then record what each stage reads from outside the pipeline."""

from zerovlm.pipeline import check
from zerovlm.stage import run_stage, stage_arguments


def main() -> None:
    _, paths = stage_arguments(__doc__, check.Paths, params=False)
    check.run(paths)


if __name__ == "__main__":
    run_stage(main)
