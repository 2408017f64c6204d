"""Throughput of answering with LLaVA-1.5-7B on one GPU: the naive way vs zerovlm's batched scoring.

Not a test. Builds the full-size LLaVA-1.5-7B architecture (CLIP ViT-L/14-336 + Vicuna-7B) with random
bf16 weights directly on the GPU, a word-level tokenizer (zerovlm.vlm.tiny) and the llava-hf image
processor settings (336 px), loaded through zerovlm's own processor loader. Each sample has its own
random 640x480 image (so no image-feature reuse helps) and a prompt of `--text-tokens` text tokens
after the chat template (576 image tokens + 64 text tokens by default).

Prints, in one run:
- naive: one sample at a time, `model.generate` of 16 new tokens (how the paper's code answered);
- batched scoring (`LlavaBackend.option_logprobs`) for yes/no and for four-caption questions, eager
  and with the decoder layers compiled (`--compile`), with samples/s, the ratio to naive, achieved
  TFLOP/s (analytic FLOPs of the forward) and peak GPU memory.

    python benchmarks/vlm_throughput.py --out benchmarks/results/vlm_h200.txt
    python benchmarks/vlm_throughput.py --scale tiny --samples 16 --batch-size 8   # CPU dry run
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zerovlm.vlm.base import Request  # noqa: E402
from zerovlm.vlm.llava import LlavaBackend, load_processor  # noqa: E402
from zerovlm.vlm.tiny import HUB_LLAVA_CHAT_TEMPLATE, build_word_tokenizer, tiny_llama_config  # noqa: E402

CAPTIONS = ("A red mug is on the top of the wooden table", "A red mug is under the wooden table",
            "A red mug is to the left of the wooden table", "A red mug is to the right of the wooden table")
FILLER = ("this is a 3d single view image generated from the original image centered on the object judging by "
          "these four pictures is the red mug on the left side of the wooden table near the blue bowl and the "
          "green bottle in the middle of the scene ").split()


def build_processor(folder: Path, image_px: int, patch_px: int):
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_px},
                                            crop_size={"height": image_px, "width": image_px})
    LlavaProcessor(image_processor=image_processor, tokenizer=build_word_tokenizer(), patch_size=patch_px,
                   vision_feature_select_strategy="default", chat_template=HUB_LLAVA_CHAT_TEMPLATE,
                   num_additional_image_tokens=1).save_pretrained(folder)
    return load_processor(str(folder))


def build_model(scale: str, tokenizer, device, dtype):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    if scale == "full":  # llava-hf/llava-1.5-7b-hf
        text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                           rms_norm_eps=1e-5, pad_token_id=tokenizer.pad_token_id)
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
                                  hidden_act="quick_gelu")
    else:
        text = tiny_llama_config(-(-len(tokenizer) // 8) * 8, tokenizer)
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, image_size=56, patch_size=14, projection_dim=32)
    config = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
                         vision_feature_select_strategy="default", pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval(), config


def forward_flops(config, text_tokens: int, image_tokens: int, scored_positions: int) -> float:
    """Matmul FLOPs of one sample's forward: vision tower, projector, decoder (causal attention), lm_head."""
    v, t = config.vision_config, config.text_config
    n = (v.image_size // v.patch_size) ** 2 + 1
    vision = v.num_hidden_layers * (2 * n * (4 * v.hidden_size ** 2 + 2 * v.hidden_size * v.intermediate_size)
                                    + 4 * n * n * v.hidden_size)
    projector = 2 * image_tokens * (v.hidden_size * t.hidden_size + t.hidden_size ** 2)
    length = text_tokens + image_tokens
    layer = 2 * length * (4 * t.hidden_size ** 2 + 3 * t.hidden_size * t.intermediate_size) \
        + 2 * length * length * t.hidden_size  # QK^T and AV under a causal mask: half of 4 L^2 d
    head = 2 * scored_positions * t.hidden_size * t.vocab_size
    return vision + projector + t.num_hidden_layers * layer + head


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


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device, fn):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=512, help="timed samples per batched measurement")
    parser.add_argument("--naive-samples", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--compile", choices=("off", "on", "both"), default="both")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    import transformers
    say(f"zerovlm VLM throughput: LLaVA-1.5-7B architecture ({args.scale}), random weights, {dtype}, sdpa")
    say(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or 'cpu'}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as folder:
        image_px, patch_px = (336, 14) if args.scale == "full" else (56, 14)
        processor = build_processor(Path(folder), image_px, patch_px)
    start = time.perf_counter()
    model, config = build_model(args.scale, processor.tokenizer, device, dtype)
    say(f"model built in {time.perf_counter() - start:.1f} s: "
        f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters")

    backend = LlavaBackend(model, processor, batch_size=args.batch_size)
    prompt = make_prompt(backend, args.text_tokens)
    image_tokens = backend.tokens_per_image
    count = args.samples + args.batch_size  # the first batch warms up
    images = random_images(count + args.naive_samples + 1, seed=0)
    yes_no = [Request((images[i],), prompt, ("Yes", "No")) for i in range(count)]
    four = [Request((images[i],), "Which caption describes the image best?", CAPTIONS) for i in range(count)]
    four_text = len(backend._tokenise(four[0])[0]) - 1
    four_extra = sum(len(c) - 1 for c in backend._tokenise(four[0])[1])
    say(f"tokens per sample: {image_tokens} image + {args.text_tokens} text (yes/no); "
        f"{image_tokens} image + {four_text} text + {four_extra} option tokens (four captions)")
    say("")

    # 1. naive: one sample at a time, generate 16 tokens
    def naive_one(image):
        text = backend.render_prompt(Request((image,), prompt))
        inputs = processor(text=text, images=[image], return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        return model.generate(**inputs, max_new_tokens=16, min_new_tokens=16, do_sample=False)

    with torch.no_grad():
        naive_one(images[-1])
        seconds, _ = timed(device, lambda: [naive_one(i) for i in images[count:count + args.naive_samples]])
    naive_rate = args.naive_samples / seconds
    say(f"{'method':<44}{'samples/s':>10}{'x naive':>9}{'TFLOP/s':>9}{'peak GiB':>10}")
    say(f"{'naive: 1 at a time, generate 16 tokens':<44}{naive_rate:>10.2f}{1:>9.1f}{'':>9}{'':>10}")

    def measure(label, be, requests, text_tokens, scored):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        warm, _ = timed(device, lambda: be.option_logprobs(requests[: args.batch_size]))
        seconds, scores = timed(device, lambda: be.option_logprobs(requests[args.batch_size:]))
        assert len(scores) == args.samples and all(len(s) == len(r.options) for s, r in zip(scores, requests))
        rate = args.samples / seconds
        tflops = rate * forward_flops(config, text_tokens, image_tokens, scored) / 1e12
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
        say(f"{label:<44}{rate:>10.2f}{rate / naive_rate:>9.1f}{tflops:>9.0f}{peak:>10.1f}"
            f"   (first batch {warm:.1f} s)")
        return rate

    results = {}
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    for compiled in modes:
        be = LlavaBackend(model, processor, batch_size=args.batch_size, compile=compiled) if compiled else backend
        tag = "compiled" if compiled else "eager"
        results[("yes/no", tag)] = measure(f"batched scoring, yes/no, {tag}, bs {args.batch_size}", be,
                                           yes_no, args.text_tokens, 1)
        results[("four", tag)] = measure(f"batched scoring, 4 captions, {tag}, bs {args.batch_size}", be,
                                         four, four_text + four_extra, 4 + four_extra)
    say("")
    say(f"goals on one H200: >= 75 yes/no samples/s, >= 60 four-caption samples/s; naive measured 2.12/s")
    best = {kind: max(v for (k, _), v in results.items() if k == kind) for kind in ("yes/no", "four")}
    say(f"best: yes/no {best['yes/no']:.1f}/s, four captions {best['four']:.1f}/s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
