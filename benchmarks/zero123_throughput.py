"""Zero123 views per second on one GPU: the full-size architecture with random weights (not a test).

Builds the real shapes (SD-1.x UNet with 8 input channels and 768-d cross-attention, the SD VAE,
CLIP ViT-L/14, the 772 -> 768 pose projection) directly on the GPU and times, in one run:
  naive:    one view per call, fp16, eager, plain SDPA attention everywhere;
  eager:    the project's path (Zero123Pipeline: images x views batched, guidance folded into the
            batch, channels_last, the exact one-token cross-attention) without compilation;
  compiled: the same pipeline after Zero123Pipeline.compile(mode) for each requested mode.
views/s counts whole pipeline calls (CLIP + VAE encode, every DDIM step, VAE decode, PIL conversion).
UNet TFLOP/s uses the standard UNet FLOP count (full cross-attention), measured with FlopCounterMode.
`--tiny` (implied without a CUDA device) loads the project's tiny Zero123 (zerovlm/views/tiny.py) with
small counts; compiled modes then need a CUDA GPU and print a `skipped:` line elsewhere.

    python benchmarks/zero123_throughput.py --size 256 --steps 50 --guidance 3 --batch 128
    python benchmarks/zero123_throughput.py --tiny   # smoke run, seconds (CPU or GPU)
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import CLIP_VIT_L14, DEVICE, milliseconds, parse_args, skip_line, synchronize  # noqa: E402

from zerovlm.runtime import DTYPES  # noqa: E402
from zerovlm.views.checkpoints import Zero123Components, load_components, make_scheduler  # noqa: E402
from zerovlm.views.tiny import build_tiny_zero123  # noqa: E402
from zerovlm.views.zero123 import Zero123Pipeline  # noqa: E402


def full_size_components(dtype: torch.dtype, size_px: int) -> Zero123Components:
    """Zero123's architecture (kxic/zero123-165000's configs) with random weights, built on the GPU."""
    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = UNet2DConditionModel(
            sample_size=size_px // 8,
            in_channels=8,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            sample_size=size_px,
            scaling_factor=0.18215,
        )
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_L14, image_size=224))
        projection = torch.nn.Linear(768 + 4, 768)
    parts = [module.to(dtype).eval() for module in (unet, vae, clip, projection)]
    return Zero123Components(*parts, scheduler=make_scheduler(), layout="kxic")


def components(tiny: bool, dtype: torch.dtype, size_px: int) -> Zero123Components:
    """The full-size architecture, or the project's tiny Zero123 written to a temporary folder and loaded
    from it as a checkpoint is (on the CPU: Zero123Pipeline.to moves it)."""
    if not tiny:
        return full_size_components(dtype, size_px)
    with tempfile.TemporaryDirectory() as folder:
        return load_components(build_tiny_zero123(folder), dtype)


def unet_inputs(pipe: Zero123Pipeline, samples: int, size_px: int, generator: torch.Generator | None = None):
    """(latent (samples, 8, h, w) channels_last, context (samples, 1, D), timestep 500) in the pipeline's
    dtype on its device: what one UNet call of a guided batch of samples / 2 views takes."""
    side = size_px // pipe.vae_scale_factor
    latent = torch.randn(
        samples,
        2 * pipe.vae.config.latent_channels,
        side,
        side,
        device=pipe.device,
        dtype=pipe.dtype,
        generator=generator,
    ).contiguous(memory_format=torch.channels_last)
    context = torch.randn(
        samples, 1, pipe.unet.config.cross_attention_dim, device=pipe.device, dtype=pipe.dtype, generator=generator
    )
    return latent, context, torch.tensor(500, device=pipe.device)


def inputs(n: int, size_px: int):
    images = [Image.effect_noise((size_px, size_px), 64).convert("RGB") for _ in range(min(n, 8))]
    images = [images[i % len(images)] for i in range(n)]
    poses = torch.tensor([[0.0, 1.0, 0.0, 0.0]]).repeat(n, 1)  # the "right" view
    return images, poses, [torch.Generator().manual_seed(i) for i in range(n)]


def time_calls(pipe: Zero123Pipeline, batch: int, calls: int, args) -> float:
    """Seconds per view over `calls` pipeline calls of `batch` views each (after one warm-up call)."""
    images, poses, _ = inputs(batch, args.size)
    run = lambda: pipe(  # noqa: E731
        images,
        poses,
        inputs(batch, args.size)[2],
        num_inference_steps=args.steps,  # noqa: E731
        guidance_scale=args.guidance,
        eta=1.0,
        image_size_px=args.size,
    )
    run()
    synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        run()
    synchronize()
    return (time.perf_counter() - start) / (calls * batch)


def unet_flops_per_view_step(pipe: Zero123Pipeline, size_px: int) -> float:
    """FLOPs of one guided DDIM step for one view (two UNet passes), standard attention."""
    latent, context, t = unet_inputs(pipe, 2, size_px)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        pipe.unet(latent, t, encoder_hidden_states=context)
    return float(counter.get_total_flops())


def unet_step_seconds(pipe: Zero123Pipeline, batch: int, size_px: int, repeats: int) -> float:
    """Seconds per UNet call on a guided batch of `batch` views (2 x batch samples), CUDA-event timed on a GPU."""
    latent, context, t = unet_inputs(pipe, 2 * batch, size_px)
    with torch.no_grad():
        return milliseconds(lambda: pipe.unet(latent, t, encoder_hidden_states=context), repeats, warmup=3) / 1e3


def report(line: str, lines: list[str]) -> None:
    print(line, flush=True)
    lines.append(line)


TINY = {"size": 64, "steps": 2, "batch": 4, "dtype": "float32", "calls": 1, "naive_views": 1}
UNET_REPEATS = 20  # timed UNet calls per variant


def free_memory() -> None:
    gc.collect()
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=128, help="views per pipeline call on the project path")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument(
        "--modes",
        default="reduce-overhead",
        help="comma-separated torch.compile modes, or '' (max-autotune: over 8 min to compile)",
    )
    parser.add_argument("--calls", type=int, default=2, help="timed pipeline calls per variant")
    parser.add_argument("--naive-views", type=int, default=2)
    parser.add_argument("--output", default=None, help="also write the report to this file")
    args = parse_args(parser, TINY, argv)
    lines: list[str] = []
    name = torch.cuda.get_device_properties(0).name if DEVICE.type == "cuda" else "cpu"
    scale = "tiny Zero123 (zerovlm/views/tiny.py)" if args.tiny else "full-size Zero123"
    report(
        f"device {name}, torch {torch.__version__}; {scale}; {args.size} px, {args.steps} DDIM steps, guidance "
        f"{args.guidance}, eta 1.0; project path {args.dtype}, batch {args.batch} views",
        lines,
    )

    # naive: one view per call, eager, plain attention; fp16 on a GPU (float32 on the CPU, see common.DTYPE)
    naive_dtype = "float16" if DEVICE.type == "cuda" else "float32"
    naive = Zero123Pipeline(components(args.tiny, DTYPES[naive_dtype], args.size)).to(DEVICE)
    naive.unet.set_attn_processor(AttnProcessor2_0())
    flops = unet_flops_per_view_step(naive, args.size)
    naive_s = time_calls(naive, 1, args.naive_views, args)
    report(f"UNet FLOPs per view per guided step: {flops / 1e9:.1f} GFLOP", lines)
    report(
        f"naive    {naive_dtype} 1 view/call eager: {1 / naive_s:7.2f} views/s  "
        f"({naive_s / args.steps * 1e3:.1f} ms/step)",
        lines,
    )
    del naive
    free_memory()

    results = {}
    for mode in ["eager"] + [m for m in args.modes.split(",") if m]:
        if mode != "eager" and DEVICE.type != "cuda":
            report(
                skip_line(
                    f"project path compiled ({mode})", "torch.compile with CUDA graphs is measured on a CUDA GPU"
                ),
                lines,
            )
            continue
        torch._dynamo.reset()
        pipe = Zero123Pipeline(components(args.tiny, DTYPES[args.dtype], args.size)).to(DEVICE)
        torch.backends.cudnn.benchmark = True
        tick = time.perf_counter()
        if mode != "eager":
            pipe.compile(mode)
        if DEVICE.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        per_view = time_calls(pipe, args.batch, args.calls, args)
        setup = time.perf_counter() - tick - per_view * args.batch * args.calls
        peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE.type == "cuda" else float("nan")
        step = unet_step_seconds(pipe, args.batch, args.size, UNET_REPEATS)
        results[mode] = 1 / per_view
        report(
            f"project  {args.dtype} {args.batch} views/call {mode:15s}: {1 / per_view:7.2f} views/s  "
            f"x{naive_s / per_view:6.1f} vs naive; UNet {step * 1e3:6.1f} ms/step = "
            f"{flops * args.batch / step / 1e12:5.0f} TFLOP/s; whole pipeline {flops * args.steps / per_view / 1e12:5.0f} "  # noqa: E501
            f"TFLOP/s; outside the UNet {per_view * args.batch - step * args.steps:5.2f} s/call; "
            f"peak {peak:5.1f} GiB; warm-up/compile {setup:5.0f} s",
            lines,
        )
        del pipe
        free_memory()
    best = max(results, key=results.get)
    report(
        f"best: {best} {results[best]:.2f} views/s = x{results[best] * naive_s:.1f} the naive loop (goal 30 views/s)",
        lines,
    )
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
