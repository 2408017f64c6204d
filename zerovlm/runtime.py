"""Where a stage runs and with what: its device, its peak memory, and the identity of a local model.

Shared by the views and infer stages, which record these facts and refuse to resume a partial run
made with other weights or on another device.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch

from zerovlm.io import ZeroVLMError, sha256_file, stable_hash


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


def model_identity(model: str) -> str | None:
    """A content hash of a local model folder (every file), None for a hub id.

    A folder rebuilt with other weights (e.g. the tiny models after a `models` params change) must not
    let a partial run resume. A hub id is taken to name its weights (to pin a revision, download it to a
    folder and give the folder).
    """
    folder = Path(model)
    if not folder.is_dir():
        return None
    return _files_hash((p for p in folder.rglob("*") if p.is_file()), folder)


def code_identity(*paths: Path) -> str:
    """A content hash of zerovlm source files (a folder stands for its *.py files): a partial run written by
    other code is discarded, not finished by this code."""
    files = (f for path in paths for f in (path.glob("*.py") if path.is_dir() else [path]))
    return _files_hash(files, Path(__file__).parent)


def _files_hash(files, root: Path) -> str:
    """One hash of the files' names (relative to root) and contents, in name order."""
    return stable_hash([(p.relative_to(root).as_posix(), sha256_file(p)) for p in sorted(files)])
