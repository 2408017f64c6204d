"""The views stage end to end on one GPU, with the full-size Zero123 architecture and random weights (not a test).

zero123_throughput.py times pipeline calls; this times what `dvc repro` runs for `views`
(zerovlm.pipeline.views.run: the model loaded from a folder in the kxic layout, images
decoded in a thread, fixed batches through the compiled pipeline, PNG encoding, shard writing) and sets it
beside the pipeline calls alone on the same batches, so that any time the stage adds around the GPU work
shows:
  stage:     views/s of the stage in steady state, from the stage's own run records: (N - 1) batches /
             (what an N-batch run spent after its first batch - what a 1-batch run spent after its first
             batch). Loading the model and the first batch (compilation, or its cache) are left out of both
             runs, since they can vary by seconds from run to run; the subtraction cancels the PNG threads'
             encoding and writing of the last batch once the device is done, which a run pays once whatever its
             length (the long run's hand-off of its last batch to the host stays in: the estimate errs low);
  pipeline:  views/s of Zero123Pipeline calls alone (with the views' quality records, as the stage), compiled
             the same way, one after another on as many batches as the stage's steady state counts (N - 1);
  alongside: views/s of the same pipeline call while the stage's PNG threads encode and store the previous
             batch, as they do in the stage: what the threads cost the GPU loop (GIL, host cores); then the
             same with the encoders in worker processes (the GIL's share, estimated), the two alternated over
             N - 1 calls each;
  encoding:  seconds to PNG-encode one batch of views on one core (the stage does it in threads while
             the GPU computes the next batch);
  queued:    whether two calls with different seeds queued before either is read (as the stage queues batch n+1
             before storing batch n) give the plain calls' views and quality records byte for byte (meaningful on
             a GPU, where the copies to the host are asynchronous; on the CPU they are made at once).
`--tiny` (implied without a CUDA device) writes the project's tiny Zero123 (zerovlm/views/tiny.py) instead,
with small counts; both sides then run uncompiled except on a CUDA GPU (a `skipped:` line says so).

    python benchmarks/views_stage.py --batch 128 --batches 4
    python benchmarks/views_stage.py --tiny   # smoke run, seconds (CPU or GPU)
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import PIL
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import DEVICE, parse_args, seconds_after_first_batch, skip_line  # noqa: E402
from zero123_throughput import full_size_components  # noqa: E402

from zerovlm.config import ViewsConfig  # noqa: E402
from zerovlm.datasets.table import Example, write_table  # noqa: E402
from zerovlm.pipeline import views  # noqa: E402
from zerovlm.runtime import DTYPES  # noqa: E402
from zerovlm.store import BackgroundWriter, ShardReader, ShardWriter, encode_png  # noqa: E402
from zerovlm.views.tiny import build_tiny_zero123, save_zero123  # noqa: E402
from zerovlm.views.zero123 import Zero123Pipeline  # noqa: E402

VIEWS_PER_IMAGE = 4  # left, right, top, random


def scene(index: int, size: int) -> Image.Image:
    """A distinct picture per index: two shapes on a plain background (coordinates for 256 px, scaled)."""
    image = Image.new("RGB", (size, size), (240, 240, 235))
    draw = ImageDraw.Draw(image)
    offset = (index * 7) % 85

    def px(*values):
        return [v * size // 256 for v in values]

    draw.rectangle(px(20 + offset, 80, 100 + offset, 180), fill=(200, (40 + 13 * index) % 256, 40))
    draw.ellipse(px(140, 60 + offset, 220, 140 + offset), fill=(30, 60, (120 + 29 * index) % 256))
    return image


RELATIONS = ("left of", "right of", "on", "under")


def write_prepared(
    folder: Path, dataset: str, task: str, num_images: int, num_examples: int, size: int, first_image: int = 0
) -> list[Example]:
    """A prepared folder (images/ + examples.jsonl) of `num_images` distinct pictures and `num_examples` examples
    of `task` cycling over them; pictures are numbered from `first_image`, so datasets need not share any."""
    (folder / "images").mkdir(parents=True)
    ids = [f"{first_image + i:016x}" for i in range(num_images)]
    for i, image_id in enumerate(ids):
        scene(first_image + i, size).save(folder / "images" / f"{image_id}.png")
    options = ("yes", "no") if task == "true_false" else tuple(f"the cup is {r} the table" for r in RELATIONS)
    examples = [
        Example(
            example_id=f"{dataset}/test/{i}",
            dataset=dataset,
            split="test",
            task=task,
            image_id=ids[i % num_images],
            image_file=f"images/{ids[i % num_images]}.png",
            caption="the red box is left of the blue ball" if task == "true_false" else "",
            options=options,
            answer_index=i % len(options),
            relation=RELATIONS[i % len(RELATIONS)],
        )
        for i in range(num_examples)
    ]
    write_table(folder, examples)
    return examples


class BorrowedPool:
    """The caller's executor, handed to a BackgroundWriter that shuts its encoders down on leaving its block: the
    pool keeps running for the next writer (the writer's store thread has waited for every encoding by then)."""

    def __init__(self, pool: ProcessPoolExecutor):
        self.submit = pool.submit

    def shutdown(self, wait: bool = True) -> None:
        pass


class ProcessEncodedWriter(BackgroundWriter):
    """The stage's BackgroundWriter with its PNG encoding in the caller's worker processes (the same encoder, so
    the same bytes), which take no GIL of the GPU loop's thread; the parent still pickles the images and runs the
    store thread, so set beside the threads it estimates the GIL's share of what the encoders cost the GPU loop,
    inter-process copies included."""

    def __init__(self, writer: ShardWriter, encoders: ProcessPoolExecutor, max_pending: int):
        super().__init__(writer, 1, max_pending)
        self._encoder.shutdown()
        self._encoder = BorrowedPool(encoders)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def seconds_while_storing(call, outputs: list[Image.Image], store: BackgroundWriter) -> float:
    """Seconds of one pipeline `call` while `store` encodes and stores `outputs`, the batch before, as the stage
    does."""
    tick = time.perf_counter()
    for index, view in enumerate(outputs):
        store.add(f"{index:06d}", view)
    call()
    return time.perf_counter() - tick


def run_stage(cfg: ViewsConfig, examples: list[Example], prepared: Path, out: Path) -> dict:
    """The stage's run record (`views.run`'s summary) on these examples."""
    shutil.rmtree(out, ignore_errors=True)
    write_table(prepared, examples)  # the table the stage reads: this run's examples
    return views.run(views.Paths(prepared=prepared, out=out), cfg)


def steady_rate(short: dict, long: dict, batches: int, batch: int) -> float | None:
    """Views/s of the stage after its first batch, from a 1-batch and a `batches`-batch run record (the module's
    doc); None when the long run took no longer after its first batch than the short one: too few batches."""
    seconds = seconds_after_first_batch(long) - seconds_after_first_batch(short)
    return (batches - 1) * batch / seconds if seconds > 0 else None


def describe(run: dict) -> str:
    return (
        f"loading {run['seconds_loading']:.1f} s, first batch {run['seconds_first_batch']:.1f} s, "
        f"after it {seconds_after_first_batch(run):.1f} s"
    )


def write_model(folder: Path, tiny: bool, dtype: torch.dtype, size: int) -> Path:
    """The full-size random Zero123 or the project's tiny one, written in the kxic layout."""
    if tiny:
        return build_tiny_zero123(folder)
    parts = full_size_components(dtype, size)
    model = save_zero123(folder, parts.unet, parts.vae, parts.image_encoder, parts.pose_projection)
    del parts
    torch.cuda.empty_cache()
    return model


def views_config(model: Path, args: argparse.Namespace) -> ViewsConfig:
    """The views settings of `add_batch_arguments`' values for `model`, compiled on a CUDA GPU (as views.compile
    works there only), the rest the project's defaults."""
    return ViewsConfig(
        model=str(model),
        image_size_px=args.size,
        num_inference_steps=args.steps,
        dtype=args.dtype,
        device=DEVICE.type,
        batch_size=args.batch,
        compile=DEVICE.type == "cuda",
        seed=0,
    )


def pipeline_call(model: Path, cfg: ViewsConfig):
    """`call(output_type="pil", first_seed=0)`: one Zero123Pipeline call on a batch of `cfg.batch_size` views of
    distinct pictures (4 views each, one image object per picture, as the stage passes them), with the views'
    quality records (the stage's device work), compiled as the stage compiles it; sample i seeded first_seed + i."""
    pipe = Zero123Pipeline.from_pretrained(str(model), DTYPES[cfg.dtype], DEVICE)
    if cfg.compile:
        pipe.compile()
    scenes = [scene(i, cfg.image_size_px) for i in range(cfg.batch_size // VIEWS_PER_IMAGE)]
    images = [image for image in scenes for _ in range(VIEWS_PER_IMAGE)]
    poses = torch.tensor([[0.0, 1.0, 0.0, 0.0]]).repeat(cfg.batch_size, 1)

    def call(output_type="pil", first_seed=0):
        generators = [torch.Generator().manual_seed(first_seed + i) for i in range(cfg.batch_size)]
        return pipe(
            images,
            poses,
            generators,
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale,
            eta=cfg.eta,
            image_size_px=cfg.image_size_px,
            quality_white_min_rgb=cfg.quality_white_min_rgb,
            output_type=output_type,
        )

    return call


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The views benchmarks' batch settings: views per batch, DDIM steps, dtype, view size."""
    parser.add_argument("--batch", type=int, default=128, help="views per batch (views.batch_size)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    parser.add_argument("--size", type=int, default=256, help="views.image_size_px")


TINY = {"batch": 4, "batches": 2, "steps": 2, "dtype": "float32", "size": 64}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_batch_arguments(parser)
    parser.add_argument("--batches", type=int, default=4, help="batches in the long run")
    args = parse_args(parser, TINY, argv)
    if args.batch % VIEWS_PER_IMAGE or args.batches < 2:
        parser.error(f"--batch must be a multiple of {VIEWS_PER_IMAGE} and --batches at least 2")
    size = args.size
    work = Path(tempfile.mkdtemp(prefix="views_stage_"))
    cfg = views_config(work / "zero123", args)
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
    print(
        f"device {name}, torch {torch.__version__}, Pillow {PIL.__version__} (the PNG encoder); {size} px, "
        f"{args.steps} DDIM steps, guidance {cfg.guidance_scale}, eta {cfg.eta}, "
        f"{args.dtype}, {args.batch} views per batch, {'compiled' if cfg.compile else 'eager'}",
        flush=True,
    )
    if not cfg.compile:
        print(skip_line("compiled stage and pipeline", "views.compile works on CUDA only"), flush=True)

    tick = time.perf_counter()
    model = write_model(Path(cfg.model), args.tiny, DTYPES[args.dtype], size)
    print(
        f"{'tiny' if args.tiny else 'full-size'} random Zero123 written in the kxic layout: "
        f"{time.perf_counter() - tick:.0f} s",
        flush=True,
    )
    per_batch = args.batch // VIEWS_PER_IMAGE
    count = per_batch * args.batches
    examples = write_prepared(work / "prepared", "synthetic", "true_false", count, count, size)

    run_stage(cfg, examples[:per_batch], work / "prepared", work / "warm")  # compile caches warm for both runs
    short = run_stage(cfg, examples[:per_batch], work / "prepared", work / "short")
    long = run_stage(cfg, examples, work / "prepared", work / "long")
    stage_rate = steady_rate(short, long, args.batches, args.batch)
    runs = f"stage: 1 batch: {describe(short)}; {args.batches} batches: {describe(long)}"
    if stage_rate is None:
        print(runs, flush=True)
        shutil.rmtree(work)
        sys.exit(
            f"error: the {args.batches}-batch run took no longer after its first batch than the 1-batch run; "
            "time more batches (--batches)"
        )
    print(f"{runs} -> {stage_rate:.2f} views/s in steady state", flush=True)

    call = pipeline_call(model, cfg)
    call()
    calls = args.batches - 1  # as many batches as the stage's steady rate counts: one call's time varies
    tick = time.perf_counter()
    for _ in range(calls):
        outputs, records = call()
    pipeline_rate = calls * args.batch / (time.perf_counter() - tick)
    pending = views.PENDING_BATCHES * args.batch
    spawn = multiprocessing.get_context("spawn")  # the parent has initialised CUDA: no fork
    ready = spawn.Barrier(views.PNG_THREADS, timeout=300)  # each worker re-imports this script: all before the clock
    writers = {
        "threads": lambda folder: BackgroundWriter(ShardWriter(folder), views.PNG_THREADS, pending),
        "processes": lambda folder: ProcessEncodedWriter(ShardWriter(folder), encoders, pending),
    }
    seconds = {name: 0.0 for name in writers}
    with ProcessPoolExecutor(views.PNG_THREADS, mp_context=spawn, initializer=ready.wait) as encoders:
        list(encoders.map(encode_png, outputs[: views.PNG_THREADS]))
        for turn in range(calls):  # alternated, as many calls each as the pipeline alone: one call's time varies
            for name, writer in writers.items():
                with writer(work / f"{name}-{turn}") as store:
                    seconds[name] += seconds_while_storing(call, outputs, store)
    alongside_rate, processes_rate = (calls * args.batch / seconds[name] for name in writers)
    tick = time.perf_counter()
    for view in outputs:
        encode_png(view)
    encoding = time.perf_counter() - tick
    # As the stage does: a second call, with other seeds, queued before the first is read; each must give what a
    # plain call with its seeds gives (the other seeds tell a call that overwrote the one before from a sound one).
    queued = [call("pending"), call("pending", first_seed=args.batch)]
    expected = [(outputs, records), call(first_seed=args.batch)]
    queued_equal = all(
        [view.tobytes() for view in got_views] == [view.tobytes() for view in want_views] and got_records == records_
        for (got_views, got_records), (want_views, records_) in zip((job.result() for job in queued), expected)
    )
    print(
        f"pipeline alone: {pipeline_rate:.2f} views/s; stage / pipeline = {stage_rate / pipeline_rate:.3f}; "
        f"pipeline while the PNG threads store the previous batch: {alongside_rate:.2f} views/s "
        f"({alongside_rate / pipeline_rate:.3f} of alone), with the PNG encoders in {views.PNG_THREADS} worker "
        f"processes instead: {processes_rate:.2f} views/s ({processes_rate / pipeline_rate:.3f}); "
        f"PNG encoding of one batch on one core: {encoding:.2f} s; the long run's store holds "
        f"{len(ShardReader(work / 'long'))} views",
        flush=True,
    )
    same = folder_bytes(work / "threads-0") == folder_bytes(work / "processes-0")
    print(f"the stores written by PNG threads and by worker processes are byte-identical: {'yes' if same else 'NO'}")
    print(
        "two calls queued before either is read give the plain calls' views and quality records: "
        f"{'yes' if queued_equal else 'NO'}",
        flush=True,
    )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
