"""Scoring: verdicts from recorded evidence, counts, chance, intervals, What'sUp pair/set accuracy."""

import json

import numpy as np
import pytest

from zerovlm.config import ScoreConfig
from zerovlm.datasets.table import Example, write_table
from zerovlm.io import write_json, write_jsonl
from zerovlm.scoring.metrics import bootstrap_ci, predicted_index, score_stage


def _tf(i, label_true=True, relation="left of"):
    return Example(f"d/test/{i}", "d", "test", "true_false", f"{i:016d}", f"images/{i}.png",
                   "The cup is left of the laptop.", ("yes", "no"), 0 if label_true else 1, relation)


def _mc(i, answer_index, group, pair):
    return Example(f"w/test/{i}", "w", "test", "multiple_choice", f"{i:016d}", f"images/{i}.png", "",
                   ("a", "b", "c", "d"), answer_index, "on", group_id=group, pair_id=pair)


@pytest.mark.parametrize("record, mode, expected", [
    ({"option_logprobs": [-0.1, -2.0], "answers": ["Yes", "No"]}, "loglik", 0),
    ({"option_logprobs": [-3.0, -2.0], "answers": ["Yes", "No"]}, "loglik", 1),
    ({"option_logprobs": [float("nan"), -2.0], "answers": ["Yes", "No"]}, "loglik", None),
    ({"output_text": "Yes.", "answers": ["Yes", "No"]}, "generate", 0),
    ({"output_text": "no", "answers": ["Yes", "No"]}, "generate", 1),
    ({"output_text": "maybe", "answers": ["Yes", "No"]}, "generate", None),
    ({"output_text": "False", "answers": ["True", "False"]}, "generate", 1),
    ({"output_text": "yesterday", "answers": ["Yes", "No"]}, "paper", 0),  # the authors' substring rule
    ({"output_text": "maybe", "answers": ["Yes", "No"]}, "paper", 1),
])
def test_predicted_index_for_true_false(record, mode, expected):
    assert predicted_index(record, _tf(0), mode) == expected


def test_predicted_index_for_letters():
    assert predicted_index({"output_text": "The answer is (C)", "answers": list("ABCD")},
                           _mc(0, 2, None, None), "generate") == 2


def test_bootstrap_interval_brackets_the_mean():
    correct = np.array([1, 0] * 50, dtype=float)
    low, high = bootstrap_ci(correct, 500, seed=0)
    assert low < 0.5 < high and high - low < 0.3
    assert bootstrap_ci(correct, 0, seed=0) is None


def test_score_stage_counts_unparseable_as_wrong_and_reports_pair_and_set(tmp_path):
    examples = [_tf(0), _tf(1, label_true=False), _tf(2, relation="above"),
                _mc(3, 0, "g1", "p1"), _mc(4, 1, "g1", "p1"), _mc(5, 2, "g1", "p2"), _mc(6, 3, "g1", "p2")]
    write_table(tmp_path / "prepared", examples)
    outputs = {"d/test/0": "Yes", "d/test/1": "No", "d/test/2": "I cannot tell",
               "w/test/3": "A", "w/test/4": "B", "w/test/5": "C", "w/test/6": "A"}
    predictions = [{"record_id": f"{e.example_id}|all|with_view_prompt", "example_id": e.example_id,
                    "configuration": "all", "with_view_prompt": True,
                    "answers": ["Yes", "No"] if e.task == "true_false" else list("ABCD"),
                    "output_text": outputs[e.example_id]} for e in examples]
    write_jsonl(tmp_path / "pred/predictions.jsonl", predictions)
    write_json(tmp_path / "pred/summary.json", {"answer_mode": "generate"})
    score_stage(ScoreConfig(bootstrap_samples=0), tmp_path / "prepared", tmp_path / "pred",
                tmp_path / "metrics", tmp_path / "records.jsonl")

    summary = json.loads((tmp_path / "metrics/summary.json").read_text())
    tf = summary["d"]["true_false"]["all"]["with_view_prompt"]
    assert tf == {"accuracy": round(2 / 3, 4), "accuracy_ci95": None, "chance": 0.5,
                  "n_total": 3, "n_evaluated": 2, "n_unparseable": 1}
    mc = summary["w"]["multiple_choice"]["all"]["with_view_prompt"]
    assert mc["accuracy"] == 0.75 and mc["chance"] == 0.25
    assert mc["pair_accuracy"] == 0.5 and mc["set_accuracy"] == 0.0
    per_relation = json.loads((tmp_path / "metrics/per_relation.json").read_text())
    assert per_relation["d"]["true_false"]["all"]["with_view_prompt"]["above"] == {"accuracy": 0.0, "n_total": 1}
