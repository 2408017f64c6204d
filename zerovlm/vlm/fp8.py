"""Opt-in FP8 matmuls for nn.Linear layers: e4m3 operands with per-row scales, bf16/fp16 results.

`Float8Linear` replaces an nn.Linear by the recipe used for FP8 inference of large transformers
("rowwise" scaling):
- the weight is quantised once, one scale per output channel (amax of its row / 448);
- the input is quantised at every call, one scale per token (amax of its row / 448), so one outlier
  token does not crush the precision of the others;
- torch._scaled_mm multiplies the e4m3 operands with float32 accumulation, applies both scales and the
  bias, and returns the layer's own dtype.
On Hopper (and Ada) GPUs the e4m3 tensor cores run at twice the bf16 rate. Every result changes slightly:
this is opt-in (`infer.fp8_linear`), and the benchmarks print the deviation from bf16 next to the speed.
(Not offered for Zero123: convolutions are two thirds of its UNet's FLOPs and PyTorch has no FP8
convolution; on an H200, FP8 Linear layers alone made the compiled UNet slower (108 vs 99 ms per call),
an im2col FP8 convolution was twice as slow as cuDNN's bf16 one, and a Triton implicit-GEMM FP8
convolution (benchmarks/fp8_conv.py) made the UNet call 3% faster at five times the deviation from bf16
that compilation alone causes: `benchmarks/gpu_profile.py`.)

Written on the core op rather than taken from torchao because torchao refuses to run this path without
a CUDA GPU of compute capability >= 8.9, which would leave it untested on CI; torch._scaled_mm runs on
the CPU too.
"""

from __future__ import annotations

import torch
from torch import nn

from zerovlm.io import ZeroVLMError

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448
TINY = 1e-12  # an all-zero row gets a finite scale (and quantises to zeros)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 values, float32 scales (rows, 1)) with x ~= values * scales, each row scaled to fill e4m3."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=TINY) / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


class Float8Linear(nn.Module):
    """y = x W^T + b computed as an FP8 (e4m3) matmul with per-row scales for x and W (see module doc)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if not supports_fp8(linear):
            raise ZeroVLMError(f"Float8Linear: {linear} needs in and out features divisible by 16")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = quantize_rows(linear.weight.detach())  # (out, in), (out, 1)
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out): one scale per output
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.out_dtype = linear.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        values, scale = quantize_rows(rows)
        # mat2 must be column-major: the transpose of the row-major (out, in) weight is.
        out = torch._scaled_mm(
            values, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, bias=self.bias, out_dtype=self.out_dtype
        )
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3 rowwise"


def supports_fp8(linear: nn.Linear) -> bool:
    """_scaled_mm needs both matrix sides divisible by 16 and a half-precision result for rowwise scales."""
    return (
        linear.in_features % 16 == 0
        and linear.out_features % 16 == 0
        and linear.weight.dtype in (torch.bfloat16, torch.float16)
    )


def check_fp8_device(device: torch.device) -> None:
    """FP8 tensor cores exist from compute capability 8.9 (Ada, Hopper) on; refuse anything else.

    (Float8Linear itself also runs on the CPU, slowly: the tests use that.)
    """
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        raise ZeroVLMError(
            f"fp8_linear needs a CUDA GPU of compute capability >= 8.9 (Ada, Hopper), "
            f"got {device}; set fp8_linear: false"
        )


def convert_linears(module: nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Replace, in place, every eligible nn.Linear under `module` by a Float8Linear; return the count.

    skip: name fragments of layers kept as they are (e.g. "lm_head"). Layers whose sizes _scaled_mm
    cannot take, or that are not bf16/fp16, are kept too.
    """
    count = 0
    for name, child in list(module.named_modules()):
        for attribute, layer in list(child.named_children()):
            full = f"{name}.{attribute}" if name else attribute
            if isinstance(layer, nn.Linear) and supports_fp8(layer) and not any(s in full for s in skip):
                setattr(child, attribute, Float8Linear(layer))
                count += 1
    return count
