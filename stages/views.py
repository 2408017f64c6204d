"""Stage `views`: Zero-1-to-3 novel views of every unique prepared image, for each requested pose."""

from zerovlm.config import ViewsConfig, load_section
from zerovlm.pipeline import views
from zerovlm.stage import run_stage, stage_arguments


def main() -> None:
    args, paths = stage_arguments(__doc__, views.Paths)
    views.run(paths, load_section("views", ViewsConfig, args.params))


if __name__ == "__main__":
    run_stage(main)
