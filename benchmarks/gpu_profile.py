"""Where the GPU time goes: kernel-time tables for the Zero123 UNet and the LLaVA-1.5-7B forward (not a test).

Builds the same full-size random-weight models as the throughput benchmarks and prints, per variant,
the device time of one call split by kernel kind (convolution, GEMM, attention, normalisation, fused
Triton kernels, other) and the top kernels, so that a speed-up is aimed at what costs time:

    python benchmarks/gpu_profile.py zero123       # UNet eager / compiled / compiled with FP8 linears
    python benchmarks/gpu_profile.py zero123-convs # each UNet convolution: cuDNN bf16 vs the FP8 Triton kernel
    python benchmarks/gpu_profile.py zero123-fp8   # compiled UNet: bf16, FP8 convolutions, FP8 convs + linears
    python benchmarks/gpu_profile.py zero123-inductor  # compiled UNet under Inductor's kernel-tuning options
    python benchmarks/gpu_profile.py zero123-layouts  # compiled UNet on channels_last vs contiguous tensors
    python benchmarks/gpu_profile.py zero123-autotune # the UNet under max-autotune (long compilation)
    python benchmarks/gpu_profile.py llava         # decoder forward, GPU busy fraction, sync points, FP8

The FP8 variants also print their deviation from bf16 on the same inputs.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from zerovlm.fp8 import convert_linears  # noqa: E402

# First match wins. Inductor's fused kernels come first: their names list every op they absorbed (a
# GroupNorm + SiLU kernel feeding a convolution is called triton_..._convolution_native_group_norm_silu).
KINDS = (("triton", r"^triton_"), ("attention", r"flash|fmha|attention|mha"),
         ("convolution", r"conv|fprop|implicit|cudnn"), ("gemm", r"gemm|cutlass|cublas|nvjet|scaled_mm|xmma|matmul|_mm_"),
         ("norm", r"norm"), ("copy", r"copy|memcpy|memset|fill"))


def kind_of(name: str) -> str:
    lower = name.lower()
    return next((kind for kind, pattern in KINDS if re.search(pattern, lower)), "other")


def kernel_table(label: str, fn, calls: int = 3, top: int = 12) -> float:
    """Profile `calls` calls of fn (after one warm-up) and print device ms per call by kernel kind."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    per_kind: collections.Counter = collections.Counter()
    for event in kernels:
        per_kind[kind_of(event.key)] += event.self_device_time_total / 1e3 / calls
    total = sum(per_kind.values())
    print(f"\n-- {label}: {total:.1f} ms of kernels per call", flush=True)
    for kind, ms in per_kind.most_common():
        print(f"   {kind:<12}{ms:9.2f} ms {100 * ms / total:5.1f}%")
    for event in sorted(kernels, key=lambda e: -e.self_device_time_total)[:top]:
        ms = event.self_device_time_total / 1e3 / calls
        print(f"   {ms:8.2f} ms x{event.count // calls:<4} {kind_of(event.key):<11} {event.key[:110]}")
    return total


def event_ms(fn, repeats: int = 5) -> float:
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x.float() - reference.float()).norm() / reference.float().norm())


# ---------------------------------------------------------------- Zero123
def zero123(args) -> None:
    from zero123_throughput import full_size_components, inputs

    from zerovlm.views.zero123 import Zero123Pipeline

    batch, size = args.batch, 256
    latent = torch.randn(2 * batch, 8, size // 8, size // 8, device="cuda", dtype=torch.bfloat16)
    latent = latent.contiguous(memory_format=torch.channels_last)
    context = torch.randn(2 * batch, 1, 768, device="cuda", dtype=torch.bfloat16)
    t = torch.tensor(500, device="cuda")

    def unet_call(pipe):
        with torch.no_grad():
            return pipe.unet(latent, t, encoder_hidden_states=context, return_dict=False)[0]

    pipe = Zero123Pipeline(full_size_components(torch.bfloat16, size)).to("cuda")
    torch.backends.cudnn.benchmark = True
    kernel_table(f"UNet eager, bf16, {2 * batch} samples", lambda: unet_call(pipe))
    reference = unet_call(pipe).float()

    # the non-UNet parts of one pipeline call, eager
    images, poses, _ = inputs(batch, size)
    encode_ms = event_ms(lambda: pipe.encode(images, poses, size), 3)
    x = torch.randn(batch, 4, size // 8, size // 8, device="cuda")
    decode_ms = event_ms(lambda: pipe.decode(x), 3)
    print(f"\nencode {batch} views (8 distinct images): {encode_ms:.1f} ms; decode {batch} views: {decode_ms:.1f} ms")

    tick = time.perf_counter()
    pipe.compile(mode="default")  # no CUDA graphs, so the profiler sees each kernel
    unet_call(pipe)
    print(f"compile (default mode): {time.perf_counter() - tick:.0f} s")
    kernel_table("UNet compiled (default mode)", lambda: unet_call(pipe))
    print(f"compiled vs eager output: relative error {relative_error(unet_call(pipe), reference):.2e}")

    tick = time.perf_counter()
    decoder = torch.compile(pipe.vae.decode, mode="default")
    with torch.no_grad():
        decoder(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
    print(f"VAE decode compile: {time.perf_counter() - tick:.0f} s")
    y = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        print(f"VAE decode compiled: {event_ms(lambda: decoder(y), 3):.1f} ms (eager path incl. PIL: {decode_ms:.1f})")

    for freezing in (False, True):
        torch._dynamo.reset()
        import torch._inductor.config as inductor
        inductor.freezing = freezing
        pipe = Zero123Pipeline(full_size_components(torch.bfloat16, size)).to("cuda")
        pipe.fuse_projections()  # first: fusing concatenates the bf16 weights
        count = convert_linears(pipe.unet)
        tick = time.perf_counter()
        pipe.compile(mode="default")
        unet_call(pipe)
        print(f"\nFP8 linears ({count} layers), freezing={freezing}: compile {time.perf_counter() - tick:.0f} s; "
              f"relative error vs bf16 eager {relative_error(unet_call(pipe), reference):.2e}")
        kernel_table(f"UNet compiled, FP8 linears, freezing={freezing}", lambda: unet_call(pipe))
    inductor.freezing = False


def time_compiled_unet(label: str, batch: int, layout=torch.channels_last, mode: str = "reduce-overhead",
                       inductor_options: dict | None = None, fp8: str | None = None, reference=None):
    """Build the full-size pipeline, compile its UNet as `views.compile` does, print ms per guided call.

    inductor_options: torch._inductor.config values on top of `compile()`'s, for this compilation only;
    fp8: None, "convs" or "convs+linears" (fp8_conv.Float8Conv2d, zerovlm.fp8.Float8Linear); reference:
    a bf16 eager output on the same inputs, to print the deviation from it. Returns the output.
    """
    import torch._inductor.config as inductor
    from zero123_throughput import full_size_components

    from zerovlm.views.zero123 import Zero123Pipeline

    torch._dynamo.reset()
    pipe = Zero123Pipeline(full_size_components(torch.bfloat16, 256)).to("cuda")
    pipe.unet.to(memory_format=layout)
    if fp8:
        from fp8_conv import convert_convs

        pipe.fuse_projections()  # first: fusing concatenates the bf16 q, k, v weights
        convert_convs(pipe.unet)
        if fp8 == "convs+linears":
            convert_linears(pipe.unet)
    generator = torch.Generator("cuda").manual_seed(0)
    latent = torch.randn(2 * batch, 8, 32, 32, device="cuda", dtype=torch.bfloat16, generator=generator)
    latent = latent.contiguous(memory_format=layout)
    context = torch.randn(2 * batch, 1, 768, device="cuda", dtype=torch.bfloat16, generator=generator)
    if mode == "eager":
        with torch.no_grad():
            return pipe.unet(latent, torch.tensor(500, device="cuda"), encoder_hidden_states=context).sample
    tick = time.perf_counter()
    pipe.compile(mode)
    with torch.no_grad():
        call = lambda: pipe.unet(latent, torch.tensor(500, device="cuda"), encoder_hidden_states=context)  # noqa: E731
        with inductor.patch(inductor_options or {}):  # compilation happens at the first call
            call()
        compile_s = time.perf_counter() - tick
        output = call().sample.clone()
        deviation = "" if reference is None else f"; relative error vs bf16 eager {relative_error(output, reference):.3f}"
        print(f"{label:<24} UNet {event_ms(call, 20):6.1f} ms per call of {2 * batch} samples "
              f"(compile {compile_s:.0f} s){deviation}", flush=True)
    return output


def zero123_fp8(args) -> None:
    """The compiled UNet (reduce-overhead, as `views.compile`) in bf16, with FP8 3x3 convolutions, and with
    FP8 convolutions and Linear layers, each with its deviation from the bf16 eager output."""
    reference = time_compiled_unet("bf16 eager", args.batch, mode="eager")
    for fp8 in (None, "convs", "convs+linears"):
        time_compiled_unet(f"fp8 {fp8}" if fp8 else "bf16", args.batch, fp8=fp8, reference=reference)


def zero123_inductor(args) -> None:
    """The compiled UNet (reduce-overhead, as `views.compile`) under Inductor options that tune its own
    Triton kernels (the fused GroupNorm/SiLU/residual/GEGLU ones) but leave the GEMMs to cuBLAS, which
    keeps compilation within minutes, unlike "max-autotune"."""
    reference = time_compiled_unet("bf16 eager", args.batch, mode="eager")
    for label, options in (("default", {}), ("coordinate descent", {"coordinate_descent_tuning": True}),
                           ("pointwise autotune", {"max_autotune_pointwise": True}),
                           ("aggressive fusion", {"aggressive_fusion": True}),
                           ("benchmark fusion", {"benchmark_fusion": True})):
        time_compiled_unet(label, args.batch, inductor_options=options, reference=reference)


def zero123_layouts(args) -> None:
    """The compiled UNet (reduce-overhead, as `views.compile`) fed channels_last or contiguous tensors."""
    for layout in (torch.channels_last, torch.contiguous_format):
        time_compiled_unet(str(layout), args.batch, layout=layout)


def zero123_autotune(args) -> None:
    """The UNet under torch.compile "max-autotune" (CUDA graphs, GEMMs autotuned over cuBLAS and Triton
    templates, which can fuse epilogues) without coordinate-descent tuning (too slow to compile)."""
    time_compiled_unet("max-autotune", args.batch, mode="max-autotune")


def unet_conv_shapes(unet, batch: int) -> dict:
    """{(input shape, module type facts): [a module, count]} for every Conv2d call of one guided UNet call."""
    shapes: collections.Counter = collections.Counter()
    hooks = [m.register_forward_pre_hook(lambda m, a: shapes.update([(m, tuple(a[0].shape))]))
             for m in unet.modules() if isinstance(m, torch.nn.Conv2d)]
    latent = torch.randn(2 * batch, 8, 32, 32, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        unet(latent.contiguous(memory_format=torch.channels_last), torch.tensor(500, device="cuda"),
             encoder_hidden_states=torch.randn(2 * batch, 1, 768, device="cuda", dtype=torch.bfloat16))
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
    of the input included, compiled as the UNet would be)."""
    from zero123_throughput import full_size_components

    from fp8_conv import Float8Conv2d, conv3x3_e4m3, quantize_tensor, supports_fp8_conv

    unet = full_size_components(torch.bfloat16, 256).unet.to("cuda", memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True
    torch._dynamo.config.cache_size_limit = 64
    totals = collections.Counter()
    print(f"\n-- UNet convolutions, {2 * args.batch} samples: ms per call (x count); FP8 kernel alone, "
          "FP8 with input quantisation (compiled); relative error vs bf16")
    for (shape, c_in, c_out, kernel, stride), (module, count) in sorted(unet_conv_shapes(unet, args.batch).items(),
                                                                        key=lambda kv: -kv[1][1]):
        x = torch.randn(shape, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            reference = module(x)
            bf16_ms = event_ms(lambda: module(x), 5)
            if not supports_fp8_conv(module):
                totals["other"] += bf16_ms * count
                print(f"   {str(shape):<22} {c_in:>5}->{c_out:<5} k{kernel[0]} s{stride[0]}  bf16 {bf16_ms:7.3f} x{count}")
                continue
            fp8 = Float8Conv2d(module)
            values, scale = quantize_tensor(x.permute(0, 2, 3, 1))
            values = values.contiguous()
            kernel_ms = event_ms(lambda: conv3x3_e4m3(values, scale, fp8.weight, fp8.weight_scale, fp8.bias,
                                                      torch.bfloat16), 5)
            compiled = torch.compile(fp8, dynamic=False)
            layer_ms = event_ms(lambda: compiled(x), 5)
            error = relative_error(compiled(x), reference)
        flops = 2 * shape[0] * shape[2] * shape[3] * c_out * 9 * c_in
        totals["bf16"] += bf16_ms * count
        totals["kernel"] += kernel_ms * count
        totals["layer"] += layer_ms * count
        print(f"   {str(shape):<22} {c_in:>5}->{c_out:<5} k3 s1  bf16 {bf16_ms:7.3f} ({flops / bf16_ms / 1e9:4.0f} TFLOP/s)"
              f"  fp8 kernel {kernel_ms:7.3f} ({flops / kernel_ms / 1e9:4.0f})  fp8 layer {layer_ms:7.3f}"
              f"  x{count}  error {error:.3f}", flush=True)
    print(f"3x3 stride-1 convolutions per UNet call: bf16 {totals['bf16']:.1f} ms, FP8 kernel {totals['kernel']:.1f} ms "
          f"(x{totals['bf16'] / totals['kernel']:.2f}), FP8 layer {totals['layer']:.1f} ms "
          f"(x{totals['bf16'] / totals['layer']:.2f}); other convolutions {totals['other']:.1f} ms (eager)")


# ---------------------------------------------------------------- LLaVA
def llava(args) -> None:
    import tempfile

    from vlm_throughput import CAPTIONS, build_model, build_processor, make_prompt, random_images

    from zerovlm.vlm.base import Request
    from zerovlm.vlm.llava import LlavaBackend

    with tempfile.TemporaryDirectory() as folder:
        processor = build_processor(Path(folder), 336, 14)
    model, _ = build_model("full", processor.tokenizer, torch.device("cuda"), torch.bfloat16)
    backend = LlavaBackend(model, processor, batch_size=64, compile=True)
    prompt = make_prompt(backend, 64)
    images = random_images(64 * 4, seed=0)
    yes_no = [Request((images[i],), prompt, ("Yes", "No")) for i in range(64 * 4)]
    four = [Request((images[i],), "Which caption describes the image best?", CAPTIONS) for i in range(64)]

    backend._begin_call()
    encoded = [backend._encode(r) for r in yes_no[:64]]

    def model_side():
        backend._features.clear()
        return backend._score_batch(encoded)

    kernel_table("LLaVA-7B model side, yes/no, 64 per batch, compiled regions", model_side)
    backend.option_logprobs(yes_no[:64])
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        tick = time.perf_counter()
        backend._features.clear()
        backend.option_logprobs(yes_no[64:])
        torch.cuda.synchronize()
        wall = time.perf_counter() - tick
    busy = sum(e.self_device_time_total for e in prof.key_averages()
               if e.device_type == torch.autograd.DeviceType.CUDA) / 1e6
    print(f"\nfull path, 3 batches of 64: wall {wall:.2f} s, kernels {busy:.2f} s -> GPU busy {100 * busy / wall:.0f}%"
          f" ({192 / wall:.1f} samples/s)")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        backend._features.clear()
        backend.option_logprobs(yes_no[:64])
        torch.cuda.set_sync_debug_mode("default")
    sites = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                                if "synchroniz" in str(w.message))
    print(f"synchronising calls in one option_logprobs batch: {sum(sites.values())}: {dict(sites.most_common(12))}")

    bf16 = backend.option_logprobs(yes_no[:64] + four)
    torch._dynamo.reset()
    count = convert_linears(model.model.language_model.layers)
    backend = LlavaBackend(model, processor, batch_size=64, compile=True)
    backend._begin_call()
    encoded = [backend._encode(r) for r in yes_no[:64]]
    fp8 = backend.option_logprobs(yes_no[:64] + four)
    gaps = [abs(a - b) for row_a, row_b in zip(fp8, bf16) for a, b in zip(row_a, row_b)]
    agree = sum(max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__)
                for a, b in zip(fp8, bf16)) / len(bf16)
    print(f"\nFP8 decoder linears ({count} layers): max |logprob - bf16| {max(gaps):.3f}, mean {sum(gaps) / len(gaps):.3f};"
          f" same choice as bf16 for {100 * agree:.0f}% of {len(bf16)} requests")
    kernel_table("LLaVA-7B model side, yes/no, FP8 decoder linears", model_side)
    seconds = event_ms(model_side, 3) / 1e3
    print(f"FP8 model side: {64 / seconds:.1f} samples/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=("zero123", "zero123-convs", "zero123-fp8", "zero123-inductor",
                                          "zero123-layouts", "zero123-autotune", "llava"))
    parser.add_argument("--batch", type=int, default=128, help="Zero123 views per UNet call")
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    {"zero123": zero123, "zero123-convs": zero123_convs, "zero123-fp8": zero123_fp8,
     "zero123-inductor": zero123_inductor, "zero123-layouts": zero123_layouts,
     "zero123-autotune": zero123_autotune, "llava": llava}[args.model](args)


if __name__ == "__main__":
    main()
