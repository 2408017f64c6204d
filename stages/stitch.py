"""Stage `stitch`: compose the VLM input image of every view configuration (grid or strip layout)."""

from zerovlm.config import StitchConfig, load_section
from zerovlm.pipeline import stitch
from zerovlm.stage import run_stage, stage_arguments


def main() -> None:
    args, paths = stage_arguments(__doc__, stitch.Paths)
    stitch.run(paths, load_section("stitch", StitchConfig, args.params))


if __name__ == "__main__":
    run_stage(main)
