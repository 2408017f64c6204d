"""LLaVA-1.5 (llava-hf layout) behind the VisionLanguageModel interface.

Loading: `load_llava(cfg)` opens a hub id or a local folder with AutoProcessor (PIL image processing,
no torchvision) and LlavaForConditionalGeneration (SDPA attention); remote code only when
cfg.trust_remote_code (the generic transformers loader, zerovlm/vlm/loading.py).

Prompts (cfg.chat_format; the names and system sentences: zerovlm/vlm/llava_conventions.py):
- "hub": the model's own chat template -> `USER: <image>\\n{prompt} ASSISTANT:` (no system sentence)
- "vicuna_v1", "llava_v1": the original repo's templates of those names (haotian-liu/LLaVA llava/conversation.py,
  conv_vicuna_v1 and conv_llava_v1, SeparatorStyle.TWO) -> `{system} USER: <image>\\n{prompt} ASSISTANT:`;
  they differ only in the system sentence ("a curious user" / "a curious human"). LLaVA-1.5's evaluation
  scripts pass `--conv-mode vicuna_v1`; run_llava.py (also the ZeroVLM authors' copy) picks `llava_v1`.
Images (cfg.image_preprocess): "crop" is the HF processor (resize + centre crop); "pad" first pads to a
square with the processor's mean colour, as the original repo's `expand2square` in `process_images`
(llava/mm_utils.py, image_aspect_ratio=pad, LLaVA-1.5's setting), then the same CLIP pipeline.

Algorithm, one batch (`_score_batch`; the scoring and generation loops are zerovlm/vlm/shared_prefix.py's):
1. Tokenise prompt and prompt+" "+option jointly (`tokenise_options`); the longest token prefix shared by
   the prompt and every joint tokenisation is the prefix, the rest of each joint sequence is that option's
   continuation (this is exact when BPE merges across the prompt/option boundary).
2. Images: resized and cropped on CPU as uint8 in prefetch threads (`_resize_and_crop`, identical to the
   processor's CLIP pipeline, tested), normalised on the GPU; features once per distinct image
   (content hash; a small cache spans batches).
3. One forward of the decoder over the padded rows, one row per image: [system and image | request 1's
   text | its options minus their last token | request 2's text | ...] with a tree attention mask
   (`CausalForward.launch_option_logprobs`): the image prefix is encoded once for all requests of that
   image, each request's prompt once for all its options, no recomputation and no KV-cache copies. A row
   of one request whose options are one token (Yes/No, A-D) needs no mask when right-padded (flash
   attention).
4. Only the positions that predict option tokens go through lm_head (no B x L x vocab logits).
5. Nothing waits for the GPU while a batch is queued: `run_batched` queues the next batch before it
   reads the previous one's scores (the only host synchronisation of a batch).
Generation: the same prefix embeddings, then a KV-cached greedy (or per-request seeded sampling) loop.
Optional `compile`: torch.compile of each decoder block of both towers (regional, dynamic shapes).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from zerovlm.io import ZeroVLMError
from zerovlm.vlm.base import Request, request_seed
from zerovlm.vlm.llava_conventions import CHAT_FORMATS, IMAGE_PREPROCESSES, ORIGINAL_SEP, ORIGINAL_SYSTEMS
from zerovlm.vlm.loading import load_transformers_vlm
from zerovlm.vlm.shared_prefix import SharedPrefixBackend, prefetch_threads
from zerovlm.vlm.transformers_ops import (
    CausalForward,
    expand_token,
    to_device,
    tokenise_options,
    uses_fp8,
)

OPTION_SEPARATOR = " "  # "ASSISTANT:" + " Yes": the answer follows the colon after one space
IMAGE_PLACEHOLDER = "<image>"


def expand_to_square(image: Image.Image, mean: Sequence[float]) -> Image.Image:
    """The original LLaVA `expand2square`: centre the image on a square of the mean colour."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), tuple(int(x * 255) for x in mean))
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


@dataclass
class Encoded:
    """One request, tokenised and preprocessed (CPU)."""

    prefix: list[int]  # BOS + prompt tokens, one image token per image (expanded later)
    continuations: list[list[int]]  # per option: joint tokens after the shared prefix
    images: tuple[Image.Image, ...]
    image_keys: tuple[str, ...]  # content hashes
    pixels: dict[str, torch.Tensor]  # key -> (3, H, W) float32, for images without cached features
    seed: int  # of sampled generation


class LlavaBackend(SharedPrefixBackend):
    name = "llava"
    max_images_per_request = 1  # LLaVA-1.5 was trained on single images (several work only mechanically)
    option_separator = OPTION_SEPARATOR

    def __init__(
        self,
        model,
        processor,
        *,
        model_id: str = "",
        chat_format: str = "hub",
        image_preprocess: str = "crop",
        batch_size: int = 16,
        padding_side: str = "right",
        prefetch_workers: int | None = None,
        feature_cache_size: int = 256,
        compile: bool = False,
    ):
        if chat_format not in CHAT_FORMATS:
            raise ZeroVLMError(f"chat_format must be one of {', '.join(CHAT_FORMATS)}, got {chat_format!r}")
        if image_preprocess not in IMAGE_PREPROCESSES:
            raise ZeroVLMError(
                f"image_preprocess must be one of {', '.join(IMAGE_PREPROCESSES)}, got {image_preprocess!r}"
            )
        if padding_side not in ("left", "right"):
            raise ZeroVLMError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if chat_format == "hub" and not getattr(processor, "chat_template", None):
            raise ZeroVLMError(
                f"{model_id or 'model'}: the processor has no chat template; "
                "use infer.chat_format 'llava_v1' or 'vicuna_v1'"
            )
        self.model, self.processor, self.tokenizer = model.eval(), processor, processor.tokenizer
        self.device, self.dtype = model.device, model.dtype
        self.model_id, self.chat_format, self.image_preprocess = model_id, chat_format, image_preprocess
        self.batch_size, self.padding_side = batch_size, padding_side
        self.prefetch_workers = prefetch_threads(prefetch_workers)
        config = model.config
        self.image_token_id = getattr(config, "image_token_id", None) or config.image_token_index
        vision = config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        self.tokens_per_image = patches + (0 if config.vision_feature_select_strategy == "default" else 1)
        language_model = getattr(model.model, "language_model", None)  # transformers 5: model.model.language_model
        self.forward = CausalForward(model, body=language_model)
        if compile:
            self._compile_regions(language_model, model.model.vision_tower)
        self._features: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._feature_cache_size = feature_cache_size
        self._fast_crop = self._fast_path()
        self._mean_std: tuple[torch.Tensor, torch.Tensor] | None = None  # on the device of the last batch
        self._init_memos()

    def info(self) -> dict[str, Any]:
        import transformers

        return {
            **self._common_info(),
            "chat_format": self.chat_format,
            "image_preprocess": self.image_preprocess,
            "attention": self.model.config._attn_implementation,
            "compiled": self.compiled,
            "fp8_linear": uses_fp8(self.model),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }

    # ------------------------------------------------------------ prompts and inputs
    def render_prompt(self, request: Request) -> str:
        if self.chat_format == "hub":
            content = [{"type": "image"} for _ in request.images] + [{"type": "text", "text": request.prompt}]
            return self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
        images = "".join(f"{IMAGE_PLACEHOLDER}\n" for _ in request.images)
        system = ORIGINAL_SYSTEMS[self.chat_format]
        return f"{system}{ORIGINAL_SEP}USER: {images}{request.prompt}{ORIGINAL_SEP}ASSISTANT:"

    @property
    def placeholder(self) -> int:
        return self.image_token_id

    def _tokenise_uncached(self, request: Request) -> tuple[list[int], list[list[int]]]:
        prefix, shared, continuations = tokenise_options(
            self._ids, self._rendered(request), self.option_separator, request.options
        )
        images_in_prefix = prefix[:shared].count(self.image_token_id)
        if images_in_prefix != len(request.images) or prefix.count(self.image_token_id) != len(request.images):
            raise ZeroVLMError(
                f"the rendered prompt has {prefix.count(self.image_token_id)} image placeholders "
                f"for {len(request.images)} images (a literal '<image>' in the prompt?)"
            )
        return prefix[:shared], continuations

    def _length(self, request: Request) -> int:
        prefix, continuations = self._tokenise(request)
        longest = max((len(c) for c in continuations), default=0)
        return len(prefix) + len(request.images) * (self.tokens_per_image - 1) + longest

    def _preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(n, 3, H, W): uint8 from the fast path (normalised later, on the model's device), else float32."""
        images = [image.convert("RGB") for image in images]
        if self.image_preprocess == "pad":
            images = [expand_to_square(i, self.processor.image_processor.image_mean) for i in images]
        if self._fast_crop is not None:
            return torch.stack([self._resize_and_crop(image) for image in images])
        return self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"].float()

    def _fast_path(self) -> tuple[int, int, int] | None:
        """(shortest edge, crop height, crop width) when the image processor is CLIP-style (resize the
        shortest edge with bicubic, centre crop, rescale, normalise), which `_resize_and_crop` plus
        `_normalise` reproduce on uint8 pixels (checked against the processor in the tests)."""
        ip = self.processor.image_processor
        size, crop = getattr(ip, "size", None), getattr(ip, "crop_size", None)
        shortest = getattr(size, "shortest_edge", None) if size is not None else None
        simple = (
            getattr(ip, "do_resize", False)
            and getattr(ip, "do_center_crop", False)
            and getattr(ip, "do_rescale", False)
            and getattr(ip, "do_normalize", False)
            and not getattr(ip, "do_pad", False)
            and int(getattr(ip, "resample", -1)) == Image.BICUBIC
            and abs(getattr(ip, "rescale_factor", 0) - 1 / 255) < 1e-12
        )
        if not simple or not shortest or crop is None or not getattr(crop, "height", None):
            return None
        if crop.height > shortest or crop.width > shortest:  # the processor would pad: leave it to it
            return None
        return shortest, crop.height, crop.width

    def _resize_and_crop(self, image: Image.Image) -> torch.Tensor:
        shortest, crop_h, crop_w = self._fast_crop
        width, height = image.size
        if width <= height:
            size = (shortest, int(shortest * height / width))
        else:
            size = (int(shortest * width / height), shortest)
        image = image.resize(size, Image.BICUBIC)
        top, left = (size[1] - crop_h) // 2, (size[0] - crop_w) // 2
        pixels = np.asarray(image.crop((left, top, left + crop_w, top + crop_h)), dtype=np.uint8)
        return torch.from_numpy(pixels.transpose(2, 0, 1).copy())

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float pixels as the processor would give them: uint8 -> / 255 -> (x - mean) / std, in float32."""
        if pixels.dtype != torch.uint8:
            return pixels.float()
        ip = self.processor.image_processor
        if self._mean_std is None or self._mean_std[0].device != pixels.device:
            self._mean_std = tuple(
                to_device(torch.tensor(values, dtype=torch.float32)[:, None, None], pixels.device)
                for values in (ip.image_mean, ip.image_std)
            )
        mean, std = self._mean_std
        return (pixels.float() * float(ip.rescale_factor) - mean) / std

    def _encode(self, request: Request, seed: int = 0, pixels: bool = True) -> Encoded:
        prefix, continuations = self._tokenise(request)
        keys = self._image_fingerprints(request)
        todo = {k: i for k, i in zip(keys, request.images) if pixels and k not in self._features}
        prepared = dict(zip(todo, self._preprocess(list(todo.values())))) if todo else {}
        return Encoded(prefix, continuations, request.images, keys, prepared, request_seed(seed, request, keys))

    # ------------------------------------------------------------ model inputs
    @torch.no_grad()
    def _image_features(self, batch: Sequence[Encoded]) -> torch.Tensor | None:
        """(total images in batch order, tokens_per_image, hidden) features; one vision pass per new image."""
        keys = [k for e in batch for k in e.image_keys]
        if not keys:
            return None
        todo: dict[str, torch.Tensor] = {}
        for e in batch:
            for key, image in zip(e.image_keys, e.images):
                if key not in self._features and key not in todo:  # evicted since _encode: preprocess now
                    todo[key] = e.pixels[key] if key in e.pixels else self._preprocess([image])[0]
        if todo:
            pixel_values = self._normalise(to_device(torch.stack(list(todo.values())), self.device)).to(self.dtype)
            config = self.model.config
            out = self.model.get_image_features(
                pixel_values=pixel_values,
                vision_feature_layer=config.vision_feature_layer,
                vision_feature_select_strategy=config.vision_feature_select_strategy,
            )
            features = getattr(out, "pooler_output", out)
            features = torch.stack(list(features)) if isinstance(features, (list, tuple)) else features
            for key, feature in zip(todo, features):
                self._features[key] = feature
        selected = torch.stack([self._features[k] for k in keys])
        for key in keys:
            self._features.move_to_end(key)
        while len(self._features) > self._feature_cache_size:
            self._features.popitem(last=False)
        return selected

    def _rows_and_features(self, batch: Sequence[Encoded]):
        """Prefix token rows with each image token repeated per feature, and the (N, D) features in order."""
        rows = [expand_token(e.prefix, self.image_token_id, self.tokens_per_image) for e in batch]
        features = self._image_features(batch)
        return rows, (None if features is None else features.reshape(-1, features.shape[-1]))


# ---------------------------------------------------------------- loading
def load_llava(cfg) -> LlavaBackend:
    """LLaVA-1.5 from cfg.model (hub id or folder) with cfg's template, preprocessing, dtype and device."""
    from transformers import LlavaForConditionalGeneration

    model, processor, device = load_transformers_vlm(LlavaForConditionalGeneration, cfg)
    return LlavaBackend(
        model,
        processor,
        model_id=cfg.model,
        chat_format=cfg.chat_format,
        image_preprocess=cfg.image_preprocess,
        batch_size=cfg.batch_size,
        compile=cfg.compile and device.type == "cuda",
    )
