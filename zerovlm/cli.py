"""The `zerovlm` command: helpers around the DVC pipeline (the stages themselves live in stages/)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from zerovlm.io import ZeroVLMError

PROFILES_DIR = Path("conf/profile")


def compose_params(profile: str, out: Path, overrides: list[str]) -> None:
    """Compose conf/ with a profile into a params file, exactly as `dvc exp run -S profile=...` does."""
    from dvc.utils.hydra import compose_and_dump

    available = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
    if profile not in available:
        raise ZeroVLMError(f"unknown profile {profile!r}; valid: {', '.join(available)} (files in {PROFILES_DIR})")
    compose_and_dump(out, str(Path("conf").resolve()), None, "config", str(Path(".dvc").resolve()),
                     [f"profile={profile}", *overrides])


def _cmd_build_tiny_models(args) -> None:
    from zerovlm.tiny import build_tiny_models

    build_tiny_models(args.out, args.seed)
    print(f"tiny models written to {args.out}")


def _cmd_params(args) -> None:
    from zerovlm.config import validate_all

    compose_params(args.profile, args.out, args.override)
    validate_all(args.out)
    print(f"{args.out}: profile {args.profile} composed and validated")


def _cmd_validate(args) -> None:
    from zerovlm.config import validate_all

    validate_all(args.params)
    print(f"{args.params}: valid")


def _cmd_show(args) -> None:
    from zerovlm.scoring.report import results_table

    print(results_table(json.loads(Path(args.metrics).read_text())))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="zerovlm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build-tiny-models", help="write the demo's tiny random models")
    build.add_argument("--out", type=Path, default=Path("data/models"))
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(func=_cmd_build_tiny_models)

    params = commands.add_parser("params", help="compose params.yaml from conf/ for a profile")
    params.add_argument("--profile", default="demo")
    params.add_argument("--out", type=Path, default=Path("params.yaml"))
    params.add_argument("override", nargs="*", help="Hydra overrides, e.g. views.num_inference_steps=4")
    params.set_defaults(func=_cmd_params)

    validate = commands.add_parser("validate", help="check every params section (types, keys, choices)")
    validate.add_argument("--params", type=Path, default=Path("params.yaml"))
    validate.set_defaults(func=_cmd_validate)

    show = commands.add_parser("show", help="print the accuracy table of a metrics file")
    show.add_argument("--metrics", type=Path, default=Path("metrics/summary.json"))
    show.set_defaults(func=_cmd_show)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ZeroVLMError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
