"""What runtime.py gives the views and infer stages alike: one device and dtype resolution, and the batch size
that halves on CUDA out-of-memory."""

from __future__ import annotations

import logging

import pytest
import torch

from zerovlm import runtime
from zerovlm.io import ZeroVLMError
from zerovlm.runtime import BatchSize, is_out_of_memory, resolve_device_dtype


def test_half_precision_on_the_cpu_becomes_float32_with_one_warning_per_section(caplog):
    runtime._warn_half_precision_on_cpu.cache_clear()  # warnings of earlier tests in this process
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            assert resolve_device_dtype("cpu", "float16", "views") == (torch.device("cpu"), torch.float32)
            assert resolve_device_dtype("cpu", "bfloat16", "infer") == (torch.device("cpu"), torch.float32)
        assert resolve_device_dtype("cpu", "float32", "views") == (torch.device("cpu"), torch.float32)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "views.dtype float16 on the CPU: using float32" in warnings[0]
    assert "infer.dtype bfloat16" in warnings[1]


def test_the_batch_size_halves_until_one_then_names_the_fix():
    size = BatchSize(5, "views", "lower views.image_size_px")
    size.halve()
    size.halve()
    assert (size.value, size.backoffs) == (1, 2)
    with pytest.raises(ZeroVLMError, match=r"^views: CUDA out of memory with batch_size 1: lower views.image_size_px"):
        size.halve()
    with pytest.raises(ZeroVLMError, match="views.batch_size must be >= 1, got 0"):
        BatchSize(0, "views", "")


def test_out_of_memory_in_both_forms_torch_raises_it():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(RuntimeError("CUDA error: device-side assert triggered"))
