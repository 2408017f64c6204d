"""`zerovlm compare` between real DVC experiments, in a temporary copy of the repo with the small demo profile.

Experiment `tf` changes the question template of every instance; `tf-cluttered-2` does the same and also
limits one dataset (cluttered) to two examples. Between the two, every cell of the other dataset (sparse)
must come out as exactly no difference, and every cluttered cell must be refused, not compared unpaired.
"""

import json
import sys

import pytest

from tests.dvc_helpers import SMALL_DEMO, copy_repo, git_commit, repro, run

DATASETS, VLM = SMALL_DEMO["grid"]["datasets"], SMALL_DEMO["grid"]["vlms"][0]
CONFIGURATIONS = {"origin", "left", "all"}  # all-separate: not evaluated (the tiny model takes one image)
# dataset x task x configuration x view prompt
CELLS = 2 * 2 * len(CONFIGURATIONS) * 2


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("compare") / "repo")
    repro(repo)
    git_commit(repo, "pipeline run")
    template = ["-S", "infer.question_template=true_false"]
    run(["dvc", "exp", "run", "-n", "tf", *template], repo)
    run(["dvc", "exp", "run", "-n", "tf-cluttered-2", *template, "-S", "+datasets.cluttered.limit=2"], repo)
    return repo


def compare(repo, *args, check=True):
    return run([sys.executable, "-m", "zerovlm.cli", "compare", *args], repo, check=check)


def compared(repo, *revisions) -> dict[tuple, dict]:
    cells = json.loads(compare(repo, *revisions, "--json").stdout)["cells"]
    keyed = {(c["dataset"], c["task"], c["configuration"], c["prompt_mode"]): c for c in cells}
    assert len(keyed) == len(cells) == CELLS and {c["vlm"] for c in cells} == {VLM}
    assert {key[2] for key in keyed} == CONFIGURATIONS
    return keyed


@pytest.mark.slow
def test_a_knob_of_one_dataset_changes_only_its_cells_and_refuses_the_other_selection(repo):
    cells = compared(repo, "tf", "tf-cluttered-2")
    for (dataset, *_), cell in cells.items():
        if dataset == "sparse":
            assert cell["status"] == "compared", cell
            assert cell["accuracy_a"] == cell["accuracy_b"] and cell["delta"] == 0.0
            assert cell["delta_ci95"] == [0.0, 0.0] and (cell["mcnemar_b"], cell["mcnemar_c"]) == (0, 0)
            assert cell["mcnemar_p"] == 1.0 and cell["mcnemar_p_adjusted"] == 1.0
        else:  # scene 0's two questions are left, one per task
            assert cell == {**cell, "status": "refused", "reason": "examples differ: 1 only in A, 0 only in B"}
            assert "delta" not in cell
    reversed_ = compared(repo, "tf-cluttered-2", "tf")
    assert {c["reason"] for c in reversed_.values() if c["status"] == "refused"} == {
        "examples differ: 0 only in A, 1 only in B"
    }
    text = compare(repo, "tf", "tf-cluttered-2").stdout
    assert text.startswith(f"A: tf   B: tf-cluttered-2\n\nsparse / {VLM}\n")
    assert f"cluttered / {VLM}\n  all cells ({CELLS // 2}) refused: examples differ: 1 only in A, 0 only in B" in text
    assert max(len(line) for line in text.splitlines()) <= 120


@pytest.mark.slow
def test_the_same_selection_is_compared_cell_by_cell_with_each_revisions_accuracy(repo):
    import dvc.api

    cells = compared(repo, "HEAD", "tf")
    for (dataset, task, configuration, mode), cell in cells.items():
        assert cell["status"] == "compared" and 0.0 <= cell["mcnemar_p"] <= cell["mcnemar_p_adjusted"] <= 1.0
        for side, rev in (("a", "HEAD"), ("b", "tf")):  # the score stage's own numbers at that revision
            summary = json.loads(dvc.api.read(f"metrics/grid/{dataset}/{VLM}/summary.json", repo=str(repo), rev=rev))
            assert cell[f"accuracy_{side}"] == summary[task][configuration][mode]["accuracy"]
        assert cell["delta"] == pytest.approx(cell["accuracy_b"] - cell["accuracy_a"], abs=1e-4)
    # B defaults to the workspace, where `dvc exp run` applied the last experiment: nothing differs
    same = compared(repo, "tf-cluttered-2")
    assert {(c["status"], c["delta"], c["mcnemar_p"]) for c in same.values()} == {("compared", 0.0, 1.0)}


@pytest.mark.slow
def test_a_bad_revision_and_one_without_records_are_one_line_errors(repo):
    bad = compare(repo, "no-such-exp", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert (
        bad.stderr.startswith("error: revision 'no-such-exp': unknown Git revision") and "`dvc exp list`" in bad.stderr
    )
    unrun = compare(repo, "HEAD~1", "tf", check=False)  # the commit before the pipeline ran
    assert unrun.returncode == 2 and unrun.stderr.count("\n") == 1
    assert unrun.stderr.startswith(
        f"error: data/scored/{DATASETS[0]}/{VLM}/records.jsonl at revision 'HEAD~1': neither in that revision's"
    )
    assert "`dvc exp apply <experiment>`" in unrun.stderr
