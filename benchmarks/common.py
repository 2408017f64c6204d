"""What the benchmark scripts share: the scale they run at, one clock for either device, the skip line, and the
host synchronisations of a call (`count_synchronisations`).

Full size needs a CUDA GPU (random weights in the real architectures, minutes per run). `--tiny` runs the
project's tiny models (zerovlm/views/tiny.py, zerovlm/vlm/tiny.py, written to a temporary folder) with
small counts, in seconds; without a CUDA device a script runs tiny whatever its flags say. A measurement
that exists only on a GPU (CUDA graphs, torch.compile, FP8 tensor cores, host synchronisations) prints a
`skipped:` line with the reason instead; everything else runs the same code on either device, so that
tests/test_benchmarks.py can run every script on the CPU.
"""

from __future__ import annotations

import argparse
import collections
import time
import traceback
import warnings
from pathlib import Path
from unittest import mock

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Half precision on the GPU; float32 on the CPU, where half-precision kernels are slow or missing.
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
NEEDS_CUDA = "needs a CUDA device"
# CLIP ViT-L/14 (LLaVA-1.5's vision tower at 336 px, Zero123's image encoder at 224 px), less its image size
CLIP_VIT_L14 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}


def parse_args(
    parser: argparse.ArgumentParser, tiny_defaults: dict, argv=None, needs_cuda: bool = True
) -> argparse.Namespace:
    """Parse argv after adding `--tiny`; at tiny scale `tiny_defaults` replace the parser's defaults (values
    given on the command line still win) and the CPU runs one thread. needs_cuda: full size needs a GPU, so
    without one tiny is implied."""
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="the project's tiny models and small counts: a smoke run of seconds"
        + (" (implied without a CUDA device)" if needs_cuda else ""),
    )
    args = parser.parse_args(argv)
    if needs_cuda and DEVICE.type != "cuda" and not args.tiny:
        print("no CUDA device: tiny scale (--tiny)", flush=True)
        args.tiny = True
    if args.tiny:
        parser.set_defaults(**tiny_defaults, tiny=True)
        args = parser.parse_args(argv)
        if DEVICE.type == "cpu":
            # A tiny model's operations are too small to split, and OpenMP's spinning threads made the tiny
            # UNet 10-20x slower on a busy 2-core machine (as zerovlm.runtime.one_intra_op_thread says).
            torch.set_num_threads(1)
    return args


def skip_line(what: str, reason: str = NEEDS_CUDA) -> str:
    return f"skipped: {what} ({reason})"


def synchronize(device: torch.device = DEVICE) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def milliseconds(fn, repeats: int, warmup: int = 1, device: torch.device = DEVICE) -> float:
    """Milliseconds per call of fn over `repeats` calls after `warmup` calls: CUDA events on a GPU (the
    device time of the queued work), the wall clock on the CPU."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) * 1e3 / repeats
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) / repeats


def seconds_after_first_batch(run: dict) -> float:
    """Seconds a views stage run spent after its first batch was on the host (from its run record): the other
    batches, then storing the last one. Loading and the first batch (compilation, or its cache) are not in it."""
    return run["seconds_generating"] - run["seconds_first_batch"]


def count_synchronisations(label: str, call) -> None:
    """Run call under CUDA's sync debug mode and print the host synchronisations by source line (waits on a
    CUDA event too, which that mode does not see): each one stalls the host until the kernels queued before
    it finish.
    For each site, the innermost calls that led to it are printed too, since a library's line alone (a
    `.all()` inside transformers) does not say which of our calls to move."""
    sites: collections.Counter = collections.Counter()
    stacks: dict[str, str] = {}

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            site = f"{Path(filename).parent.name}/{Path(filename).name}:{lineno}"
            sites[site] += 1
            frames = [
                f
                for f in traceback.extract_stack()[:-1]
                if Path(f.filename).name != "warnings.py" and f.name != "event_synchronize"
            ][-6:]
            chain = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
            stacks.setdefault(site, chain)

    synchronize_event = torch.cuda.Event.synchronize

    def event_synchronize(event):
        warnings.warn("synchronizing on a CUDA event", stacklevel=2)
        return synchronize_event(event)

    with warnings.catch_warnings(), mock.patch.object(torch.cuda.Event, "synchronize", event_synchronize):
        warnings.simplefilter("always")
        # Switching the mode on says it is a prototype, from set_sync_debug_mode's own line: no synchronisation.
        warnings.filterwarnings("ignore", message="Synchronization debug mode is a prototype")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    print(f"synchronising calls in {label}: {sum(sites.values())}: {dict(sites.most_common(12))}")
    for site, stack in stacks.items():
        print(f"   {site}: {stack}")
