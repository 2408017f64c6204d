"""A weights pickle that torch refuses to unpickle, as one error line naming the file, the reason and the fix.

Pickled weights (.bin, .pth) are only ever read through `torch.load(weights_only=True)`, by this project
or by transformers and diffusers, which unpickles tensors and plain containers and refuses anything else
(a class, or a function such as os.system that a crafted pickle would call) before running any of it.
The refusal is torch's `pickle.UnpicklingError`: transformers lets it through as it is, diffusers wraps it
in an OSError that keeps neither the reason nor, in the message, the cause. `refused_pickles` finds it in
either chain and names the file from torch.load's own argument.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import traceback
from collections.abc import Iterator
from pathlib import Path

from zerovlm.io import ZeroVLMError

FIX = "nothing in it was run; use the model's .safetensors weights, or a clean copy downloaded from its source"


def _chain(error: BaseException) -> list[BaseException]:
    """The error and those raised before it, outermost first (a suppressed context too: torch raises its
    refusal `from None`, and its reason is the error it suppressed)."""
    chain: list[BaseException] = []
    while error is not None and all(error is not seen for seen in chain):
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _loaded_file(error: BaseException) -> str | None:
    """The file torch.load was reading where `error` was raised (its argument `f`), if it was a path."""
    for frame, _ in traceback.walk_tb(error.__traceback__):
        code = frame.f_code
        if code.co_name == "load" and Path(code.co_filename).match("torch/serialization.py"):
            file = frame.f_locals.get("f")
            return os.fspath(file) if isinstance(file, (str, os.PathLike)) else getattr(file, "name", None)
    return None


def _reason(refusal: pickle.UnpicklingError) -> str:
    """The first sentence of torch's reason, e.g. "Trying to load unsupported GLOBAL posix.system whose
    module posix is blocked" (the rest suggests loading with weights_only=False, which this project never does)."""
    lines = str(refusal).strip().splitlines()
    return re.split(r"\.\s", lines[0])[0].rstrip(".") if lines else type(refusal).__name__


@contextlib.contextmanager
def refused_pickles(source: str | os.PathLike) -> Iterator[None]:
    """Inside, torch's refusal to unpickle a weights file becomes a ZeroVLMError naming that file (or
    `source`, what is being loaded, where the file cannot be told), torch's reason and the fix."""
    try:
        yield
    except ZeroVLMError:
        raise
    except Exception as error:
        chain = _chain(error)
        refusals = [e for e in chain if isinstance(e, pickle.UnpicklingError)]
        if not refusals:
            raise
        path = next((file for file in map(_loaded_file, chain) if file), None) or os.fspath(source)
        raise ZeroVLMError(
            f"{path}: refused to unpickle ({_reason(refusals[-1])}): pickled weights are read "
            f"as tensors only (torch.load weights_only=True); {FIX}"
        ) from None
