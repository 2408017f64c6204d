"""Backends by name: `load_backend(cfg)` builds the one named by `cfg.backend`.

A backend module is imported only when chosen (torch and transformers load lazily). InferConfig checks
the name against BACKENDS when params are validated (a wrong one lists the closest names).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config validates backend names against BACKENDS: keep this module light
    from zerovlm.config import InferConfig
    from zerovlm.vlm.base import VisionLanguageModel

# name -> "module:function" taking an InferConfig and returning a VisionLanguageModel
BACKENDS: dict[str, str] = {
    "llava": "zerovlm.vlm.llava:load_llava",            # LLaVA-1.5 (llava-hf layout), hub id or folder
    "minigpt4": "zerovlm.vlm.minigpt4:load_minigpt4",   # MiniGPT-4 Vicuna v0, assembled from parts
    "hf_auto": "zerovlm.vlm.hf_auto:load_hf_auto",      # any AutoModelForImageTextToText with a chat template
}


def load_backend(cfg: InferConfig) -> VisionLanguageModel:
    """Build the backend named by cfg.backend (a name InferConfig checked) from cfg.model (hub id or folder)."""
    module_name, function_name = BACKENDS[cfg.backend].split(":")
    return getattr(importlib.import_module(module_name), function_name)(cfg)
