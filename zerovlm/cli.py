"""The `zerovlm` command: helpers around the DVC pipeline (the stages themselves live in stages/)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from zerovlm.io import ZeroVLMError, read_json

PROFILES_DIR = Path("conf/profile")


def compose_params(profile: str, out: Path, overrides: list[str]) -> None:
    """Compose conf/ with a profile into a params file, exactly as `dvc exp run -S profile=...` does."""
    from dvc.utils.hydra import compose_and_dump

    available = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
    if profile not in available:
        raise ZeroVLMError(f"unknown profile {profile!r}; valid: {', '.join(available)} (files in {PROFILES_DIR})")
    from hydra.errors import HydraException

    try:
        compose_and_dump(
            out,
            str(Path("conf").resolve()),
            None,
            "config",
            str(Path(".dvc").resolve()),
            [f"profile={profile}", *overrides],
        )
    except HydraException as error:  # an unknown key or a malformed override
        raise ZeroVLMError(
            f"{' '.join(overrides)}: {str(error).splitlines()[0]} (a key not in conf/config.yaml "
            f"needs '+', e.g. +vlms.NAME.KEY=VALUE)"
        ) from None


def _cmd_build_tiny_models(args) -> None:
    from zerovlm.config import ModelsConfig
    from zerovlm.pipeline import models

    models.run(models.Paths(out=args.out), ModelsConfig(tiny_seed=args.seed))
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


def _cmd_lock(args) -> None:
    from zerovlm.inputs import lock_models

    for line in lock_models(args.params, args.lock, args.built_models, args.names, args.update):
        print(line)
    print(f"{args.lock} written: commit it (`dvc repro` loads these commits)")


def _cmd_show(args) -> None:
    """The paper-shaped results table of the whole grid, or one instance's detailed metrics."""
    if args.metrics is None:
        if not args.results.is_file():
            raise ZeroVLMError(f"{args.results}: not found; run the pipeline first (`dvc repro`)")
        print(args.results.read_text(), end="")
        return
    from zerovlm.scoring.summary_text import results_table

    print(
        results_table(
            read_json(
                args.metrics,
                "run the pipeline first (`dvc repro`); instances are metrics/grid/<dataset>/<vlm>/summary.json",
            )
        )
    )


def _cmd_compare(args) -> None:
    """Every cell of two runs compared example by example (zerovlm/compare.py)."""
    from zerovlm.compare import compare_records, comparison_json, format_comparison, read_revision

    a, b = read_revision(args.a), read_revision(args.b)
    cells = compare_records(a.records, b.records, b.score)
    print(comparison_json(cells, a, b) if args.json else format_comparison(cells, a.label, b.label, b.score))


def _cmd_export_views(args) -> None:
    from zerovlm.sharing import default_export_dir, export_views

    out = args.out or default_export_dir(args.store)
    count = export_views(args.store, out, args.image_id, args.force)
    print(f"{count} PNGs of {args.store} written to {out} (with index.jsonl)")


def _cmd_check_remote(args) -> None:
    from zerovlm.sharing import check_remote

    problems = check_remote(".", args.stages, args.remote, args.repair)
    for problem in problems:
        print(problem)
    if not problems:
        print("remote OK: every object of the checked outputs is present and hashes to its name")
        return
    if args.repair:
        print(
            f"{len(problems)} bad object(s); removed the corrupt ones and the manifests listing bad ones: now run "
            f"`dvc push` where the good data is cached (`dvc status -c` shows what it will upload)"
        )
    else:
        print(
            f"{len(problems)} bad object(s); `--repair` removes them (and their manifests) so that "
            f"`dvc push` uploads them again"
        )
    sys.exit(1)


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

    lock = commands.add_parser(
        "lock",
        help="pin the grid's hub models to commits in models.lock (`dvc repro` "
        "pins new ones itself); --update re-resolves",
    )
    lock.add_argument("names", nargs="*", help="`views` and/or grid VLM names (default: every model of the grid)")
    lock.add_argument(
        "--update",
        action="store_true",
        help="resolve the revisions again (e.g. main moved on) instead of keeping the pinned commits",
    )
    lock.add_argument("--params", type=Path, default=Path("params.yaml"))
    lock.add_argument("--lock", type=Path, default=Path("models.lock"))
    lock.add_argument(
        "--built-models",
        type=Path,
        default=Path("data/models"),
        help="the models stage's output folder (as in dvc.yaml)",
    )
    lock.set_defaults(func=_cmd_lock)

    show = commands.add_parser("show", help="print the results table (or one grid instance's metrics)")
    show.add_argument("--results", type=Path, default=Path("metrics/results.md"), help="the report stage's table")
    show.add_argument(
        "metrics", nargs="?", type=Path, help="instead: one instance's metrics, e.g. metrics/grid/<d>/<v>/summary.json"
    )
    show.set_defaults(func=_cmd_show)

    compare = commands.add_parser(
        "compare",
        help="is the change between two runs noise? Every cell's paired difference, interval and McNemar test",
    )
    compare.add_argument(
        "a", nargs="?", default="HEAD", help="a git revision, experiment or `workspace` (default: HEAD)"
    )
    compare.add_argument("b", nargs="?", default="workspace", help="the same (default: `workspace`, the working tree)")
    compare.add_argument("--json", action="store_true", help="print JSON (every cell) instead of the table")
    compare.set_defaults(func=_cmd_compare)

    export = commands.add_parser("export-views", help="write the PNGs of a shard store into a folder, to look at")
    export.add_argument("--store", type=Path, default=Path("data/views"), help="shard store (views or stitched)")
    export.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder to write (default: data/exports/<store name>); must be empty unless --force",
    )
    export.add_argument("--image-id", action="append", help="only the views of this image (repeatable)")
    export.add_argument("--force", action="store_true", help="write into a non-empty --out, overwriting same names")
    export.set_defaults(func=_cmd_export_views)

    check = commands.add_parser("check-remote", help="re-hash a DVC remote's objects of the pipeline outputs")
    check.add_argument("stages", nargs="*", help="stage names (default: every stage in dvc.lock)")
    check.add_argument("-r", "--remote", default=None, help="remote name (default: the default remote)")
    check.add_argument(
        "--repair",
        action="store_true",
        help="delete corrupt objects and the manifests listing bad objects, for a re-push",
    )
    check.set_defaults(func=_cmd_check_remote)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ZeroVLMError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # `zerovlm show | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        sys.exit(0)


if __name__ == "__main__":
    main()
