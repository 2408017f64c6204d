"""The oracle and dev-selected rows of the results table, on hand-made verdict tables."""

import pandas as pd
import pytest

from zerovlm.config import ReportConfig, ScoreConfig
from zerovlm.report import table
from zerovlm.report.selection import oracle, select_cell, selected_cells

NOVP, VP = "without_view_prompt", "with_view_prompt"


def verdicts(cells: dict[tuple[str, str], list[bool]], task: str = "true_false") -> pd.DataFrame:
    """Records of one instance: per (configuration, prompt mode), example i's verdict at position i."""
    return pd.DataFrame(
        [
            {"task": task, "example_id": f"e{i}", "configuration": c, "prompt_mode": m, "correct": ok}
            for (c, m), column in cells.items()
            for i, ok in enumerate(column)
        ]
    )


def test_oracle_is_the_share_of_examples_some_configuration_answers():
    frame = verdicts(
        {
            ("origin", NOVP): [True, False, False, False],
            ("left", VP): [False, True, False, False],
            ("left", NOVP): [True, False, False, False],
        }
    )
    choice = verdicts({("origin", NOVP): [False, False], ("all", VP): [False, False]}, task="multiple_choice")
    assert oracle(pd.concat([frame, choice])) == {"true_false": 0.5, "multiple_choice": 0.0}


def test_selection_takes_the_most_accurate_dev_cell_and_the_earlier_one_on_ties():
    order = [("origin", NOVP), ("left", VP), ("left", NOVP), ("all", VP), ("all", NOVP)]
    dev = verdicts({("origin", NOVP): [True, False], ("all", VP): [True, True], ("left", NOVP): [True, True]})
    assert select_cell(dev, order) == {"true_false": ("left", NOVP)}  # tie with all: left comes first
    assert select_cell(verdicts({("all", VP): [False], ("origin", NOVP): [False]}), order) == {
        "true_false": ("origin", NOVP)
    }


def test_selection_never_reads_the_evaluated_datasets_verdicts():
    dev = verdicts({("origin", NOVP): [True, False, False], ("left", VP): [True, True, False]})
    test = verdicts({("origin", NOVP): [True, True, True], ("left", VP): [False, False, False]})  # would pick origin
    store = {("vsr_random_dev", "tiny"): dev, ("vsr_random", "tiny"): test}
    loaded = []

    def load(dataset, vlm):
        loaded.append(dataset)
        return store[(dataset, vlm)]

    chosen = selected_cells(
        load,
        ["vsr_random", "vsr_random_dev", "whatsup_a", "vsr_zeroshot"],
        ["tiny"],
        {"vsr_random": "vsr_random_dev", "vsr_zeroshot": "vsr_zeroshot_dev"},
        ["origin", "left"],
    )
    assert chosen[("vsr_random", "tiny")] == {"true_false": ("left", VP)}
    assert chosen[("whatsup_a", "tiny")] == "no dev split"
    assert chosen[("vsr_random_dev", "tiny")] == "no dev split"
    assert "add vsr_zeroshot_dev to grid.datasets" in chosen[("vsr_zeroshot", "tiny")]
    assert loaded == ["vsr_random_dev"]  # the evaluated datasets' verdicts were never loaded


def test_a_dataset_cannot_select_on_itself():
    with pytest.raises(ValueError, match="cannot select its own configuration"):
        ReportConfig(selection_datasets={"vsr_random": "vsr_random"})


def _cell(accuracy, delta=None):
    metrics = {"accuracy": accuracy, "chance": 0.5, "n_total": 10, "n_unparseable": 0}
    return metrics if delta is None else {**metrics, "delta_vs_origin": delta, "mcnemar_p_adjusted": 0.5}


def test_markdown_shows_oracle_and_dev_selected_rows_with_the_chosen_configuration():
    summaries = {
        (dataset, "tiny"): {
            "true_false": {
                "origin": {NOVP: _cell(0.5)},
                "left": {VP: _cell(0.7, 0.2), NOVP: _cell(0.4, -0.1)},
            }
        }
        for dataset in ("vsr_random", "whatsup_a")
    }
    oracles = {("vsr_random", "tiny"): {"true_false": 0.9}, ("whatsup_a", "tiny"): {"true_false": 0.8}}
    chosen = {("vsr_random", "tiny"): {"true_false": ("left", NOVP)}, ("whatsup_a", "tiny"): "no dev split"}
    text = table.markdown(
        summaries, ["vsr_random", "whatsup_a"], ["tiny"], ["origin", "left"], ScoreConfig(), oracles, chosen
    )
    lines = text.splitlines()
    assert "| tiny | oracle (any configuration) | - | 90.0 | 80.0 |" in lines
    assert "| ZeroVLM (tiny) | dev-selected | [chosen] | 40.0 (-10.0) [left, view prompt no] | no dev split |" in lines
    assert "never chosen on these examples" in text


def test_objects_plot_keeps_coco_and_synthetic_counts_apart_and_gives_the_gain():
    from zerovlm.report.plots import objects_rows

    def counts(baseline, method):
        return {"objects": {"true_false": {"origin": {NOVP: baseline}, "all": {VP: method}}}}

    breakdowns = {
        ("vsr_random", "tiny"): counts({"3": [1, 4]}, {"3": [3, 4]}),
        ("sparse", "tiny"): counts({"3": [2, 2]}, {"3": [0, 2]}),
    }
    rows = objects_rows(breakdowns, ("all", VP), {"vsr_random": "vsr_random", "sparse": "synthetic"})
    assert rows == {
        ("vsr_random", "tiny", "true_false"): [
            {"num_objects": 3, "baseline": 0.25, "method": 0.75, "gain": 0.5, "n": 4}
        ],
        ("synthetic", "tiny", "true_false"): [{"num_objects": 3, "baseline": 1.0, "method": 0.0, "gain": -1.0, "n": 2}],
    }
