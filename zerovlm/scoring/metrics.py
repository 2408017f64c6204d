"""Per-example verdicts and the metrics of one grid instance (dataset x VLM), from its predictions.

An answer that cannot be parsed counts as wrong and is counted (`n_unparseable`); it is never replaced
by a guess. Accuracy is over all examples of a group (`n_total`), so an unparseable answer lowers
it instead of silently shrinking the denominator. Examples the prepare stage skipped (`data.skip_bad`)
are not in the table at all: they are counted apart (`counts.n_skipped`), outside every accuracy.

Every (task, configuration, prompt mode) cell is compared with the origin baseline (the plain VLM on
the original image, no view prompt) of the same dataset, VLM and task on the same examples: difference
of accuracy, paired bootstrap 95% interval, exact McNemar p-value (see significance.py).

What `score_instance` returns, and the score stage (zerovlm/pipeline/score.py) writes to its metrics folder:
    summary.json      counts, overhead, and per task / configuration / prompt mode the metrics
    per_relation.json accuracy and count per relation
    breakdown.json    confusion counts and accuracy by number of objects (read by the report stage)
    quality_bins.json accuracy and difference to the baseline by quantile bin of view quality (quality_bins.py)
    provenance.json   the resolved configuration and fingerprints of what produced these numbers
and the per-example verdicts (records.jsonl).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd

from zerovlm.config import ScoreConfig
from zerovlm.datasets.table import Example
from zerovlm.io import ZeroVLMError
from zerovlm.scoring import answers as parse
from zerovlm.scoring.quality_bins import quality_bins, view_quality
from zerovlm.scoring.significance import (
    bootstrap_means,
    discordant_counts,
    holm,
    mcnemar_p,
    paired_bootstrap_ci,
    percentile_interval,
)
from zerovlm.view_configurations import BASELINE_CONFIGURATION

log = logging.getLogger(__name__)

BASELINE = (BASELINE_CONFIGURATION, "without_view_prompt")
PROMPT_MODES = ("with_view_prompt", "without_view_prompt")
UNPARSED = "(unparsed)"
CELL = ["task", "configuration", "prompt_mode"]  # the verdicts behind one metrics entry of summary.json


def predicted_index(record: dict, example: Example, answer_mode: str) -> int | None:
    """The option the model chose, or None when its answer cannot be read."""
    if "option_logprobs" in record:
        scores = record["option_logprobs"]
        if len(scores) != len(example.options):
            return None
        return parse.best_option(scores)
    text = record.get("output_text", "")
    answers = record["answers"]
    if example.task == "true_false":
        if answer_mode == "paper":
            return 0 if parse.paper_contains_yes(text) else 1  # the authors' rule: no "yes" means "no"
        verdict = parse.parse_true_false(text) if answers[0].lower() == "true" else parse.parse_yes_no(text)
        return None if verdict is None else (0 if verdict else 1)
    letter = parse.parse_option_letter(text, len(example.options))
    return letter if letter is not None else parse.parse_option_text(text, list(example.options))


def option_relation(option: str, relations: list[str]) -> str:
    """The relation a multiple-choice caption states: the longest known relation in it as whole words."""
    text = f" {' '.join(re.findall(r'[a-z]+', option.lower()))} "
    for relation in sorted(relations, key=len, reverse=True):
        if f" {relation} " in text:
            return relation
    return "other"


def _labels(example: Example, choice: int | None, relations: list[str]) -> tuple[str, str]:
    """(actual, predicted) labels for confusion matrices: true/false, or the relation a caption states."""
    if example.task == "true_false":

        def name(index):
            return "true" if index == 0 else "false"

        return name(example.answer_index), UNPARSED if choice is None else name(choice)
    actual = example.relation
    return actual, UNPARSED if choice is None else option_relation(example.options[choice], relations)


def score_records(
    examples: list[Example],
    predictions: list[dict],
    answer_mode: str,
    dataset: str | None = None,
    vlm: str | None = None,
    qualities: dict[str, dict[str, dict]] | None = None,
) -> list[dict]:
    """One verdict per prediction. `dataset`/`vlm`: grid names (default: the example's dataset); `qualities`:
    the view store's quality records (image id -> view -> record), which give each verdict's view quality."""
    by_id = {e.example_id: e for e in examples}
    relations = sorted({e.relation for e in examples})
    scored = []
    for record in predictions:
        example = by_id.get(record["example_id"])
        if example is None:
            raise ZeroVLMError(
                f"prediction {record['record_id']} names an example not in the prepared table; "
                f"re-run infer (`dvc repro infer`)"
            )
        choice = predicted_index(record, example, answer_mode)
        actual, predicted = _labels(example, choice, relations)
        scored.append(
            {
                "record_id": record["record_id"],
                "example_id": example.example_id,
                "dataset": dataset or example.dataset,
                "vlm": vlm,
                "source_dataset": example.dataset,
                "task": example.task,
                "relation": example.relation,
                "num_objects": example.num_objects,
                "group_id": example.group_id,
                "pair_id": example.pair_id,
                "image_id": example.image_id,
                "configuration": record["configuration"],
                "prompt_mode": "with_view_prompt" if record["with_view_prompt"] else "without_view_prompt",
                "predicted_index": choice,
                "answer_index": example.answer_index,
                "actual_label": actual,
                "predicted_label": predicted,
                "parsed": choice is not None,
                "correct": choice == example.answer_index,
                "chance": 1.0 / len(example.options),
                "view_quality": None
                if qualities is None
                else view_quality(record["configuration"], example.image_id, qualities),
            }
        )
    return scored


def bootstrap_ci(correct: np.ndarray, samples: int, seed: int, clusters: list[str] | None = None) -> list[float] | None:
    """Percentile bootstrap 95% interval of the mean of a 0/1 vector, resampling values or, with
    `clusters`, whole clusters (None when disabled)."""
    if samples == 0 or len(correct) == 0:
        return None
    return percentile_interval(bootstrap_means(correct, samples, seed, clusters))


def cluster_ids(rows: pd.DataFrame, cfg: ScoreConfig) -> list[str] | None:
    """The independent unit of the intervals and tests per row: None (each example), or the set (group_id: a
    What'sUp set, a table's `set`) where there is one, else the opposite-relation pair (a table's `pair` given
    without a set), else the image (VSR's captions of one image)."""
    if cfg.sampling_unit == "example":
        return None
    return rows["group_id"].fillna(rows["pair_id"]).fillna(rows["image_id"]).tolist()


def _all_correct_rate(rows: pd.DataFrame, key: str) -> float | None:
    """What'sUp pair / set accuracy: the share of groups whose every member is right.

    None when no group has two members (e.g. a synthetic scene's one question of a task)."""
    groups = rows.dropna(subset=[key]).groupby(key)["correct"]
    if not (groups.size() > 1).any():
        return None
    return round(float(groups.all().mean()), 4)


def summarise(rows: pd.DataFrame, cfg: ScoreConfig) -> dict:
    correct = rows["correct"].to_numpy(dtype=float)
    summary = {
        "accuracy": round(float(correct.mean()), 4),
        "accuracy_ci95": bootstrap_ci(correct, cfg.bootstrap_samples, cfg.seed, cluster_ids(rows, cfg)),
        "chance": round(float(rows["chance"].mean()), 4),
        "n_total": len(rows),
        "n_evaluated": int(rows["parsed"].sum()),
        "n_unparseable": int((~rows["parsed"]).sum()),
    }
    for name, key in (("pair_accuracy", "pair_id"), ("set_accuracy", "group_id")):
        rate = _all_correct_rate(rows, key)
        if rate is not None:
            summary[name] = rate
    return summary


def compare_with_baseline(cells: dict[tuple[str, str], pd.DataFrame], cfg: ScoreConfig) -> dict[tuple[str, str], dict]:
    """Difference, interval and McNemar test of every cell of one task against BASELINE.

    `cells`: (configuration, prompt mode) -> its verdicts. The origin configuration is not compared with
    itself (with or without view prompt its input is the same). Empty when the baseline is absent.
    """
    if BASELINE not in cells:
        return {}
    baseline = dict(zip(cells[BASELINE]["example_id"], cells[BASELINE]["correct"]))
    results: dict[tuple[str, str], dict] = {}
    for key, rows in cells.items():
        ids = rows["example_id"].tolist()
        if len(set(ids)) != len(ids) or set(ids) != set(baseline):  # paired tests need a 1:1 pairing
            raise ZeroVLMError(
                f"{key}: not the baseline's examples once each ({len(ids) - len(set(ids))} "
                f"answered twice, {len(set(baseline) - set(ids))} missing, "
                f"{len(set(ids) - set(baseline))} extra); re-run infer (`dvc repro -f infer`)"
            )
        if key[0] == BASELINE[0]:
            continue
        treatment = rows["correct"].to_numpy(dtype=float)
        reference = np.array([baseline[i] for i in ids], dtype=float)
        clusters = cluster_ids(rows, cfg)
        b, c = discordant_counts(reference.astype(bool), treatment.astype(bool))
        p = mcnemar_p(reference, treatment, clusters)
        results[key] = {
            "delta_vs_origin": round(float(treatment.mean() - reference.mean()), 4),
            "delta_ci95": paired_bootstrap_ci(reference, treatment, cfg.bootstrap_samples, cfg.seed, clusters),
            "mcnemar_b": b,
            "mcnemar_c": c,
            "mcnemar_p": p,
        }
    keys = sorted(results)
    adjusted = (
        holm([results[k]["mcnemar_p"] for k in keys])
        if cfg.p_adjust == "holm"
        else [results[k]["mcnemar_p"] for k in keys]
    )
    for key, p in zip(keys, adjusted):
        results[key]["mcnemar_p_adjusted"] = p
    return results


def overhead(examples: list[Example], views_summary: dict, infer_summary: dict, infer_run: dict) -> dict:
    """Seconds per example of view synthesis and of inference, and each stage's peak memory.

    Views are synthesised once for the union of the grid's images: this dataset's share is its unique
    images times the views per image times the seconds per generated view.
    """
    n_examples, n_images = len(examples), len({e.image_id for e in examples})
    generated = views_summary.get("views_generated") or 0
    per_view = views_summary["seconds_generating"] / generated if generated else None
    views_per_image = views_summary["views"] / views_summary["images"] if views_summary.get("images") else 0
    answered = infer_summary["requests"] - infer_run.get("resumed", 0)
    answering = infer_run["seconds"] - infer_run.get("seconds_loading", 0.0)
    per_request = answering / answered if answered else None

    def rounded(value):
        return None if value is None else round(value, 6)

    return {
        "views_seconds_per_view": rounded(per_view),
        "views_seconds_per_example": rounded(
            per_view * views_per_image * n_images / n_examples if per_view is not None else None
        ),
        "views_peak_memory_bytes": views_summary.get("peak_memory_bytes"),
        "infer_seconds_loading": infer_run.get("seconds_loading"),
        "infer_seconds_per_request": rounded(per_request),
        "infer_seconds_per_example": rounded(
            per_request * infer_summary["requests"] / n_examples if per_request is not None else None
        ),
        "infer_peak_memory_bytes": infer_run.get("peak_memory_bytes"),
    }


def _nest(flat: dict[tuple, dict]) -> dict:
    nested: dict = {}
    for keys, value in sorted(flat.items()):
        node = nested
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return nested


def breakdown(rows: pd.DataFrame) -> dict:
    """Confusion counts ("actual|predicted") and [correct, total] per number of objects, per cell."""
    confusion = rows.groupby([*CELL, rows["actual_label"] + "|" + rows["predicted_label"]]).size()
    counted = rows.dropna(subset=["num_objects"])
    objects = counted.groupby([*CELL, counted["num_objects"].astype(int).astype(str)])["correct"].agg(["sum", "size"])
    return {
        "confusion": _nest({key: int(count) for key, count in confusion.items()}),
        "objects": _nest({key: [int(right), int(total)] for key, right, total in objects.itertuples()}),
    }


def rendered_prompt_hashes(predictions: list[dict]) -> dict:
    """sha256 (16 hex) of the sorted prompts the model saw, per configuration and prompt mode."""
    prompts: dict[tuple, list[str]] = defaultdict(list)
    for record in predictions:
        mode = "with_view_prompt" if record["with_view_prompt"] else "without_view_prompt"
        prompts[(record["configuration"], mode)].append(record.get("rendered_prompt", ""))
    return _nest(
        {key: hashlib.sha256("\n".join(sorted(texts)).encode()).hexdigest()[:16] for key, texts in prompts.items()}
    )


@dataclass(frozen=True)
class InstanceScores:
    """What the score stage writes for one grid instance (see the module docstring)."""

    summary: dict
    per_relation: dict
    breakdown: dict
    provenance: dict
    quality_bins: dict
    records: list[dict]  # one verdict per prediction


def score_instance(
    cfg: ScoreConfig,
    examples: list[Example],
    predictions: list[dict],
    infer_summary: dict,
    prepare_summary: dict,
    views_summary: dict | None = None,
    infer_run: dict | None = None,
    dataset: str | None = None,
    vlm: str | None = None,
    resolved: dict | None = None,
    qualities: dict[str, dict[str, dict]] | None = None,
) -> InstanceScores:
    """Score one grid instance. `resolved`: the configuration sections that produced it (provenance).
    The views and infer run records (timings, peak memory) give the overhead metrics when both are given;
    the view store's quality records (`qualities`, see score_records) the quality bins."""
    infer_run = infer_run or {}
    rows = score_records(examples, predictions, infer_summary["answer_mode"], dataset, vlm, qualities)

    verdicts = pd.DataFrame(rows)
    metrics = {key: summarise(cell, cfg) for key, cell in verdicts.groupby(CELL)}
    for task, task_verdicts in verdicts.groupby("task"):
        task_cells = dict(iter(task_verdicts.groupby(CELL[1:])))
        if BASELINE not in task_cells:
            log.warning(
                "score %s: no %s cell for %s, so nothing is compared with the baseline; keep origin "
                "in stitch.configurations and false in infer.view_prompt",
                vlm,
                BASELINE,
                task,
            )
        for (configuration, mode), comparison in compare_with_baseline(task_cells, cfg).items():
            metrics[(task, configuration, mode)].update(comparison)

    summary = {
        "counts": {
            "n_examples": len(examples),
            "n_images": len({e.image_id for e in examples}),
            "n_skipped": prepare_summary.get("skipped", {}).get("count", 0),
            "n_requests": infer_summary["requests"],
            "n_requests_not_evaluated": infer_summary.get("requests_not_evaluated", 0),
        },
        # configurations the model was not given (more images than it takes): absent, not 0%
        "not_evaluated": infer_summary.get("not_evaluated", {}),
        **_nest(metrics),
    }
    if views_summary is not None and infer_run:
        summary["overhead"] = overhead(examples, views_summary, infer_summary, infer_run)
    relations = verdicts.groupby([*CELL, "relation"])["correct"].agg(["mean", "size"])
    per_relation = _nest(
        {key: {"accuracy": round(float(mean), 4), "n_total": int(size)} for key, mean, size in relations.itertuples()}
    )
    provenance = {
        "dataset": dataset,
        "vlm": vlm,
        "params": resolved or {},
        "prepare": {k: prepare_summary.get(k) for k in ("source", "split", "selection", "source_checksums")},
        "views": {
            k: (views_summary or {}).get(k)
            for k in ("fingerprint", "settings", "device", "dtype", "batch_size", "batch_size_final", "model_revision")
        },
        "infer": {
            **{k: infer_summary.get(k) for k in ("backend", "model", "answer_mode", "fingerprint")},
            **{k: infer_run.get(k) for k in ("device", "versions", "model_revision")},
        },
        "prompts_sha256": infer_summary.get("prompts_sha256"),
        "rendered_prompts_sha256": rendered_prompt_hashes(predictions),
    }
    bins = quality_bins(verdicts, cfg.quality_bins, BASELINE)
    return InstanceScores(summary, per_relation, breakdown(verdicts), provenance, bins, rows)
