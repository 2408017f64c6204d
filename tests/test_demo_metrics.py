"""The demo pipeline reproduces the committed metrics: a change of code that moves a number fails here.

`dvc repro` with the committed params.yaml (the demo profile) in a temporary copy of the working tree, then every
metrics file compared with the committed one, except the fields that record how and where the run happened
(IDENTITY_FIELDS). The committed metrics come from a CPU run: on a GPU the float kernels differ, and across
CPUs the float32 kernels may differ in their last bits: where that flips the uint8 rounding of a view's pixel, the
view's CLIP similarity (metrics/plots/quality) moves in its last kept digits. So JSON numbers that are not
integers are compared to FLOAT_TOLERANCE; a code change that moves a result moves it by far more (one verdict in
the demo's largest split moves an accuracy by more than 1e-2).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from tests.dvc_helpers import ROOT, copy_repo, run

pytestmark = pytest.mark.slow

COMPARED = (
    "results.csv",
    "results.md",
    "headline.json",
    "grid/*/*/summary.json",
    "grid/*/*/per_relation.json",
    "grid/*/*/breakdown.json",
    "grid/*/*/provenance.json",
    "plots/**/*.json",
)
# Per file name, the fields (paths of keys) that record the run rather than its results.
IDENTITY_FIELDS = {
    "summary.json": [("overhead",)],  # seconds and peak memory
    "provenance.json": [
        ("infer", "fingerprint"),  # a hash that covers the backends' code
        ("infer", "versions"),
        ("infer", "device"),
        ("views", "device"),
    ],
}

FLOAT_TOLERANCE = 1e-3


def _without(document, fields: list[tuple[str, ...]]):
    for *parents, leaf in fields:
        node = document
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return document


def _read(path: Path):
    if path.suffix != ".json":
        return path.read_text()
    return _without(json.loads(path.read_text()), IDENTITY_FIELDS.get(path.name, []))


def _same(produced, committed) -> bool:
    """Equal, with non-integer numbers equal to FLOAT_TOLERANCE."""
    if isinstance(produced, float) or isinstance(committed, float):
        numbers = all(type(value) in (int, float) for value in (produced, committed))
        return numbers and math.isclose(produced, committed, rel_tol=0.0, abs_tol=FLOAT_TOLERANCE)
    if isinstance(produced, dict) and isinstance(committed, dict):
        return produced.keys() == committed.keys() and all(_same(produced[key], committed[key]) for key in produced)
    if isinstance(produced, list) and isinstance(committed, list):
        return len(produced) == len(committed) and all(map(_same, produced, committed))
    return type(produced) is type(committed) and produced == committed


def _compared(folder: Path) -> list[Path]:
    return sorted(path.relative_to(folder) for pattern in COMPARED for path in folder.glob(pattern))


def test_the_demo_reproduces_the_committed_metrics(tmp_path):
    repo = copy_repo(tmp_path / "repo", demo=yaml.safe_load((ROOT / "conf/profile/demo.yaml").read_text()))
    shutil.copy2(ROOT / "params.yaml", repo / "params.yaml")  # the committed demo params, whatever conf/ holds now
    shutil.rmtree(repo / "metrics")  # every file compared below is written by this run
    run(["dvc", "repro"], repo, timeout=1800)
    committed, produced = _compared(ROOT / "metrics"), _compared(repo / "metrics")
    assert produced == committed
    changed = [
        str(name) for name in committed if not _same(_read(repo / "metrics" / name), _read(ROOT / "metrics" / name))
    ]
    assert changed == [], f"metrics/ files that differ from the committed ones (run `dvc repro` and compare): {changed}"


def test_metrics_comparison_tolerates_only_last_digit_float_noise():
    committed = {"rows": [{"quality": 0.947056, "n": 4, "gain": -0.25}], "name": "a"}
    assert _same({"rows": [{"quality": 0.947561, "n": 4, "gain": -0.25}], "name": "a"}, committed)
    assert not _same({"rows": [{"quality": 0.947056, "n": 4, "gain": 0.0}], "name": "a"}, committed)
    assert not _same({"rows": [{"quality": 0.947056, "n": 5, "gain": -0.25}], "name": "a"}, committed)
    assert not _same({"rows": [{"quality": 0.947056, "n": 4, "gain": -0.25}], "name": "b"}, committed)
    assert not _same({"rows": [], "name": "a"}, committed)
    assert not _same({"rows": [{"quality": "0.947056", "n": 4, "gain": -0.25}], "name": "a"}, committed)
