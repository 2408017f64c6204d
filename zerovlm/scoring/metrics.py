"""The score stage: turn recorded answers into per-example verdicts and accuracy metrics.

An answer that cannot be parsed counts as wrong and is counted (`n_unparseable`); it is never replaced
by a guess. Accuracy is over all examples of a group (`n_total`), so a skipped or unparseable
example lowers it instead of silently shrinking the denominator.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from zerovlm.config import ScoreConfig
from zerovlm.datasets.table import Example, read_table
from zerovlm.io import ZeroVLMError, read_jsonl, write_json, write_jsonl
from zerovlm.scoring import answers as parse

GROUP_KEYS = ("dataset", "task", "configuration", "prompt_mode")


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


def score_records(examples: list[Example], predictions: list[dict], answer_mode: str) -> list[dict]:
    by_id = {e.example_id: e for e in examples}
    scored = []
    for record in predictions:
        example = by_id.get(record["example_id"])
        if example is None:
            raise ZeroVLMError(f"prediction {record['record_id']} names an example not in the prepared table; "
                               f"re-run infer (`dvc repro infer`)")
        choice = predicted_index(record, example, answer_mode)
        scored.append({
            "record_id": record["record_id"], "example_id": example.example_id, "dataset": example.dataset,
            "task": example.task, "relation": example.relation, "num_objects": example.num_objects,
            "group_id": example.group_id, "pair_id": example.pair_id,
            "configuration": record["configuration"],
            "prompt_mode": "with_view_prompt" if record["with_view_prompt"] else "without_view_prompt",
            "predicted_index": choice, "answer_index": example.answer_index,
            "parsed": choice is not None, "correct": choice == example.answer_index,
            "chance": 1.0 / len(example.options)})
    return scored


def bootstrap_ci(correct: np.ndarray, samples: int, seed: int) -> list[float] | None:
    """Percentile bootstrap 95% interval of the mean of a 0/1 vector (None when disabled)."""
    if samples == 0 or len(correct) == 0:
        return None
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), size=(samples, len(correct)))].mean(axis=1)
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


def _all_correct_rate(rows: list[dict], key: str) -> float | None:
    """What'sUp pair / set accuracy: the share of groups whose every member is right.

    None when no group has two members (e.g. a synthetic scene's one question of a task)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        if row[key] is not None:
            groups[row[key]].append(row["correct"])
    if not any(len(members) > 1 for members in groups.values()):
        return None
    return round(float(np.mean([all(members) for members in groups.values()])), 4)


def summarise(rows: list[dict], cfg: ScoreConfig) -> dict:
    correct = np.array([row["correct"] for row in rows], dtype=float)
    summary = {
        "accuracy": round(float(correct.mean()), 4),
        "accuracy_ci95": bootstrap_ci(correct, cfg.bootstrap_samples, cfg.seed),
        "chance": round(float(np.mean([row["chance"] for row in rows])), 4),
        "n_total": len(rows),
        "n_evaluated": sum(row["parsed"] for row in rows),
        "n_unparseable": sum(not row["parsed"] for row in rows),
    }
    for name, key in (("pair_accuracy", "pair_id"), ("set_accuracy", "group_id")):
        rate = _all_correct_rate(rows, key)
        if rate is not None:
            summary[name] = rate
    return summary


def _nest(flat: dict[tuple, dict]) -> dict:
    nested: dict = {}
    for keys, value in sorted(flat.items()):
        node = nested
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return nested


def score_stage(cfg: ScoreConfig, prepared_dir: Path, predictions_dir: Path, metrics_dir: Path,
                records_path: Path) -> dict:
    examples = read_table(prepared_dir)
    predictions = list(read_jsonl(predictions_dir / "predictions.jsonl"))
    infer_summary = json.loads((predictions_dir / "summary.json").read_text())
    rows = score_records(examples, predictions, infer_summary["answer_mode"])

    groups: dict[tuple, list[dict]] = defaultdict(list)
    relation_groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        key = tuple(row[k] for k in GROUP_KEYS)
        groups[key].append(row)
        relation_groups[(*key, row["relation"])].append(row)
    summary = _nest({key: summarise(group, cfg) for key, group in groups.items()})
    per_relation = _nest({key: {"accuracy": round(float(np.mean([r["correct"] for r in group])), 4),
                                "n_total": len(group)} for key, group in relation_groups.items()})

    write_json(metrics_dir / "summary.json", summary)
    write_json(metrics_dir / "per_relation.json", per_relation)
    write_jsonl(records_path, rows)
    return summary
