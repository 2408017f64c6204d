"""Loading transformers models for the VLM backends: the model source checked first, then the weights (SDPA
attention, cfg.dtype, pickles that would run code refused) on cfg.device, with FP8 decoder layers on request.

`load_transformers_vlm` loads one hub model or folder with its processor (the llava and hf_auto backends);
`pretrained` and `on_device` are its steps that MiniGPT-4 also takes for the LLM it assembles.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from zerovlm.io import ZeroVLMError
from zerovlm.pickles import refused_pickles
from zerovlm.runtime import resolve_device_dtype
from zerovlm.vlm.transformers_ops import use_fp8_linears

log = logging.getLogger(__name__)


def check_model_source(model: str, revision: str | None = None) -> None:
    """A local-looking path must exist; anything else is a hub id, whose config.json is fetched (or found
    in the cache) once here: offline, transformers would retry each file for minutes before failing."""
    looks_local = (
        model.startswith((".", "/", "~")) or os.sep in model.strip("/").split("/", 1)[-1] or Path(model).exists()
    )
    if looks_local and not Path(model).expanduser().is_dir():
        raise ZeroVLMError(
            f"infer.model: folder {model!r} not found (build the tiny models first, "
            "`zerovlm build-tiny-models`, or give a hub id such as llava-hf/llava-1.5-7b-hf)"
        )
    if looks_local:
        return
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(model, "config.json", revision=revision)
    except OSError as error:  # offline and not cached, unknown or gated repo: huggingface_hub's errors
        reason = str(error).splitlines()[0] if str(error) else ""
        raise ZeroVLMError(
            f"infer.model: cannot fetch config.json of hub repo {model!r} ({type(error).__name__}: "
            f"{reason}); without network, download the model where there is one and give its "
            f"folder, or point HF_HOME at a cache holding it"
        ) from None


def load_processor(model: str, trust_remote_code: bool = False, revision: str | None = None):
    """AutoProcessor with the PIL image processors (identical preprocessing on CPU and GPU, no torchvision)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model, backend="pil", trust_remote_code=trust_remote_code, revision=revision)


def pretrained(
    model_class,
    source: str,
    dtype: torch.dtype,
    device: torch.device,
    revision: str | None = None,
    trust_remote_code: bool = False,
):
    """`model_class.from_pretrained(source)` at `revision` with SDPA attention, its weights read in `dtype` straight
    onto `device` (device_map: no full copy in host memory first); a weights pickle that would run code is refused
    (a ZeroVLMError naming the file)."""
    with refused_pickles(source):
        return model_class.from_pretrained(
            source,
            dtype=dtype,
            device_map=str(device),
            attn_implementation="sdpa",
            trust_remote_code=trust_remote_code,
            revision=revision,
        )


def on_device(model, device: torch.device, fp8_linear: bool):
    """The model moved to `device`, its decoder blocks' Linear layers run as FP8 matmuls when `fp8_linear`."""
    model = model.to(device)
    if fp8_linear:
        use_fp8_linears(model.get_decoder(), device)
    return model


def load_transformers_vlm(model_class, cfg):
    """(model on its device, processor, device) for cfg.model through `model_class.from_pretrained`: SDPA
    attention, cfg.dtype, remote code only with cfg.trust_remote_code; then cfg.fp8_linear. A hub id is read at
    cfg.revision (the commit the check stage pinned)."""
    check_model_source(cfg.model, cfg.revision)
    device, dtype = resolve_device_dtype(cfg.device, cfg.dtype, "infer")
    try:
        processor = load_processor(cfg.model, cfg.trust_remote_code, cfg.revision)
        model = pretrained(model_class, cfg.model, dtype, device, cfg.revision, cfg.trust_remote_code)
    except ImportError as error:
        if "torchvision" not in str(error).lower():
            raise
        # e.g. Qwen2-VL, Qwen2.5-VL and LLaVA-OneVision: their processors' video processors need torchvision
        reason = str(error).strip().splitlines()[0]
        raise ZeroVLMError(
            f"infer.model: {cfg.model!r} needs torchvision, which is not installed ({reason}); "
            "install it: pip install torchvision"
        ) from None
    except (OSError, ValueError) as error:
        raise ZeroVLMError(
            f"infer.model: cannot load {cfg.model!r} as {model_class.__name__} ({error}); for hub "
            "ids check the network or the Hugging Face cache"
        ) from None
    log.info("%s: %s on %s as %s", model_class.__name__, cfg.model, device, dtype)
    return on_device(model, device, cfg.fp8_linear), processor, device
