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
  different options (as in llava.py). Each pair runs its whole sequence (LLaVA and MiniGPT-4 have
  dedicated backends that run the shared prefix once). The model's output head runs
  in float32 whatever infer.dtype (transformers_ops.Float32Head: in bf16 two options' logits could
  tie exactly, and the first would win); the model's own scaling or capping of the logits applies after it;
- sep is "" when the rendered prompt ends in whitespace (e.g. Qwen's "assistant\\n"), else " ";
- generation: transformers' generate, greedy, stop strings; sampling runs one request at a time
  with a per-request seed so that its text does not depend on the batch.
"""

from __future__ import annotations

from itertools import groupby
from typing import Any, Sequence

import torch
from transformers import StoppingCriteria

from zerovlm.io import ZeroVLMError
from zerovlm.vlm.base import Request, VisionLanguageModel, cpu_threads_for, cut_at_stop, request_seed, run_batched
from zerovlm.vlm.transformers_ops import common_prefix_length, use_float32_head, uses_fp8
from zerovlm.vlm.llava import load_transformers_vlm

# model_type values of models trained on several interleaved images (vlms.md); others take them mechanically
NATIVE_MULTI_IMAGE = {"qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm", "llava_onevision", "idefics2"}
# images per request for those: covers every configuration (at most 4 panels); context length is the real bound
NATIVE_MAX_IMAGES = 8


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
        return {"name": self.name, "model": self.model_id, "model_type": self.model.config.model_type,
                "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                "native_multi_image": self.native_multi_image, "fp8_linear": uses_fp8(self.model),
                "float32_logits": self.float32_logits,
                "max_images_per_request": self.max_images_per_request}

    def render_prompt(self, request: Request) -> str:
        content = [{"type": "image"} for _ in request.images] + [{"type": "text", "text": request.prompt}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                  add_generation_prompt=True, tokenize=False)

    def _inputs(self, texts: Sequence[str], images: Sequence[tuple]) -> dict:
        kwargs = {"images": [list(i) for i in images]} if images and images[0] else {}
        inputs = self.processor(text=list(texts), padding=True, return_tensors="pt", **kwargs).to(self.device)
        return {k: (v.to(self.dtype) if torch.is_floating_point(v) else v) for k, v in inputs.items()}

    def _pairs(self, request: Request) -> list[tuple[str, int, tuple]]:
        """(prompt + sep + option, number of option tokens, images) per option."""
        text = self.render_prompt(request)
        separator = "" if text[-1:].isspace() else " "
        prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        joints = [text + separator + option for option in request.options]
        joint_ids = [self.tokenizer(joint, add_special_tokens=False)["input_ids"] for joint in joints]
        # one prefix for all options (as llava.py): the shortest they share with the prompt
        shared = min([len(prompt_ids)] + [common_prefix_length(prompt_ids, ids) for ids in joint_ids])
        for option, ids in zip(request.options, joint_ids):
            if len(ids) <= shared:
                raise ZeroVLMError(f"option {option!r} adds no tokens to the prompt")
        return [(joint, len(ids) - shared, request.images) for joint, ids in zip(joints, joint_ids)]

    @torch.no_grad()
    def _score(self, batch: list[tuple[str, int, tuple]]) -> list[float]:
        widest = max(n for _, n, _ in batch)
        inputs = self._inputs([t for t, _, _ in batch], [i for _, _, i in batch])
        logits = self.model(**inputs, logits_to_keep=widest + 1).logits[:, -widest - 1:-1].float()  # (B, n, V)
        targets = inputs["input_ids"][:, -widest:]
        picked = logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)                  # (B, n)
        return [picked[b, widest - n:].sum().item() for b, (_, n, _) in enumerate(batch)]

    def option_logprobs(self, requests: Sequence[Request]) -> list[list[float]]:
        # keyed by position, not by object: one Request object may be asked twice
        pairs = [(i, pair) for i, r in enumerate(requests) for pair in self._pairs(r)]
        scores: list[list[float]] = [[] for _ in requests]

        def image_count(entry: tuple) -> int:
            return len(entry[1][2])  # pair = (text, option token count, images)

        with cpu_threads_for(self.model):
            # one image count per batch: processors cannot mix text-only and image prompts
            for _, group in groupby(sorted(pairs, key=image_count), key=image_count):
                group = list(group)
                values = run_batched([pair for _, pair in group], self._score, batch_size=self.batch_size,
                                     length=lambda pair: len(pair[0]))
                for (i, _), value in zip(group, values):
                    scores[i].append(value)
        # pairs were grouped stably, so each request's options stay in order
        return scores

    def generate(self, requests: Sequence[Request], max_new_tokens: int, stop: tuple[str, ...] = (),
                 temperature: float = 0.0, seed: int = 0) -> list[str]:
        if max_new_tokens < 1 or temperature < 0:
            raise ZeroVLMError(f"need max_new_tokens >= 1 and temperature >= 0, got {max_new_tokens}, {temperature}")

        @torch.no_grad()
        def compute(batch: list[Request]) -> list[str]:
            inputs = self._inputs([self.render_prompt(r) for r in batch], [r.images for r in batch])
            if temperature > 0:  # batch of one (see below): a per-request generator seed
                torch.manual_seed(request_seed(seed, batch[0]))
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                      temperature=temperature if temperature > 0 else None, top_p=None,
                                      top_k=None, pad_token_id=self.tokenizer.pad_token_id,
                                      stopping_criteria=[_StopOnText(self.tokenizer, stop, inputs["input_ids"].shape[1])])
            new = out[:, inputs["input_ids"].shape[1]:]
            return [cut_at_stop(self.tokenizer.decode(row, skip_special_tokens=True), stop)[0].strip() for row in new]

        results: dict[int, str] = {}
        with cpu_threads_for(self.model):
            for _, group in groupby(sorted(range(len(requests)), key=lambda i: len(requests[i].images)),
                                    key=lambda i: len(requests[i].images)):
                group = list(group)
                texts = run_batched([requests[i] for i in group], compute,
                                    batch_size=1 if temperature > 0 else self.batch_size,
                                    length=lambda r: len(r.prompt))
                results.update(zip(group, texts))
        return [results[i] for i in range(len(requests))]


class _StopOnText(StoppingCriteria):
    """Per-row stop once the decoded new text contains a stop string (works with any tokenizer, unlike
    transformers' stop_strings, which needs a byte-level or sentencepiece vocabulary)."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_length: int):
        self.tokenizer, self.stop, self.prompt_length = tokenizer, tuple(s for s in stop if s), prompt_length

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = [bool(self.stop) and cut_at_stop(self.tokenizer.decode(row[self.prompt_length:],
                                                                      skip_special_tokens=True), self.stop)[1]
                for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def load_hf_auto(cfg) -> HFAutoBackend:
    """AutoModelForImageTextToText + AutoProcessor from cfg.model (hub id or folder)."""
    from transformers import AutoModelForImageTextToText

    model, processor, _ = load_transformers_vlm(AutoModelForImageTextToText, cfg)
    return HFAutoBackend(model, processor, model_id=cfg.model, batch_size=cfg.batch_size)
