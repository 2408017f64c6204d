"""Load Zero123's components from a hub id or a local folder, in either public diffusers layout.

| layout   | repos                                   | pose projection                                    |
|----------|-----------------------------------------|----------------------------------------------------|
| kxic     | kxic/zero123-{105000,165000,xl}, ...    | cc_projection/diffusion_pytorch_model.bin,        |
|          |                                         | keys projection.{weight,bias} (a pickle)           |
| bennyguo | bennyguo/*, ashawkey/* (*-diffusers)     | clip_camera_projection/*.safetensors,              |
|          |                                         | keys proj.{weight,bias}; fp16 / fp16_ema variants |

Parts are loaded one by one with the library classes (no community pipeline, never remote code).
Pickle files are read only through `torch.load(weights_only=True)` and must hold tensors alone.

The scheduler is always built from the values in SCHEDULER_CONFIG (the original LDM sampler's DDIM),
whatever the checkpoint's scheduler/ folder says: the published folders disagree on sampling options
(PNDM or DDIM, steps_offset, set_alpha_to_one), while the noise schedule itself is fixed by training.
A checkpoint whose *training* schedule (betas, train steps, prediction type) differs is refused.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.models import modeling_utils
from transformers import CLIPVisionModelWithProjection

from zerovlm.io import ZeroVLMError, read_json
from zerovlm.pickles import refused_pickles
from zerovlm.vlm.model_files import repository_file

log = logging.getLogger(__name__)

# The note's DDIM configuration (= LDM's DDIMSampler over the SD-1.x training schedule).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
)
_TRAINING_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")
# layout name -> (projection folder, weight-file stem, state-dict key prefix)
LAYOUTS = {
    "kxic": ("cc_projection", "diffusion_pytorch_model", "projection"),
    "bennyguo": ("clip_camera_projection", "diffusion_pytorch_model", "proj"),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FIX_HINT = (
    "for the demo profile build the tiny model with `zerovlm build-tiny-models`; for a hub id check "
    "the name, the network or HF_HOME's cache"
)


@dataclass
class Zero123Components:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    image_encoder: CLIPVisionModelWithProjection
    pose_projection: torch.nn.Linear  # (projection_dim + 4) -> cross_attention_dim, float32 in any dtype
    scheduler: DDIMScheduler
    layout: str  # "kxic" or "bennyguo"


def make_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULER_CONFIG)


def _is_local(model: str) -> bool:
    if Path(model).exists():
        return True
    if _HUB_ID.match(model) and not model.startswith((".", "/")):
        return False
    raise ZeroVLMError(f"model folder {model!r} not found (looked in {Path(model).resolve()}); {FIX_HINT}")


def _model_file(model: str, relative: str, required: bool = True, revision: str | None = None) -> Path | None:
    """A file of the model, from the local folder or the hub (cache first); None if absent and optional."""
    if _is_local(model):
        path = Path(model) / relative
        if path.is_file():
            return path
        if required:
            raise ZeroVLMError(f"{path}: missing from model folder {model}; {FIX_HINT}")
        return None
    try:
        path = repository_file(model, relative, where="views.model", revision=revision)
    except ZeroVLMError as error:
        raise ZeroVLMError(f"{error}; {FIX_HINT}") from None
    if path is None and required:
        raise ZeroVLMError(f"hub repo {model!r} has no file {relative}; is it a Zero123 repo?")
    return path


def detect_layout(model: str, revision: str | None = None) -> str:
    """kxic or bennyguo, from model_index.json's component names."""
    index_path = _model_file(model, "model_index.json", revision=revision)
    index = read_json(index_path, FIX_HINT)
    found = [name for name, (folder, _, _) in LAYOUTS.items() if folder in index]
    if len(found) != 1:
        folders = [folder for folder, _, _ in LAYOUTS.values()]
        raise ZeroVLMError(
            f"{index_path}: expected exactly one pose projection component of {folders}, "
            f"found components {sorted(k for k in index if not k.startswith('_'))}"
        )
    return found[0]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    with refused_pickles(path):
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ZeroVLMError(
            f"{path}: refused: expected a mapping of names to tensors, got "
            f"{type(state).__name__} holding non-tensor values"
        )
    return state


def _projection_file(model: str, folder: str, stem: str, variant: str | None, revision: str | None = None) -> Path:
    names = [f"{stem}.safetensors", f"{stem}.bin"]
    if variant:
        names = [f"{stem}.{variant}.safetensors", f"{stem}.{variant}.bin"] + names
    for name in names:
        path = _model_file(model, f"{folder}/{name}", required=False, revision=revision)
        if path is not None:
            if variant and f".{variant}." not in name:
                log.info("%s: no %s variant of the pose projection, using %s", model, variant, name)
            return path
    raise ZeroVLMError(f"{model}: no pose projection weights in {folder}/ (looked for {names}); {FIX_HINT}")


def load_pose_projection(
    model: str, layout: str, variant: str | None = None, revision: str | None = None
) -> torch.nn.Linear:
    """The camera projection Linear(projection_dim + 4, cross_attention_dim), from either key naming."""
    folder, stem, prefix = LAYOUTS[layout]
    path = _projection_file(model, folder, stem, variant, revision)
    state = _read_state_dict(path)
    expected = {f"{prefix}.weight", f"{prefix}.bias"}
    if set(state) != expected:
        raise ZeroVLMError(f"{path}: expected keys {sorted(expected)} ({layout} layout), got {sorted(state)}")
    weight, bias = state[f"{prefix}.weight"], state[f"{prefix}.bias"]  # (out, in), (out,)
    if weight.ndim != 2 or bias.shape != weight.shape[:1]:
        raise ZeroVLMError(f"{path}: bad shapes weight {tuple(weight.shape)}, bias {tuple(bias.shape)}")
    projection = torch.nn.Linear(weight.shape[1], weight.shape[0])
    projection.load_state_dict({"weight": weight.float(), "bias": bias.float()})
    return projection


def _check_training_schedule(model: str, revision: str | None = None) -> None:
    path = _model_file(model, "scheduler/scheduler_config.json", required=False, revision=revision)
    if path is None:
        return
    config = read_json(path, "the model folder is damaged: download it again")
    wrong = {k: config[k] for k in _TRAINING_KEYS if k in config and config[k] != SCHEDULER_CONFIG[k]}
    if wrong:
        raise ZeroVLMError(
            f"{path}: training noise schedule {wrong} differs from Zero123's "
            f"{ {k: SCHEDULER_CONFIG[k] for k in wrong} }: not a Zero123 checkpoint?"
        )


class _PickleFallbackNotice(logging.Filter):
    """Drops the two lines diffusers logs for a part that has no .safetensors file ("An error occurred while trying
    to fetch ...: ... no file named ....safetensors ...", then "Defaulting to unsafe serialization"): the .bin it
    then reads goes through torch.load(weights_only=True), tensors only, so nothing unsafe happens, and `_load`
    says so in one line of its own. Any other fetch error (network, access, revision) is let through as it is.
    Attached to diffusers' module logger only while a part loads; parts load one at a time."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("An error occurred while trying to fetch") and re.search(
            r"no file named \S+\.safetensors", message
        ):
            self.seen = True
            return False
        return not (self.seen and message.startswith("Defaulting to unsafe serialization"))


def _load(cls, model: str, subfolder: str, dtype: torch.dtype, device: torch.device, variant: str | None, **kwargs):
    """One part, its weights read in `dtype` straight onto `device` (device_map: no full copy on the CPU first);
    a part read from a pickle because it has no .safetensors is logged as such (`_PickleFallbackNotice`)."""
    dtype_arg = "dtype" if cls is CLIPVisionModelWithProjection else "torch_dtype"
    notice, diffusers_log = _PickleFallbackNotice(), logging.getLogger(modeling_utils.__name__)
    diffusers_log.addFilter(notice)
    try:
        with refused_pickles(f"{model}/{subfolder}"):  # diffusers wraps the refusal in an OSError without its reason
            part = cls.from_pretrained(
                model, subfolder=subfolder, variant=variant, device_map=str(device), **{dtype_arg: dtype}, **kwargs
            )
        if notice.seen:
            log.info(
                "%s/%s: no .safetensors, its pickled weights read as tensors only (weights_only)", model, subfolder
            )
        return part
    except (OSError, ValueError) as error:
        raise ZeroVLMError(
            f"{model}: cannot load {subfolder}/ as {cls.__name__} "
            f"({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
            f"{FIX_HINT}"
        ) from None
    finally:
        diffusers_log.removeFilter(notice)


def load_components(
    model: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    variant: str | None = None,
    revision: str | None = None,
    device: str | torch.device = "cpu",
) -> Zero123Components:
    """Every part of a Zero123 checkpoint, on `device` in `dtype` but the pose projection in float32 on the CPU
    (variant: e.g. "fp16", "fp16_ema"; revision: a hub id's branch, tag or commit, None: main)."""
    model, device = str(model), torch.device(device)
    layout = detect_layout(model, revision)
    _check_training_schedule(model, revision)
    unet = _load(UNet2DConditionModel, model, "unet", dtype, device, variant, revision=revision)
    vae = _load(AutoencoderKL, model, "vae", dtype, device, variant, revision=revision)
    image_encoder = _load(
        CLIPVisionModelWithProjection,
        model,
        "image_encoder",
        dtype,
        device,
        variant,
        attn_implementation="sdpa",
        revision=revision,
    )
    projection = load_pose_projection(model, layout, variant, revision)  # float32: the original projects in fp32
    _check_shapes(model, unet, vae, image_encoder, projection)
    return Zero123Components(unet.eval(), vae.eval(), image_encoder.eval(), projection.eval(), make_scheduler(), layout)


def _check_shapes(model, unet, vae, image_encoder, projection) -> None:
    embed_dim = image_encoder.config.projection_dim
    context_dim = unet.config.cross_attention_dim
    latent_channels = vae.config.latent_channels
    problems = []
    if (projection.in_features, projection.out_features) != (embed_dim + 4, context_dim):
        problems.append(
            f"pose projection is {projection.in_features}->{projection.out_features}, expected "
            f"{embed_dim + 4}->{context_dim} (CLIP projection_dim + 4 -> UNet cross_attention_dim)"
        )
    if unet.config.in_channels != 2 * latent_channels:
        problems.append(
            f"unet in_channels {unet.config.in_channels} != 2 x VAE latent_channels "
            f"{latent_channels} (noisy latent + conditioning latent)"
        )
    if problems:
        raise ZeroVLMError(f"{model}: not a Zero123 checkpoint: " + "; ".join(problems))
