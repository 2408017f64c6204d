"""Tiny, randomly initialised, seeded models in the real hub layouts, for the offline demo and tests.

They exercise the exact `from_pretrained` code paths of the real checkpoints. Their answers are at
chance level: they prove the pipeline runs, never that the method works.
"""

from __future__ import annotations

from pathlib import Path

from zerovlm.io import atomic_dir
from zerovlm.views.tiny import build_tiny_zero123
from zerovlm.vlm.tiny import build_tiny_llava

TINY_ZERO123 = "zero123-tiny"
TINY_LLAVA = "llava-1.5-tiny"


def build_tiny_models(out_dir: str | Path, seed: int) -> None:
    with atomic_dir(out_dir) as tmp:
        build_tiny_zero123(tmp / TINY_ZERO123, seed=seed)
        build_tiny_llava(tmp / TINY_LLAVA, seed=seed)
