"""Where a stage runs and with what: its device, its peak memory, and the identity of its model.

Shared by the views and infer stages, which load a hub model at the commit the check stage pinned, record
these facts and refuse to resume a partial run made with other weights or on another device.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import TypeVar

import torch

from pydantic import BaseModel

from zerovlm.io import ZeroVLMError, read_json, sha256_file, stable_hash

M = TypeVar("M", bound=BaseModel)


def resolve_device(name: str, section: str) -> torch.device:
    """`auto` is cuda when available, else cpu; `cuda` without a GPU names the params key to change."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ZeroVLMError(f"{section}.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def peak_memory_bytes() -> int:
    """This process' peak: CUDA memory allocated (summed over its GPUs) once CUDA is in use, else the
    process' maximum resident set size."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return sum(int(torch.cuda.max_memory_allocated(i)) for i in range(torch.cuda.device_count()))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def pin_revision(cfg: M, source_path: Path) -> M:
    """`cfg` (views or infer) with `revision` set to the commit the check stage recorded for cfg.model in
    `source_path` (None for a local folder), so that every file the stage fetches comes from that commit."""
    source = read_json(source_path, "run `dvc repro`: its check stage writes it")
    recorded = source.get("repo", source.get("path"))
    if recorded != cfg.model:
        raise ZeroVLMError(f"{source_path}: records model {recorded!r}, not {cfg.model!r}; run `dvc repro`, whose "
                           f"check stage rewrites it from params.yaml")
    return cfg.model_copy(update={"revision": source.get("commit")})


def model_identity(model: str, revision: str | None = None) -> str | None:
    """A content hash of a local model folder (every file); for a hub id the revision it is loaded at
    (under `dvc repro` the pinned commit; None: main as it stands).

    A folder rebuilt with other weights (e.g. the tiny models after a `models` params change), or another
    commit of a hub model, must not let a partial run resume.
    """
    folder = Path(model)
    if not folder.is_dir():
        return revision
    return _files_hash((p for p in folder.rglob("*") if p.is_file()), folder)


def code_identity(*paths: Path) -> str:
    """A content hash of zerovlm source files (a folder stands for its *.py files): a partial run written by
    other code is discarded, not finished by this code."""
    files = (f for path in paths for f in (path.glob("*.py") if path.is_dir() else [path]))
    return _files_hash(files, Path(__file__).parent)


def _files_hash(files, root: Path) -> str:
    """One hash of the files' names (relative to root) and contents, in name order."""
    return stable_hash([(p.relative_to(root).as_posix(), sha256_file(p)) for p in sorted(files)])
