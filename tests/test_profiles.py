"""Profiles: params.yaml is the composed demo profile; the paper profile is valid and faithful."""

from pathlib import Path

import pytest
import yaml

from zerovlm.cli import compose_params
from zerovlm.config import validate_all
from zerovlm.io import ZeroVLMError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _compose(profile, tmp_path):
    out = tmp_path / f"{profile}.yaml"
    compose_params(profile, out, [])
    return out


def test_committed_params_equal_the_composed_demo_profile(in_repo_root, tmp_path):
    composed = yaml.safe_load(_compose("demo", tmp_path).read_text())
    assert composed == yaml.safe_load((ROOT / "params.yaml").read_text()), (
        "params.yaml is stale: run `zerovlm params --profile demo` and commit it")


def test_paper_profile_is_valid_and_matches_the_paper(in_repo_root, tmp_path):
    sections = validate_all(_compose("paper", tmp_path))
    views, infer, data = sections["views"], sections["infer"], sections["data"]
    assert (views.image_size_px, views.guidance_scale, views.num_inference_steps) == (256, 3.0, 50)
    assert views.model.startswith("kxic/zero123") and views.device == "cuda"
    assert set(views.presets) == {"left", "right", "top", "random"}
    assert infer.model == "llava-hf/llava-1.5-13b-hf" and infer.answer_mode == "loglik"
    assert not infer.trust_remote_code
    assert data.source in ("vsr_random", "vsr_zeroshot", "whatsup_a", "whatsup_b")
    assert sections["stitch"].configurations == ("origin", "left", "right", "random", "top", "no-origin",
                                                 "origin+left", "origin+left+right", "all")


def test_unknown_profile_lists_the_valid_ones(in_repo_root, tmp_path):
    with pytest.raises(ZeroVLMError, match="unknown profile 'papr'; valid: demo, paper"):
        compose_params("papr", tmp_path / "x.yaml", [])
