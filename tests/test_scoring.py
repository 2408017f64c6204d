"""Scoring: verdicts from recorded evidence, counts, chance, intervals, What'sUp pair/set accuracy."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix

from zerovlm.config import ScoreConfig
from zerovlm.datasets.table import Example, write_table
from zerovlm.io import ZeroVLMError, write_json, write_jsonl
from zerovlm.pipeline import score
from zerovlm.scoring.metrics import (
    CELL,
    bootstrap_ci,
    breakdown,
    cluster_ids,
    compare_with_baseline,
    option_relation,
    predicted_index,
    score_records,
)


def _tf(i, label_true=True, relation="left of"):
    return Example(
        f"d/test/{i}",
        "d",
        "test",
        "true_false",
        f"{i:016d}",
        f"images/{i}.png",
        "The cup is left of the laptop.",
        ("yes", "no"),
        0 if label_true else 1,
        relation,
    )


def _mc(i, answer_index, group, pair):
    return Example(
        f"w/test/{i}",
        "w",
        "test",
        "multiple_choice",
        f"{i:016d}",
        f"images/{i}.png",
        "",
        ("a", "b", "c", "d"),
        answer_index,
        "on",
        group_id=group,
        pair_id=pair,
    )


@pytest.mark.parametrize(
    "record, mode, expected",
    [
        ({"option_logprobs": [-0.1, -2.0], "answers": ["Yes", "No"]}, "loglik", 0),
        ({"option_logprobs": [-3.0, -2.0], "answers": ["Yes", "No"]}, "loglik", 1),
        ({"option_logprobs": [float("nan"), -2.0], "answers": ["Yes", "No"]}, "loglik", None),
        ({"output_text": "Yes.", "answers": ["Yes", "No"]}, "generate", 0),
        ({"output_text": "no", "answers": ["Yes", "No"]}, "generate", 1),
        ({"output_text": "maybe", "answers": ["Yes", "No"]}, "generate", None),
        ({"output_text": "False", "answers": ["True", "False"]}, "generate", 1),
        ({"output_text": "yesterday", "answers": ["Yes", "No"]}, "paper", 0),  # the authors' substring rule
        ({"output_text": "maybe", "answers": ["Yes", "No"]}, "paper", 1),
    ],
)
def test_predicted_index_for_true_false(record, mode, expected):
    assert predicted_index(record, _tf(0), mode) == expected


def test_predicted_index_for_letters():
    assert (
        predicted_index(
            {"output_text": "The answer is (C)", "answers": list("ABCD")}, _mc(0, 2, None, None), "generate"
        )
        == 2
    )


def test_option_relation_takes_the_longest_relation_named_as_whole_words():
    relations = ["left of", "right of", "on", "under", "in front of", "behind"]
    assert option_relation("A mug to the left of a table.", relations) == "left of"
    assert option_relation("A mug on a table", relations) == "on"
    assert option_relation("The cone is in front of the cube.", relations) == "in front of"
    assert option_relation("A bonsai next to a box", relations) == "other"  # "on" inside "bonsai" is no match


def test_bootstrap_interval_brackets_the_mean():
    correct = np.array([1, 0] * 50, dtype=float)
    low, high = bootstrap_ci(correct, 500, seed=0)
    assert low < 0.5 < high and high - low < 0.3
    assert bootstrap_ci(correct, 0, seed=0) is None


def test_score_stage_counts_unparseable_as_wrong_and_reports_pair_and_set(tmp_path):
    examples = [
        _tf(0),
        _tf(1, label_true=False),
        _tf(2, relation="above"),
        _mc(3, 0, "g1", "p1"),
        _mc(4, 1, "g1", "p1"),
        _mc(5, 2, "g1", "p2"),
        _mc(6, 3, "g1", "p2"),
    ]
    write_table(tmp_path / "prepared", examples)
    write_json(tmp_path / "prepared/summary.json", {"skipped": {"count": 2}})
    outputs = {
        "d/test/0": "Yes",
        "d/test/1": "No",
        "d/test/2": "I cannot tell",
        "w/test/3": "A",
        "w/test/4": "B",
        "w/test/5": "C",
        "w/test/6": "A",
    }
    predictions = [
        {
            "record_id": f"{e.example_id}|all|with_view_prompt",
            "example_id": e.example_id,
            "configuration": "all",
            "with_view_prompt": True,
            "answers": ["Yes", "No"] if e.task == "true_false" else list("ABCD"),
            "output_text": outputs[e.example_id],
        }
        for e in examples
    ]
    write_jsonl(tmp_path / "pred/predictions.jsonl", predictions)
    write_json(tmp_path / "pred/summary.json", {"answer_mode": "generate", "requests": len(predictions)})
    score.run(
        score.Paths(
            prepared=tmp_path / "prepared",
            predictions=tmp_path / "pred",
            metrics=tmp_path / "metrics",
            records=tmp_path / "records.jsonl",
        ),
        ScoreConfig(bootstrap_samples=0),
        dataset="d",
        vlm="m",
    )

    summary = json.loads((tmp_path / "metrics/summary.json").read_text())
    assert summary["counts"] == {
        "n_examples": 7,
        "n_images": 7,
        "n_skipped": 2,
        "n_requests": 7,
        "n_requests_not_evaluated": 0,
    }
    tf = summary["true_false"]["all"]["with_view_prompt"]
    assert tf == {
        "accuracy": round(2 / 3, 4),
        "accuracy_ci95": None,
        "chance": 0.5,
        "n_total": 3,
        "n_evaluated": 2,
        "n_unparseable": 1,
    }  # no origin baseline: no comparison
    mc = summary["multiple_choice"]["all"]["with_view_prompt"]
    assert mc["accuracy"] == 0.75 and mc["chance"] == 0.25
    assert mc["pair_accuracy"] == 0.5 and mc["set_accuracy"] == 0.0
    per_relation = json.loads((tmp_path / "metrics/per_relation.json").read_text())
    assert per_relation["true_false"]["all"]["with_view_prompt"]["above"] == {"accuracy": 0.0, "n_total": 1}
    breakdown = json.loads((tmp_path / "metrics/breakdown.json").read_text())
    assert breakdown["confusion"]["true_false"]["all"]["with_view_prompt"] == {
        "true|true": 1,
        "false|false": 1,
        "true|(unparsed)": 1,
    }
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert {r["dataset"] for r in records} == {"d"} and {r["vlm"] for r in records} == {"m"}


def _pair_predictions(examples, verdicts):
    """Log-prob predictions that make example i right (True) or wrong (False) per configuration/mode."""
    records = []
    for (configuration, prompt), right in verdicts.items():
        for example, ok in zip(examples, right):
            scores = [-1.0, -2.0] if (example.answer_index == 0) == ok else [-2.0, -1.0]
            mode = "with_view_prompt" if prompt else "without_view_prompt"
            records.append(
                {
                    "record_id": f"{example.example_id}|{configuration}|{mode}",
                    "example_id": example.example_id,
                    "configuration": configuration,
                    "with_view_prompt": prompt,
                    "answers": ["Yes", "No"],
                    "option_logprobs": scores,
                    "rendered_prompt": f"{configuration} {prompt}",
                }
            )
    return records


@pytest.mark.parametrize("cell", [["a", "a"], ["a"], ["a", "b", "c"]], ids=["duplicate", "missing", "extra"])
def test_a_cell_must_pair_one_to_one_with_the_baseline(cell):
    def rows(ids):
        return pd.DataFrame({"example_id": ids, "correct": True})

    cells = {("origin", "without_view_prompt"): rows(["a", "b"]), ("all", "with_view_prompt"): rows(cell)}
    with pytest.raises(ZeroVLMError, match="not the baseline's examples once each"):
        compare_with_baseline(cells, ScoreConfig(bootstrap_samples=0))


def test_captions_of_one_image_are_tested_as_one_cluster():
    def rows(right):  # 3 captions per image
        return pd.DataFrame(
            [
                {"example_id": f"e{i}", "image_id": f"i{i // 3}", "group_id": None, "pair_id": None, "correct": r}
                for i, r in enumerate(right)
            ]
        )

    baseline, better = [False] * 24, [i < 12 for i in range(24)]  # 4 images gain all 3 captions
    cells = {("origin", "without_view_prompt"): rows(baseline), ("all", "with_view_prompt"): rows(better)}
    clustered = compare_with_baseline(cells, ScoreConfig(bootstrap_samples=0))[("all", "with_view_prompt")]
    independent = compare_with_baseline(cells, ScoreConfig(bootstrap_samples=0, sampling_unit="example"))
    independent = independent[("all", "with_view_prompt")]
    assert (clustered["mcnemar_b"], clustered["mcnemar_c"]) == (0, 12)
    assert independent["mcnemar_p"] == 2 / 2**12  # 12 independent wins
    assert clustered["mcnemar_p"] == 2 / 2**4  # 4 images' wins


def test_score_stage_compares_every_configuration_with_the_origin_baseline(tmp_path):
    examples = [_tf(i, label_true=i % 2 == 0, relation="left of" if i < 10 else "above") for i in range(20)]
    write_table(tmp_path / "prepared", examples)
    baseline = [i < 8 for i in range(20)]  # 8 right
    better = [i < 8 or 10 <= i < 18 for i in range(20)]  # the same 8, plus 8 more: b=0, c=8
    verdicts = {
        ("origin", False): baseline,
        ("origin", True): baseline,
        ("all", True): better,
        ("all", False): [i < 7 for i in range(20)],
    }  # b=1, c=0
    write_jsonl(tmp_path / "pred/predictions.jsonl", _pair_predictions(examples, verdicts))
    write_json(tmp_path / "pred/summary.json", {"answer_mode": "loglik", "requests": 60})
    write_json(
        tmp_path / "pred_run.json", {"resumed": 0, "seconds": 7.0, "seconds_loading": 1.0, "peak_memory_bytes": 5}
    )
    write_json(
        tmp_path / "views.json",
        {"views": 80, "images": 20, "views_generated": 40, "seconds_generating": 20.0, "peak_memory_bytes": 7},
    )
    score.run(
        score.Paths(
            prepared=tmp_path / "prepared",
            predictions=tmp_path / "pred",
            metrics=tmp_path / "metrics",
            records=tmp_path / "records.jsonl",
            views_summary=tmp_path / "views.json",
            infer_run=tmp_path / "pred_run.json",
        ),
        ScoreConfig(bootstrap_samples=200, p_adjust="holm"),
        dataset="d",
        vlm="m",
    )

    tf = json.loads((tmp_path / "metrics/summary.json").read_text())["true_false"]
    assert "delta_vs_origin" not in tf["origin"]["with_view_prompt"]  # the baseline is not compared with itself
    cell = tf["all"]["with_view_prompt"]
    assert (cell["mcnemar_b"], cell["mcnemar_c"], cell["delta_vs_origin"]) == (0, 8, 0.4)
    assert cell["mcnemar_p"] == 2 / 2**8
    assert cell["mcnemar_p_adjusted"] == 2 * 2 / 2**8  # Holm over the two comparisons: smallest x 2
    assert 0 < cell["delta_ci95"][0] <= 0.4 <= cell["delta_ci95"][1]
    other = tf["all"]["without_view_prompt"]
    assert (other["mcnemar_b"], other["mcnemar_c"], other["mcnemar_p"], other["mcnemar_p_adjusted"]) == (1, 0, 1.0, 1.0)
    overhead = json.loads((tmp_path / "metrics/summary.json").read_text())["overhead"]
    assert overhead["views_seconds_per_view"] == 0.5  # 20 s for 40 generated views
    assert overhead["views_seconds_per_example"] == 2.0  # 4 views per image, 1 image per example
    assert overhead["infer_seconds_per_request"] == 0.1  # (7 - 1) s for 60 requests
    assert overhead["infer_seconds_per_example"] == 0.3
    assert (overhead["views_peak_memory_bytes"], overhead["infer_peak_memory_bytes"]) == (7, 5)
    provenance = json.loads((tmp_path / "metrics/provenance.json").read_text())
    hashes = provenance["rendered_prompts_sha256"]
    assert hashes["all"]["with_view_prompt"] != hashes["all"]["without_view_prompt"]


def test_the_sampling_unit_is_the_set_or_else_the_image():
    rows = pd.DataFrame(
        [
            {"group_id": "whatsup/mug_table", "pair_id": None, "image_id": "i1"},
            {"group_id": None, "pair_id": None, "image_id": "i2"},
        ]
    )
    assert cluster_ids(rows, ScoreConfig()) == ["whatsup/mug_table", "i2"]
    assert cluster_ids(rows, ScoreConfig(bootstrap_samples=0)) == ["whatsup/mug_table", "i2"]  # McNemar uses it
    assert cluster_ids(rows, ScoreConfig(sampling_unit="example")) is None


def test_confusion_counts_equal_sklearn_confusion_matrix_per_cell():
    options, relations = (
        ("A mug on a table", "A mug under a table", "A mug left of a table", "A mug by a box"),
        ("on", "under", "left of", "next to"),
    )
    rng = np.random.default_rng(0)
    examples = [
        Example(
            f"w/test/{i}",
            "w",
            "test",
            "multiple_choice",
            f"{i:016d}",
            f"images/{i}.png",
            "",
            options,
            int(answer),
            relations[answer],
        )
        for i, answer in enumerate(rng.integers(4, size=40))
    ]
    predictions = [
        {
            "record_id": f"{e.example_id}|{c}|{vp}",
            "example_id": e.example_id,
            "configuration": c,
            "with_view_prompt": vp,
            "answers": list("ABCD"),
            "output_text": "ABCD?"[int(rng.integers(5))],
        }  # "?": unparsed
        for c in ("origin", "all")
        for vp in (False, True)
        for e in examples
    ]
    verdicts = pd.DataFrame(score_records(examples, predictions, "generate"))
    counts = breakdown(verdicts)["confusion"]["multiple_choice"]
    for (_, configuration, mode), cell in verdicts.groupby(CELL):
        labels = sorted({*cell["actual_label"], *cell["predicted_label"]})
        matrix = confusion_matrix(cell["actual_label"], cell["predicted_label"], labels=labels)
        expected = {f"{labels[i]}|{labels[j]}": int(matrix[i, j]) for i, j in zip(*np.nonzero(matrix))}
        assert counts[configuration][mode] == expected
        assert {"(unparsed)", "other"} <= set(labels)  # "by a box" states no known relation


def test_objects_breakdown_keeps_integer_counts_and_skips_examples_without_one():
    verdicts = pd.DataFrame(
        [
            {
                "task": "true_false",
                "configuration": "all",
                "prompt_mode": "with_view_prompt",
                "actual_label": "true",
                "predicted_label": "true",
                "num_objects": n,
                "correct": ok,
            }
            for n, ok in [(2, True), (None, True), (10, False), (2, False), (10, False)]
        ]
    )
    objects = breakdown(verdicts)["objects"]["true_false"]["all"]["with_view_prompt"]
    assert objects == {"2": [1, 2], "10": [0, 2]}  # a column holding None is float: "2", never "2.0"


def test_an_empty_predictions_file_is_one_error_naming_it(tmp_path):
    write_table(tmp_path / "prepared", [_tf(0)])
    write_jsonl(tmp_path / "pred/predictions.jsonl", [])
    write_json(tmp_path / "pred/summary.json", {"answer_mode": "generate", "requests": 0})
    with pytest.raises(ZeroVLMError, match=r"pred/predictions.jsonl: no predictions to score; re-run infer"):
        score.run(
            score.Paths(
                prepared=tmp_path / "prepared",
                predictions=tmp_path / "pred",
                metrics=tmp_path / "metrics",
                records=tmp_path / "records.jsonl",
            ),
            ScoreConfig(bootstrap_samples=0),
        )
