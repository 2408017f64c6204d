"""What runtime.py gives the views and infer stages alike: one device and dtype resolution, and the batch size
that halves on CUDA out-of-memory."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from zerovlm import runtime
from zerovlm.io import ZeroVLMError
from zerovlm.runtime import BatchSize, is_out_of_memory, one_intra_op_thread, resolve_device_dtype
from zerovlm.vlm.transformers_ops import compile_regions


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


COMPILE_TWICE = """
import torch
from torch._dynamo.utils import counters
from zerovlm.runtime import use_compile_cache
use_compile_cache()
torch.compile(lambda x: (x * 3).cos())(torch.ones(4))
print(counters["inductor"]["fxgraph_cache_hit"])
"""


def test_a_second_process_loads_the_compiled_graph_from_the_project_cache(tmp_path, monkeypatch):
    """The graph compiled by one process (one stage instance, one run) is read from $ZEROVLM_CACHE/torch-compile
    by the next, which compiles nothing; without the project cache each would use a /tmp folder of its own."""
    monkeypatch.setenv("ZEROVLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    hits = [
        subprocess.run([sys.executable, "-c", COMPILE_TWICE], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    assert [int(h.split()[-1]) for h in hits] == [0, 1]
    assert any((tmp_path / "cache" / "torch-compile").rglob("*.py"))


def test_the_compile_cache_folder_unwritable_names_the_variable(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("ZEROVLM_CACHE", str(tmp_path / "file"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    with pytest.raises(ZeroVLMError, match="set ZEROVLM_CACHE"):
        runtime.use_compile_cache()


def test_regional_compilation_uses_the_project_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROVLM_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    tower = torch.nn.Module()
    tower.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    assert compile_regions(tower) == 1  # lazy: nothing compiles before the first call
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "torch-compile")


def test_model_identity_is_the_hash_of_every_files_relative_name_and_sha256(tmp_path):
    """Pinned against an independent computation, so that hashing on threads, or any later change to how the
    files are read, cannot change the identity that lets a partial run resume."""
    (tmp_path / "sub").mkdir()
    files = {"config.json": b"{}", "model-00001-of-00002.safetensors": b"a" * 3000, "sub/Z.bin": b"z", "sub/a.bin": b""}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    pairs = [[name, hashlib.sha256(files[name]).hexdigest()] for name in sorted(files, key=lambda n: n.split("/"))]
    payload = json.dumps(pairs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert runtime.model_identity(str(tmp_path)) == hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
    assert runtime.model_identity("org/hub-model", "0123abc") == "0123abc"  # a hub id: its revision, not hashed


def test_one_intra_op_thread_restores_the_setting_even_after_an_error():
    default = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_intra_op_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), one_intra_op_thread():
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(default)
