"""The paper-shaped results table, its CSV, the headline metrics and the plot data files."""

import csv
import io
import json

from tests.report_fixtures import scored_instance
from zerovlm.config import GridConfig, ReportConfig, ScoreConfig
from zerovlm.io import write_json
from zerovlm.pipeline import report
from zerovlm.report import table


def _metrics(accuracy, delta=None, p=None, n=100):
    cell = {
        "accuracy": accuracy,
        "accuracy_ci95": [accuracy - 0.1, accuracy + 0.1],
        "chance": 0.5,
        "n_total": n,
        "n_evaluated": n,
        "n_unparseable": 0,
    }
    if delta is not None:
        cell.update(
            delta_vs_origin=delta,
            delta_ci95=[delta - 0.05, delta + 0.05],
            mcnemar_b=1,
            mcnemar_c=2,
            mcnemar_p=p,
            mcnemar_p_adjusted=p,
        )
    return cell


SUMMARIES = {
    ("vsr_random", "llava_7b"): {
        "true_false": {
            "origin": {"without_view_prompt": _metrics(0.6), "with_view_prompt": _metrics(0.6)},
            "left": {"with_view_prompt": _metrics(0.7, 0.1, 0.004), "without_view_prompt": _metrics(0.55, -0.05, 0.2)},
        }
    },
    ("whatsup_a", "llava_7b"): {
        "multiple_choice": {
            "origin": {"without_view_prompt": {**_metrics(0.3), "chance": 0.25}},
            "left": {"with_view_prompt": {**_metrics(0.35, 0.05, 0.03), "chance": 0.25}},
        }
    },
}


def test_markdown_table_has_the_papers_shape():
    text = table.markdown(
        SUMMARIES, ["vsr_random", "whatsup_a"], ["llava_7b"], ["origin", "left", "all"], ScoreConfig()
    )
    lines = text.splitlines()
    assert lines[0] == "| model | configuration | view prompt | vsr_random | whatsup_a |"
    assert lines[2] == "| llava_7b | origin (baseline) | - | 60.0 | 30.0 |"
    assert lines[3] == "| ZeroVLM (llava_7b) | left | yes | 70.0 (+10.0**) | 35.0 (+5.0*) |"  # the paper's label
    assert lines[4] == "| ZeroVLM (llava_7b) | left | no | 55.0 (-5.0) | - |"
    assert len([line for line in lines if "llava_7b" in line]) == 3  # "all" was never run
    assert "Holm-corrected" in text and "true/false 50%" in text and "choice 25%" in text


def test_the_footnote_names_the_test_and_its_unit():
    args = SUMMARIES, ["vsr_random", "whatsup_a"], ["llava_7b"], ["origin", "left"]
    clustered = table.markdown(*args, ScoreConfig(p_adjust="none"))
    assert "McNemar's exact test over clusters: the examples of one image, or one What'sUp set" in clustered
    assert "(uncorrected)" in clustered
    examples = table.markdown(*args, ScoreConfig(sampling_unit="example"))
    assert "McNemar's exact test (Holm-corrected" in examples and "clusters" not in examples


def test_a_dataset_with_two_tasks_gets_two_columns():
    both = {
        ("synthetic_sparse", "tiny"): {
            "true_false": SUMMARIES[("vsr_random", "llava_7b")]["true_false"],
            "multiple_choice": SUMMARIES[("whatsup_a", "llava_7b")]["multiple_choice"],
        }
    }
    header = table.markdown(both, ["synthetic_sparse"], ["tiny"], ["origin", "left"], ScoreConfig()).splitlines()[0]
    assert header.endswith("| synthetic_sparse (true/false) | synthetic_sparse (choice) |")


def test_csv_has_numbers_for_every_column():
    rows = list(
        csv.DictReader(
            io.StringIO(table.to_csv(SUMMARIES, ["vsr_random", "whatsup_a"], ["llava_7b"], ["origin", "left"], 0.05))
        )
    )
    left = next(r for r in rows if r["configuration"] == "left" and r["view_prompt"] == "yes")
    assert float(left["vsr_random: accuracy"]) == 0.7 and float(left["vsr_random: delta_vs_origin"]) == 0.1
    assert left["vsr_random: mark"] == "**" and float(left["vsr_random: delta_ci95_low"]) == 0.05
    assert rows[0]["configuration"] == "origin" and rows[0]["vsr_random: delta_vs_origin"] == ""


def test_report_stage_writes_table_headline_provenance_and_plots(tmp_path):
    grid = tmp_path / "grid"
    for (dataset, vlm), summary in SUMMARIES.items():
        task = next(iter(summary))
        scored_instance(tmp_path, dataset, vlm, (task,), configurations=("origin", "left"))  # the lm-eval inputs
        folder = grid / dataset / vlm
        write_json(folder / "summary.json", summary)
        write_json(
            folder / "per_relation.json",
            {
                task: {
                    "origin": {"without_view_prompt": {"on": {"accuracy": 0.5, "n_total": 4}}},
                    "left": {"with_view_prompt": {"on": {"accuracy": 0.75, "n_total": 4}}},
                }
            },
        )
        write_json(
            folder / "breakdown.json",
            {
                "confusion": {task: {"origin": {"without_view_prompt": {"on|on": 2, "on|under": 1}}}},
                "objects": {
                    task: {
                        "origin": {"without_view_prompt": {"2": [1, 2], "5": [0, 2]}},
                        "left": {"with_view_prompt": {"2": [2, 2], "5": [1, 2]}},
                    }
                },
            },
        )
    (tmp_path / "out/plots/stale").mkdir(parents=True)
    report.run(
        report.Paths(
            grid_metrics=grid,
            prepared=tmp_path / "prepared",
            predictions=tmp_path / "predictions",
            scored=tmp_path / "scored",
            out=tmp_path / "out",
            samples=tmp_path / "samples",
        ),
        GridConfig(datasets=("vsr_random", "whatsup_a"), vlms=("llava_7b",)),
        ["origin", "left"],
        ScoreConfig(),
        ReportConfig(method_configuration="left"),
    )

    out = tmp_path / "out"
    assert (out / "results.md").read_text().startswith("| model | configuration |")
    headline = json.loads((out / "headline.json").read_text())
    assert headline == {
        "vsr_random": {"llava_7b": {"tf": {"base": 0.6, "method": 0.7, "delta": 0.1, "p": 0.004, "n": 100}}},
        "whatsup_a": {"llava_7b": {"mc": {"base": 0.3, "method": 0.35, "delta": 0.05, "p": 0.03, "n": 100}}},
    }
    provenance = json.loads((out / "provenance.json").read_text())
    assert set(provenance["instances"]) == {"vsr_random-llava_7b", "whatsup_a-llava_7b"}
    assert provenance["libraries"]["numpy"] and "revision" in provenance["git"]
    assert not (out / "plots/stale").exists()
    assert [path.name.split("_")[0] for path in (out / "lm_eval/llava_7b").iterdir()] == ["results"]
    bars = json.loads((out / "plots/per_relation/vsr_random.llava_7b.true_false.json").read_text())
    assert {(b["series"], b["accuracy"]) for b in bars} == {("origin (baseline)", 0.5), ("left + view prompt", 0.75)}
    confusion = json.loads((out / "plots/confusion/whatsup_a.llava_7b.multiple_choice.origin-novp.json").read_text())
    assert sorted(map(tuple, (r.values() for r in confusion))) == [("on", "on"), ("on", "on"), ("on", "under")]
    objects = json.loads((out / "plots/objects/vsr_random.llava_7b.true_false.json").read_text())
    assert objects == [
        {"num_objects": 2, "baseline": 0.5, "method": 1.0, "gain": 0.5, "n": 2},
        {"num_objects": 5, "baseline": 0.0, "method": 0.5, "gain": 0.5, "n": 2},
    ]


def test_headline_leaves_out_the_numbers_a_cell_lacks():
    summaries = {
        ("vsr_random", "tiny"): {
            "true_false": {"origin": {"without_view_prompt": _metrics(0.6, n=40)}},
            "not_evaluated": {"all-separate": "takes 1 image"},
        }
    }
    not_evaluated = table.headline(summaries, ("all-separate", "with_view_prompt"))
    assert not_evaluated == {"vsr_random": {"tiny": {"tf": {"base": 0.6, "n": 40}}}}
    baseline_itself = table.headline(summaries, ("origin", "without_view_prompt"))  # no difference to itself
    assert baseline_itself == {"vsr_random": {"tiny": {"tf": {"base": 0.6, "method": 0.6, "n": 40}}}}


def test_without_object_counts_the_objects_plot_folder_holds_an_empty_plot():
    from zerovlm.report.plots import plot_files

    breakdowns = {("vsr_random", "llava_7b"): {"confusion": {}, "objects": {}}}
    files = plot_files(
        {}, breakdowns, {("vsr_random", "llava_7b"): {}}, ("all", "with_view_prompt"), {"vsr_random": "vsr_random"}
    )
    assert files == {
        "objects/no-dataset-with-object-counts.json": [],
        "quality/method-shows-no-view.json": [],
    }  # DVC renders an empty list without an error


def test_layout_orders_rows_by_the_grid_and_columns_by_dataset_then_task():
    both = {
        "multiple_choice": SUMMARIES[("whatsup_a", "llava_7b")]["multiple_choice"],  # choice stored first
        "true_false": SUMMARIES[("vsr_random", "llava_7b")]["true_false"],
        "not_evaluated": {"all-separate": "takes 1 image"},
    }
    summaries = {
        ("synthetic", "tiny"): both,
        ("vsr_random", "tiny"): SUMMARIES[("vsr_random", "llava_7b")],
        **SUMMARIES,
    }
    grid = table.layout(
        summaries, ["vsr_random", "synthetic"], ["tiny", "llava_7b"], ["all-separate", "left", "origin", "all"]
    )
    assert list(grid.columns) == [
        ("vsr_random", "true_false"),
        ("synthetic", "true_false"),
        ("synthetic", "multiple_choice"),
    ]
    assert table.column_labels(grid) == ["vsr_random", "synthetic (true/false)", "synthetic (choice)"]
    assert list(grid.index) == [
        ("tiny", "origin", "without_view_prompt"),
        ("tiny", "all-separate", "not_evaluated"),
        ("tiny", "left", "with_view_prompt"),
        ("tiny", "left", "without_view_prompt"),
        ("llava_7b", "origin", "without_view_prompt"),
        ("llava_7b", "left", "with_view_prompt"),
        ("llava_7b", "left", "without_view_prompt"),
    ]
    assert grid.loc[("tiny", "all-separate", "not_evaluated")].tolist() == [
        None,
        {"not_evaluated": "takes 1 image"},
        {"not_evaluated": "takes 1 image"},
    ]
    assert grid.loc[("tiny", "left", "without_view_prompt"), ("synthetic", "multiple_choice")] is None  # never run
    assert grid.loc[("llava_7b", "left", "with_view_prompt"), ("vsr_random", "true_false")]["accuracy"] == 0.7


def test_objects_plot_sums_counts_over_datasets_per_series():
    from zerovlm.report.plots import objects_rows

    def counts(baseline, method):
        return {
            "objects": {
                "true_false": {"origin": {"without_view_prompt": baseline}, "all": {"with_view_prompt": method}}
            }
        }

    breakdowns = {
        ("sparse", "tiny"): counts({"2": [1, 2], "10": [0, 3]}, {"2": [2, 2], "3": [1, 1]}),
        ("cluttered", "tiny"): counts({"2": [1, 1], "10": [0, 0]}, {"10": [0, 0]}),
    }
    assert objects_rows(breakdowns, ("all", "with_view_prompt"), {"sparse": "synthetic", "cluttered": "synthetic"}) == {
        ("synthetic", "tiny", "true_false"): [
            {"num_objects": 2, "baseline": 0.6667, "method": 1.0, "gain": 0.3333, "n": 3},  # 2 of 3 over both datasets
            {"num_objects": 3, "method": 1.0, "n": 0},  # no baseline at 3 objects
            {"num_objects": 10, "baseline": 0.0, "n": 3},
        ]
    }  # numbers sort as numbers; 0 of 0 left out
