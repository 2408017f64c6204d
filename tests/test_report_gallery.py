"""The HTML gallery: built from a small grid, then opened in a real headless browser (Debian chromium)."""

import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
import tomllib
from PIL import Image

from zerovlm.config import DataConfig, GridConfig, ReportConfig, ScoreConfig, StitchConfig, SyntheticSource
from zerovlm.datasets.table import read_table, write_table
from zerovlm.io import write_json, write_jsonl
from zerovlm.pipeline import gallery as gallery_stage
from zerovlm.pipeline import prepare, score, stitch
from zerovlm.report.gallery import FILTERS, sample_examples
from zerovlm.store import ShardWriter

CONFIGURATIONS = ("origin", "left", "origin+left", "origin+left-separate")
LEFT_QUALITY = {"clip_similarity": 0.81234, "pixel_std": 43.21, "background_share": 0.5678}
DATASETS = {"sparse": (2, 3), "cluttered": (5, 6)}


HOSTILE = "</script><script>alert(1)</script> \"'&<>"


def _build_gallery(root: Path, hostile: bool) -> tuple[Path, dict]:
    """Two synthetic datasets, stand-in views, stitched inputs, made-up answers, scored; then the gallery.

    hostile: every caption, option and relation (a card's data-relation, which the page's script reads)
    carries HOSTILE, and so do the true/false prompts, which quote the caption."""
    image_ids = set()
    for name, (low, high) in DATASETS.items():
        prepare.run(
            prepare.Paths(out=root / "prepared" / name),
            DataConfig(synthetic=SyntheticSource(num_scenes=4, min_objects=low, max_objects=high)),
        )
        if hostile:
            write_table(
                root / "prepared" / name,
                [
                    replace(
                        e,
                        caption=e.caption and f"{HOSTILE} {e.caption}",
                        relation=f"{HOSTILE} {e.relation}",
                        options=e.options if e.task == "true_false" else tuple(f"{HOSTILE} {o}" for o in e.options),
                    )
                    for e in read_table(root / "prepared" / name)
                ],
            )
        image_ids |= {e.image_id for e in read_table(root / "prepared" / name)}
    with ShardWriter(root / "views") as views:
        for image_id in sorted(image_ids):
            for view, colour in (("left", (200, 30, 30)), ("right", (30, 30, 200))):
                quality = {"quality": LEFT_QUALITY} if view == "left" else {}  # right: as a store from before
                views.add(
                    f"{image_id}.{view}",
                    Image.new("RGB", (32, 32), colour),
                    {"image_id": image_id, "view": view, **quality},
                )
    for name in DATASETS:
        stitch.run(
            stitch.Paths(prepared=root / "prepared" / name, views=root / "views", out=root / "stitched" / name),
            StitchConfig(configurations=CONFIGURATIONS, panel_size_px=32, gap_px=2),
        )
        predictions = []
        for index, example in enumerate(read_table(root / "prepared" / name)):
            for configuration in CONFIGURATIONS:
                for prompt in (True, False):
                    mode = "with_view_prompt" if prompt else "without_view_prompt"
                    scores = [
                        -1.0 - ((index + len(configuration) + prompt) % len(example.options)) for _ in example.options
                    ]
                    scores[(index + prompt) % len(scores)] = 0.0
                    predictions.append(
                        {
                            "record_id": f"{example.example_id}|{configuration}|{mode}",
                            "example_id": example.example_id,
                            "configuration": configuration,
                            "with_view_prompt": prompt,
                            "answers": ["Yes", "No"] if example.task == "true_false" else list("ABCD")[: len(scores)],
                            "option_logprobs": scores,
                            "rendered_prompt": f"USER: <image>\n<{configuration}> {example.caption} ASSISTANT:",
                        }
                    )
        write_jsonl(root / "predictions" / name / "tiny" / "predictions.jsonl", predictions)
        write_json(root / "predictions" / name / "tiny" / "summary.json", {"answer_mode": "loglik", "requests": 1})
        score.run(
            score.Paths(
                prepared=root / "prepared" / name,
                predictions=root / "predictions" / name / "tiny",
                metrics=root / "metrics" / name,
                records=root / "scored" / name / "tiny" / "records.jsonl",
            ),
            ScoreConfig(bootstrap_samples=0),
            dataset=name,
            vlm="tiny",
        )
    summary = gallery_stage.run(
        gallery_stage.Paths(
            prepared=root / "prepared",
            views=root / "views",
            stitched=root / "stitched",
            predictions=root / "predictions",
            scored=root / "scored",
            out=root / "gallery",
        ),
        GridConfig(datasets=tuple(DATASETS), vlms=("tiny",)),
        ReportConfig(gallery_examples=3, gallery_image_px=64),
    )
    return root / "gallery", summary


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    return _build_gallery(tmp_path_factory.mktemp("gallery"), hostile=False)


@pytest.fixture(scope="module")
def hostile_gallery(tmp_path_factory):
    return _build_gallery(tmp_path_factory.mktemp("hostile"), hostile=True)


def test_each_view_shows_its_recorded_quality(gallery):
    page = (gallery[0] / "index.html").read_text()
    left = "left view, CLIP similarity 0.812, pixel std 43.2, background 57%"
    assert page.count(f"<figcaption>{left}</figcaption>") == 6  # one per example
    assert page.count("<figcaption>right view, quality not recorded") == 6


def test_gallery_is_static_and_self_contained(gallery):
    folder, summary = gallery
    page = (folder / "index.html").read_text()
    assert summary["examples"] == 6 and summary["cards"] == 6 * len(CONFIGURATIONS) * 2
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources and all((folder / src).is_file() for src in sources)
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from the network
    assert page.count('class="card ') == summary["cards"]
    assert "USER: &lt;image&gt;" in page and "log-probabilities:" in page
    assert sum(f.stat().st_size for f in folder.rglob("*")) < 2_000_000


class _Parsed(HTMLParser):
    """The page as html.parser reads it: tags with their attributes, and text with whitespace runs collapsed
    (kept as is inside <pre>, where it shows), so that two pages differing only in layout compare equal."""

    def __init__(self, page: str):
        super().__init__()
        self.items: list[tuple] = []
        self._pre = 0
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.items.append(("start", tag, tuple(attrs)))
        self._pre += tag == "pre"

    def handle_endtag(self, tag):
        self.items.append(("end", tag))
        self._pre -= tag == "pre"

    def handle_data(self, data):
        text = data if self._pre else " ".join(data.split())
        if text:
            self.items.append(("text", text))

    def values(self, tag: str, attribute: str) -> list[str]:
        """The value of `attribute` on every <tag> that has it, in page order."""
        return [
            dict(item[2])[attribute] for item in self.items if item[:2] == ("start", tag) and attribute in dict(item[2])
        ]

    def text(self) -> str:
        return " ".join(item[1] for item in self.items if item[0] == "text")


def test_hostile_text_stays_text_in_the_html_and_the_script_data(hostile_gallery):
    folder, summary = hostile_gallery
    page = (folder / "index.html").read_text()
    assert page.count("<script") == 1 and page.count("</script") == 1  # the page's own script, nothing injected
    assert HOSTILE not in page and "<script>alert" not in page
    parsed = _Parsed(page)
    text = parsed.text()  # what a reader sees: the text as written
    assert text.count(f"relation {HOSTILE} ") == summary["examples"]
    true_false = parsed.items.count(("text", "true/false"))  # sections; each has a card per configuration x mode
    assert 0 < true_false < summary["examples"]
    assert text.count(f"> {HOSTILE} ") == true_false * len(CONFIGURATIONS) * 2  # their prompts quote the caption
    assert f"= {HOSTILE} " in text  # a multiple-choice answer names its option
    # what the script reads: every card's data-relation and the relation filter's values, exactly as written
    relations = parsed.values("article", "data-relation")
    assert len(relations) == summary["cards"] and all(value.startswith(f"{HOSTILE} ") for value in relations)
    assert sorted(set(relations)) == [value for value in parsed.values("option", "value") if HOSTILE in value]
    keys = re.search(r"const KEYS = (.*);", page).group(1)
    assert json.loads(keys) == [key for key, _ in FILTERS]


def test_templates_ship_as_package_data():
    """An installed (non-editable) zerovlm has the gallery's template: pyproject's package-data matches it."""
    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["zerovlm"]
    shipped = {path for pattern in patterns for path in (root / "zerovlm").glob(pattern)}
    templates = set((root / "zerovlm" / "report" / "templates").iterdir())
    assert templates and templates <= shipped, sorted(str(t) for t in templates - shipped)


def test_sampling_is_seeded_and_spread_over_relations(tmp_path):
    prepare.run(prepare.Paths(out=tmp_path / "p"), DataConfig(synthetic=SyntheticSource(num_scenes=8)))
    examples = read_table(tmp_path / "p")
    first = sample_examples(examples, 4, seed=0, dataset="d")
    assert first == sample_examples(examples, 4, seed=0, dataset="d")
    assert len({e.relation for e in first}) == 4


# ---------------------------------------------------------------- in a real browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _dump_dom(page: Path, hash_: str, profile: Path) -> str:
    """The DOM after load (scripts run, images decoded), as headless Chromium prints it."""
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            f"{page.as_uri()}#{hash_}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(profile)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _cards(dom: str) -> list[tuple[dict, bool]]:
    """(data attributes, hidden) of every card in a dumped DOM."""
    cards = []
    for tag in re.findall(r"<article [^>]*>", dom):
        attributes = dict(re.findall(r'data-(\w+)="([^"]*)"', tag))
        cards.append((attributes, bool(re.search(r'\shidden(=""|\s|>)', tag))))
    return cards


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install -y chromium)")
def test_gallery_in_headless_chromium_loads_images_and_filters(gallery, tmp_path):
    folder, summary = gallery
    page = folder / "index.html"

    dom = _dump_dom(page, "", tmp_path / "profile")
    body = re.search(r"<body ([^>]*)>", dom).group(1)
    images = int(re.search(r'data-images-loaded="(\d+)"', body).group(1))
    assert re.search(r'data-images-failed="0"', body), body
    assert images == dom.count("<img ") > 0
    cards = _cards(dom)
    assert len(cards) == summary["cards"] and not any(hidden for _, hidden in cards)

    wanted = {"relation": "left of", "configuration": "origin+left", "correct": "wrong"}
    dom = _dump_dom(page, urlencode(wanted, quote_via=quote), tmp_path / "profile")  # "+" as %2B
    cards = _cards(dom)
    shown = [attributes for attributes, hidden in cards if not hidden]
    expected = [a for a, _ in cards if all(a[k] == v for k, v in wanted.items())]
    assert shown == expected and 0 < len(shown) < len(cards)
    assert f'data-cards-shown="{len(shown)}"' in dom and f'<span id="shown">{len(shown)}</span>' in dom
    sections = re.findall(r"<section [^>]*>", dom)
    assert any("hidden" in tag for tag in sections)  # examples without a matching card are hidden too


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install -y chromium)")
def test_hostile_text_in_headless_chromium_runs_no_script_and_filters_as_data(hostile_gallery, tmp_path):
    folder, summary = hostile_gallery
    page = folder / "index.html"
    relations = _Parsed(page.read_text()).values("article", "data-relation")
    assert f'data-cards-shown="{summary["cards"]}"' in _dump_dom(page, "", tmp_path / "profile")  # the script ran
    dom = _dump_dom(page, urlencode({"relation": relations[0]}, quote_via=quote), tmp_path / "profile")
    shown = sum(not hidden for _, hidden in _cards(dom))
    assert shown == relations.count(relations[0]) and f'data-cards-shown="{shown}"' in dom
    assert "alert(1)</script>" not in dom and "<script>alert" not in dom
