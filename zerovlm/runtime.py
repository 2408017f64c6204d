"""Where a stage runs and with what: its device, its peak memory, and the identity of its model.

Shared by the views and infer stages, which load a hub model at the commit the check stage pinned, record
these facts and refuse to resume a partial run made with other weights or on another device.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar, get_args

import torch
from pydantic import BaseModel

from zerovlm.config import Dtype
from zerovlm.io import ZeroVLMError, files_hash, read_json

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
DTYPES = {name: getattr(torch, name) for name in get_args(Dtype)}  # the params' dtype names -> torch dtypes
CACHE_ENV = "ZEROVLM_CACHE"  # the project's cache folder (default ~/.cache/zerovlm), like HF_HOME for models


def resolve_device(name: str, section: str) -> torch.device:
    """`auto` is cuda when available, else cpu; `cuda` without a GPU names the params key to change."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ZeroVLMError(f"{section}.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def use_compile_cache() -> Path:
    """Point torch.compile's on-disk caches at `$ZEROVLM_CACHE/torch-compile` (default
    ~/.cache/zerovlm/torch-compile) and return that folder. Call before the process' first torch.compile.

    PyTorch's own caches (inductor's FX graph cache, the AOTAutograd cache and the Triton kernels under them,
    all on by default) otherwise live in /tmp/torchinductor_<user>, which a reboot or a fresh machine empties,
    so every `infer@` instance and every run compiled again. A hit skips compilation but runs the same
    kernels, so the folder never changes an output: it is no DVC dependency, and deleting it is safe (the next
    run compiles again and refills it). TORCHINDUCTOR_CACHE_DIR is overwritten: importing torch already sets it
    to the /tmp default, so a value of the user's cannot be told apart.
    """
    folder = Path(os.environ.get(CACHE_ENV, "~/.cache/zerovlm")).expanduser().absolute() / "torch-compile"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ZeroVLMError(
            f"torch.compile cache {folder}: cannot create it ({error.strerror}); set {CACHE_ENV} to a writable folder"
        ) from None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)  # read by inductor at each cache access
    log.info("torch.compile cache: %s (safe to delete)", folder)
    return folder


def compiled_graph_count() -> int:
    """Graphs torch.compile has traced in this process so far, those then loaded from the compile cache included (a
    call that meets a shape or mask its compiled graphs do not cover compiles another, within the call); torch
    exposes the count in its dynamo counters only."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@contextlib.contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """torch's CPU operators on one thread inside the block, the setting restored after.

    For host work too small to split: OpenMP's team waits at every parallel operator for its slowest thread, so
    when other threads of the process (PNG encoders, a loader) or other processes hold some of the cores, each
    such operator waits for a core (measured on a busy 2-core machine: a tiny model's matmul 0.07 ms on one
    thread, 10 ms on two).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
        raise ZeroVLMError(
            f"{source_path}: records model {recorded!r}, not {cfg.model!r}; run `dvc repro`, whose "
            f"check stage rewrites it from params.yaml"
        )
    return cfg.model_copy(update={"revision": source.get("commit")})


def pinned_part_revisions(source_path: Path) -> dict[str, str] | None:
    """For a model assembled from parts (a MiniGPT-4 manifest folder), part -> the commit the check stage
    recorded in `source_path` for each hub part (local parts have none); None for any other model. The
    registry's `load_backend(cfg, part_revisions)` loads each hub part at its commit."""
    parts = read_json(source_path, "run `dvc repro`: its check stage writes it").get("parts")
    if parts is None:
        return None
    return {part: identity["commit"] for part, identity in parts.items() if "commit" in identity}


def model_identity(model: str, revision: str | None = None) -> str | None:
    """A content hash of a local model folder (every file); for a hub id the revision it is loaded at
    (under `dvc repro` the pinned commit; None: main as it stands).

    A folder rebuilt with other weights (e.g. the tiny models after a `models` params change), or another
    commit of a hub model, must not let a partial run resume.
    """
    folder = Path(model)
    if not folder.is_dir():
        return revision
    return files_hash((p for p in folder.rglob("*") if p.is_file()), folder)


def code_identity(*paths: Path) -> str:
    """A content hash of zerovlm source files (a folder stands for its *.py files): a partial run written by
    other code is discarded, not finished by this code."""
    files = (f for path in paths for f in (path.glob("*.py") if path.is_dir() else [path]))
    return files_hash(files, Path(__file__).parent)


def resolve_device_dtype(device: str, dtype: str, section: str) -> tuple[torch.device, torch.dtype]:
    """(torch.device, torch.dtype) of `<section>.device` and `<section>.dtype`.

    On the CPU half precision becomes float32, with one warning per section and process: CPU float16 and
    bfloat16 kernels are several times slower, missing for some ops, and the offline tests compare at float32
    tolerance. The views and infer stages log the dtype they run with and record it (`dtype_used`).
    """
    resolved = resolve_device(device, section)
    torch_dtype = DTYPES[dtype]
    if resolved.type == "cpu" and torch_dtype != torch.float32:
        _warn_half_precision_on_cpu(section, dtype)
        torch_dtype = torch.float32
    return resolved, torch_dtype


@functools.cache
def _warn_half_precision_on_cpu(section: str, dtype: str) -> None:
    log.warning(
        "%s.dtype %s on the CPU: using float32 instead (set %s.dtype: float32, or run on a GPU)",
        section,
        dtype,
        section,
    )


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA out-of-memory errors (torch.OutOfMemoryError or its older RuntimeError text)."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "CUDA out of memory" in str(error)
    )


class BatchSize:
    """A batch size that halves on CUDA out-of-memory and stays halved for the rest of the run: the caller
    catches the error (`is_out_of_memory`), calls `halve()` and retries the failed batch with `value`."""

    def __init__(self, value: int, section: str, fix: str):
        if value < 1:
            raise ZeroVLMError(f"{section}.batch_size must be >= 1, got {value}")
        self.value, self.section, self.fix = value, section, fix
        self.backoffs = 0  # how many times it was halved (recorded in the run record)

    def halve(self) -> None:
        """Free the CUDA cache and halve; out of memory at batch size 1 is a ZeroVLMError naming the fix."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.value == 1:
            raise ZeroVLMError(f"{self.section}: CUDA out of memory with batch_size 1: {self.fix}")
        self.value //= 2
        self.backoffs += 1
        log.warning("%s: CUDA out of memory: batch_size halved to %d", self.section, self.value)
