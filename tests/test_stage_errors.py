"""Bad input at the stage boundary: one clear `error:` line, exit status 2, no finished-looking output."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zerovlm.config import DataConfig, SyntheticSource
from zerovlm.datasets.prepare import prepare_dataset
from zerovlm.datasets.table import write_table
from zerovlm.io import ZeroVLMError
from zerovlm.views.tiny import build_tiny_zero123

ROOT = Path(__file__).resolve().parents[1]


def _params(tmp_path, **sections):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, values in sections.items():
        params[name].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _stage(name, *args):
    result = subprocess.run([sys.executable, "-m", f"stages.{name}", *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "ZEROVLM_LOG": "WARNING"})
    return result.returncode, result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare_dataset(DataConfig(synthetic=SyntheticSource(num_scenes=2)), folder)
    return folder


def test_missing_model_folder(tmp_path, prepared):
    params = _params(tmp_path, views={"model": str(tmp_path / "no-such-model")})
    code, message = _stage("views", "--params", params, "--prepared", prepared, "--out", tmp_path / "views")
    assert code == 2 and message.startswith("error: ") and "no-such-model" in message
    assert "zerovlm build-tiny-models" in message
    assert not (tmp_path / "views").exists()


def test_unreadable_image_names_the_file_and_example(tmp_path, prepared):
    broken = tmp_path / "prepared"
    subprocess.run(["cp", "-r", str(prepared), str(broken)], check=True)
    for image in (broken / "images").iterdir():
        image.write_bytes(b"not an image")
    build_tiny_zero123(tmp_path / "zero123", seed=0)
    params = _params(tmp_path, views={"model": str(tmp_path / "zero123")})
    code, message = _stage("views", "--params", params, "--prepared", broken, "--out", tmp_path / "views")
    assert code == 2 and "images/" in message and "synthetic/test/" in message
    assert not (tmp_path / "views").exists()


def test_invalid_param_value(tmp_path, prepared):
    params = _params(tmp_path, views={"guidance_scale": "strong"})
    code, message = _stage("views", "--params", params, "--prepared", prepared, "--out", tmp_path / "views")
    assert code == 2 and "views.guidance_scale: Input should be a valid number" in message


def test_missing_prepared_table(tmp_path):
    code, message = _stage("views", "--prepared", tmp_path / "nothing", "--out", tmp_path / "views")
    assert code == 2 and "examples.jsonl: file not found" in message


def test_empty_dataset_is_refused(tmp_path):
    with pytest.raises(ZeroVLMError, match="the dataset selection is empty"):
        write_table(tmp_path, [])
    assert not (tmp_path / "examples.jsonl").exists()


def offline_with_an_empty_hub_cache(monkeypatch, tmp_path):
    """As with no network (minus the retries), and without the weights a researcher may have cached."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_unreachable_hub_id_names_the_model_and_the_fix(monkeypatch, tmp_path):
    from zerovlm.views.checkpoints import load_components

    offline_with_an_empty_hub_cache(monkeypatch, tmp_path)
    with pytest.raises(ZeroVLMError, match=r"cannot reach the Hugging Face hub for 'kxic/zero123-105000'"):
        load_components("kxic/zero123-105000")


def test_unreachable_vlm_hub_id_fails_at_once_naming_the_model(monkeypatch, tmp_path):
    from zerovlm.config import InferConfig
    from zerovlm.vlm.registry import load_backend

    offline_with_an_empty_hub_cache(monkeypatch, tmp_path)
    with pytest.raises(ZeroVLMError, match=r"cannot fetch config.json of hub repo 'llava-hf/llava-1.5-7b-hf'"):
        load_backend(InferConfig(model="llava-hf/llava-1.5-7b-hf", device="cpu"))


def test_ctrl_c_is_one_line_saying_what_is_kept(capsys):
    from zerovlm.stage import run_stage

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        run_stage(interrupted)
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.startswith("interrupted: this stage published no output")
