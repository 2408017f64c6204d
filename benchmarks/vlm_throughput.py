"""Throughput of answering with LLaVA-1.5-7B on one GPU: the naive way vs zerovlm's batched scoring.

Not a test. Builds the full-size LLaVA-1.5-7B architecture (CLIP ViT-L/14-336 + Vicuna-7B) with random
bf16 weights directly on the GPU, a word-level tokenizer (zerovlm.vlm.tiny) and the llava-hf image
processor settings (336 px), loaded through zerovlm's own processor loader. Each sample has its own
random 640x480 image (so no image-feature reuse helps), fingerprinted ahead as the infer stage does it, and
a prompt of `--text-tokens` text tokens after the chat template (576 image tokens + 64 text tokens by
default). `--tiny` (implied without a CUDA device) loads the project's tiny LLaVA and MiniGPT-4
(zerovlm/vlm/tiny.py) instead, with small counts.

Prints, in one run:
- naive: one sample at a time, `model.generate` of 16 new tokens (how the paper's code answered);
- batched scoring (`LlavaBackend.option_logprobs`) for yes/no and for four-caption questions, eager
  and with the decoder layers compiled (`--compile`), then compiled with the decoder's Linear layers as
  FP8 matmuls (`--fp8`, what `infer.fp8_linear` does), with samples/s, the ratio to naive, achieved
  TFLOP/s (analytic FLOPs of the forward), peak GPU memory, the host synchronisations per call, and
  how far the scores move from the first variant's;
- the paper's request mix (per example 9 stitched images, 17 requests: each configuration without and with
  its view prompt, the origin once; about 1.17 yes/no captions per image, or one four-caption question),
  scored one request a row and with each image's requests sharing its prefix (what `option_logprobs`
  does; timed on a first call, which meets its batch shapes for the first time, and on the same call repeated,
  as an infer run's later chunks meet shapes seen before), the rates on one line (goal for LLaVA-1.5-7B in
  bf16: >= 120 requests/s shared).
Compilation, FP8 and the synchronisation count need a CUDA GPU: elsewhere they print a `skipped:` line.

    python benchmarks/vlm_throughput.py --out benchmarks/results/vlm_h200.txt
    python benchmarks/vlm_throughput.py --tiny   # smoke run, seconds (CPU or GPU)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import platform
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import CLIP_VIT_L14, DEVICE, DTYPE, parse_args, skip_line, synchronize  # noqa: E402

from zerovlm.config import InferConfig  # noqa: E402
from zerovlm.prompts import lower_first, question_lead, view_prompt  # noqa: E402
from zerovlm.runtime import compiled_graph_count  # noqa: E402
from zerovlm.view_configurations import STITCHED_CONFIGURATIONS  # noqa: E402
from zerovlm.vlm.base import Request, cpu_threads_for, image_fingerprint  # noqa: E402
from zerovlm.vlm.llava import LlavaBackend  # noqa: E402
from zerovlm.vlm.loading import load_processor  # noqa: E402
from zerovlm.vlm.minigpt4 import MiniGPT4Backend, load_minigpt4  # noqa: E402
from zerovlm.vlm.tiny import HUB_LLAVA_CHAT_TEMPLATE, build_tiny_llava, build_tiny_minigpt4, build_word_tokenizer  # noqa: E402
from zerovlm.vlm.transformers_ops import PendingScores, use_fp8_linears  # noqa: E402

# The decoder of Vicuna-7B (LLaVA-1.5-7B, MiniGPT-4 7B)
VICUNA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32}
CAPTIONS = (
    "A red mug is on the top of the wooden table",
    "A red mug is under the wooden table",
    "A red mug is to the left of the wooden table",
    "A red mug is to the right of the wooden table",
)
FILLER = (
    "this is a 3d single view image generated from the original image centered on the object judging by "
    "these four pictures is the red mug on the left side of the wooden table near the blue bowl and the "
    "green bottle in the middle of the scene "
).split()


@dataclass
class Mix:
    name: str
    requests: list[Request]
    flops: tuple[float, float]  # per request: scored one a row, image prefix shared


def build_processor(folder: Path, image_px: int, patch_px: int):
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_px}, crop_size={"height": image_px, "width": image_px}
    )
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_word_tokenizer(),
        patch_size=patch_px,
        vision_feature_select_strategy="default",
        chat_template=HUB_LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    ).save_pretrained(folder)
    return load_processor(str(folder))


def full_size_llava(tokenizer, device, dtype):
    """llava-hf/llava-1.5-7b-hf's architecture with random weights, built on `device`."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(
        **VICUNA_7B,
        vocab_size=32064,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(**CLIP_VIT_L14, image_size=336)
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def build_llava(tiny: bool, device, dtype):
    """(model, processor): the full-size architecture with random weights, or the project's tiny LLaVA
    written to a temporary folder and loaded from it as a checkpoint is."""
    from transformers import LlavaForConditionalGeneration

    with tempfile.TemporaryDirectory() as folder:
        if not tiny:
            processor = build_processor(Path(folder), 336, 14)
            return full_size_llava(processor.tokenizer, device, dtype), processor
        build_tiny_llava(Path(folder), seed=0)
        model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
        return model.to(device).eval(), load_processor(folder)


def vision_flops(v) -> float:
    """Matmul FLOPs of a ViT (config `v`) over one image's patches and CLS token."""
    n = (v.image_size // v.patch_size) ** 2 + 1
    return v.num_hidden_layers * (
        2 * n * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size) + 4 * n * n * v.hidden_size
    )


def decoder_flops(t, length: int, scored_positions: int) -> float:
    """Matmul FLOPs of a Llama decoder (config `t`) over `length` tokens and its head at the scored positions."""
    layer = (
        2 * length * (4 * t.hidden_size**2 + 3 * t.hidden_size * t.intermediate_size)
        + 2 * length * length * t.hidden_size
    )  # QK^T and AV under a causal mask: half of 4 L^2 d
    return t.num_hidden_layers * layer + 2 * scored_positions * t.hidden_size * t.vocab_size


def forward_flops(config, text_tokens: int, image_tokens: int, scored_positions: int) -> float:
    """Matmul FLOPs of one sample's forward: vision tower, projector, decoder (causal attention), lm_head."""
    v, t = config.vision_config, config.text_config
    projector = 2 * image_tokens * (v.hidden_size * t.hidden_size + t.hidden_size**2)
    return vision_flops(v) + projector + decoder_flops(t, text_tokens + image_tokens, scored_positions)


def make_prompt(backend: LlavaBackend, text_tokens: int) -> str:
    """A question whose rendered prompt has exactly `text_tokens` tokens besides the image token."""
    image = Image.new("RGB", (8, 8))
    words = []
    while True:
        prompt = " ".join(words) + "? please answer me yes or no"
        ids = backend._ids(backend.render_prompt(Request((image,), prompt)))
        if len(ids) - 1 >= text_tokens:
            return prompt
        words.append(FILLER[len(words) % len(FILLER)])


def random_images(count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) for _ in range(count)]


def argmax(row) -> int:
    return max(range(len(row)), key=row.__getitem__)


def max_gap(a, b) -> float:
    return max(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b))


def timed(device, fn):
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


@contextlib.contextmanager
def one_request_a_row(backend):
    """Score every request in its own row (no prefix sharing): the per-request rate of the same code."""
    backend._image_groups = lambda requests: [[i] for i in range(len(requests))]
    try:
        yield
    finally:
        del backend._image_groups


def fingerprinted(requests: list[Request]) -> list[Request]:
    """`requests` carrying their images' fingerprints, as the infer stage hands a chunk to the backend (it hashes
    the next chunk's images in a thread while the device answers this one): grouping by image hashes nothing."""
    return [replace(r, image_fingerprints=tuple(map(image_fingerprint, r.images))) for r in requests]


def paper_mix(images: list[Image.Image], four_captions: bool, seed: int) -> list[Request]:
    """The paper's requests for len(images) / 9 examples: per example its 9 configurations (9 stitched images,
    conf/config.yaml), each asked without and with its view prompt but the origin (none: 17 requests), about
    1.17 captions per image (VSR: 2,195 captions on 1,874 images) as yes/no questions, or one four-caption
    question; the user messages as zerovlm.prompts.user_message writes them (grid layout). The requests carry
    their images' fingerprints (`fingerprinted`)."""
    rng = np.random.default_rng(seed)
    configurations = list(STITCHED_CONFIGURATIONS.values())
    requests = []
    for e in range(len(images) // len(configurations)):
        if four_captions:
            questions, options = ["Which caption describes the image best?"], CAPTIONS
        else:
            count = 1 + int(rng.random() < 2195 / 1874 - 1)
            questions, options = [f"{c}, please answer me yes or no" for c in CAPTIONS[:count]], ("Yes", "No")
        for c, panels in enumerate(configurations):
            image, view, lead = images[e * len(configurations) + c], view_prompt(panels, "grid"), question_lead(panels)
            for question in questions:
                texts = [question] + ([f"{view} {lead + lower_first(question) if lead else question}"] if view else [])
                requests += [Request((image,), text, options) for text in texts]
    return fingerprinted(requests)


def mix_flops(backend: LlavaBackend, requests: list[Request]) -> tuple[float, float]:
    """Analytic forward FLOPs per request of `requests` scored one a row, and with each image's prefix shared
    (the tree rows' attention counted as causal over the whole row: an upper bound)."""
    config, image_tokens = backend.model.config, backend.tokens_per_image
    alone = shared = 0.0
    with backend._call_memos():
        for group in backend._image_groups(requests):
            text = scored = 0
            for i in group:
                prefix, continuations = backend._tokenise(requests[i])
                extra, count = sum(len(c) - 1 for c in continuations), sum(len(c) for c in continuations)
                alone += forward_flops(config, len(prefix) - 1 + extra, image_tokens, count)
                end = prefix.index(backend.image_token_id) + 1
                text += (0 if text else end - 1) + len(prefix) - end + extra
                scored += count
            shared += forward_flops(config, text, image_tokens, scored)
    return alone / len(requests), shared / len(requests)


class HostTimes:
    """Where the host's time goes in one option_logprobs call: grouping the requests by image (tokenising every
    request, and hashing the images of those without fingerprints, before the first batch: nothing runs on the
    device meanwhile), the length sort, preparing inputs (summed over the prefetch threads), queueing batches,
    waiting for their scores."""

    def __init__(self, backend):
        self.backend, self.seconds = backend, Counter()

    def _wrap(self, name, fn):
        def timed_call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start

        return timed_call

    # those a backend has; "group" includes "tokenise" (the batched tokenizer calls), which "length" then finds
    # memoised
    ATTRIBUTES = {
        "_image_groups": "group",
        "_tokenise_ahead": "tokenise",
        "_length": "length",
        "_encode": "prepare",
        "_score_batch": "queue",
    }

    def __enter__(self):
        self.wrapped = [a for a in self.ATTRIBUTES if hasattr(self.backend, a)]
        self.own = {a: self.backend.__dict__[a] for a in self.wrapped if a in self.backend.__dict__}  # overrides
        for attribute in self.wrapped:
            setattr(self.backend, attribute, self._wrap(self.ATTRIBUTES[attribute], getattr(self.backend, attribute)))
        self.result = PendingScores.result
        PendingScores.result = self._wrap("wait", self.result)
        return self

    def __exit__(self, *exc):
        for attribute in self.wrapped:
            delattr(self.backend, attribute)
        for attribute, value in self.own.items():  # e.g. one_request_a_row's grouping
            setattr(self.backend, attribute, value)
        PendingScores.result = self.result

    def summary(self) -> str:
        names = [*self.ATTRIBUTES.values(), "wait"]  # a fixed order: "tokenise" right after the "group" holding it
        return ", ".join(f"{name} {self.seconds[name]:.2f} s" for name in names if name in self.seconds)


class Bench:
    """Shared state of one run: arguments, device, report lines and the measuring helper."""

    def __init__(self, args):
        self.args = args
        self.device, self.dtype = DEVICE, DTYPE
        self.lines: list[str] = []
        self.naive_rate = float("nan")

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def header(self) -> None:
        self.say(f"{'method':<46}{'samples/s':>10}{'x naive':>9}{'TFLOP/s':>9}{'peak GiB':>10}")

    def naive(self, one, items) -> None:
        with torch.no_grad():
            one(items[0])
            seconds, _ = timed(self.device, lambda: [one(i) for i in items[1:]])
        self.naive_rate = (len(items) - 1) / seconds
        self.say(f"{'naive: 1 at a time, generate 16 tokens':<46}{self.naive_rate:>10.2f}{1:>9.1f}")

    def measure(self, label, backend, requests, flops_per_sample) -> float:
        """Timed option_logprobs over requests after a warm-up batch; no image-feature reuse."""
        bs = self.args.batch_size
        if isinstance(getattr(backend, "_features", None), dict):
            backend._features.clear()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        warm, _ = timed(self.device, lambda: backend.option_logprobs(requests[:bs]))
        graphs = compiled_graph_count()
        with HostTimes(backend) as host:
            seconds, scores = timed(self.device, lambda: backend.option_logprobs(requests[bs:]))
        graphs = compiled_graph_count() - graphs
        assert len(scores) == len(requests) - bs and all(
            len(s) == len(r.options) for s, r in zip(scores, requests[bs:])
        )
        rate = (len(requests) - bs) / seconds
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else float("nan")
        self.say(
            f"{label:<46}{rate:>10.2f}{rate / self.naive_rate:>9.1f}{rate * flops_per_sample / 1e12:>9.0f}"
            f"{peak:>10.1f}   (first batch {warm:.1f} s)"
        )
        self.say(f"     host, of {seconds:.2f} s: {host.summary()}; graphs compiled during the call: {graphs}")
        return rate

    def shared_vs_alone(self, label, backend, requests, flops) -> None:
        """The same requests scored one request a row, then with the requests of one image in one row after
        their shared prefix (what option_logprobs does), twice: a first call, which meets most of its batch shapes
        (row count x length) for the first time, and the same call repeated, which has seen them all, as an infer
        run's later chunks have; flops: (per request alone, per request shared)."""
        with one_request_a_row(backend):
            alone = self.measure(f"{label}, one request a row", backend, requests, flops[0])
        first_call = self.measure(f"{label}, image prefix shared, first call", backend, requests, flops[1])
        repeated = self.measure(f"{label}, image prefix shared", backend, requests, flops[1])
        example = requests[: 2 * len(STITCHED_CONFIGURATIONS)]  # a whole example or more
        gap = max_gap(backend.option_logprobs(example), [backend.option_logprobs([r])[0] for r in example])
        self.say(
            f"   {label}: {repeated:.2f} requests/s image prefix shared ({first_call:.2f} on a first call), "
            f"{alone:.2f} one request a row "
            f"(x{repeated / alone:.2f}); max |shared - one at a time| = {gap:.3g}"
        )

    def model_side(self, label, backend, requests, flops_per_sample) -> float:
        """The same batches with requests pre-encoded (tokens, pixels): the model-side ceiling of the
        pipeline, without CPU preprocessing (image features are still computed every time)."""
        bs = self.args.batch_size
        backend._features.clear()
        with backend._call_memos():
            encoded = [[backend._encode(r)] for r in requests[:bs]]  # one request a row
        repeats = max(1, self.args.samples // bs)

        def run():
            for _ in range(repeats):
                backend._features.clear()
                backend._score_batch(encoded)  # queued back to back, as run_batched does

        with cpu_threads_for(backend.model):
            backend._score_batch(encoded).result()
            seconds, _ = timed(self.device, run)
        rate = repeats * bs / seconds
        self.say(f"{label:<46}{rate:>10.2f}{rate / self.naive_rate:>9.1f}{rate * flops_per_sample / 1e12:>9.0f}")
        return rate

    def agreement(self, tag, backend, requests, reference=None):
        check = backend.option_logprobs(requests)
        single = [backend.option_logprobs([r])[0] for r in requests[:4]]
        line = f"   {tag}: max |batched - one at a time| = {max_gap(check[:4], single):.3g}"
        if reference:
            gaps = [abs(x - y) for a, b in zip(check, reference) for x, y in zip(a, b)]
            same = sum(argmax(a) == argmax(b) for a, b in zip(check, reference)) / len(check)
            line += (
                f"; vs the first variant: max |diff| {max(gaps):.3g}, mean {sum(gaps) / len(gaps):.3g}, "
                f"same choice {100 * same:.0f}% of {len(check)}"
            )
        self.say(line + f" (summed log-probs, {str(self.dtype).removeprefix('torch.')})")
        return check

    def synchronisations(self, tag, backend, requests) -> None:
        """Host synchronisations during one option_logprobs call (one per batch is the design)."""
        if self.device.type != "cuda":
            self.say(f"   {tag}: " + skip_line("host synchronisations, counted by CUDA's sync debug mode"))
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                backend.option_logprobs(requests)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        sites = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
        batches = -(-len(requests) // self.args.batch_size)
        self.say(f"   {tag}: {sum(sites.values())} host synchronisations for {batches} batches {dict(sites)}")


def run_llava(b: Bench) -> None:
    args, device, dtype = b.args, b.device, b.dtype
    name = "LLaVA-1.5, tiny (zerovlm/vlm/tiny.py)" if args.tiny else "LLaVA-1.5-7B architecture (full)"
    b.say(f"== {name}, random weights, {dtype}, sdpa")
    start = time.perf_counter()
    model, processor = build_llava(args.tiny, device, dtype)
    config = model.config
    b.say(
        f"model built in {time.perf_counter() - start:.1f} s: "
        f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters"
    )
    backend = LlavaBackend(model, processor, batch_size=args.batch_size)
    prompt = make_prompt(backend, args.text_tokens)
    image_tokens = backend.tokens_per_image
    count = args.samples + args.batch_size  # the first batch warms up
    images = random_images(count + args.naive_samples + 1, seed=0)
    yes_no = fingerprinted([Request((images[i],), prompt, ("Yes", "No")) for i in range(count)])
    four = fingerprinted(
        [Request((images[i],), "Which caption describes the image best?", CAPTIONS) for i in range(count)]
    )
    with backend._call_memos():
        prefix4, options4 = backend._tokenise(four[0])
    four_text, four_extra = len(prefix4) - 1, sum(len(c) - 1 for c in options4)
    # prompts of 3/4 to 5/4 of --text-tokens (48 to 80 by default): batches carry padding
    lo, hi = args.text_tokens * 3 // 4, args.text_tokens * 5 // 4
    rng = np.random.default_rng(1)
    prompts = {n: make_prompt(backend, n) for n in range(lo, hi + 1)}
    mixed = fingerprinted(
        [Request((images[i],), prompts[int(rng.integers(lo, hi + 1))], ("Yes", "No")) for i in range(count)]
    )
    # as many stitched images as the other measurements have samples: 64 examples, 1,156 yes/no requests by default
    examples = -(-count // len(STITCHED_CONFIGURATIONS))
    mix_images = random_images(examples * len(STITCHED_CONFIGURATIONS), seed=3)
    mix_yes_no, mix_four = (
        Mix(name, requests, mix_flops(backend, requests))
        for name, requests in (
            ("yes/no", paper_mix(mix_images, four_captions=False, seed=4)),
            ("4 captions", paper_mix(mix_images, four_captions=True, seed=4)),
        )
    )
    b.say(
        f"paper mix: {examples} examples x {len(STITCHED_CONFIGURATIONS)} configurations (stitched images): "
        f"{len(mix_yes_no.requests)} yes/no requests, {len(mix_four.requests)} four-caption requests"
    )
    b.say(
        f"tokens per sample: {image_tokens} image + {args.text_tokens} text (yes/no); "
        f"{image_tokens} image + {four_text} text + {four_extra} option tokens (four captions)"
    )
    b.header()

    def naive_one(image):
        text = backend.render_prompt(Request((image,), prompt))
        inputs = processor(text=text, images=[image], return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with cpu_threads_for(model):  # as the backends run a tiny model on the CPU
            return model.generate(**inputs, max_new_tokens=16, min_new_tokens=16, do_sample=False)

    b.naive(naive_one, images[count : count + args.naive_samples + 1])
    flops_yes_no = forward_flops(config, args.text_tokens, image_tokens, 1)
    flops_four = forward_flops(config, four_text + four_extra, image_tokens, 4 + four_extra)
    variants = {"off": [("eager", False)], "on": [("compiled", True)], "both": [("eager", False), ("compiled", True)]}[
        args.compile
    ]
    if args.fp8:  # last: the conversion replaces the decoder's layers in place
        variants.append(("compiled, FP8", True))
    reference = None
    for tag, compiled in variants:
        if compiled and device.type != "cuda":
            b.say(skip_line(f"{tag} variant", "torch.compile and FP8 matmuls are measured on a CUDA GPU"))
            continue
        if tag.endswith("FP8"):
            torch._dynamo.reset()
            use_fp8_linears(model.get_decoder(), device)
        be = LlavaBackend(model, processor, batch_size=args.batch_size, compile=compiled) if compiled else backend
        b.measure(f"batched scoring, yes/no, {tag}, bs {args.batch_size}", be, yes_no, flops_yes_no)
        b.measure(f"batched scoring, 4 captions, {tag}, bs {args.batch_size}", be, four, flops_four)
        b.measure(f"batched scoring, yes/no {lo}-{hi} text tokens, {tag}", be, mixed, flops_yes_no)
        for mix in (mix_yes_no, mix_four):
            b.shared_vs_alone(f"paper mix, {mix.name}, {tag}", be, mix.requests, mix.flops)
        b.model_side(f"  model side only (pre-encoded), yes/no, {tag}", be, yes_no, flops_yes_no)
        b.model_side(f"  model side only (pre-encoded), 4 captions, {tag}", be, four, flops_four)
        check = b.agreement(tag, be, four[:64] + yes_no[:64], reference)
        b.synchronisations(tag, be, mixed[: 2 * args.batch_size])
        reference = reference or check
    if not args.tiny:
        b.say(
            "goals on one H200: >= 75 yes/no samples/s, >= 60 four-caption samples/s (naive measured 2.12/s); "
            ">= 120 requests/s on the paper mix with the image prefix shared"
        )


def full_size_minigpt4(device, dtype):
    """MiniGPT-4 7B's architecture with random weights, built on `device`: EVA ViT-g/14 (1408 wide, 39
    layers), Q-Former, llama_proj, Vicuna-7B. Returns MiniGPT4Backend's parts."""
    from transformers import (
        Blip2QFormerConfig,
        Blip2QFormerModel,
        Blip2VisionConfig,
        Blip2VisionModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    tokenizer = build_word_tokenizer()
    vision_config = Blip2VisionConfig(
        hidden_size=1408,
        intermediate_size=6144,
        num_hidden_layers=39,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
    )
    qformer_config = Blip2QFormerConfig(encoder_hidden_size=vision_config.hidden_size)
    text_config = LlamaConfig(
        **VICUNA_7B,
        vocab_size=32000,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        vision = Blip2VisionModel._from_config(vision_config, dtype=dtype, attn_implementation="sdpa").eval()
        vision.post_layernorm.eps = 1e-5
        qformer = Blip2QFormerModel(qformer_config).float().eval()
        query_tokens = torch.nn.Parameter(torch.randn(1, 32, qformer_config.hidden_size) * 0.02)
        llama_proj = torch.nn.Linear(qformer_config.hidden_size, text_config.hidden_size).to(dtype)
        llm = LlamaForCausalLM._from_config(text_config, dtype=dtype, attn_implementation="sdpa").eval()
    return vision, query_tokens, qformer, llama_proj, llm, tokenizer


def build_minigpt4(tiny: bool, device, dtype):
    """MiniGPT4Backend's parts (vision, query_tokens, qformer, llama_proj, llm, tokenizer): the full-size
    architecture, or the project's tiny MiniGPT-4 written to a temporary folder and loaded by load_minigpt4."""
    if not tiny:
        return full_size_minigpt4(device, dtype)
    with tempfile.TemporaryDirectory() as folder:
        build_tiny_minigpt4(Path(folder), seed=0)
        cfg = InferConfig(backend="minigpt4", model=folder, device=device.type, dtype=str(dtype).removeprefix("torch."))
        loaded = load_minigpt4(cfg)
    return loaded.vision, loaded.query_tokens, loaded.qformer, loaded.llama_proj, loaded.llm, loaded.tokenizer


def run_minigpt4(b: Bench) -> None:
    args, device, dtype = b.args, b.device, b.dtype
    name = "MiniGPT-4, tiny (zerovlm/vlm/tiny.py)" if args.tiny else "MiniGPT-4 (Vicuna v0 7B) architecture (full)"
    b.say(f"== {name}, random weights, {dtype}, Q-Former float32")
    start = time.perf_counter()
    vision, query_tokens, qformer, llama_proj, llm, tokenizer = build_minigpt4(args.tiny, device, dtype)
    b.say(f"model built in {time.perf_counter() - start:.1f} s")
    backend = MiniGPT4Backend(
        vision, query_tokens, qformer, llama_proj, llm, tokenizer, batch_size=args.batch_size, prefetch_workers=4
    )
    count = args.samples + args.batch_size
    images = random_images(count + args.naive_samples + 1, seed=2)
    question = "Is the red mug on the left side of the wooden table near the blue bowl? please answer me yes or no"
    yes_no = fingerprinted([Request((images[i],), question, ("Yes", "No")) for i in range(count)])
    four = fingerprinted(
        [Request((images[i],), "Which caption describes the image best?", CAPTIONS) for i in range(count)]
    )
    with backend._call_memos():
        prefix, _ = backend._tokenise(yes_no[0])
        prefix4, options4 = backend._tokenise(four[0])
    extra4 = sum(len(c) - 1 for c in options4)
    b.say(
        f"tokens per sample: 32 image + {len(prefix) - 32} text (yes/no); "
        f"32 image + {len(prefix4) - 32} text + {extra4} option tokens (four captions)"
    )

    v, q, t = vision.config, qformer.config, llm.config
    n = (v.image_size // v.patch_size) ** 2 + 1
    qformer_flops = q.num_hidden_layers * 2 * 32 * (4 * q.hidden_size**2 + 2 * q.hidden_size * q.intermediate_size) + (
        q.num_hidden_layers // q.cross_attention_frequency
    ) * 2 * (32 * 2 * q.hidden_size**2 + n * 2 * q.hidden_size * v.hidden_size)
    base = vision_flops(v) + qformer_flops + 2 * 32 * q.hidden_size * t.hidden_size
    b.header()
    naive = MiniGPT4Backend(vision, query_tokens, qformer, llama_proj, llm, tokenizer, batch_size=1)
    b.naive(
        lambda r: naive.generate([r], max_new_tokens=16, stop=("@@",)),
        fingerprinted([Request((i,), question) for i in images[count : count + args.naive_samples + 1]]),
    )
    b.measure(
        f"batched scoring, yes/no, eager, bs {args.batch_size}",
        backend,
        yes_no,
        base + decoder_flops(t, len(prefix), 1),
    )
    b.measure(
        f"batched scoring, 4 captions, eager, bs {args.batch_size}",
        backend,
        four,
        base + decoder_flops(t, len(prefix4) + extra4, 4 + extra4),
    )
    b.agreement("eager", backend, four[:4] + yes_no[:12])


TINY = {"batch_size": 4, "samples": 8, "naive_samples": 2, "text_tokens": 16}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="llava,minigpt4", help="comma list of llava, minigpt4")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=512, help="timed samples per batched measurement")
    parser.add_argument("--naive-samples", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--compile", choices=("off", "on", "both"), default="both", help="LLaVA only")
    parser.add_argument(
        "--fp8",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure FP8 decoder Linear layers, compiled (CUDA only)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parse_args(parser, TINY, argv)

    import transformers

    b = Bench(args)
    b.say(
        f"zerovlm VLM throughput; device: {torch.cuda.get_device_name() if b.device.type == 'cuda' else 'cpu'}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}"
    )
    for family in args.family.split(","):
        b.say("")
        {"llava": run_llava, "minigpt4": run_minigpt4}[family](b)
        gc.collect()
        if b.device.type == "cuda":
            torch.cuda.empty_cache()
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text("\n".join(b.lines) + "\n")


if __name__ == "__main__":
    main()
