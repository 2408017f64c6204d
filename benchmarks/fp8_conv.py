"""An FP8 (e4m3) 3x3 convolution for the Zero123 UNet experiment (benchmarks/gpu_profile.py, not the library).

PyTorch has no FP8 convolution, and lowering one to torch._scaled_mm needs an im2col copy of the input
(nine times its size) that costs more than the FP8 tensor cores save (measured: twice as slow as cuDNN
bf16). `_conv3x3_kernel` is a Triton implicit GEMM that reads the NHWC input in place: output pixel m and
input channel block k of tap (dh, dw) load x[n, h + dh, w + dw, k:k+BK] (zero outside the image), so the
GEMM [N*H*W, 9*C_in] x [9*C_in, C_out] never exists in memory. Accumulation is float32; the epilogue
applies the input's per-tensor scale, the weight's per-output-channel scales and the bias.
`Float8Conv2d` wraps it as a drop-in nn.Conv2d (a torch custom op, so torch.compile and CUDA graphs take it).

Result on one H200 (benchmarks/results/gpu_profile_zero123_fp8_h200.txt): 580-960 TFLOP/s against cuDNN
bf16's 525-790, the UNet call 3% faster with a relative deviation from bf16 of 0.067 (bf16 compiled vs
eager: 0.014). Not worth its error, so the views stage does not offer it.

Needs Triton and a CUDA GPU of compute capability >= 8.9. Run as a script, on the CPU, it prints the error
of Float8Conv2d's e4m3 operands against the float32 convolution (what FP8 costs before any kernel), and
checks the kernel in Triton's interpreter against a float32 convolution of the same e4m3 operands (needs
`triton`, which CPU builds of torch lack: then a `skipped:` line says so):

    python benchmarks/fp8_conv.py
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

if __name__ == "__main__":  # read when triton is imported: run the kernel in the interpreter, on the CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zerovlm.vlm.fp8 import E4M3, E4M3_MAX, TINY, quantize_rows  # noqa: E402

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU builds of torch come without Triton: the kernel is unavailable, the rest works
    triton = tl = None

NO_TRITON = "Triton is not installed: it comes with CUDA builds of torch, or pip install triton"


def _configs() -> list:
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_stages=s, num_warps=w)
        for m, n, k, s, w in (
            (128, 128, 64, 4, 8),
            (128, 256, 64, 3, 8),
            (256, 128, 64, 3, 8),
            (128, 128, 128, 3, 8),
            (128, 256, 128, 3, 8),
            (64, 128, 64, 4, 4),
            (128, 64, 64, 4, 4),
        )
    ]


def _prune(configs, named_args, **kwargs):
    """Channel blocks never straddle two taps: BLOCK_K must divide C_in."""
    return [c for c in configs if named_args["C_IN"] % c.kwargs["BLOCK_K"] == 0]


def _conv3x3_kernel(
    x_ptr,
    w_ptr,
    x_scale_ptr,
    w_scale_ptr,
    bias_ptr,
    out_ptr,
    BATCH,
    H,
    W,
    C_IN,
    C_OUT,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # A Triton kernel, jitted by _kernel(). x: (BATCH, H, W, C_IN) e4m3, contiguous; w: (C_OUT, 3, 3, C_IN)
    # e4m3, contiguous (K-major rows); out: (BATCH, H, W, C_OUT) contiguous.
    M = BATCH * H * W
    K = 9 * C_IN
    pid = tl.program_id(0)
    # grouped ordering: GROUP_M row blocks share each weight block while it is in L2
    num_m, num_n = tl.cdiv(M, BLOCK_M), tl.cdiv(C_OUT, BLOCK_N)
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % group_size
    pid_n = (pid % (GROUP_M * num_n)) // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    row_ok = offs_m < M
    col_ok = offs_n < C_OUT
    image = offs_m // (H * W)
    h = (offs_m // W) % H
    w = offs_m % W
    w_rows = w_ptr + offs_n[None, :] * K + offs_k[:, None]  # (BLOCK_K, BLOCK_N), K contiguous

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kk in range(0, K, BLOCK_K):
        tap = kk // C_IN
        ih = h + tap // 3 - 1
        iw = w + tap % 3 - 1
        inside = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        pixel = (image * H + ih) * W + iw
        a = tl.load(
            x_ptr + pixel[:, None] * C_IN + (kk - tap * C_IN) + offs_k[None, :], mask=inside[:, None], other=0.0
        )
        b = tl.load(w_rows + kk, mask=col_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc)

    scale = tl.load(x_scale_ptr) * tl.load(w_scale_ptr + offs_n, mask=col_ok, other=0.0)
    acc = acc * scale[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + offs_m[:, None] * C_OUT + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@functools.cache
def _kernel(autotuned: bool):
    """The jitted kernel, autotuned or not; made at first use, so that this module loads without Triton."""
    if triton is None:
        raise RuntimeError(f"the FP8 convolution needs Triton: {NO_TRITON}")
    kernel = triton.jit(_conv3x3_kernel)
    if not autotuned:
        return kernel
    return triton.autotune(
        configs=_configs(), key=["BATCH", "H", "W", "C_IN", "C_OUT"], prune_configs_by={"early_config_prune": _prune}
    )(kernel)


def fp8_conv_unavailable(device: torch.device) -> str:
    """Why the FP8 convolution cannot run on `device`, or "" when it can."""
    if triton is None:
        return NO_TRITON
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        return f"needs a CUDA GPU of compute capability >= 8.9 (FP8 tensor cores), got {device}"
    return ""


def conv3x3_e4m3(
    x: torch.Tensor,
    x_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    config: dict | None = None,
) -> torch.Tensor:
    """x (N, H, W, C_in) e4m3 NHWC with a float32 scalar scale; weight (C_out, 3, 3, C_in) e4m3 with float32
    scales (C_out,); returns (N, H, W, C_out) in out_dtype: conv(x * x_scale, weight * weight_scale) + bias.

    config: fixed block sizes {BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M} instead of autotuning (Triton's
    interpreter, which the CPU check uses, cannot time configurations).
    """
    batch, h, w, c_in = x.shape
    c_out = weight.shape[0]
    out = torch.empty((batch, h, w, c_out), device=x.device, dtype=out_dtype)

    def grid(meta):
        return (triton.cdiv(batch * h * w, meta["BLOCK_M"]) * triton.cdiv(c_out, meta["BLOCK_N"]),)

    kernel = _kernel(autotuned=config is None)
    kernel[grid](
        x,
        weight,
        x_scale,
        weight_scale,
        bias if bias is not None else weight_scale,
        out,
        batch,
        h,
        w,
        c_in,
        c_out,
        HAS_BIAS=bias is not None,
        **(config or {}),
    )
    return out


def quantize_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 values, float32 scalar scale) with x ~= values * scale: one scale for the whole tensor."""
    scale = x.abs().amax().float().clamp(min=TINY) / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


# torch.compile sees the kernel as one opaque operator; the schema states its arguments (config, a
# dict, is no operator argument and stays at its default: autotuning)
conv3x3_op = torch.library.custom_op(
    "zerovlm_bench::conv3x3_e4m3",
    conv3x3_e4m3,
    mutates_args=(),
    schema="(Tensor x, Tensor x_scale, Tensor weight, Tensor weight_scale, Tensor? bias, ScalarType out_dtype)"
    " -> Tensor",
)


@conv3x3_op.register_fake
def _conv3x3_op_shape(x, x_scale, weight, weight_scale, bias, out_dtype):
    return x.new_empty((*x.shape[:3], weight.shape[0]), dtype=out_dtype)


class Float8Conv2d(nn.Module):
    """A 3x3, stride-1, padding-1 nn.Conv2d on the kernel above: the weight quantised once with one scale per
    output channel, the input at every call with one scale for the whole tensor (a per-pixel scale cannot
    be factored out of a sum over nine neighbouring pixels)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        rows = conv.weight.detach().permute(0, 2, 3, 1).reshape(conv.out_channels, -1)  # (C_out, 3*3*C_in)
        weight, scale = quantize_rows(rows)
        self.register_buffer("weight", weight.reshape(conv.out_channels, 3, 3, conv.in_channels))
        self.register_buffer("weight_scale", scale.reshape(-1))
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(), requires_grad=False)
        self.out_dtype = conv.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, scale = quantize_tensor(x.permute(0, 2, 3, 1))  # NHWC: a free view of channels_last
        out = conv3x3_op(values.contiguous(), scale, self.weight, self.weight_scale, self.bias, self.out_dtype)
        return out.permute(0, 3, 1, 2)  # NCHW shape, channels_last memory


def supports_fp8_conv(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and conv.in_channels % 64 == 0
        and conv.out_channels % 16 == 0
    )


def convert_convs(module: nn.Module) -> int:
    """Replace, in place, every eligible nn.Conv2d under `module` by a Float8Conv2d; return the count."""
    count = 0
    for child in list(module.modules()):
        for attribute, layer in list(child.named_children()):
            if isinstance(layer, nn.Conv2d) and supports_fp8_conv(layer):
                setattr(child, attribute, Float8Conv2d(layer))
                count += 1
    return count


def dequantised_conv(
    x: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """What conv3x3_e4m3 computes, in float32 with F.conv2d: the same arguments (NHWC), the same result."""
    return torch.nn.functional.conv2d(
        x.float().permute(0, 3, 1, 2) * x_scale,
        weight.float().permute(0, 3, 1, 2) * weight_scale[:, None, None, None],
        bias,
        padding=1,
    ).permute(0, 2, 3, 1)


@torch.no_grad()
def quantisation_error() -> float:
    """Relative error (Frobenius norm) of a random 3x3 convolution computed on Float8Conv2d's e4m3 operands
    (per-tensor input scale, per-channel weight scales) against the float32 convolution: what FP8 costs
    whatever the kernel (benchmarks/gpu_profile.py zero123-convs prints the kernel's, on a GPU)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 48, 3, padding=1)
    fp8 = Float8Conv2d(conv)
    x = torch.randn(2, 64, 5, 7)
    values, scale = quantize_tensor(x.permute(0, 2, 3, 1))
    reference = conv(x).permute(0, 2, 3, 1)
    out = dequantised_conv(values, scale, fp8.weight, fp8.weight_scale, fp8.bias)
    return float((out - reference).norm() / reference.norm())


def check_on_cpu() -> float:
    """Largest |kernel - reference| over shapes with borders, several taps per block and a partial
    output-channel block; the reference is F.conv2d in float32 on the dequantised operands."""
    torch.manual_seed(0)
    worst = 0.0
    for batch, h, w, c_in, c_out, bias in ((2, 5, 7, 64, 48, True), (1, 4, 4, 128, 16, False)):
        x = torch.randn(batch, h, w, c_in).to(E4M3)
        weight = torch.randn(c_out, 3, 3, c_in).to(E4M3)
        x_scale, weight_scale = torch.tensor(0.5), torch.rand(c_out) + 0.5
        b = torch.randn(c_out) if bias else None
        out = conv3x3_e4m3(
            x,
            x_scale,
            weight,
            weight_scale,
            b,
            torch.float32,
            config={"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64, "GROUP_M": 2},
        )
        reference = dequantised_conv(x, x_scale, weight, weight_scale, b)
        worst = max(worst, float((out - reference).abs().max() / reference.abs().max()))
    return worst


def main() -> int:
    from common import skip_line

    print(f"e4m3 operands vs float32 convolution: relative error {quantisation_error():.3f}")
    if triton is None:
        print(skip_line("Triton interpreter check of the kernel", NO_TRITON))
        return 0
    error = check_on_cpu()
    print(f"Triton interpreter vs float32 convolution: max relative difference {error:.2e}")
    return 0 if error < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
