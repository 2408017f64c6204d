"""Two real `dvc exp run`s in a temporary copy of the repo (tests/dvc_helpers.py's small demo), compared by DVC:
`dvc exp show` and `dvc metrics diff` read only the headline metrics, `dvc plots diff` draws both experiments'
per-relation bars, and the run's lm-eval-shaped results hold the harness's keys and summary.json's accuracies.
"""

import json
import re

import pytest

from tests.dvc_helpers import SMALL_DEMO, copy_repo, git_commit, repro, run
from tests.report_fixtures import CONFIG_KEYS, RESULTS_KEYS, SAMPLE_KEYS
from zerovlm.report.lm_eval import task_name

pytestmark = pytest.mark.slow

DATASETS, VLM = SMALL_DEMO["grid"]["datasets"], "tiny"
STATS = ("base", "method", "delta", "p", "n")
# the headline's leaves: dataset x VLM x task x 5 numbers (both synthetic datasets have both tasks)
HEADLINE = {f"{d}.{VLM}.{task}.{stat}" for d in DATASETS for task in ("tf", "mc") for stat in STATS}
EXPERIMENTS = {"tf-template": "infer.question_template=true_false", "strip-layout": "stitch.layout=strip"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("experiments") / "repo")
    repro(repo)
    git_commit(repo, "baseline")
    for name, change in EXPERIMENTS.items():
        run(["dvc", "exp", "run", "-n", name, "-S", change], repo)
    return repo


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        return {leaf for key, value in node.items() for leaf in _leaves(value, f"{prefix}{key}.")}
    return {prefix[:-1]} if isinstance(node, (int, float)) else set()


def test_exp_show_holds_only_the_headline_metrics(repo):
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    experiments = [rev for row in shown for exp in row.get("experiments") or [] for rev in exp["revs"]]
    assert {rev["name"] for rev in experiments} == set(EXPERIMENTS)
    for rev in [*shown, *experiments]:
        metrics = rev["data"]["metrics"]
        assert set(metrics) == {"metrics/headline.json"}, rev["rev"]
        leaves = _leaves(metrics["metrics/headline.json"]["data"])
        assert len(leaves) <= 60 and leaves == HEADLINE, rev["rev"]


def test_documented_exp_show_drops_every_column_but_changed_params_and_metrics(repo):
    table = run(["dvc", "exp", "show", "--only-changed", "--drop", "Created|params.yaml|.*/.*", "--csv"], repo).stdout
    columns = table.splitlines()[0].split(",")
    assert columns[:3] == ["Experiment", "rev", "typ"]
    changed_params = {"stitch.layout", "infer.question_template"}
    assert changed_params <= set(columns[3:]) <= HEADLINE | changed_params


def test_metrics_diff_between_experiments_lists_short_headline_keys(repo):
    diff = json.loads(run(["dvc", "metrics", "diff", *EXPERIMENTS, "--all", "--json"], repo).stdout)
    assert set(diff) == {"metrics/headline.json"} and set(diff["metrics/headline.json"]) == HEADLINE
    table = run(["dvc", "metrics", "diff", *EXPERIMENTS], repo, env={"COLUMNS": "120"}).stdout
    assert max(map(len, table.splitlines())) <= 120


def test_plots_diff_draws_both_experiments_per_relation_bars(repo):
    plots = json.loads(run(["dvc", "plots", "diff", *EXPERIMENTS, "--json"], repo).stdout)["data"]
    bars = {path: entries for path, entries in plots.items() if path.startswith("metrics/plots/per_relation/")}
    assert len(bars) == len(DATASETS) * 2
    for path, [entry] in bars.items():
        spec = entry["content"]
        assert set(entry["revisions"]) == {row["rev"] for row in spec["data"]["values"]} == set(EXPERIMENTS), path
        # one bar per series and revision, side by side: the offset and the colour encode the revision
        by_revision = {"rev"} | {t["as"] for t in spec["transform"] if "datum.rev" in t.get("calculate", "")}
        assert spec["encoding"]["yOffset"]["field"] in by_revision and spec["encoding"]["color"]["field"] in by_revision


def test_lm_eval_results_hold_the_harness_keys_and_the_summary_accuracies(repo):
    [results_file] = (repo / "metrics/lm_eval" / VLM).iterdir()
    document = json.loads(results_file.read_text())
    assert RESULTS_KEYS <= set(document) and CONFIG_KEYS <= set(document["config"])
    compared = 0
    for dataset in DATASETS:
        summary = json.loads((repo / "metrics/grid" / dataset / VLM / "summary.json").read_text())
        for task in ("true_false", "multiple_choice"):
            for configuration, modes in summary[task].items():
                for mode, cell in modes.items():
                    name = task_name(dataset, task, configuration, mode)
                    assert round(document["results"][name]["acc,none"], 4) == cell["accuracy"], name
                    assert document["n-samples"][name]["effective"] == cell["n_total"], name
                    compared += 1
    assert compared == len(document["results"])  # and no task the summaries lack (all-separate: not evaluated)
    date = results_file.stem.removeprefix("results_")
    samples = sorted((repo / "data/lm_eval" / VLM).iterdir())
    assert {re.fullmatch(rf"samples_(\w+)_{re.escape(date)}\.jsonl", f.name)[1] for f in samples} == set(
        document["results"]
    )
    assert all(set(json.loads(line)) == SAMPLE_KEYS for line in samples[0].read_text().splitlines())
    # samples: large, in the DVC cache; results: small, in git
    assert run(["git", "check-ignore", "-q", "data/lm_eval"], repo, check=False).returncode == 0
    assert run(["git", "check-ignore", "-q", results_file], repo, check=False).returncode == 1
