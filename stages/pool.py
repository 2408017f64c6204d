"""Stage `pool`: the union of every grid dataset's images, so that views are synthesised once per image."""

from zerovlm.config import GridConfig, load_section
from zerovlm.pipeline import pool
from zerovlm.stage import run_stage, stage_arguments


def main() -> None:
    args, paths = stage_arguments(__doc__, pool.Paths)
    pool.run(paths, list(load_section("grid", GridConfig, args.params).datasets))


if __name__ == "__main__":
    run_stage(main)
