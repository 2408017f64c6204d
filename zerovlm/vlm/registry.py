"""Backends by name: `load_backend(cfg)` builds the one named by `cfg.backend`.

A backend module is imported only when chosen (torch and transformers load lazily). InferConfig checks
the name against BACKENDS when params are validated (a wrong one lists the closest names).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from zerovlm.io import ZeroVLMError

if TYPE_CHECKING:  # config validates backend names against BACKENDS: keep this module light
    from zerovlm.config import InferConfig
    from zerovlm.vlm.base import VisionLanguageModel

# name -> "module:function" taking an InferConfig and returning a VisionLanguageModel
BACKENDS: dict[str, str] = {
    "llava": "zerovlm.vlm.llava:load_llava",  # LLaVA-1.5 (llava-hf layout), hub id or folder
    "minigpt4": "zerovlm.vlm.minigpt4:load_minigpt4",  # MiniGPT-4 Vicuna v0, assembled from parts
    "hf_auto": "zerovlm.vlm.hf_auto:load_hf_auto",  # any AutoModelForImageTextToText with a chat template
}


# backends assembled from parts, whose loaders also take `part_revisions`: part -> the commit the check stage
# pinned for that hub part (zerovlm/inputs.py records them for a model folder holding a minigpt4.json)
ASSEMBLED = ("minigpt4",)


def load_backend(cfg: InferConfig, part_revisions: dict[str, str] | None = None) -> VisionLanguageModel:
    """Build the backend named by cfg.backend (a name InferConfig checked) from cfg.model (hub id or folder);
    `part_revisions` (a backend in ASSEMBLED only; None: unpinned) loads each hub part at its pinned commit."""
    if part_revisions is not None and cfg.backend not in ASSEMBLED:
        raise ZeroVLMError(
            f"{cfg.model}: a model assembled from parts (its folder holds a minigpt4.json), but "
            f"backend {cfg.backend!r} loads one model; set the backend to one of {list(ASSEMBLED)}"
        )
    module_name, function_name = BACKENDS[cfg.backend].split(":")
    loader = getattr(importlib.import_module(module_name), function_name)
    return loader(cfg) if part_revisions is None else loader(cfg, part_revisions=part_revisions)
