"""Where the GPU time goes: kernel-time tables for the Zero123 UNet and the LLaVA-1.5-7B and MiniGPT-4 7B forwards
(not a test).

Builds the same full-size random-weight models as the throughput benchmarks and prints, per variant,
the device time of one call split by kernel kind (convolution, GEMM, attention, normalisation, fused
Triton kernels, other) and the top kernels, so that a speed-up is aimed at what costs time:

    python benchmarks/gpu_profile.py zero123       # UNet eager / compiled / compiled with FP8 linears
    python benchmarks/gpu_profile.py zero123-convs # each UNet convolution: cuDNN bf16 vs the FP8 Triton kernel
    python benchmarks/gpu_profile.py zero123-fp8   # compiled UNet: bf16, FP8 convolutions, FP8 convs + linears
    python benchmarks/gpu_profile.py zero123-inductor  # compiled UNet under Inductor's kernel-tuning options
    python benchmarks/gpu_profile.py zero123-layouts  # compiled UNet on channels_last vs contiguous tensors
    python benchmarks/gpu_profile.py zero123-autotune # the UNet under max-autotune (long compilation)
    python benchmarks/gpu_profile.py llava         # decoder forward, full paths with host times, sync points, FP8
    python benchmarks/gpu_profile.py minigpt4      # the paper mix: model side, full path with host times, sync points
    python benchmarks/gpu_profile.py --tiny zero123 llava   # several at once; smoke run (CPU or GPU)

The FP8 variants also print their deviation from bf16 on the same inputs. `--tiny` (implied without a
CUDA device) profiles the project's tiny models (zerovlm/views/tiny.py, zerovlm/vlm/tiny.py); on the CPU
the tables hold CPU operators' own time, and what exists only on a GPU (torch.compile, CUDA graphs, FP8
tensor cores, host synchronisations) prints a `skipped:` line.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import pstats
import re
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    DEVICE,
    DTYPE,
    count_synchronisations,
    milliseconds,
    parse_args,
    skip_line,
    synchronize,
)

from zerovlm.vlm.fp8 import convert_linears  # noqa: E402

DTYPE_NAME = {torch.bfloat16: "bf16", torch.float32: "float32"}[DTYPE]
CUDA = DEVICE.type == "cuda"
# what the profiler records, and the device of the events counted: the GPU's kernels, else the CPU's operators
ACTIVITY, PROFILED_DEVICE = (
    (ProfilerActivity.CUDA, torch.autograd.DeviceType.CUDA)
    if CUDA
    else (ProfilerActivity.CPU, torch.autograd.DeviceType.CPU)
)
COMPILE_ON_CUDA = "torch.compile is profiled on a CUDA GPU"
# First match wins. Inductor's fused kernels come first: their names list every op they absorbed (a
# GroupNorm + SiLU kernel feeding a convolution is called triton_..._convolution_native_group_norm_silu).
# On the CPU the names are ATen operators (aten::mkldnn_convolution, aten::addmm, ...).
KINDS = (
    ("triton", r"^triton_"),
    ("attention", r"flash|fmha|attention|mha"),
    ("convolution", r"conv|fprop|implicit|cudnn"),
    ("gemm", r"gemm|cutlass|cublas|nvjet|scaled_mm|xmma|matmul|_mm_|^aten::(add|b|badd)?mm$"),
    ("norm", r"norm"),
    ("copy", r"copy|memcpy|memset|fill"),
)


def kind_of(name: str) -> str:
    lower = name.lower()
    return next((kind for kind, pattern in KINDS if re.search(pattern, lower)), "other")


def kernel_table(label: str, fn, calls: int = 3, top: int = 12) -> float:
    """Profile `calls` calls of fn (after one warm-up) and print device ms per call by kernel kind (on the
    CPU: the CPU operators' own time)."""
    fn()
    synchronize()
    with profile(activities=[ACTIVITY]) as prof:
        for _ in range(calls):
            fn()
        synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type == PROFILED_DEVICE]

    def own_ms(event) -> float:
        return (event.self_device_time_total if CUDA else event.self_cpu_time_total) / 1e3 / calls

    per_kind: collections.Counter = collections.Counter()
    for event in kernels:
        per_kind[kind_of(event.key)] += own_ms(event)
    total = sum(per_kind.values())
    print(f"\n-- {label}: {total:.1f} ms of {'kernels' if CUDA else 'CPU operators'} per call", flush=True)
    for kind, ms in per_kind.most_common():
        print(f"   {kind:<12}{ms:9.2f} ms {100 * ms / total:5.1f}%")
    for event in sorted(kernels, key=own_ms, reverse=True)[:top]:
        print(f"   {own_ms(event):8.2f} ms x{event.count // calls:<4} {kind_of(event.key):<11} {event.key[:110]}")
    return total


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x.float() - reference.float()).norm() / reference.float().norm())


# ---------------------------------------------------------------- Zero123
def zero123_pipeline(args):
    from zero123_throughput import components

    from zerovlm.views.zero123 import Zero123Pipeline

    return Zero123Pipeline(components(args.tiny, DTYPE, args.size)).to(DEVICE)


def zero123(args) -> None:
    from zero123_throughput import inputs, unet_inputs

    batch, size = args.batch, args.size
    pipe = zero123_pipeline(args)
    latent, context, t = unet_inputs(pipe, 2 * batch, size)

    def unet_call(pipe):
        with torch.no_grad():
            return pipe.unet(latent, t, encoder_hidden_states=context, return_dict=False)[0]

    torch.backends.cudnn.benchmark = True
    kernel_table(f"UNet eager, {DTYPE_NAME}, {2 * batch} samples", lambda: unet_call(pipe))
    reference = unet_call(pipe).float()

    # the non-UNet parts of one pipeline call, eager
    images, poses, _ = inputs(batch, size)
    encode_ms = milliseconds(lambda: pipe.encode(images, poses, size), 3)
    side = size // pipe.vae_scale_factor
    x = torch.randn(batch, pipe.vae.config.latent_channels, side, side, device=DEVICE)
    decode_ms = milliseconds(lambda: pipe.decode(x), 3)
    print(
        f"\nencode {batch} views ({min(batch, 8)} distinct images): {encode_ms:.1f} ms; "
        f"decode {batch} views: {decode_ms:.1f} ms"
    )
    if not CUDA:
        print(skip_line("compiled UNet and VAE decode, FP8 linears", COMPILE_ON_CUDA))
        return

    tick = time.perf_counter()
    pipe.compile(mode="default")  # no CUDA graphs, so the profiler sees each kernel
    unet_call(pipe)
    print(f"compile (default mode): {time.perf_counter() - tick:.0f} s")
    kernel_table("UNet compiled (default mode)", lambda: unet_call(pipe))
    print(f"compiled vs eager output: relative error {relative_error(unet_call(pipe), reference):.2e}")

    tick = time.perf_counter()
    decoder = torch.compile(pipe.vae.decode, mode="default")
    y = x.to(DTYPE).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        decoder(y)
    print(f"VAE decode compile: {time.perf_counter() - tick:.0f} s")
    with torch.no_grad():
        print(
            f"VAE decode compiled: {milliseconds(lambda: decoder(y), 3):.1f} ms (eager path incl. PIL: {decode_ms:.1f})"
        )

    import torch._inductor.config as inductor

    for freezing in (False, True):
        torch._dynamo.reset()
        inductor.freezing = freezing
        pipe = zero123_pipeline(args)
        pipe.fuse_projections()  # first: fusing concatenates the bf16 weights
        count = convert_linears(pipe.unet)
        tick = time.perf_counter()
        pipe.compile(mode="default")
        unet_call(pipe)
        print(
            f"\nFP8 linears ({count} layers), freezing={freezing}: compile {time.perf_counter() - tick:.0f} s; "
            f"relative error vs bf16 eager {relative_error(unet_call(pipe), reference):.2e}"
        )
        kernel_table(f"UNet compiled, FP8 linears, freezing={freezing}", lambda pipe=pipe: unet_call(pipe))
    inductor.freezing = False


def time_compiled_unet(
    label: str,
    args,
    layout=torch.channels_last,
    mode: str = "reduce-overhead",
    inductor_options: dict | None = None,
    fp8: str | None = None,
    reference=None,
):
    """Build the pipeline, compile its UNet as `views.compile` does (or not: mode "eager"), print ms per
    guided call of args.batch views.

    inductor_options: torch._inductor.config values on top of `compile()`'s, for this compilation only;
    fp8: None, "convs" or "convs+linears" (fp8_conv.Float8Conv2d, zerovlm.vlm.fp8.Float8Linear); reference:
    an eager output on the same inputs, to print the deviation from it. Returns the output (None when
    skipped: compiling is profiled on a CUDA GPU only).
    """
    import torch._inductor.config as inductor
    from zero123_throughput import unet_inputs

    if mode != "eager" and not CUDA:
        print(skip_line(label, COMPILE_ON_CUDA), flush=True)
        return None
    torch._dynamo.reset()
    pipe = zero123_pipeline(args)
    pipe.unet.to(memory_format=layout)
    if fp8:
        from fp8_conv import convert_convs

        pipe.fuse_projections()  # first: fusing concatenates the bf16 q, k, v weights
        convert_convs(pipe.unet)
        if fp8 == "convs+linears":
            convert_linears(pipe.unet)
    latent, context, t = unet_inputs(pipe, 2 * args.batch, args.size, torch.Generator(DEVICE).manual_seed(0))
    latent = latent.contiguous(memory_format=layout)
    tick = time.perf_counter()
    if mode != "eager":
        pipe.compile(mode)
    with torch.no_grad():
        call = lambda: pipe.unet(latent, t, encoder_hidden_states=context)  # noqa: E731
        with inductor.patch(inductor_options or {}):  # compilation happens at the first call
            call()
        compile_s = time.perf_counter() - tick
        output = call().sample.clone()
        deviation = (
            ""
            if reference is None
            else f"; relative error vs {DTYPE_NAME} eager {relative_error(output, reference):.3f}"
        )
        print(
            f"{label:<24} UNet {milliseconds(call, 20):6.1f} ms per call of {2 * args.batch} samples "
            f"({mode}, first call {compile_s:.0f} s){deviation}",
            flush=True,
        )
    return output


def zero123_fp8(args) -> None:
    """The compiled UNet (reduce-overhead, as `views.compile`) in bf16, with FP8 3x3 convolutions, and with
    FP8 convolutions and Linear layers, each with its deviation from the bf16 eager output."""
    reference = time_compiled_unet(f"{DTYPE_NAME} eager", args, mode="eager")
    for fp8 in (None, "convs", "convs+linears"):
        time_compiled_unet(f"fp8 {fp8}" if fp8 else DTYPE_NAME, args, fp8=fp8, reference=reference)


def zero123_inductor(args) -> None:
    """The compiled UNet (reduce-overhead, as `views.compile`) under Inductor options that tune its own
    Triton kernels (the fused GroupNorm/SiLU/residual/GEGLU ones) but leave the GEMMs to cuBLAS, which
    keeps compilation within minutes, unlike "max-autotune"."""
    reference = time_compiled_unet(f"{DTYPE_NAME} eager", args, mode="eager")
    for label, options in (
        ("default", {}),
        ("coordinate descent", {"coordinate_descent_tuning": True}),
        ("pointwise autotune", {"max_autotune_pointwise": True}),
        ("aggressive fusion", {"aggressive_fusion": True}),
        ("benchmark fusion", {"benchmark_fusion": True}),
    ):
        time_compiled_unet(label, args, inductor_options=options, reference=reference)


def zero123_layouts(args) -> None:
    """The compiled UNet (reduce-overhead, as `views.compile`) fed channels_last or contiguous tensors."""
    for layout in (torch.channels_last, torch.contiguous_format):
        time_compiled_unet(str(layout), args, layout=layout)


def zero123_autotune(args) -> None:
    """The UNet under torch.compile "max-autotune" (CUDA graphs, GEMMs autotuned over cuBLAS and Triton
    templates, which can fuse epilogues) without coordinate-descent tuning (too slow to compile)."""
    time_compiled_unet("max-autotune", args, mode="max-autotune")


def unet_conv_shapes(pipe, batch: int, size: int) -> dict:
    """{(input shape, module type facts): [a module, count]} for every Conv2d call of one guided UNet call."""
    from zero123_throughput import unet_inputs

    shapes: collections.Counter = collections.Counter()
    hooks = [
        m.register_forward_pre_hook(lambda m, a: shapes.update([(m, tuple(a[0].shape))]))
        for m in pipe.unet.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    latent, context, t = unet_inputs(pipe, 2 * batch, size)
    with torch.no_grad():
        pipe.unet(latent, t, encoder_hidden_states=context)
    for hook in hooks:
        hook.remove()
    by_shape: dict = {}
    for (module, shape), count in shapes.items():
        key = (shape, module.in_channels, module.out_channels, module.kernel_size, module.stride)
        by_shape.setdefault(key, [module, 0])[1] += count
    return by_shape


def zero123_convs(args) -> None:
    """Every convolution of the UNet (one guided call, 128 views): cuDNN bf16 against the FP8 Triton
    implicit GEMM (benchmarks/fp8_conv.py), alone on quantised inputs and as Float8Conv2d (quantisation
    of the input included, compiled as the UNet would be). Without FP8 tensor cores: the first alone."""
    from fp8_conv import fp8_conv_unavailable, supports_fp8_conv

    pipe = zero123_pipeline(args)
    pipe.unet.to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True
    torch._dynamo.config.cache_size_limit = 64
    missing = fp8_conv_unavailable(DEVICE)
    if missing:
        print(skip_line("FP8 Triton convolutions", missing))
    totals = collections.Counter()
    print(
        f"\n-- UNet convolutions, {2 * args.batch} samples: ms per call (x count)"
        + (
            ""
            if missing
            else f"; FP8 kernel alone, FP8 with input quantisation (compiled); relative error vs {DTYPE_NAME}"
        )
    )
    for (shape, c_in, c_out, kernel, stride), (module, count) in sorted(
        unet_conv_shapes(pipe, args.batch, args.size).items(), key=lambda kv: -kv[1][1]
    ):
        x = torch.randn(shape, device=DEVICE, dtype=DTYPE).contiguous(memory_format=torch.channels_last)
        facts = f"   {str(shape):<22} {c_in:>5}->{c_out:<5} k{kernel[0]} s{stride[0]}  {DTYPE_NAME}"
        with torch.no_grad():
            reference = module(x)
            reference_ms = milliseconds(lambda module=module, x=x: module(x), 5)
            if not supports_fp8_conv(module):
                totals["other"] += reference_ms * count
                print(f"{facts} {reference_ms:7.3f} x{count}")
                continue
            flops = 2 * shape[0] * shape[2] * shape[3] * c_out * 9 * c_in
            totals["reference"] += reference_ms * count
            rate = f"{facts} {reference_ms:7.3f} ({flops / reference_ms / 1e9:4.0f} TFLOP/s)"
            if missing:
                print(f"{rate}  x{count}", flush=True)
                continue
            kernel_ms, layer_ms, error = fp8_conv_times(module, x, reference)
        totals["kernel"] += kernel_ms * count
        totals["layer"] += layer_ms * count
        print(
            f"{rate}  fp8 kernel {kernel_ms:7.3f} ({flops / kernel_ms / 1e9:4.0f})  fp8 layer {layer_ms:7.3f}"
            f"  x{count}  error {error:.3f}",
            flush=True,
        )
    plain_ms = totals["reference"]
    fp8 = (
        ""
        if missing
        else (
            f", FP8 kernel {totals['kernel']:.1f} ms (x{plain_ms / totals['kernel']:.2f}), "
            f"FP8 layer {totals['layer']:.1f} ms (x{plain_ms / totals['layer']:.2f})"
        )
    )
    print(
        f"3x3 stride-1 convolutions the FP8 kernel takes, per UNet call: {DTYPE_NAME} {plain_ms:.1f} ms{fp8}; "
        f"other convolutions {totals['other']:.1f} ms (eager)"
    )


def fp8_conv_times(module, x, reference) -> tuple[float, float, float]:
    """(ms of the FP8 kernel on pre-quantised input, ms of Float8Conv2d compiled, its relative error)."""
    from fp8_conv import Float8Conv2d, conv3x3_e4m3, quantize_tensor

    fp8 = Float8Conv2d(module)
    values, scale = quantize_tensor(x.permute(0, 2, 3, 1))
    values = values.contiguous()
    kernel_ms = milliseconds(
        lambda: conv3x3_e4m3(values, scale, fp8.weight, fp8.weight_scale, fp8.bias, torch.bfloat16), 5
    )
    compiled = torch.compile(fp8, dynamic=False)
    layer_ms = milliseconds(lambda: compiled(x), 5)
    return kernel_ms, layer_ms, relative_error(compiled(x), reference)


# ---------------------------------------------------------------- LLaVA
def llava(args) -> None:
    from vlm_throughput import CAPTIONS, build_llava, fingerprinted, make_prompt, random_images

    from zerovlm.vlm.base import Request
    from zerovlm.vlm.llava import LlavaBackend

    bs, name = args.llava_batch, "LLaVA tiny" if args.tiny else "LLaVA-7B"
    model, processor = build_llava(args.tiny, DEVICE, DTYPE)
    if not CUDA:
        print(skip_line("compiled decoder blocks", COMPILE_ON_CUDA))
    backend = LlavaBackend(model, processor, batch_size=bs, compile=CUDA)
    prompt = make_prompt(backend, 64)
    images = random_images(bs * 4, seed=0)
    yes_no = fingerprinted([Request((images[i],), prompt, ("Yes", "No")) for i in range(bs * 4)])
    four = fingerprinted(
        [Request((images[i],), "Which caption describes the image best?", CAPTIONS) for i in range(bs)]
    )

    def encode_first_batch():
        with backend._call_memos():
            return [[backend._encode(r)] for r in yes_no[:bs]]  # distinct images: one request a row

    encoded = encode_first_batch()

    def model_side():
        backend._features.clear()
        return backend._score_batch(encoded)

    kernel_table(f"{name} model side, yes/no, {bs} per batch, {'compiled regions' if CUDA else 'eager'}", model_side)
    per_row = bs / milliseconds(model_side, 3) * 1e3
    mix, groups, grouped = paper_mix_batch(backend, bs)

    def shared_side():
        backend._features.clear()
        return backend._score_batch(grouped)

    requests = sum(map(len, groups))
    kernel_table(
        f"{name} model side, paper mix yes/no, image prefix shared, {bs} rows of {requests} requests", shared_side
    )
    shared = requests / milliseconds(shared_side, 3) * 1e3
    print(f"model side: {per_row:.1f} requests/s one a row, {shared:.1f} paper-mix requests/s image prefix shared")

    def uncached_option_logprobs(requests):
        backend._features.clear()  # the vision tower runs too, as on new images
        return backend.option_logprobs(requests)

    backend.option_logprobs(yes_no[:bs])
    full_path(f"3 batches of {bs}", lambda: uncached_option_logprobs(yes_no[bs:]), backend, 3 * bs, "samples")
    paper_mix_full_path(backend, mix, uncached_option_logprobs)
    if not CUDA:
        print(skip_line("synchronising calls (CUDA's sync debug mode) and FP8 decoder linears"))
        return
    count_synchronisations(
        f"one option_logprobs batch of {bs}, one request a row", lambda: uncached_option_logprobs(yes_no[:bs])
    )
    mix_requests = [mix[i] for group in groups for i in group]
    count_synchronisations(
        f"one option_logprobs call, paper mix yes/no, image prefix shared, {len(mix_requests)} requests",
        lambda: uncached_option_logprobs(mix_requests),
    )

    bf16 = backend.option_logprobs(yes_no[:bs] + four)
    torch._dynamo.reset()
    count = convert_linears(model.model.language_model.layers)
    backend = LlavaBackend(model, processor, batch_size=bs, compile=True)
    encoded = encode_first_batch()
    fp8 = backend.option_logprobs(yes_no[:bs] + four)
    gaps = [abs(a - b) for row_a, row_b in zip(fp8, bf16) for a, b in zip(row_a, row_b)]
    agree = sum(
        max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__) for a, b in zip(fp8, bf16)
    ) / len(bf16)
    print(
        f"\nFP8 decoder linears ({count} layers): max |logprob - bf16| {max(gaps):.3f}, mean {sum(gaps) / len(gaps):.3f};"  # noqa: E501
        f" same choice as bf16 for {100 * agree:.0f}% of {len(bf16)} requests"
    )
    kernel_table(f"{name} model side, yes/no, FP8 decoder linears", model_side)
    seconds = milliseconds(model_side, 3) / 1e3
    print(f"FP8 model side: {bs / seconds:.1f} samples/s")


def paper_mix_batch(backend, rows: int):
    """(the paper mix of yes/no requests, its first `rows` groups of request indices, those groups encoded):
    each image's requests in one row (tree attention mask), as infer runs them (with their images' fingerprints)."""
    from vlm_throughput import paper_mix, random_images

    mix = paper_mix(random_images(9 * rows, seed=1), four_captions=False, seed=0)
    with backend._call_memos():
        groups = backend._image_groups(mix)[:rows]
        grouped = [[backend._encode(mix[i], pixels=k == 0) for k, i in enumerate(group)] for group in groups]
    return mix, groups, grouped


def paper_mix_full_path(backend, mix, option_logprobs) -> None:
    """`full_path` of one `option_logprobs` call on the whole paper mix, between two plain timings of the same call:
    the first meets most of its batch shapes for the first time (a call on a quarter of the mix compiled the shapes
    of a first batch before), the second has seen them all. Their gap is read as what a shape costs at its first
    sight, the profiled call's gap to the second as the profiler's (one run each: compare large gaps only)."""
    option_logprobs(mix[: len(mix) // 4])
    label = f"paper mix yes/no, {len(mix)} requests"
    plain_call(f"{label}, first sight of most batch shapes", lambda: option_logprobs(mix), len(mix))
    full_path(label, lambda: option_logprobs(mix), backend, len(mix), "requests")
    plain_call(f"{label}, every batch shape seen before", lambda: option_logprobs(mix), len(mix))


def plain_call(label: str, call, count: int) -> None:
    """The wall time of one call of `count` requests, no profiler attached."""
    wall = wall_seconds(call)
    print(f"plain call, {label}: wall {wall:.2f} s ({count / wall:.1f} requests/s)")


def wall_seconds(call) -> float:
    """Seconds from the call's start to the end of the device work it queued."""
    synchronize()
    tick = time.perf_counter()
    call()
    synchronize()
    return time.perf_counter() - tick


def full_path(label: str, call, backend, count: int, unit: str) -> None:
    """Profile one call through the backend's whole path (tokenising, preprocessing, batching, forwards):
    wall time, kernel time (the GPU's busy fraction; on the CPU: its operators') and, from
    vlm_throughput.HostTimes, where the host's time goes."""
    from vlm_throughput import HostTimes

    with profile(activities=[ACTIVITY]) as prof, HostTimes(backend) as host:
        wall = wall_seconds(call)
    events = [e for e in prof.key_averages() if e.device_type == PROFILED_DEVICE]
    busy = sum(e.self_device_time_total if CUDA else e.self_cpu_time_total for e in events) / 1e6
    print(
        f"\nfull path, {label}: wall {wall:.2f} s, {'kernels' if CUDA else 'CPU operators'} {busy:.2f} s "
        f"-> {'GPU' if CUDA else 'operators'} busy {100 * busy / wall:.0f}% ({count / wall:.1f} {unit}/s)\n"
        f"   host: {host.summary()}"
    )
    python_functions(call)


def python_functions(call, top: int = 14) -> None:
    """The Python functions (and the C functions they call) that `call` spends its own time in, under cProfile,
    which slows Python code down: the seconds are larger than in an unprofiled call, their order is the point.
    Before Python 3.12 cProfile sees the calling thread only (the one that queues the batches); from 3.12 on it
    records every thread (sys.monitoring), the prefetch threads too, and a function that several threads run at
    once gets garbled times (its calls read as recursive, "576/72")."""
    profiler = cProfile.Profile()
    synchronize()
    profiler.runcall(call)
    synchronize()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    table = [line for line in out.getvalue().splitlines() if re.match(r"\s*[\d/]+\s+\d", line)]
    threads = "the calling thread" if sys.version_info < (3, 12) else "every thread"
    print(f"   under cProfile ({threads}), {stats.total_tt:.2f} s, the top functions by own time:")
    print("      calls  own s  with callees s  function")
    for line in table:
        calls, own, _, cumulative, _, where = line.split(maxsplit=5)
        print(f"   {calls:>8} {float(own):6.2f} {float(cumulative):15.2f}  {where[-110:]}")


def minigpt4(args) -> None:
    """MiniGPT-4 (Vicuna v0 7B) on the paper mix as infer runs it: each image's requests in one row."""
    from vlm_throughput import build_minigpt4

    from zerovlm.vlm.minigpt4 import MiniGPT4Backend

    bs, name = args.llava_batch, "MiniGPT-4 tiny" if args.tiny else "MiniGPT-4 7B"
    if not CUDA:
        print(skip_line("compiled decoder blocks", COMPILE_ON_CUDA))
    backend = MiniGPT4Backend(*build_minigpt4(args.tiny, DEVICE, DTYPE), batch_size=bs, compile=CUDA)
    mix, groups, grouped = paper_mix_batch(backend, bs)
    requests = sum(map(len, groups))
    label = f"paper mix yes/no, image prefix shared, {len(groups)} rows of {requests} requests"

    def model_side():
        return backend._score_batch(grouped)

    kernel_table(f"{name} model side, {label}", model_side)
    print(f"model side: {requests / milliseconds(model_side, 3) * 1e3:.1f} requests/s")
    paper_mix_full_path(backend, mix, backend.option_logprobs)
    if not CUDA:
        print(skip_line("synchronising calls (CUDA's sync debug mode)"))
        return
    count_synchronisations(f"one option_logprobs call, {label}", lambda: backend.option_logprobs(mix[:requests]))


PROFILES = {
    "zero123": zero123,
    "zero123-convs": zero123_convs,
    "zero123-fp8": zero123_fp8,
    "zero123-inductor": zero123_inductor,
    "zero123-layouts": zero123_layouts,
    "zero123-autotune": zero123_autotune,
    "llava": llava,
    "minigpt4": minigpt4,
}
TINY = {"batch": 4, "size": 64, "llava_batch": 4}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="+", choices=PROFILES, help="what to profile (several: in turn)")
    parser.add_argument("--batch", type=int, default=128, help="Zero123 views per UNet call")
    parser.add_argument("--size", type=int, default=256, help="Zero123 image side in pixels")
    parser.add_argument("--llava-batch", type=int, default=64, help="LLaVA and MiniGPT-4 rows per batch")
    args = parse_args(parser, TINY, argv)
    print(f"{torch.cuda.get_device_name() if CUDA else 'cpu'}, torch {torch.__version__}", flush=True)
    for model in args.model:
        print(f"\n==== {model}", flush=True)
        PROFILES[model](args)


if __name__ == "__main__":
    main()
