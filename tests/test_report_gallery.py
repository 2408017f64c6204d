"""The HTML gallery: built from a small grid, then opened in a real headless browser (Debian chromium)."""

import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from PIL import Image

from zerovlm.compose import stitch_stage
from zerovlm.config import DataConfig, ReportConfig, ScoreConfig, StitchConfig, SyntheticSource
from zerovlm.datasets.prepare import prepare_dataset
from zerovlm.datasets.table import read_table
from zerovlm.io import write_json, write_jsonl
from zerovlm.report.gallery import gallery_stage, sample_examples
from zerovlm.scoring.metrics import score_stage
from zerovlm.store import ShardWriter

CONFIGURATIONS = ("origin", "left", "origin+left")
DATASETS = {"sparse": (2, 3), "cluttered": (5, 6)}


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """Two synthetic datasets, stand-in views, stitched inputs, made-up answers, scored; then the gallery."""
    root = tmp_path_factory.mktemp("gallery")
    image_ids = set()
    for name, (low, high) in DATASETS.items():
        prepare_dataset(DataConfig(synthetic=SyntheticSource(num_scenes=4, min_objects=low, max_objects=high)),
                        root / "prepared" / name)
        image_ids |= {e.image_id for e in read_table(root / "prepared" / name)}
    with ShardWriter(root / "views") as views:
        for image_id in sorted(image_ids):
            for view, colour in (("left", (200, 30, 30)), ("right", (30, 30, 200))):
                views.add(f"{image_id}.{view}", Image.new("RGB", (32, 32), colour), {"image_id": image_id, "view": view})
    for name in DATASETS:
        stitch_stage(StitchConfig(configurations=CONFIGURATIONS, panel_size_px=32, gap_px=2),
                     root / "prepared" / name, root / "views", root / "stitched" / name)
        predictions = []
        for index, example in enumerate(read_table(root / "prepared" / name)):
            for configuration in CONFIGURATIONS:
                for prompt in (True, False):
                    mode = "with_view_prompt" if prompt else "without_view_prompt"
                    scores = [-1.0 - ((index + len(configuration) + prompt) % len(example.options))
                              for _ in example.options]
                    scores[(index + prompt) % len(scores)] = 0.0
                    predictions.append({
                        "record_id": f"{example.example_id}|{configuration}|{mode}", "example_id": example.example_id,
                        "configuration": configuration, "with_view_prompt": prompt,
                        "answers": ["Yes", "No"] if example.task == "true_false" else list("ABCD")[:len(scores)],
                        "option_logprobs": scores,
                        "rendered_prompt": f"USER: <image>\n<{configuration}> {example.caption} ASSISTANT:"})
        write_jsonl(root / "predictions" / name / "tiny" / "predictions.jsonl", predictions)
        write_json(root / "predictions" / name / "tiny" / "summary.json", {"answer_mode": "loglik", "requests": 1})
        score_stage(ScoreConfig(bootstrap_samples=0), root / "prepared" / name, root / "predictions" / name / "tiny",
                    root / "metrics" / name, root / "scored" / name / "tiny" / "records.jsonl", dataset=name, vlm="tiny")
    summary = gallery_stage(list(DATASETS), ["tiny"], ReportConfig(gallery_examples=3, gallery_image_px=64),
                            root / "prepared", root / "views", root / "stitched", root / "predictions",
                            root / "scored", root / "gallery")
    return root / "gallery", summary


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


def test_sampling_is_seeded_and_spread_over_relations(tmp_path):
    prepare_dataset(DataConfig(synthetic=SyntheticSource(num_scenes=8)), tmp_path / "p")
    examples = read_table(tmp_path / "p")
    first = sample_examples(examples, 4, seed=0, dataset="d")
    assert first == sample_examples(examples, 4, seed=0, dataset="d")
    assert len({e.relation for e in first}) == 4


# ---------------------------------------------------------------- in a real browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _dump_dom(page: Path, hash_: str, profile: Path) -> str:
    """The DOM after load (scripts run, images decoded), as headless Chromium prints it."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
         "--dump-dom", f"{page.as_uri()}#{hash_}"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(profile)})
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
