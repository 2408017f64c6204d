"""`zerovlm compare` on hand-made record tables: pairing, the exact test and the interval of
zerovlm/scoring/significance.py, Holm within dataset x VLM x task, refusals, the table; its errors at the CLI."""

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from zerovlm.cli import main
from zerovlm.compare import compare_records, format_comparison
from zerovlm.config import ScoreConfig
from zerovlm.scoring.significance import holm, mcnemar_exact_p, paired_bootstrap_ci, sign_flip_p

CLUSTERED = ScoreConfig(bootstrap_samples=200, sampling_unit="cluster", seed=0, p_adjust="holm", alpha=0.05)
PER_EXAMPLE = ScoreConfig(bootstrap_samples=200, sampling_unit="example", seed=0, p_adjust="holm", alpha=0.05)


def cell(
    verdicts,
    task="true_false",
    configuration="all",
    mode="with_view_prompt",
    images=None,
    ids=None,
    dataset="vsr",
    vlm="llava",
):
    """The records of one cell: example i (id ids[i], default `ex<i>`) on image images[i] (default: `img-<id>`)."""
    n = len(verdicts)
    ids = ids or [f"ex{i}" for i in range(n)]
    return pd.DataFrame(
        {
            "dataset": dataset,
            "vlm": vlm,
            "task": task,
            "configuration": configuration,
            "prompt_mode": mode,
            "example_id": ids,
            "image_id": images or [f"img-{i}" for i in ids],
            "group_id": [None] * n,
            "pair_id": [None] * n,
            "answer_index": 0,
            "correct": [bool(v) for v in verdicts],
        }
    )


def only(cells, **keys):
    [match] = [c for c in cells if all(c[k] == v for k, v in keys.items())]
    return match


def test_identical_verdicts_differ_by_exactly_zero_with_p_one():
    verdicts = [1, 0, 1, 1, 0, 0, 1, 0]
    a = pd.concat([cell(verdicts), cell(verdicts[::-1], mode="without_view_prompt")])
    [with_vp, without_vp] = compare_records(a, a.sample(frac=1, random_state=1), CLUSTERED)  # B's rows shuffled
    for result in (with_vp, without_vp):
        assert result["status"] == "compared" and result["n_total"] == 8
        assert result["accuracy_a"] == result["accuracy_b"] == 0.5
        assert result["delta"] == 0.0 and result["delta_ci95"] == [0.0, 0.0]
        assert (result["mcnemar_b"], result["mcnemar_c"]) == (0, 0)
        assert result["mcnemar_p"] == 1.0 and result["mcnemar_p_adjusted"] == 1.0 and result["mark"] == ""


def test_a_discordant_pattern_gets_the_exact_p_of_significance_py():
    # six examples right only in B, one right only in A, three right in both: one example per cluster
    a = cell([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    b = cell([1, 1, 1, 1, 1, 1, 0, 1, 1, 1])
    [result] = compare_records(a, b, PER_EXAMPLE)
    assert (result["mcnemar_b"], result["mcnemar_c"]) == (1, 6)
    assert result["mcnemar_p"] == mcnemar_exact_p(1, 6) == 2 * (1 + 7) / 2**7
    assert result["delta"] == 0.5 and (result["accuracy_a"], result["accuracy_b"]) == (0.4, 0.9)
    right_a, right_b = a["correct"].to_numpy(float), b["correct"].to_numpy(float)
    assert result["delta_ci95"] == paired_bootstrap_ci(right_a, right_b, 200, 0)


def test_clusters_are_the_images_and_the_test_is_the_sign_flip_over_them():
    # images x (3 examples) and y (2): x leans to B by 2, y to A by 1; z (1 example) agrees
    images = ["x", "x", "x", "y", "y", "z"]
    a = cell([0, 0, 1, 1, 0, 1], images=images)
    b = cell([1, 1, 1, 0, 0, 1], images=images)
    [clustered] = compare_records(a, b, CLUSTERED)
    assert clustered["mcnemar_p"] == sign_flip_p([-2, 1]) == 1.0  # sums +-2 +-1: |sum| >= 1 always
    [per_example] = compare_records(a, b, PER_EXAMPLE)
    assert per_example["mcnemar_p"] == mcnemar_exact_p(1, 2)
    right_a, right_b = a["correct"].to_numpy(float), b["correct"].to_numpy(float)
    assert clustered["delta_ci95"] == paired_bootstrap_ci(right_a, right_b, 200, 0, images)


def test_other_examples_are_refused_with_the_counts():
    a = cell([1, 0, 1], ids=["e1", "e2", "e3"])
    b = cell([1, 0, 1, 1], ids=["e2", "e3", "e4", "e5"])
    [result] = compare_records(a, b, CLUSTERED)
    assert result["status"] == "refused" and result["reason"] == "examples differ: 1 only in A, 2 only in B"
    assert "delta" not in result and "accuracy_a" not in result  # no unpaired numbers
    other_images = compare_records(cell([1, 0]), cell([1, 0], images=["img-ex0", "other"]), CLUSTERED)[0]
    assert other_images["status"] == "refused"
    assert other_images["reason"] == (
        "examples differ: 1 only in A, 1 only in B (the same ids on other images, sets or answers)"
    )
    twice = compare_records(cell([1, 0]), cell([1, 0], ids=["ex0", "ex0"]), CLUSTERED)[0]
    assert twice["status"] == "refused" and twice["reason"].startswith("1 example(s) answered twice in B")


def test_holm_within_each_dataset_vlm_task():
    strong = ([0] * 8 + [1] * 2, [1] * 8 + [1] * 2)  # 8 right only in B
    weak = ([0] * 4 + [1] * 6, [1] * 4 + [1] * 6)  # 4 right only in B
    a = pd.concat(
        [
            cell(strong[0], configuration="all"),
            cell(weak[0], configuration="left"),
            cell(weak[0], configuration="left", task="multiple_choice"),  # another family: alone
            cell(weak[0], configuration="left", vlm="minigpt4"),  # another family: alone
        ]
    )
    b = pd.concat(
        [
            cell(strong[1], configuration="all"),
            cell(weak[1], configuration="left"),
            cell(weak[1], configuration="left", task="multiple_choice"),
            cell(weak[1], configuration="left", vlm="minigpt4"),
        ]
    )
    cells = compare_records(a, b, PER_EXAMPLE)
    family = [only(cells, vlm="llava", task="true_false", configuration=c) for c in ("all", "left")]
    raw = [mcnemar_exact_p(0, 8), mcnemar_exact_p(0, 4)]
    assert [c["mcnemar_p"] for c in family] == raw
    assert [c["mcnemar_p_adjusted"] for c in family] == holm(raw) == [2 * raw[0], raw[1]]
    assert family[0]["mark"] == "*"  # 2 * 2/256 < 0.05
    for alone in (only(cells, task="multiple_choice"), only(cells, vlm="minigpt4")):
        assert alone["mcnemar_p_adjusted"] == alone["mcnemar_p"] == mcnemar_exact_p(0, 4)
    uncorrected = compare_records(a, b, PER_EXAMPLE.model_copy(update={"p_adjust": "none"}))
    assert only(uncorrected, vlm="llava", configuration="all", task="true_false")["mcnemar_p_adjusted"] == raw[0]


def test_cells_of_one_side_are_listed_as_such():
    a = pd.concat([cell([1, 0]), cell([1, 0], configuration="left")])
    b = pd.concat([cell([1, 0]), cell([0, 1], configuration="right"), cell([1], dataset="whatsup")])
    statuses = {(c["dataset"], c["configuration"]): c["status"] for c in compare_records(a, b, CLUSTERED)}
    assert statuses == {
        ("vsr", "all"): "compared",
        ("vsr", "left"): "only_in_a",
        ("vsr", "right"): "only_in_b",
        ("whatsup", "all"): "only_in_b",
    }


def test_table_fits_120_columns_with_marks_refusals_and_one_sided_instances():
    wide = {"dataset": "synthetic_cluttered", "vlm": "minigpt4_13b"}  # long names
    a = pd.concat(
        [
            cell([0] * 8, configuration="origin+left+right", **wide),
            cell([1, 0], task="multiple_choice", configuration="origin", **wide),
            cell([1], vlm="llava_13b", dataset="whatsup"),
        ]
    )
    b = pd.concat(
        [
            cell([1] * 8, configuration="origin+left+right", **wide),
            cell([1], task="multiple_choice", configuration="origin", **wide),
            cell([1], vlm="llava_13b", dataset="whatsup", ids=["another"]),
            cell([1, 1], vlm="llava_13b"),
            cell([1, 1], vlm="llava_13b", configuration="left"),
        ]
    )
    text = format_comparison(compare_records(a, b, PER_EXAMPLE), "exp-1", "exp-2", PER_EXAMPLE)
    assert max(len(line) for line in text.splitlines()) <= 120
    lines = text.splitlines()
    assert lines[0] == "A: exp-1   B: exp-2"
    row = next(line for line in lines if "origin+left+right" in line).split()
    assert row == [
        *("true/false", "origin+left+right", "yes", "0.0", "100.0", "+100.0**", "[+100.0,", "+100.0]", "8", "0/8"),
        *("0.00781", "0.00781"),  # 2 / 2**8 < 0.05 / 5
    ]
    assert "choice      origin             yes          refused: examples differ: 1 only in A, 0 only in B" in text
    assert "whatsup / llava_13b\n  all cells (1) refused: examples differ: 1 only in A, 1 only in B" in text
    assert "vsr / llava_13b\n  all cells (2) only in B" in text
    assert "Holm-corrected within each model x dataset x task" in text


def _git(repo, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True
    )


def test_cli_names_a_bad_revision_and_a_revision_without_records(tmp_path, monkeypatch, capsys):
    _git(tmp_path, "init", "-q")
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    params = {"grid": {"datasets": ["vsr"], "vlms": ["llava"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "params")
    monkeypatch.chdir(tmp_path)

    def fails(argv, message):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith(message) and err.count("\n") == 1, err

    fails(
        ["compare", "nope"],
        "error: revision 'nope': unknown Git revision 'nope'; name a commit, branch, tag or experiment "
        "(`dvc exp list`), or `workspace`",
    )
    fails(
        ["compare", "HEAD"],
        "error: data/scored/vsr/llava/records.jsonl at revision 'HEAD': neither in that revision's dvc.lock nor in "
        "the DVC cache or remote; fetch it (`dvc exp pull",
    )
    fails(
        ["compare", "workspace"],
        "error: data/scored/vsr/llava/records.jsonl in the workspace: not found; run the pipeline (`dvc repro`)",
    )
    records = tmp_path / "data/scored/vsr/llava/records.jsonl"
    records.parent.mkdir(parents=True)
    records.write_text("{not json\n")
    fails(["compare", "workspace"], "error: data/scored/vsr/llava/records.jsonl in the workspace: malformed JSON")
    records.write_text(
        "".join(json.dumps(r) + "\n" for r in cell([1, 0, 1]).drop(columns=["dataset", "vlm"]).to_dict("records"))
    )
    main(["compare", "workspace", "--json"])  # the workspace's file, read through dvc.api as well
    document = json.loads(capsys.readouterr().out)
    assert (document["a"], document["b"]) == ("workspace", "workspace")
    assert [(c["dataset"], c["vlm"], c["delta"], c["mcnemar_p"]) for c in document["cells"]] == [
        ("vsr", "llava", 0.0, 1.0)
    ]
    assert np.isclose(document["cells"][0]["accuracy_a"], 0.6667)
    (tmp_path / "params.yaml").write_text("grid: [unclosed\n")
    fails(["compare", "workspace"], "error: params.yaml in the workspace: not valid YAML")
