"""Stage `models`: tiny, randomly initialised, seeded models in the real hub layouts, for the offline demo and
tests.

    out/zero123-tiny/    Zero-1-to-3 in the diffusers layout (zerovlm.views.tiny)
    out/llava-1.5-tiny/  LLaVA-1.5 in the llava-hf layout (zerovlm.vlm.tiny)

They exercise the exact `from_pretrained` code paths of the real checkpoints. Their answers are at
chance level: they prove the pipeline runs, never that the method works.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zerovlm.config import ModelsConfig
from zerovlm.io import atomic_dir
from zerovlm.stage import path_flag
from zerovlm.views.tiny import build_tiny_zero123
from zerovlm.vlm.tiny import build_tiny_llava

TINY_ZERO123 = "zero123-tiny"
TINY_LLAVA = "llava-1.5-tiny"


@dataclass(frozen=True)
class Paths:
    out: Path = path_flag("folder for the model folders")


def run(paths: Paths, cfg: ModelsConfig) -> None:
    with atomic_dir(paths.out) as tmp:
        build_tiny_zero123(tmp / TINY_ZERO123, seed=cfg.tiny_seed)
        build_tiny_llava(tmp / TINY_LLAVA, seed=cfg.tiny_seed)
