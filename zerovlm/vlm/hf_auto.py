"""Any transformers image-text-to-text model with a chat template (Qwen2-VL, Idefics3, LLaVA-OneVision, ...).

The generic backend: AutoModelForImageTextToText + AutoProcessor (PIL image processors), the model's
own chat template with one image entry per image, so several views can go to models that take
several images (`native_multi_image`: `max_images_per_request` > 1, so the infer stage sends them the
"-separate" configurations; other models get 1). Models differ in how they place image tokens and positions, so
this backend only uses the processor and the model's plain forward and generate:
- option scores: each (request, option) pair is one left-padded sequence `prompt + sep + option`,
  and the option's score sums the log-probabilities of its last n tokens, n = len(tokens(prompt + sep +
  option)) minus the shortest prefix that tokens(prompt) shares with every option's tokens: all options
  are continuations of one prefix even when BPE merges cross the prompt/option boundary differently for
  different options (as in llava.py). Each pair runs its whole sequence: unlike the llava and minigpt4
  backends (zerovlm/vlm/shared_prefix.py), which run each image's prefix once for all its requests and
  options, this one cannot share a prefix, because the processor builds each sequence whole (image tokens
  expanded per model, e.g. Qwen2-VL's per-image grid) and some models derive positions from those inputs
  (Qwen2-VL's multimodal RoPE), so rows continuing a prefix with our own positions and mask would no
  longer be the model's computation. The model's output head runs
  in float32 whatever infer.dtype (transformers_ops.Float32Head: in bf16 two options' logits could
  tie exactly, and the first would win); the model's own scaling or capping of the logits applies after it;
- sep is "" when the rendered prompt ends in whitespace (e.g. Qwen's "assistant\\n"), else " ";
- generation: transformers' generate, greedy, stop strings; sampling runs one request at a time
  with a per-request seed so that its text does not depend on the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from itertools import groupby
from typing import Any, TypeVar

import torch
from transformers import StoppingCriteria

from zerovlm.io import ZeroVLMError
from zerovlm.vlm.base import Request, VisionLanguageModel, cpu_threads_for, cut_at_stop, request_seed, run_batched
from zerovlm.vlm.loading import load_transformers_vlm
from zerovlm.vlm.transformers_ops import tokenise_options, use_float32_head, uses_fp8

log = logging.getLogger(__name__)

# model_type values of models trained on several interleaved images (vlms.md); others take them mechanically
NATIVE_MULTI_IMAGE = {"qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm", "llava_onevision", "idefics2"}
# images per request for those: covers every configuration (at most 4 panels); context length is the real bound
NATIVE_MAX_IMAGES = 8

T = TypeVar("T")
R = TypeVar("R")


def by_image_count(items: Sequence[T], images: Callable[[T], tuple], run: Callable[[list[T]], list[R]]) -> list[R]:
    """`run` on the items of each image count in turn (processors cannot mix text-only and image prompts in a
    batch), its results restored to the order of `items`."""
    results: list[Any] = [None] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(images(items[i])))  # stable: a group keeps input order
    for _, group in groupby(order, key=lambda i: len(images(items[i]))):
        group = list(group)
        for i, result in zip(group, run([items[i] for i in group])):
            results[i] = result
    return results


class HFAutoBackend(VisionLanguageModel):
    name = "hf_auto"

    def __init__(self, model, processor, *, model_id: str = "", batch_size: int = 16):
        if not getattr(processor, "chat_template", None):
            raise ZeroVLMError(f"{model_id or 'model'}: the processor has no chat template (hf_auto needs one)")
        self.model, self.processor, self.tokenizer = model.eval(), processor, processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.model_id, self.batch_size = model_id, batch_size
        self.device, self.dtype = model.device, model.dtype
        self.float32_logits = use_float32_head(self.model)
        self.native_multi_image = model.config.model_type in NATIVE_MULTI_IMAGE
        self.max_images_per_request = NATIVE_MAX_IMAGES if self.native_multi_image else 1

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model_id,
            "model_type": self.model.config.model_type,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "native_multi_image": self.native_multi_image,
            "fp8_linear": uses_fp8(self.model),
            "compiled": False,  # infer.compile is not applied to arbitrary architectures (load_hf_auto warns)
            "float32_logits": self.float32_logits,
            "max_images_per_request": self.max_images_per_request,
        }

    def render_prompt(self, request: Request) -> str:
        content = [{"type": "image"} for _ in request.images] + [{"type": "text", "text": request.prompt}]
        return self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )

    def _inputs(self, texts: Sequence[str], images: Sequence[tuple]) -> dict:
        kwargs = {"images": [list(i) for i in images]} if images and images[0] else {}
        inputs = self.processor(text=list(texts), padding=True, return_tensors="pt", **kwargs).to(self.device)
        return {k: (v.to(self.dtype) if torch.is_floating_point(v) else v) for k, v in inputs.items()}

    def _pairs(self, request: Request) -> list[tuple[str, int, tuple]]:
        """(prompt + sep + option, number of option tokens, images) per option."""
        text = self.render_prompt(request)
        separator = "" if text[-1:].isspace() else " "
        _, _, continuations = tokenise_options(
            lambda t: self.tokenizer(t, add_special_tokens=False)["input_ids"], text, separator, request.options
        )
        return [
            (text + separator + option, len(tokens), request.images)
            for option, tokens in zip(request.options, continuations)
        ]

    @torch.no_grad()
    def _score(self, batch: list[tuple[str, int, tuple]]) -> list[float]:
        widest = max(n for _, n, _ in batch)
        inputs = self._inputs([t for t, _, _ in batch], [i for _, _, i in batch])
        logits = self.model(**inputs, logits_to_keep=widest + 1).logits[:, -widest - 1 : -1].float()  # (B, n, V)
        targets = inputs["input_ids"][:, -widest:]
        picked = logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)  # (B, n)
        return [picked[b, widest - n :].sum().item() for b, (_, n, _) in enumerate(batch)]

    def _option_logprobs(self, requests: list[Request]) -> list[list[float]]:
        def score_pairs(pairs: list[tuple[str, int, tuple]]) -> list[float]:
            return run_batched(pairs, self._score, batch_size=self.batch_size, length=lambda pair: len(pair[0]))

        pairs = [pair for r in requests for pair in self._pairs(r)]  # pair = (text, option token count, images)
        with cpu_threads_for(self.model):
            values = iter(by_image_count(pairs, lambda pair: pair[2], score_pairs))
        return [[next(values) for _ in r.options] for r in requests]  # pairs come back in request, option order

    def _generate(
        self, requests: Sequence[Request], max_new_tokens: int, stop: tuple[str, ...], temperature: float, seed: int
    ) -> list[str]:

        @torch.no_grad()
        def compute(batch: list[Request]) -> list[str]:
            inputs = self._inputs([self.render_prompt(r) for r in batch], [r.images for r in batch])
            if temperature > 0:  # batch of one (see below): a per-request generator seed
                torch.manual_seed(request_seed(seed, batch[0]))
            out = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=None,
                top_k=None,
                pad_token_id=self.tokenizer.pad_token_id,
                stopping_criteria=[_StopOnText(self.tokenizer, stop, inputs["input_ids"].shape[1])],
            )
            new = out[:, inputs["input_ids"].shape[1] :]
            return [cut_at_stop(self.tokenizer.decode(row, skip_special_tokens=True), stop)[0].strip() for row in new]

        def generate_group(group: list[Request]) -> list[str]:
            return run_batched(
                group, compute, batch_size=1 if temperature > 0 else self.batch_size, length=lambda r: len(r.prompt)
            )

        with cpu_threads_for(self.model):
            return by_image_count(requests, lambda r: r.images, generate_group)


class _StopOnText(StoppingCriteria):
    """Per-row stop once the decoded new text contains a stop string (works with any tokenizer, unlike
    transformers' stop_strings, which needs a byte-level or sentencepiece vocabulary)."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_length: int):
        self.tokenizer, self.stop, self.prompt_length = tokenizer, tuple(s for s in stop if s), prompt_length

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = [
            bool(self.stop)
            and cut_at_stop(self.tokenizer.decode(row[self.prompt_length :], skip_special_tokens=True), self.stop)[1]
            for row in input_ids
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def load_hf_auto(cfg) -> HFAutoBackend:
    """AutoModelForImageTextToText + AutoProcessor from cfg.model (hub id or folder)."""
    from transformers import AutoModelForImageTextToText

    if cfg.compile:  # the paper profile turns it on for the grid's llava and minigpt4 entries
        log.warning("infer.compile: %s runs eagerly under hf_auto (only llava and minigpt4 compile)", cfg.model)
    model, processor, _ = load_transformers_vlm(AutoModelForImageTextToText, cfg)
    return HFAutoBackend(model, processor, model_id=cfg.model, batch_size=cfg.batch_size)
