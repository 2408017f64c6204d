"""A tiny, randomly initialised Zero123 in the real on-disk layouts, for the demo profile and the tests.

The folder is what `checkpoints.load_components` reads from the hub, only small:
    model_index.json, unet/, vae/, image_encoder/, feature_extractor/, scheduler/, and the pose projection
    kxic:     cc_projection/diffusion_pytorch_model.bin (a pickle of {projection.weight, projection.bias}),
              diffusers parts as .bin
    bennyguo: clip_camera_projection/diffusion_pytorch_model[.fp16].safetensors ({proj.weight, proj.bias}),
              every part in safetensors, plus the "fp16" variant files
(transformers 5 writes the image encoder as model.safetensors in both layouts; kxic's hub repo has a .bin.)
The same seed gives the same bytes (the DVC output is cached by its hash). The model answers noise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from zerovlm.io import ZeroVLMError, atomic_dir
from zerovlm.views.checkpoints import LAYOUTS, SCHEDULER_CONFIG
from zerovlm.vlm.tiny import TINY_ENCODER

CONTEXT_DIM = 32  # CLIP projection_dim == UNet cross_attention_dim (768 in the real model)


def _feature_extractor(size_px: int) -> dict:
    """The hub repos' CLIPImageProcessor settings at the image encoder's input size."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size_px},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": size_px, "width": size_px},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }


PIPELINE_CLASS = {
    "kxic": ("Zero1to3StableDiffusionPipeline", "pipeline_zero1to3", "CCProjection"),
    "bennyguo": ("Zero123Pipeline", "pipeline_zero123", "CLIPCameraProjection"),
}


def _unet() -> UNet2DConditionModel:
    # 2 levels: the latent side must be even. norm_num_groups divides every channel count.
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=8,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CONTEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def _vae() -> AutoencoderKL:
    # 3 blocks: downsampling by 4 (the real SD VAE: 4 blocks, by 8), so 64 px -> 16x16 latents.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    )


def _image_encoder() -> CLIPVisionModelWithProjection:
    config = CLIPVisionConfig(**TINY_ENCODER, image_size=32, patch_size=8, projection_dim=CONTEXT_DIM)
    return CLIPVisionModelWithProjection(config)


def _model_index(layout: str) -> dict:
    pipeline, module, projection = PIPELINE_CLASS[layout]
    return {
        "_class_name": pipeline,
        "_diffusers_version": "0.42.1",
        LAYOUTS[layout][0]: [module, projection],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def _save_projection(folder: Path, layout: str, projection: torch.nn.Linear, variants: list) -> None:
    sub, stem, prefix = LAYOUTS[layout]
    (folder / sub).mkdir()
    config = {"_class_name": PIPELINE_CLASS[layout][2], "_diffusers_version": "0.42.1"}
    if layout == "bennyguo":
        config.update(embedding_dim=projection.out_features, additional_embeddings=4)
    (folder / sub / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {f"{prefix}.weight": projection.weight.detach(), f"{prefix}.bias": projection.bias.detach()}
    if layout == "kxic":
        torch.save(state, folder / sub / f"{stem}.bin")
        return
    from safetensors.torch import save_file

    for variant, dtype in variants:
        name = f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"
        save_file(
            {k: v.to(dtype).contiguous() for k, v in state.items()}, str(folder / sub / name), metadata={"format": "pt"}
        )


def build_tiny_zero123(out_dir: str | os.PathLike, seed: int = 0, layout: str = "kxic") -> Path:
    """Write a tiny random Zero123 to `out_dir` (replaced atomically); return the folder."""
    torch.manual_seed(seed)
    parts = _unet(), _vae(), _image_encoder()
    projection = torch.nn.Linear(CONTEXT_DIM + 4, CONTEXT_DIM)  # concat(image_embeds, pose) -> context
    return save_zero123(out_dir, *parts, projection, layout)


def save_zero123(
    out_dir: str | os.PathLike,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    image_encoder: CLIPVisionModelWithProjection,
    projection: torch.nn.Linear,
    layout: str = "kxic",
) -> Path:
    """Write Zero123 components to `out_dir` in a hub layout (replaced atomically); return the folder.

    Also used by benchmarks/views_stage.py for the full-size architecture with random weights.
    """
    if layout not in LAYOUTS:
        raise ZeroVLMError(f"Zero123 layout {layout!r}: valid: {sorted(LAYOUTS)}")
    out_dir = Path(out_dir)
    # bennyguo's repos ship fp16 variant files beside the full-precision ones.
    variants = [(None, torch.float32)] + ([("fp16", torch.float16)] if layout == "bennyguo" else [])
    with atomic_dir(out_dir) as tmp:
        for name, model in {"unet": unet, "vae": vae, "image_encoder": image_encoder}.items():
            for variant, dtype in variants:  # full precision first: half() converts the module in place
                model = model.half() if dtype == torch.float16 else model
                if name == "image_encoder":
                    model.save_pretrained(tmp / name, variant=variant)
                else:  # kxic: pickled .bin as on the hub; bennyguo: safetensors
                    model.save_pretrained(tmp / name, variant=variant, safe_serialization=layout == "bennyguo")
        _save_projection(tmp, layout, projection, variants)
        DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(tmp / "scheduler")
        (tmp / "feature_extractor").mkdir()  # unused by the sampler (see zero123.clip_preprocess); layout only
        (tmp / "feature_extractor" / "preprocessor_config.json").write_text(
            json.dumps(_feature_extractor(image_encoder.config.image_size), indent=2, sort_keys=True) + "\n"
        )
        (tmp / "model_index.json").write_text(json.dumps(_model_index(layout), indent=2, sort_keys=True) + "\n")
    return out_dir
