"""What every stage entry point shares: its path flags, logging, and turning user-facing errors into one line.

A stage's files and folders are the fields of its `Paths` dataclass (zerovlm/pipeline/<stage>.py); each field
is the command-line flag `--<field-name>` (dashes for underscores) that dvc.yaml's cmd passes, so the script
cannot name a path its Paths lacks (tests/test_dvc_deps.py checks the fields against dvc.yaml's deps and outs).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from zerovlm.io import ZeroVLMError

P = TypeVar("P")

KEPT = (
    "this stage published no output (views and infer keep their finished work in a partial store beside it, "
    "and a re-run resumes from there)"
)
# Failures of the machine rather than of the code, each with its fix (the folder is the named file's); any
# other OSError is a bug and keeps its traceback.
_ACCESS_FIX = "let this user read and write there (e.g. `chmod u+w {folder}`) and re-run"
STORAGE_FIXES = {
    errno.ENOSPC: "free space on that disk (or move the project to a larger one) and re-run",
    errno.EDQUOT: "free space within your disk quota and re-run",
    errno.EROFS: "that file system is mounted read-only: run the pipeline where {folder} is writable",
    errno.EACCES: _ACCESS_FIX,
    errno.EPERM: _ACCESS_FIX,
}


def _storage_error_line(error: OSError) -> str | None:
    """The one line for an OSError a user can remove (a full disk, a read-only folder), else None."""
    fix = STORAGE_FIXES.get(error.errno)
    if fix is None:
        return None
    name = os.fsdecode(error.filename) if isinstance(error.filename, (str, bytes)) else None
    folder = Path(name).parent if name else "data/"  # stages write under data/ (and metrics/)
    return f"error: {name or 'an output file'}: {error.strerror}; {fix.format(folder=folder)}; {KEPT}"


def run_stage(main: Callable[[], object]) -> None:
    """Run a stage's main(); a ZeroVLMError becomes `error: ...` on stderr and exit status 2, and so does an
    OSError of a full disk or a read-only folder (naming the file); Ctrl-C is one line saying that finished
    work is kept (exit status 130, as the shell reports an interrupt)."""
    logging.basicConfig(
        level=os.environ.get("ZEROVLM_LOG", "INFO"), format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        main()
    except ZeroVLMError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        line = _storage_error_line(error)
        if line is None:
            raise
        print(line, file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"interrupted: {KEPT}", file=sys.stderr)
        sys.exit(130)


def path_flag(help: str, default: Path | None | Any = dataclasses.MISSING) -> Any:
    """A field of a stage's `Paths`: a required flag, or an optional one when it has a default."""
    return dataclasses.field(default=default, metadata={"help": help})


def run_record_flag(contents: str) -> Any:
    """The optional `--run-record` of a model stage: a JSON file of the run (kept out of the stage's outputs,
    so timings never change what DVC caches)."""
    return path_flag(f"JSON file of this run's {contents} (kept out of the outputs)", default=None)


def model_source_flag(record: str, without: str) -> Any:
    """The optional `--model-source` of a model stage: the check stage's record `record` of the model it loads."""
    return path_flag(
        f"the check stage's record of the model ({record}): a hub id is loaded at the commit it pins "
        f"(without it: {without})",
        default=None,
    )


GRID_NAMES = {
    "dataset": "a grid dataset: `datasets.<name>` merged over `data`",
    "vlm": "a grid VLM: `vlms.<name>` merged over `infer`",
}


def stage_arguments(
    description: str, paths: type[P], grid: dict[str, bool] | None = None, params: bool = True
) -> tuple[argparse.Namespace, P]:
    """A stage script's command line: `--params` (unless `params` is False), the grid names in `grid` (name ->
    required), and one flag per field of `paths` (its Paths dataclass), e.g. `--run-record` for `run_record`.
    Returns the parsed flags and the `paths` instance they give."""
    parser = argparse.ArgumentParser(description=description)
    if params:
        parser.add_argument("--params", default="params.yaml")
    for name, required in (grid or {}).items():
        parser.add_argument(f"--{name}", required=required, help=GRID_NAMES[name])
    for field in dataclasses.fields(paths):
        required = field.default is dataclasses.MISSING
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            type=Path,
            required=required,
            default=None if required else field.default,
            help=field.metadata["help"],
        )
    args = parser.parse_args()
    return args, paths(**{field.name: getattr(args, field.name) for field in dataclasses.fields(paths)})
