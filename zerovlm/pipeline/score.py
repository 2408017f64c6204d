"""Stage `score`: per-example verdicts and the metrics of one grid instance (dataset x VLM).

metrics/summary.json, per_relation.json, breakdown.json, provenance.json,
        quality_bins.json                                                 (zerovlm.scoring.metrics)
records                                                                   one verdict per prediction (JSONL)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zerovlm.config import ScoreConfig
from zerovlm.datasets.table import read_table
from zerovlm.io import ZeroVLMError, read_json, read_jsonl, write_json, write_jsonl
from zerovlm.scoring.metrics import score_instance
from zerovlm.stage import path_flag
from zerovlm.views.quality import recorded_qualities


@dataclass(frozen=True)
class Paths:
    prepared: Path = path_flag("the dataset's prepared folder (examples.jsonl, summary.json)")
    predictions: Path = path_flag("the infer stage's predictions folder of this dataset and VLM")
    metrics: Path = path_flag("folder for this instance's metrics files")
    records: Path = path_flag("per-example JSONL of verdicts")
    views_summary: Path | None = path_flag(
        "the views stage's run record (data/views_run.json); with --infer-run, it gives the overhead metrics",
        default=None,
    )
    infer_run: Path | None = path_flag("the infer stage's run record", default=None)
    views: Path | None = path_flag("the view store: its index's view quality gives the quality bins", default=None)


def run(
    paths: Paths, cfg: ScoreConfig, dataset: str | None = None, vlm: str | None = None, resolved: dict | None = None
) -> dict:
    """Score one grid instance; return its summary. `resolved`: the params sections that produced it."""
    examples = read_table(paths.prepared)
    predictions_file = paths.predictions / "predictions.jsonl"
    predictions = list(read_jsonl(predictions_file))
    infer_summary = read_json(paths.predictions / "summary.json", "run the infer stage first (`dvc repro`)")
    if not predictions:
        raise ZeroVLMError(f"{predictions_file}: no predictions to score; re-run infer (`dvc repro -f infer`)")
    prepare_summary_path = paths.prepared / "summary.json"
    prepare_summary = (
        read_json(prepare_summary_path, "re-run the prepare stage (`dvc repro`)")
        if prepare_summary_path.is_file()
        else {}
    )
    rerun = "re-run the stage that writes it (`dvc repro`)"
    views_summary = read_json(paths.views_summary, rerun) if paths.views_summary else None
    infer_run = read_json(paths.infer_run, rerun) if paths.infer_run else {}
    qualities = recorded_qualities(paths.views) if paths.views else None

    scores = score_instance(
        cfg,
        examples,
        predictions,
        infer_summary,
        prepare_summary,
        views_summary,
        infer_run,
        dataset,
        vlm,
        resolved,
        qualities,
    )
    write_json(paths.metrics / "summary.json", scores.summary)
    write_json(paths.metrics / "per_relation.json", scores.per_relation)
    write_json(paths.metrics / "breakdown.json", scores.breakdown)
    write_json(paths.metrics / "provenance.json", scores.provenance)
    write_json(paths.metrics / "quality_bins.json", scores.quality_bins)
    write_jsonl(paths.records, scores.records)
    return scores.summary
