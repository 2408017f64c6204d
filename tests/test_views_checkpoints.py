"""Both hub layouts load through the same code path; bad folders and pickles give clear errors."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from tests.views_fixtures import scene, tiny_models  # noqa: F401  (pytest fixture)
from zerovlm.io import ZeroVLMError, sha256_file
from zerovlm.views.checkpoints import (
    SCHEDULER_CONFIG,
    _PickleFallbackNotice,
    detect_layout,
    load_components,
    load_pose_projection,
)
from zerovlm.views.poses import PRESETS, pose_vector
from zerovlm.views.tiny import build_tiny_zero123
from zerovlm.views.zero123 import Zero123Pipeline


def test_layouts_are_detected(tiny_models):
    assert detect_layout(str(tiny_models["kxic"])) == "kxic"
    assert detect_layout(str(tiny_models["bennyguo"])) == "bennyguo"
    assert (tiny_models["kxic"] / "cc_projection" / "diffusion_pytorch_model.bin").is_file()
    assert (tiny_models["bennyguo"] / "clip_camera_projection" / "diffusion_pytorch_model.safetensors").is_file()


def test_both_layouts_round_trip_to_the_same_model(tiny_models):
    kxic = load_components(tiny_models["kxic"])
    benny = load_components(tiny_models["bennyguo"])
    for a, b in [
        (kxic.unet, benny.unet),
        (kxic.vae, benny.vae),
        (kxic.image_encoder, benny.image_encoder),
        (kxic.pose_projection, benny.pose_projection),
    ]:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert kxic.pose_projection.in_features == kxic.image_encoder.config.projection_dim + 4
    assert {k: kxic.scheduler.config[k] for k in SCHEDULER_CONFIG} == SCHEDULER_CONFIG
    # and they sample the same pixels
    views = [
        Zero123Pipeline.from_pretrained(tiny_models[layout], torch.float32, "cpu")(
            [scene(0)], pose_vector(PRESETS["left"])[None], [torch.Generator().manual_seed(0)], 2, 3.0, 1.0, 32
        )[0]
        for layout in ("kxic", "bennyguo")
    ]
    assert views[0].tobytes() == views[1].tobytes()


def test_fp16_variant_loads(tiny_models):
    parts = load_components(tiny_models["bennyguo"], torch.float16, variant="fp16")
    assert (
        parts.unet.dtype == torch.float16 and parts.pose_projection.weight.dtype == torch.float32
    )  # runs in float32, as the original
    full = load_components(tiny_models["bennyguo"])
    assert torch.allclose(parts.pose_projection.weight.float(), full.pose_projection.weight, atol=1e-3)


def test_tiny_model_bytes_are_deterministic(tmp_path, tiny_models):
    again = build_tiny_zero123(tmp_path / "again", seed=0, layout="kxic")
    files = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tiny_models["kxic"]) for p in tiny_models["kxic"].rglob("*") if p.is_file())
    assert all(sha256_file(again / f) == sha256_file(tiny_models["kxic"] / f) for f in files)
    other = build_tiny_zero123(tmp_path / "other", seed=1, layout="kxic")
    assert sha256_file(other / "unet/diffusion_pytorch_model.bin") != sha256_file(
        again / "unet/diffusion_pytorch_model.bin"
    )


def test_missing_folder_names_path_and_fix(tmp_path):
    with pytest.raises(ZeroVLMError, match="build-tiny-models") as error:
        load_components(tmp_path / "nowhere" / "zero123")
    assert "nowhere" in str(error.value)


def test_folder_without_projection_is_refused(tmp_path, tiny_models):
    broken = shutil.copytree(tiny_models["kxic"], tmp_path / "broken")
    shutil.rmtree(broken / "cc_projection")
    with pytest.raises(ZeroVLMError, match="cc_projection"):
        load_components(broken)
    index = json.loads((broken / "model_index.json").read_text())
    del index["cc_projection"]
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ZeroVLMError, match="pose projection component"):
        load_components(broken)


class Payload:
    """Not a tensor: a pickle holding it must never be unpickled."""


def test_pickle_with_objects_is_refused(tmp_path, tiny_models):
    model = shutil.copytree(tiny_models["kxic"], tmp_path / "model")
    path = model / "cc_projection" / "diffusion_pytorch_model.bin"
    torch.save({"projection.weight": torch.zeros(32, 36), "projection.bias": Payload()}, path)
    with pytest.raises(ZeroVLMError, match="refused"):
        load_pose_projection(str(model), "kxic")
    torch.save({"projection.weight": torch.zeros(32, 36), "projection.bias": 3}, path)
    with pytest.raises(ZeroVLMError, match="refused"):
        load_pose_projection(str(model), "kxic")
    torch.save({"proj.weight": torch.zeros(32, 36), "proj.bias": torch.zeros(32)}, path)
    with pytest.raises(ZeroVLMError, match="projection.bias"):
        load_pose_projection(str(model), "kxic")


def test_wrong_training_schedule_is_refused(tmp_path, tiny_models):
    model = shutil.copytree(tiny_models["kxic"], tmp_path / "model")
    config_path = model / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["beta_end"] = 0.02
    config_path.write_text(json.dumps(config))
    with pytest.raises(ZeroVLMError, match="beta_end"):
        load_components(model)


def test_parts_are_read_in_the_target_dtype_straight_onto_the_device(tiny_models, monkeypatch):
    """Each part's from_pretrained places its weights (device_map): no full copy on the CPU before moving."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    calls = []
    for cls in (UNet2DConditionModel, AutoencoderKL, CLIPVisionModelWithProjection):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, **kwargs):
            calls.append((klass.__name__, kwargs["device_map"]))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    pipeline = Zero123Pipeline.from_pretrained(tiny_models["kxic"], torch.float32, "cpu")
    assert sorted(calls) == [
        ("AutoencoderKL", "cpu"),
        ("CLIPVisionModelWithProjection", "cpu"),
        ("UNet2DConditionModel", "cpu"),
    ]
    assert pipeline.device.type == "cpu" and pipeline.dtype == torch.float32


def test_a_part_without_safetensors_says_how_its_pickle_is_read(tiny_models, capfd, caplog):
    assert (tiny_models["kxic"] / "unet" / "diffusion_pytorch_model.bin").is_file()
    assert not list((tiny_models["kxic"] / "unet").glob("*.safetensors"))
    with caplog.at_level(logging.INFO, logger="zerovlm.views.checkpoints"):
        load_components(tiny_models["kxic"])
    printed = capfd.readouterr().err
    assert "unsafe serialization" not in printed and "An error occurred" not in printed
    notices = [r.getMessage() for r in caplog.records if "read as tensors only" in r.getMessage()]
    assert notices and all(n.startswith(str(tiny_models["kxic"])) for n in notices)
    assert f"{tiny_models['kxic']}/unet: no .safetensors" in notices[0]


def test_other_fetch_errors_are_not_hidden():
    def record(message):
        return logging.LogRecord("diffusers.models.modeling_utils", logging.ERROR, __file__, 0, message, None, None)

    notice = _PickleFallbackNotice()
    assert notice.filter(record("An error occurred while trying to fetch org/m: 401 Client Error: gated repo"))
    assert (
        notice.filter(record("Defaulting to unsafe serialization. Pass `allow_pickle=False` ...")) and not notice.seen
    )
    missing = (
        "An error occurred while trying to fetch /m: Error no file named diffusion_pytorch_model.safetensors found"
    )
    assert not notice.filter(record(missing)) and notice.seen
    assert not notice.filter(record("Defaulting to unsafe serialization. Pass `allow_pickle=False` ..."))
