"""The `modern` profile: the ZeroVLM grid on today's VLMs through hf_auto, "-separate" configurations included."""

import importlib.util
import json
import shutil
from collections import Counter

import pytest
import yaml
from PIL import Image

from tests.test_datasets_table import EXAMPLE
from zerovlm.cli import compose_params
from zerovlm.config import DataConfig, parse_section, validate_all, vlm_config
from zerovlm.datasets.table import read_table
from zerovlm.io import ZeroVLMError
from zerovlm.pipeline import infer, prepare, stitch
from zerovlm.store import ShardWriter
from zerovlm.view_configurations import is_separate
from zerovlm.views.poses import VIEW_PRESETS
from zerovlm.vlm import loading
from zerovlm.vlm.tiny import build_tiny_idefics3

ROOT = EXAMPLE.parents[1]
MODERN_VLMS = ("qwen2_5_vl_7b", "llava_onevision_7b", "smolvlm", "idefics3_8b")
PAPER_DATASETS = ("vsr_random", "vsr_zeroshot", "whatsup_a", "whatsup_b")


@pytest.fixture(scope="module")
def modern(tmp_path_factory):
    """params composed for the modern profile, from the repository root as `zerovlm params` runs."""
    out = tmp_path_factory.mktemp("modern") / "params.yaml"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        compose_params("modern", out, [])
    return out


def test_modern_profile_is_valid_and_runs_todays_vlms_on_the_separate_configurations(modern):
    sections = validate_all(modern)
    params = yaml.safe_load(modern.read_text())
    assert sections["grid"].datasets == PAPER_DATASETS and sections["grid"].vlms == MODERN_VLMS
    for name in MODERN_VLMS:
        cfg = vlm_config(params, name)
        assert cfg.backend == "hf_auto" and cfg.device == "cuda" and not cfg.trust_remote_code
        assert cfg.revision is None  # pinned to a commit in models.lock by the first run's check stage
    separate = [c for c in sections["stitch"].configurations if is_separate(c)]
    assert separate == ["no-origin-separate", "origin+left-separate", "origin+left+right-separate", "all-separate"]
    assert sections["views"].model == "kxic/zero123-105000"


def test_modern_profile_grid_expands_to_the_expected_instances(modern, tmp_path):
    """dvc.yaml with params composed for the modern profile, expanded by DVC's parser (nothing runs)."""
    from dvc.repo import Repo

    Repo.init(tmp_path, no_scm=True)
    shutil.copy2(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy2(modern, tmp_path / "params.yaml")
    with Repo(str(tmp_path)) as repo:
        stages = {stage.name for stage in repo.index.stages}
    per_dataset = {f"{s}@{d}" for s in ("prepare", "stitch") for d in PAPER_DATASETS}
    per_instance = {f"{s}@{d}-{v}" for s in ("infer", "score") for d in PAPER_DATASETS for v in MODERN_VLMS}
    assert stages == {"check", "models", "pool", "views", "report", "gallery"} | per_dataset | per_instance


def test_the_tiny_idefics3_answers_the_modern_separate_configurations(modern, tmp_path):
    """The modern profile's SmolVLM entry (Idefics3 architecture) with the tiny Idefics3 in its place, on the
    example table: every configuration, the -separate ones included, is answered, none left not evaluated."""
    params = yaml.safe_load(modern.read_text())
    prepare.run(
        prepare.Paths(out=tmp_path / "prepared"), DataConfig(source="table", path=str(EXAMPLE / "examples.jsonl"))
    )
    with ShardWriter(tmp_path / "views") as views:  # the views' pixels do not matter to inference
        for image_id in sorted({e.image_id for e in read_table(tmp_path / "prepared")}):
            for n, view in enumerate(VIEW_PRESETS):
                views.add(f"{image_id}.{view}", Image.new("RGB", (32, 32), (40 * n, 90, 200 - 40 * n)))
    stitch_cfg = parse_section("stitch", {**params["stitch"], "panel_size_px": 32, "gap_px": 2})
    stitch.run(
        stitch.Paths(prepared=tmp_path / "prepared", views=tmp_path / "views", out=tmp_path / "stitched"), stitch_cfg
    )
    build_tiny_idefics3(tmp_path / "idefics3", seed=0)
    smolvlm = params["vlms"]["smolvlm"]
    params["vlms"]["smolvlm"] = {**smolvlm, "model": str(tmp_path / "idefics3"), "device": "cpu", "dtype": "float32"}
    params["infer"]["view_prompt"] = [True]
    cfg = vlm_config(params, "smolvlm")
    summary = infer.run(
        infer.Paths(prepared=tmp_path / "prepared", stitched=tmp_path / "stitched", out=tmp_path / "out"), cfg
    )
    assert summary["not_evaluated"] == {} and summary["requests_not_evaluated"] == 0
    records = [json.loads(line) for line in (tmp_path / "out/predictions.jsonl").open()]
    answered = Counter(r["configuration"] for r in records if r["with_view_prompt"])
    assert answered == dict.fromkeys(stitch_cfg.configurations, 10)  # every example of the table, once each
    shown = next(r for r in records if r["configuration"] == "all-separate")["rendered_prompt"]
    assert shown.count("<image>") == 4  # original, left, right and random view, each its own image


def test_a_processor_that_needs_torchvision_says_how_to_install_it(monkeypatch, tmp_path):
    from transformers import AutoModelForImageTextToText, Qwen2VLVideoProcessor

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: the missing-package error cannot occur")
    build_tiny_idefics3(tmp_path, seed=0)
    # Qwen2-VL's processor builds this video processor; without torchvision transformers raises ImportError
    monkeypatch.setattr(loading, "load_processor", lambda *_: Qwen2VLVideoProcessor())
    cfg = parse_section("infer", {"backend": "hf_auto", "model": str(tmp_path), "device": "cpu"})
    with pytest.raises(ZeroVLMError) as caught:
        loading.load_transformers_vlm(AutoModelForImageTextToText, cfg)
    message = str(caught.value)
    assert "\n" not in message and "pip install torchvision" in message and str(tmp_path) in message
