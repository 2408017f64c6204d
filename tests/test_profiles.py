"""Profiles: params.yaml is the composed demo profile; the paper profile is valid and faithful."""

import json
from pathlib import Path

import pytest
import yaml

from zerovlm.cli import compose_params, main
from zerovlm.config import validate_all, vlm_config
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
        "params.yaml is stale: run `zerovlm params --profile demo` and commit it"
    )


def test_paper_profile_is_valid_and_matches_the_paper(in_repo_root, tmp_path):
    sections = validate_all(_compose("paper", tmp_path))
    views, infer, data = sections["views"], sections["infer"], sections["data"]
    assert (views.image_size_px, views.guidance_scale, views.num_inference_steps) == (256, 3.0, 50)
    assert views.model.startswith("kxic/zero123") and views.device == "cuda"
    assert set(views.presets) == {"left", "right", "top", "random"}
    assert infer.model == "llava-hf/llava-1.5-13b-hf" and infer.answer_mode == "loglik"
    assert not infer.trust_remote_code
    assert data.source in ("vsr_random", "vsr_zeroshot", "whatsup_a", "whatsup_b")
    assert sections["stitch"].configurations == (
        "origin",
        "left",
        "right",
        "random",
        "top",
        "no-origin",
        "origin+left",
        "origin+left+right",
        "all",
    )


# Vision-CAIR/MiniGPT-4's README: Vicuna v0 (merged) on the hub, the released llama_proj checkpoints on Drive
PAPER_MINIGPT4 = {
    "minigpt4_7b": ("Vision-CAIR/vicuna-7b", "gdrive:1RY9jV0dyqLX-o38LrumkKRh6Jtaop58R"),
    "minigpt4_13b": ("Vision-CAIR/vicuna", "gdrive:1a4zLvaiDBr-36pasffmgpvH5P7CKmpze"),
}


def test_the_paper_grid_has_llava_and_minigpt4_in_both_sizes(in_repo_root, tmp_path):
    out = tmp_path / "params.yaml"
    main(["params", "--profile", "paper", "--out", str(out)])  # `zerovlm params --profile paper`
    params = yaml.safe_load(out.read_text())
    assert params["grid"]["vlms"] == ["llava_7b", "llava_13b", "minigpt4_7b", "minigpt4_13b"]
    for name, (llm, llama_proj) in PAPER_MINIGPT4.items():
        cfg = vlm_config(params, name)
        assert cfg.backend == "minigpt4"
        assert json.loads((ROOT / cfg.model / "minigpt4.json").read_text()) == {  # committed, no folder to make
            "variant": "vicuna0",
            "vision_qformer": "Salesforce/blip2-flan-t5-xxl",
            "llama_proj": llama_proj,
            "llm": llm,
        }


def test_unknown_profile_lists_the_valid_ones(in_repo_root, tmp_path):
    with pytest.raises(ZeroVLMError, match="unknown profile 'papr'; valid: demo, modern, paper"):
        compose_params("papr", tmp_path / "x.yaml", [])
