"""What storing views costs the views stage's GPU loop, by PNG encoder, on one GPU (full-size random Zero123; not a
test).

views_stage.py shows the stage losing what the pipeline loses while the stage's PNG threads store the batch before;
this separates that cost:
  host ahead:  when a queued call (output_type "pending", as the stage launches a batch) returns, against when its
               views are on the host: how far the host runs ahead of the device. A host in step with the device
               stalls the device whenever the host is slowed. With the call's noise in one page-locked buffer (as
               the pipeline draws it, zero123.NoiseDraws) and pinned per draw, each with the page-locked
               allocations the call made (CUDA); and the host's synchronisations while a call is queued, by
               source line (CUDA's sync debug mode, which does not see page-locked allocations);
  encoders:    per encoder, the seconds to encode one batch on one core and the size of a view;
  alongside:   views/s of the pipeline while a BackgroundWriter stores the batch before (as in the stage), per
               encoder: none (the writer's threads and the store alone), the stage's (Pillow's PNG at its
               default zlib level 6) on the stage's PNG threads and on one thread, and PNG at zlib levels 1 and 0
               (the same pixels, other bytes), beside the pipeline alone; alone and with the stage's encoder also
               with the pipeline's host work on torch's default intra-op threads instead of the one it takes on a
               GPU (Zero123Pipeline.__call__) and with its noise pinned per draw; alternated over --calls calls
               each, as one call's time varies.
`--tiny` (implied without a CUDA device) runs the project's tiny Zero123 uncompiled with small counts.

    python benchmarks/views_encoding.py
    python benchmarks/views_encoding.py --tiny   # smoke run, seconds (CPU or GPU)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import PIL
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import DEVICE, count_synchronisations, parse_args, skip_line  # noqa: E402
from views_stage import (  # noqa: E402
    VIEWS_PER_IMAGE,
    add_batch_arguments,
    pipeline_call,
    seconds_while_storing,
    views_config,
    write_model,
)

from zerovlm.pipeline import views  # noqa: E402
from zerovlm.runtime import DTYPES  # noqa: E402
from zerovlm.store import BackgroundWriter, ShardWriter, encode_png  # noqa: E402
from zerovlm.views import zero123  # noqa: E402


def png_at_level(level: int):
    def encode(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()

    return encode


def no_encoding(image: Image.Image) -> bytes:
    return b""


@contextlib.contextmanager
def host_on_default_threads():
    """The pipeline's host work on torch's default intra-op threads instead of the one thread it takes on a GPU
    (zero123.one_intra_op_thread), to set the two side by side."""
    original = zero123.one_intra_op_thread  # fails here, not silently, if the pipeline stops using it
    zero123.one_intra_op_thread = contextlib.nullcontext
    try:
        yield
    finally:
        zero123.one_intra_op_thread = original


class NoisePinnedPerDraw(zero123.NoiseDraws):
    """The pipeline's noise the way it went before one buffer per call (zero123.NoiseDraws): each draw stacked, and
    pinned on its own (`pin_memory()`, a page-locked allocation whenever the allocator has no free block). The same
    values."""

    def __init__(self, generators: list[torch.Generator], shape: tuple[int, ...], count: int, device):
        self.generators, self.shape, self.device = generators, shape, torch.device(device)

    def next(self) -> torch.Tensor:
        noise = torch.stack([torch.randn(self.shape, generator=g, device=g.device) for g in self.generators])
        if noise.device.type == "cpu" and self.device.type == "cuda":
            noise = noise.pin_memory()
        return noise.to(self.device, non_blocking=True)


@contextlib.contextmanager
def noise_pinned_per_draw():
    """The pipeline drawing its noise as NoisePinnedPerDraw does, to set the two ways side by side."""
    original = zero123.NoiseDraws  # fails here, not silently, if the pipeline stops drawing through it
    zero123.NoiseDraws = NoisePinnedPerDraw
    try:
        yield
    finally:
        zero123.NoiseDraws = original


def page_locked_allocations() -> int:
    """Page-locked blocks the CUDA host allocator has created so far (0 without CUDA)."""
    return torch.cuda.host_memory_stats().get("num_host_alloc", 0) if torch.cuda.is_available() else 0


TINY = {"batch": 4, "calls": 1, "steps": 2, "dtype": "float32", "size": 64}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_batch_arguments(parser)
    parser.add_argument("--calls", type=int, default=3, help="timed calls per variant")
    args = parse_args(parser, TINY, argv)
    if args.batch < VIEWS_PER_IMAGE or args.batch % VIEWS_PER_IMAGE or min(args.calls, args.steps, args.size) < 1:
        parser.error(f"--batch must be a positive multiple of {VIEWS_PER_IMAGE}, --calls, --steps and --size >= 1")
    with tempfile.TemporaryDirectory(prefix="views_encoding_") as folder:
        work = Path(folder)
        cfg = views_config(work / "zero123", args)
        name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
        print(
            f"device {name}, torch {torch.__version__}, Pillow {PIL.__version__}; {args.size} px, {args.steps} DDIM "
            f"steps, {args.dtype}, {args.batch} views per batch, {'compiled' if cfg.compile else 'eager'}",
            flush=True,
        )
        model = write_model(Path(cfg.model), args.tiny, DTYPES[args.dtype], args.size)
        call = pipeline_call(model, cfg)

        tick = time.perf_counter()
        outputs, _ = call()
        print(f"first call: {time.perf_counter() - tick:.1f} s", flush=True)
        as_is = contextlib.nullcontext
        for noise, way in {"in one buffer": as_is, "pinned per draw": noise_pinned_per_draw}.items():
            with way():
                call("pending").result()  # untimed: the host allocator's cache as a run of this way leaves it
                allocations, tick = page_locked_allocations(), time.perf_counter()
                pending = call("pending")
                queued = time.perf_counter() - tick
                pending.result()
                print(
                    f"host ahead, noise {noise}: a queued call returns after {queued:.2f} s, its views are on the "
                    f"host after {time.perf_counter() - tick:.2f} s; page-locked allocations during the call: "
                    f"{page_locked_allocations() - allocations}",
                    flush=True,
                )
        if cfg.compile:
            calls = []
            count_synchronisations(
                "one queued call, from its start until it returns (its inputs' copies, at the start, wait for the "
                "work queued before; every later one holds the host)",
                lambda: calls.append(call("pending")),
            )
            calls[0].result()
        else:
            print(skip_line("synchronising calls (CUDA's sync debug mode)"), flush=True)

        pngs = {"PNG level 6 (the stage's)": encode_png, "PNG level 1": png_at_level(1), "PNG level 0": png_at_level(0)}
        for label, encode in pngs.items():
            tick = time.perf_counter()
            sizes = [len(encode(view)) for view in outputs]
            print(
                f"encoder {label}: {time.perf_counter() - tick:.2f} s per batch on one core, "
                f"{sum(sizes) / len(sizes) / 1e3:.0f} kB a view",
                flush=True,
            )
        threads, torch_threads = views.PNG_THREADS, torch.get_num_threads()
        default_host = f" (host work on torch's default intra-op threads: {torch_threads})"
        pinned = " (noise pinned per draw)"
        stage = f"while storing, encoder PNG level 6 (the stage's), {threads} threads"
        variants = {  # label: (encoder, its threads, the pipeline's way changed for the variant)
            "alone": (None, 0, as_is),
            "alone" + default_host: (None, 0, host_on_default_threads),
            "alone" + pinned: (None, 0, noise_pinned_per_draw),
            "while storing, encoder none": (no_encoding, threads, as_is),
            stage: (encode_png, threads, as_is),
            stage + default_host: (encode_png, threads, host_on_default_threads),
            stage + pinned: (encode_png, threads, noise_pinned_per_draw),
            "while storing, encoder PNG level 6, 1 thread": (encode_png, 1, as_is),
            f"while storing, encoder PNG level 1, {threads} threads": (pngs["PNG level 1"], threads, as_is),
            f"while storing, encoder PNG level 0, {threads} threads": (pngs["PNG level 0"], threads, as_is),
        }
        seconds = dict.fromkeys(variants, 0.0)
        for turn in range(args.calls):
            for index, (label, (encode, count, way)) in enumerate(variants.items()):
                with way():
                    if encode is None:
                        tick = time.perf_counter()
                        call()
                        seconds[label] += time.perf_counter() - tick
                        continue
                    store = BackgroundWriter(ShardWriter(work / f"store-{turn}-{index}"), count, 2 * args.batch, encode)
                    with store:
                        seconds[label] += seconds_while_storing(call, outputs, store)
        for label, spent in seconds.items():
            rate = args.calls * args.batch / spent
            print(f"pipeline {label}: {rate:.2f} views/s ({seconds['alone'] / spent:.3f} of alone)", flush=True)


if __name__ == "__main__":
    main()
