"""Stage `pool`: the experiment grid's shared image pool, every dataset's unique images in one prepared-style
folder.

Views are a function of (image bytes, view, Zero123 settings) only, so the views stage runs once over
this pool instead of once per dataset: an image that two datasets share (the VSR random and zero-shot
test sets share 272 captions' images) is synthesised once, and every dataset and VLM reuses its views.

    out/examples.jsonl  one example per unique image (the first that uses it; id prefixed by its grid
                        dataset), which is all the views stage reads
    out/images/         the images, hard-linked from the prepared folders where possible
    out/summary.json    images per dataset and how many are shared
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from zerovlm.datasets.table import read_table, write_table
from zerovlm.io import ZeroVLMError, atomic_dir, safe_join, write_json
from zerovlm.stage import path_flag


@dataclass(frozen=True)
class Paths:
    prepared: Path = path_flag("folder of the prepared datasets (one folder per grid dataset)")
    out: Path = path_flag("pooled prepared-style folder")


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def run(paths: Paths, datasets: list[str]) -> dict:
    """Write the pool of `datasets` (folders under paths.prepared) to paths.out; return its summary."""
    prepared_root, out_dir = paths.prepared, paths.out
    first: dict[str, tuple] = {}  # image_id -> (dataset, example)
    per_dataset: dict[str, int] = {}
    for name in datasets:
        folder = prepared_root / name
        if not (folder / "examples.jsonl").is_file():
            raise ZeroVLMError(
                f"{folder}/examples.jsonl: missing; run `dvc repro prepare@{name}` (grid.datasets lists {name!r})"
            )
        images = {}
        for example in read_table(folder):
            images.setdefault(example.image_id, example)
            first.setdefault(example.image_id, (name, example))
        per_dataset[name] = len(images)
    with atomic_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        pooled = []
        for name, example in first.values():
            source = safe_join(prepared_root / name, example.image_file)
            _link_or_copy(source, safe_join(tmp, example.image_file))
            pooled.append(dataclasses.replace(example, example_id=f"{name}/{example.example_id}"))
        write_table(tmp, pooled)
        summary = {
            "datasets": list(datasets),
            "images": len(first),
            "images_per_dataset": per_dataset,
            "images_shared": sum(per_dataset.values()) - len(first),
        }
        write_json(tmp / "summary.json", summary)
    return summary
