"""The report stage's results in lm-evaluation-harness's schema (zerovlm/report/lm_eval.py), on a grid scored by
the real score stage: the keys the harness writes, its file names, and numbers equal to summary.json's."""

import json
import math
import statistics

import pytest

from tests.report_fixtures import CONFIG_KEYS, RESULTS_KEYS, SAMPLE_KEYS, scored_instance
from zerovlm.config import GridConfig, ReportConfig, ScoreConfig
from zerovlm.pipeline import report
from zerovlm.report import lm_eval
from zerovlm.view_configurations import CONFIGURATIONS

CONFIGURATIONS_RUN = ["origin", "left", "all", "all-separate"]


def test_task_names_are_distinct_and_word_characters_only():
    names = [
        lm_eval.task_name("vsr_random", task, configuration, mode)
        for task in ("true_false", "multiple_choice")
        for configuration in CONFIGURATIONS
        for mode in ("with_view_prompt", "without_view_prompt")
    ]
    assert len(set(names)) == len(names)
    assert all(name.isidentifier() for name in names)
    assert lm_eval.task_name("vsr_random", "true_false", "origin+left", "with_view_prompt") == (
        "zerovlm_vsr_random_tf_origin_left_vp"
    )


def test_stderr_is_the_sample_standard_error_of_the_mean():
    for values in ([1.0, 0.0], [1.0, 1.0, 0.0, 1.0, 0.0], [0.0] * 7 + [1.0] * 3):
        assert lm_eval.mean_stderr(values) == pytest.approx(statistics.stdev(values) / math.sqrt(len(values)))
    assert lm_eval.mean_stderr([1.0]) == "N/A"  # as lm-eval writes it for a single sample


def _task_of_samples_file(name: str) -> tuple[str, str]:
    """(task, date) as lm-eval's get_file_task_name / get_file_datetime read a samples_<task>_<date>.jsonl name."""
    stem = name.removesuffix(".jsonl")
    return stem[stem.find("_") + 1 : stem.rfind("_")], stem[stem.rfind("_") + 1 :]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    for vlm, answer_mode in (("tiny", "loglik"), ("talker", "generate")):
        scored_instance(root, "sparse", vlm, ("true_false", "multiple_choice"), answer_mode=answer_mode, seed=1)
        scored_instance(root, "vsr", vlm, not_evaluated=("all-separate",), answer_mode=answer_mode, seed=2)
    report.run(
        report.Paths(
            grid_metrics=root / "grid",
            prepared=root / "prepared",
            predictions=root / "predictions",
            scored=root / "scored",
            out=root / "metrics",
            samples=root / "samples",
        ),
        GridConfig(datasets=("sparse", "vsr"), vlms=("tiny", "talker")),
        CONFIGURATIONS_RUN,
        ScoreConfig(),
        ReportConfig(method_configuration="all"),
    )
    return root


@pytest.mark.parametrize("vlm", ["tiny", "talker"])
def test_results_file_has_the_harness_keys_and_the_summary_accuracies(grid, vlm):
    [results_file] = (grid / "metrics/lm_eval" / vlm).iterdir()
    assert results_file.name.startswith("results_") and results_file.suffix == ".json"
    document = json.loads(results_file.read_text())
    assert RESULTS_KEYS <= set(document) and CONFIG_KEYS <= set(document["config"])
    assert document["model_name_sanitized"] == vlm and document["model_name"] == f"hub/{vlm}"
    tasks = set(document["results"])
    for key in ("configs", "versions", "n-shot", "higher_is_better", "n-samples", "task_hashes", "group_subtasks"):
        assert set(document[key]) == tasks, key
    # sparse: 2 tasks x 3 configurations x 2 prompt modes; vsr: true/false only, all-separate not evaluated
    assert len(tasks) == 2 * 3 * 2 + 3 * 2
    assert not any("all_separate" in task for task in tasks)
    for dataset in ("sparse", "vsr"):
        summary = json.loads((grid / "grid" / dataset / vlm / "summary.json").read_text())
        for task in ("true_false", "multiple_choice"):
            for configuration, modes in summary.get(task, {}).items():
                for mode, cell in modes.items():
                    name = lm_eval.task_name(dataset, task, configuration, mode)
                    assert round(document["results"][name]["acc,none"], 4) == cell["accuracy"], name
                    assert document["n-samples"][name] == {"original": 6, "effective": cell["n_total"]}
                    config = document["configs"][name]
                    assert (config["dataset_name"], config["metadata"]["configuration"]) == (dataset, configuration)
                    assert config["output_type"] == ("multiple_choice" if vlm == "tiny" else "generate_until")


@pytest.mark.parametrize("vlm", ["tiny", "talker"])
def test_samples_files_are_named_and_shaped_as_the_harness_writes_them(grid, vlm):
    [results_file] = (grid / "metrics/lm_eval" / vlm).iterdir()
    document = json.loads(results_file.read_text())
    date = results_file.stem.removeprefix("results_")
    files = sorted((grid / "samples" / vlm).iterdir())
    assert {_task_of_samples_file(f.name) for f in files} == {(task, date) for task in document["results"]}
    doc_ids: dict[str, set] = {}
    for path in files:
        task = _task_of_samples_file(path.name)[0]
        samples = [json.loads(line) for line in path.read_text().splitlines()]
        assert all(set(sample) == SAMPLE_KEYS for sample in samples)
        acc = [sample["acc"] for sample in samples]
        assert document["results"][task]["acc,none"] == sum(acc) / len(acc)
        assert document["results"][task]["acc_stderr,none"] == pytest.approx(statistics.stdev(acc) / len(acc) ** 0.5)
        assert [s["doc_id"] for s in samples] == list(range(len(samples)))
        assert document["task_hashes"][task] == lm_eval.hash_string(
            "".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in samples)
        )
        for sample in samples:
            doc_ids.setdefault(sample["doc"]["example_id"], set()).add(sample["doc_id"])
            arguments = sample["arguments"]
            assert sample["prompt_hash"] == lm_eval.hash_string(arguments["gen_args_0"]["arg_0"])
            if vlm == "tiny":  # one log-likelihood request per option: [log-probability, is_greedy]
                assert len(arguments) == len(sample["doc"]["options"]) == len(sample["resps"])
                assert sample["target"] == str(sample["doc"]["answer_index"])
                assert all(len(r) == 1 and len(r[0]) == 2 and r[0][0] <= 0 for r in sample["resps"])
                assert sample["filtered_resps"] == [r[0] for r in sample["resps"]]
            else:
                assert set(arguments) == {"gen_args_0"} and arguments["gen_args_0"]["arg_1"]["max_gen_toks"] == 16
                assert sample["resps"] == [sample["filtered_resps"]] and isinstance(sample["filtered_resps"][0], str)
    assert all(len(ids) == 1 for ids in doc_ids.values())  # an example keeps its doc_id in every task
