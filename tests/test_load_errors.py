"""A weights pickle that would run code is refused with one error line naming the file, the reason and the fix,
in every loader: Zero123's parts, LLaVA, hf_auto and MiniGPT-4's LLM; nothing in the pickle runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.views_fixtures import tiny_models  # noqa: F401  (pytest fixture)
from zerovlm.config import DataConfig, InferConfig, SyntheticSource
from zerovlm.io import ZeroVLMError
from zerovlm.pipeline import prepare
from zerovlm.views.checkpoints import load_components
from zerovlm.vlm.registry import load_backend
from zerovlm.vlm.tiny import build_tiny_idefics3, build_tiny_llava, build_tiny_minigpt4

ROOT = Path(__file__).resolve().parents[1]
REASON = "unsupported GLOBAL posix.system"  # torch's reason, naming the function the pickle would call


class Payload:
    """Unpickled, it would call os.system (here to create a marker file, so that a test can tell it ran)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_pickle(folder: Path, file_name: str, marker: Path) -> Path:
    """Replace the weights in `folder` by a pickle holding a Payload beside a real tensor."""
    for weights in [*folder.glob("*.safetensors"), *folder.glob("*.bin"), *folder.glob("*.index.json")]:
        weights.unlink()
    path = folder / file_name
    torch.save({"weight": torch.zeros(2), "payload": Payload(marker)}, path)
    return path


def assert_refused(error: pytest.ExceptionInfo, path: Path, marker: Path) -> None:
    message = str(error.value)
    assert message.startswith(f"{path}: refused to unpickle") and len(message.splitlines()) == 1, message
    assert REASON in message and "nothing in it was run" in message and ".safetensors" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "part, file_name",
    [
        ("image_encoder", "pytorch_model.bin"),
        ("unet", "diffusion_pytorch_model.bin"),
        ("vae", "diffusion_pytorch_model.bin"),
    ],
)
def test_zero123_part_with_code_is_refused_naming_the_file_and_reason(tmp_path, tiny_models, part, file_name):
    model = shutil.copytree(tiny_models["kxic"], tmp_path / "zero123")
    path = plant_pickle(model / part, file_name, tmp_path / "ran")
    with pytest.raises(ZeroVLMError) as error:
        load_components(model)
    assert_refused(error, path, tmp_path / "ran")


@pytest.mark.parametrize(
    "backend, build, weights_folder",
    [
        ("llava", build_tiny_llava, "."),
        ("hf_auto", build_tiny_idefics3, "."),
        ("minigpt4", build_tiny_minigpt4, "vicuna"),  # MiniGPT-4's LLM (Vicuna) is a Llama folder of its own
    ],
)
def test_vlm_with_code_in_its_weights_is_refused_naming_the_file_and_reason(tmp_path, backend, build, weights_folder):
    model = tmp_path / backend
    build(model, seed=0)
    path = plant_pickle(model / weights_folder, "pytorch_model.bin", tmp_path / "ran")
    with pytest.raises(ZeroVLMError) as error:
        load_backend(InferConfig(backend=backend, model=str(model), device="cpu", dtype="float32"))
    assert_refused(error, path, tmp_path / "ran")


def test_the_views_stage_prints_one_plain_line_and_no_traceback(tmp_path, tiny_models):
    """Through the stage script, with its output piped as under `dvc repro > log`: no traceback, no colour."""
    model = shutil.copytree(tiny_models["kxic"], tmp_path / "zero123")
    path = plant_pickle(model / "image_encoder", "pytorch_model.bin", tmp_path / "ran")
    prepared = tmp_path / "prepared"
    prepare.run(prepare.Paths(out=prepared), DataConfig(synthetic=SyntheticSource(num_scenes=1)))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["views"].update(model=str(model), device="cpu", dtype="float32")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.views",
            "--params",
            tmp_path / "params.yaml",
            "--prepared",
            prepared,
            "--out",
            tmp_path / "views",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "ZEROVLM_LOG": "WARNING"},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr and "\x1b[" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"error: {path}: refused to unpickle")
    assert not (tmp_path / "views").exists() and not (tmp_path / "ran").exists()
