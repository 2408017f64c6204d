"""`source: table`: a user's JSONL or CSV of examples beside an image folder (zerovlm/datasets/user_table.py)."""

import csv
import json
import os
import shutil

import pandas as pd
import pytest
from PIL import Image

from tests.dvc_helpers import ROOT, SMALL_DEMO, copy_repo, repro
from zerovlm.config import DataConfig, ScoreConfig, parse_section
from zerovlm.datasets.examples import build_examples
from zerovlm.inputs import dataset_inputs
from zerovlm.io import ZeroVLMError
from zerovlm.scoring.metrics import cluster_ids

EXAMPLE = ROOT / "examples/table"


@pytest.fixture
def table(tmp_path):
    """A copy of the repository's example table (examples.jsonl and its images) to spoil."""
    folder = tmp_path / "table"
    shutil.copytree(EXAMPLE, folder)
    return folder


def _records(folder):
    return [json.loads(line) for line in (folder / "examples.jsonl").read_text().splitlines()]


def _write(folder, records):
    (folder / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _build(folder, tmp_path, name="examples.jsonl", **data):
    cfg = DataConfig(source="table", path=str(folder / name), **data)
    out = tmp_path / "prepared"
    out.mkdir(parents=True, exist_ok=True)
    return build_examples(cfg, out, tmp_path / "raw")


def test_example_table_becomes_true_false_and_choice_examples_with_their_groups(tmp_path):
    examples, summary = _build(EXAMPLE, tmp_path)
    assert summary["examples"] == 10 and summary["images"] == 6 and summary["skipped"]["count"] == 0
    assert summary["per_dataset_task"] == {"table": {"multiple_choice": 4, "true_false": 6}}
    by_id = {e.example_id: e for e in examples}
    first = by_id["table/test/rb-left-true"]
    assert (first.task, first.options, first.answer_index, first.relation) == (
        "true_false",
        ("yes", "no"),
        0,
        "left of",
    )
    assert first.pair_id == "table/pair/rb" and first.group_id is None
    assert by_id["table/test/rb-right-false"].answer_index == 1
    choice = by_id["table/test/gy-right"]
    assert (
        choice.task == "multiple_choice"
        and choice.answer_index == 3
        and choice.answer.endswith("right of the yellow box.")
    )
    assert choice.group_id == "table/set/gy" and choice.pair_id == "table/pair/gy-horizontal"
    # images stored by content: the three examples of one image share one file named by its hash
    same_image = {by_id[f"table/test/{i}"].image_file for i in ("gy-on", "gy-on-true", "gy-under-false")}
    assert len(same_image) == 1 and (tmp_path / "prepared" / same_image.pop()).is_file()


def test_a_csv_table_gives_the_same_examples_as_its_jsonl(table, tmp_path):
    records = _records(table)
    with open(table / "examples.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "image", "relation", "caption", "label", "options", "answer", "pair", "set"])
        writer.writeheader()
        for r in records:
            writer.writerow({**r, "options": "|".join(r.get("options", [])), "label": str(r.get("label", ""))})
    from_jsonl, _ = _build(table, tmp_path / "a")
    from_csv, _ = _build(table, tmp_path / "b", name="examples.csv")
    strip = [{**e.to_record(), "source": None} for e in from_jsonl]
    assert [{**e.to_record(), "source": None} for e in from_csv] == strip


def _missing_image(records):
    records[2]["image"] = "nowhere.png"


def _bad_label(records):
    records[1]["label"] = "maybe"


def _duplicate_id(records):
    records[3]["id"] = records[0]["id"]


def _unknown_relation(records):
    records[5]["relation"] = "left off"


BAD = [  # (spoil, line, field, words of the reason)
    (_missing_image, 3, "image", "nowhere.png"),
    (_bad_label, 2, "label", "expected 1 or 0"),
    (_duplicate_id, 4, "id", "duplicate id 'rb-left-true'"),
    (_unknown_relation, 6, "relation", "unknown relation 'left off'"),
]


@pytest.mark.parametrize("spoil, line, field, reason", BAD, ids=[b[0].__name__.strip("_") for b in BAD])
def test_bad_records_stop_prepare_with_one_line_naming_them(table, tmp_path, spoil, line, field, reason):
    records = _records(table)
    spoil(records)
    _write(table, records)
    with pytest.raises(ZeroVLMError) as caught:
        _build(table, tmp_path)
    message = str(caught.value)
    assert f"examples.jsonl:{line}: field {field!r}" in message and reason in message
    assert "data.skip_bad: true" in message


@pytest.mark.parametrize("spoil, line, field, reason", BAD, ids=[b[0].__name__.strip("_") for b in BAD])
def test_bad_records_are_skipped_and_counted_with_skip_bad(table, tmp_path, spoil, line, field, reason):
    records = _records(table)
    spoil(records)
    _write(table, records)
    examples, summary = _build(table, tmp_path, skip_bad=True)
    assert len(examples) == 9
    skipped = summary["skipped"]
    assert skipped["count"] == 1 and skipped["by_field"] == {field: 1}
    assert skipped["records"][0]["line"] == line and reason in skipped["records"][0]["reason"]


def test_a_record_with_both_tasks_or_an_unknown_field_is_bad(table, tmp_path):
    records = _records(table)
    records[0]["options"] = ["a", "b"]
    records[1]["lable"] = 1
    _write(table, records)
    _, summary = _build(table, tmp_path, skip_bad=True)
    reasons = {(r["line"], r["field"]): r["reason"] for r in summary["skipped"]["records"]}
    assert "either caption and label" in reasons[(1, None)] and "unknown field" in reasons[(2, "lable")]


def test_source_table_needs_a_path_and_a_table_file():
    with pytest.raises(ZeroVLMError, match="source 'table' reads a JSONL or CSV file"):
        parse_section("data", {"source": "table"})
    with pytest.raises(ZeroVLMError, match="data.path='nowhere.jsonl': file not found"):
        build_examples(DataConfig(source="table", path="nowhere.jsonl"), ROOT, ROOT)


def test_cluster_is_the_set_else_the_pair_else_the_image():
    rows = pd.DataFrame({"group_id": ["s", None, None], "pair_id": ["p", "p", None], "image_id": ["i1", "i2", "i3"]})
    assert cluster_ids(rows, ScoreConfig()) == ["s", "p", "i3"]
    assert cluster_ids(rows, ScoreConfig(sampling_unit="example")) is None


def test_check_records_the_table_and_its_images_by_content(table):
    params = {"data": {}, "datasets": {"mine": {"source": "table", "path": str(table / "examples.jsonl")}}}
    before = dataset_inputs(params, "mine")
    assert before["path"]["sha256"] and before["images_dir"]["path"] == str(table)
    image = table / "red_left_of_blue.png"
    os.utime(image, ns=(1, 1))  # a fresh clone's mtimes: nothing changed
    assert dataset_inputs(params, "mine") == before
    Image.new("RGB", (64, 64), (9, 9, 200)).save(image)  # new content
    assert dataset_inputs(params, "mine")["images_dir"] != before["images_dir"]


@pytest.mark.slow
def test_example_table_runs_through_the_whole_demo_pipeline(tmp_path):
    demo = {
        **SMALL_DEMO,
        "grid": {"datasets": ["example_table"], "vlms": ["tiny"]},
        "datasets": {
            **SMALL_DEMO["datasets"],
            "example_table": {"source": "table", "path": "examples/table/examples.jsonl"},
        },
    }
    repo = copy_repo(tmp_path / "repo", demo)
    ran, _ = repro(repo)
    assert {"prepare@example_table", "infer@example_table-tiny", "score@example_table-tiny", "report"} <= ran
    summary = json.loads((repo / "metrics/grid/example_table/tiny/summary.json").read_text())
    assert summary["true_false"]["all"]["with_view_prompt"]["n_total"] == 6
    assert summary["multiple_choice"]["all"]["with_view_prompt"]["n_total"] == 4
    records = [json.loads(line) for line in (repo / "data/scored/example_table/tiny/records.jsonl").open()]
    assert {r["group_id"] for r in records} == {None, "table/set/gy"}
    assert "example_table" in (repo / "metrics/results.md").read_text()
