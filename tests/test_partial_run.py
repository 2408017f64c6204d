"""The one partial-run mechanism of the views and infer stages (zerovlm/partial_run.py)."""

from __future__ import annotations

import json
import logging

import pytest

from zerovlm.parallel import Worker
from zerovlm.partial_run import PartialRun, unfinished

WORKER = Worker()


def _interrupted(out, inputs="settings-1", code="code-1") -> PartialRun:
    """A partial run of `out` whose process wrote one finished line and stopped."""
    partial = PartialRun(out, "infer", inputs, code)
    partial.open(WORKER)
    partial.part(WORKER).with_suffix(".jsonl").write_text('{"record_id": "a"}\n')
    return partial


def test_the_same_stamp_resumes_and_keeps_the_parts(tmp_path, caplog):
    _interrupted(tmp_path / "answers")
    again = PartialRun(tmp_path / "answers", "infer", "settings-1", "code-1")
    with caplog.at_level(logging.INFO):
        again.open(WORKER)
    assert "infer: resuming" in caplog.text
    assert [p.name for p in again.parts()] == ["part-000-of-001.jsonl"]
    assert json.loads((again.folder / "stamp.json").read_text()) == {"inputs": "settings-1", "code": "code-1"}


@pytest.mark.parametrize(
    "inputs, code", [("settings-2", "code-1"), ("settings-1", "code-2")], ids=["other inputs", "other code"]
)
def test_a_partial_from_other_inputs_or_code_is_discarded(tmp_path, caplog, inputs, code):
    _interrupted(tmp_path / "answers")
    again = PartialRun(tmp_path / "answers", "infer", inputs, code)
    with caplog.at_level(logging.WARNING):
        again.open(WORKER)
    assert "infer: discarding" in caplog.text and again.parts() == []
    assert json.loads((again.folder / "stamp.json").read_text()) == {"inputs": inputs, "code": code}


def test_a_partial_folder_without_a_stamp_is_discarded(tmp_path, caplog):
    """E.g. one left by an older version of the code, which stamped it in another file."""
    folder = tmp_path / ".views.partial"
    (folder / "part-000-of-001").mkdir(parents=True)
    (folder / "settings.json").write_text('{"fingerprint": "settings-1"}')
    partial = PartialRun(tmp_path / "views", "views", "settings-1", "code-1", {"settings": {"seed": 0}})
    with caplog.at_level(logging.WARNING):
        partial.open(WORKER)
    assert "views: discarding" in caplog.text and sorted(p.name for p in folder.iterdir()) == ["stamp.json"]


def test_publish_replaces_the_output_and_removes_the_partial_only_on_success(tmp_path):
    out = tmp_path / "answers"
    out.mkdir()
    (out / "old.jsonl").write_text("old\n")
    partial = _interrupted(out)
    with pytest.raises(RuntimeError, match="disk"), partial.publish() as tmp:
        (tmp / "new.jsonl").write_text("new\n")
        raise RuntimeError("disk trouble while writing the output")
    assert [p.name for p in out.iterdir()] == ["old.jsonl"] and partial.parts()  # both kept
    with partial.publish() as tmp:
        (tmp / "new.jsonl").write_text("new\n")
    assert [p.name for p in out.iterdir()] == ["new.jsonl"] and not partial.folder.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers"]  # no temporary left beside it


def test_unfinished_units_are_the_ones_with_any_item_left():
    units = [["a", "b"], ["c"], ["d", "e"]]
    assert unfinished(units, {"a", "b", "d"}, key=str.upper) == units  # keys are compared as `key` gives them
    assert unfinished(units, {"a", "b", "d"}, key=str) == [["c"], ["d", "e"]]
