"""The README and docs/ stay true to the clone: links resolve, named files exist, and the figure script works."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zerovlm.datasets.table import Example, write_table
from zerovlm.io import ZeroVLMError, write_jsonl
from zerovlm.store import ShardWriter

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# a path inside the repository, as the pages write them in backticks (outputs, under data/ and in DVC's cache,
# are not in a clone)
REPO_PATH = re.compile(r"^(zerovlm|stages|tests|benchmarks|conf|docs|\.dvc(?!/cache)|\.ci)/[^\s<>{}*|]+$")
FENCED = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)  # a fenced code block


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code."""
    return re.sub(r"`[^`\n]*`", "", FENCED.sub("", text))


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", FENCED.sub("", page.read_text()), re.MULTILINE)
    return {_anchor(heading) for heading in headings}


def test_docs_pages_exist():
    assert len(PAGES) > 1, "docs/*.md holds the reference the README links to"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: link to {target}, which the clone does not have"
        if anchor:
            assert anchor in _anchors(linked), f"{page.name}: link to {target}: no such heading"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_repository_files_exist(page):
    named = {m for m in re.findall(r"`([^`\n]+)`", page.read_text()) if REPO_PATH.match(m)}
    missing = sorted(m for m in named if not (ROOT / m).exists())
    assert not missing, f"{page.name} names files the clone does not have: {missing}"


def test_where_is_table_names_one_file_per_row():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Where is ", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| what")]
    assert len(rows) >= 8
    for row in rows:
        files = re.findall(r"\]\(([^)]+)\)", row)
        assert len(files) == 1 and (ROOT / files[0]).is_file(), row


def _make_figure_module():
    spec = importlib.util.spec_from_file_location("make_figure", ROOT / "docs" / "make_figure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo_run(root: Path, configuration: str = "all") -> np.ndarray:
    """A finished run's three inputs of the figure, for one true/false example; returns its stitched pixels."""
    examples = [
        Example(
            "d/test/0/mc",
            "synthetic",
            "test",
            "multiple_choice",
            "img0",
            "images/img0.png",
            "",
            ("A left of B.", "A right of B."),
            0,
            "left of",
        ),
        Example(
            "d/test/0/tf",
            "synthetic",
            "test",
            "true_false",
            "img0",
            "images/img0.png",
            "A left of B.",
            ("yes", "no"),
            0,
            "left of",
        ),
    ]
    write_table(root / "data/prepared/toy", examples)
    pixels = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    with ShardWriter(root / "data/stitched/toy") as writer:
        writer.add("img0.origin", Image.new("RGB", (10, 10)), {"image_id": "img0", "configuration": "origin"})
        writer.add(
            f"img0.{configuration}", Image.fromarray(pixels), {"image_id": "img0", "configuration": configuration}
        )
    write_jsonl(
        root / "data/predictions/toy/vlm/predictions.jsonl",
        [
            {"example_id": "d/test/0/tf", "configuration": "all", "with_view_prompt": False, "rendered_prompt": "off"},
            {"example_id": "d/test/0/mc", "configuration": "all", "with_view_prompt": True, "rendered_prompt": "mc"},
            {"example_id": "d/test/0/tf", "configuration": "all", "with_view_prompt": True, "rendered_prompt": "on"},
        ],
    )
    return pixels


def test_make_figure_enlarges_the_all_input_and_returns_its_prompt(tmp_path):
    pixels = _demo_run(tmp_path)
    out = tmp_path / "figure.png"
    prompt = _make_figure_module().make_figure(tmp_path, "toy", "vlm", None, out, size_px=32)
    assert prompt == "on"  # the first true/false example, with the view prompt
    expected = pixels.repeat(3, axis=0).repeat(3, axis=1)  # a whole factor, nearest neighbour: round(32 / 10)
    assert np.array_equal(np.asarray(Image.open(out)), expected)


def test_make_figure_without_an_all_input_names_the_store(tmp_path):
    _demo_run(tmp_path, configuration="left")
    with pytest.raises(ZeroVLMError, match=r"data/stitched/toy: no 'all' input of image img0"):
        _make_figure_module().make_figure(tmp_path, "toy", "vlm", None, tmp_path / "figure.png", size_px=32)
