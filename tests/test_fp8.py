"""FP8 Linear layers (zerovlm.vlm.fp8) on the CPU: numerics against bf16, conversion rules, clear refusals."""

import pytest
import torch
from PIL import Image

from zerovlm.config import InferConfig
from zerovlm.io import ZeroVLMError
from zerovlm.vlm.base import Request
from zerovlm.vlm.fp8 import E4M3_MAX, Float8Linear, check_fp8_device, convert_linears, quantize_rows
from zerovlm.vlm.llava import LlavaBackend
from zerovlm.vlm.loading import load_processor
from zerovlm.vlm.registry import load_backend
from zerovlm.vlm.tiny import build_tiny_llava
from zerovlm.vlm.transformers_ops import use_fp8_linears, uses_fp8


def test_rows_are_scaled_to_fill_e4m3_and_zero_rows_stay_zero():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [1e-3, 3e-3, -2e-3]])
    values, scale = quantize_rows(x)
    assert values.dtype == torch.float8_e4m3fn and scale.shape == (3, 1)
    assert values.float().abs().amax(dim=1).tolist() == [E4M3_MAX, 0.0, E4M3_MAX]
    assert torch.allclose(values.float() * scale, x, rtol=0.07, atol=0)  # 3 mantissa bits: <= 1/16 relative
    assert torch.isfinite(scale).all()


@pytest.mark.parametrize("bias", [True, False])
def test_float8_linear_is_close_to_the_bf16_layer(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 64, bias=bias).to(torch.bfloat16)
    x = torch.randn(4, 7, 256, dtype=torch.bfloat16)
    x[0, 0] *= 100  # an outlier token: per-row scales keep the other rows precise
    fp8 = Float8Linear(linear)
    got, expected = fp8(x), linear(x)
    assert got.shape == expected.shape and got.dtype == torch.bfloat16
    error = ((got.float() - expected.float()).norm(dim=-1) / expected.float().norm(dim=-1)).max()
    assert error < 0.06, error
    assert fp8.weight.dtype == torch.float8_e4m3fn and fp8.weight.element_size() == 1


def test_convert_linears_takes_only_what_scaled_mm_can_run():
    model = torch.nn.ModuleDict(
        {
            "a": torch.nn.Linear(32, 48),
            "odd": torch.nn.Linear(30, 48),
            "head": torch.nn.Linear(48, 16),
            "inner": torch.nn.Sequential(torch.nn.Linear(48, 48)),
        }
    ).to(torch.bfloat16)
    assert convert_linears(model, skip=("head",)) == 2
    assert isinstance(model["a"], Float8Linear) and isinstance(model["inner"][0], Float8Linear)
    assert type(model["odd"]) is torch.nn.Linear and type(model["head"]) is torch.nn.Linear
    assert convert_linears(torch.nn.Linear(32, 32)) == 0  # float32: kept as is
    with pytest.raises(ZeroVLMError, match="divisible by 16"):
        Float8Linear(torch.nn.Linear(30, 48).to(torch.bfloat16))


def test_fp8_needs_an_fp8_gpu():
    with pytest.raises(ZeroVLMError, match="compute capability >= 8.9"):
        check_fp8_device(torch.device("cpu"))


def test_infer_fp8_linear_on_the_cpu_is_a_clear_error(tmp_path):
    build_tiny_llava(tmp_path / "llava", seed=0)
    cfg = InferConfig(model=str(tmp_path / "llava"), device="cpu", dtype="float32", fp8_linear=True)
    with pytest.raises(ZeroVLMError, match="fp8_linear needs a CUDA GPU"):
        load_backend(cfg)


def test_llava_with_fp8_decoder_scores_close_to_bf16(tmp_path):
    """The same conversion the loader applies on an FP8 GPU, run on the CPU (check_fp8_device skipped)."""
    from transformers import LlavaForConditionalGeneration

    build_tiny_llava(tmp_path / "llava", seed=0)
    processor = load_processor(str(tmp_path / "llava"))
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava", dtype=torch.bfloat16)
    image = Image.new("RGB", (56, 56), (200, 40, 40))
    requests = [
        Request((image,), "Is the cube left of the mug?", ("Yes", "No")),
        Request((image,), "Which caption is right?", ("A mug on a table", "A mug under a table")),
    ]
    bf16 = LlavaBackend(model, processor, batch_size=2).option_logprobs(requests)
    count = convert_linears(model.get_decoder().layers)
    assert count == 2 * 7 and uses_fp8(model)  # q, k, v, o, gate, up, down in each of the two blocks
    fp8 = LlavaBackend(model, processor, batch_size=2).option_logprobs(requests)
    gaps = [abs(a - b) for row_a, row_b in zip(fp8, bf16) for a, b in zip(row_a, row_b)]
    assert 0 < max(gaps) < 0.5, gaps
    with pytest.raises(ZeroVLMError, match="compute capability"):
        use_fp8_linears(model.get_decoder(), torch.device("cpu"))
