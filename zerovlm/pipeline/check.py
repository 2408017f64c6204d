"""Stage `check`: validate params.yaml, then record what each stage reads from outside the pipeline.

out/<consumer>.json  one record per consumer stage (models, prepare-<dataset>, views, vlm-<name>): what it
                     reads from outside the repo (zerovlm/inputs.py describes each record)
lock                 models.lock, with an entry added for each hub revision not pinned yet
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zerovlm.config import load_params, validate_all
from zerovlm.inputs import dataset_inputs, grid_models, model_source, read_lock, write_lock
from zerovlm.io import atomic_dir, write_json
from zerovlm.stage import path_flag


@dataclass(frozen=True)
class Paths:
    out: Path = path_flag("folder of the per-stage input records")
    lock: Path = path_flag("models.lock: hub revisions pinned to commits")
    built_models: Path = path_flag("the models stage's output folder (its models are tracked by DVC already)")
    params: Path = path_flag("the params to validate", default=Path("params.yaml"))


def run(paths: Paths) -> None:
    """Validate every params section, then write the records and any new models.lock entries."""
    sections = validate_all(paths.params)
    params = load_params(paths.params)
    lock = read_lock(paths.lock)
    before = dict(lock)
    records = {
        "models.json": {"inputs": "none besides the models params and code"},
        **{f"prepare-{name}.json": dataset_inputs(params, name) for name in sections["grid"].datasets},
    }
    for name, (key, model, revision) in grid_models(params).items():
        records["views.json" if key == "views" else f"vlm-{name}.json"] = model_source(
            key, model, revision, lock, paths.built_models
        )
    if lock != before or not paths.lock.is_file():
        write_lock(paths.lock, lock)
    with atomic_dir(paths.out) as tmp:
        for name, record in records.items():
            write_json(tmp / name, record)
