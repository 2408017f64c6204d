"""Backends by name: `load_backend(cfg)` builds the one named by `cfg.backend`.

A backend module is imported only when chosen (torch and transformers load lazily). A wrong name is an
error listing the closest registered names.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable

from zerovlm.config import InferConfig
from zerovlm.io import ZeroVLMError
from zerovlm.vlm.base import VisionLanguageModel

# name -> "module:function" taking an InferConfig and returning a VisionLanguageModel
BACKENDS: dict[str, str] = {
    "llava": "zerovlm.vlm.llava:load_llava",            # LLaVA-1.5 (llava-hf layout), hub id or folder
    "minigpt4": "zerovlm.vlm.minigpt4:load_minigpt4",   # MiniGPT-4 Vicuna v0, assembled from parts
    "hf_auto": "zerovlm.vlm.hf_auto:load_hf_auto",      # any AutoModelForImageTextToText with a chat template
}


def backend_names() -> list[str]:
    return sorted(BACKENDS)


def _loader(name: str) -> Callable[[InferConfig], VisionLanguageModel]:
    if name not in BACKENDS:
        close = difflib.get_close_matches(name, BACKENDS, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ZeroVLMError(f"infer.backend: unknown backend {name!r}.{hint} Valid: {', '.join(backend_names())}")
    module_name, function_name = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), function_name)


def load_backend(cfg: InferConfig) -> VisionLanguageModel:
    """Build the backend named by cfg.backend from cfg.model (a hub id or a local folder)."""
    return _loader(cfg.backend)(cfg)
