"""The stitch stage on the CPU: its worker threads against one thread, on the same inputs (not a test).

Runs what `dvc repro` runs for `stitch@<dataset>` (zerovlm.pipeline.stitch.run: decode the original and its
views, compose every configuration of the default profile, PNG-encode, write the store) on synthetic
originals and a view store of 256 px views, once on one thread (the sequential way) and once on `--workers`
threads, checks that the two stores are byte for byte the same, and prints both rates and their ratio.

    python benchmarks/stitch_stage.py --images 400 --workers 8
    python benchmarks/stitch_stage.py --tiny   # smoke run: a few small images
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import parse_args  # noqa: E402
from views_stage import VIEWS_PER_IMAGE, scene, write_prepared  # noqa: E402

from zerovlm.config import StitchConfig  # noqa: E402
from zerovlm.pipeline import stitch  # noqa: E402
from zerovlm.stitching import needed_views  # noqa: E402
from zerovlm.store import ShardWriter  # noqa: E402

VIEW_SIZE_PX = 256  # the paper profile's views.image_size_px


def timed_run(paths: stitch.Paths, cfg: StitchConfig, workers: int) -> float:
    tick = time.perf_counter()
    stitch.run(paths, cfg, workers=workers)
    return time.perf_counter() - tick


def same_store(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return not mismatch and not errors


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400, help="unique images (each with its views)")
    parser.add_argument("--size", type=int, default=640, help="side of the synthetic originals in pixels")
    parser.add_argument("--workers", type=int, default=stitch.WORKERS, help="threads of the parallel run")
    args = parse_args(parser, {"images": 8, "size": 96}, argv, needs_cuda=False)
    cfg = StitchConfig()
    names = needed_views(cfg.configurations)
    assert len(names) == VIEWS_PER_IMAGE, names
    print(
        f"{os.cpu_count()} CPUs; {args.images} images of {args.size} px, {len(names)} views of {VIEW_SIZE_PX} px "
        f"each, {len(cfg.configurations)} configurations ({cfg.layout} layout)",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="stitch_stage_"))
    try:
        examples = write_prepared(work / "prepared", "synthetic", "true_false", args.images, args.images, args.size)
        with ShardWriter(work / "views") as views:
            for index, example in enumerate(examples):
                for offset, name in enumerate(names):
                    view = scene(args.images + VIEWS_PER_IMAGE * index + offset, VIEW_SIZE_PX)
                    views.add(f"{example.image_id}.{name}", view, {"view": name})

        def paths(out: str) -> stitch.Paths:
            return stitch.Paths(prepared=work / "prepared", views=work / "views", out=work / out)

        sequential = timed_run(paths("sequential"), cfg, workers=1)
        parallel = timed_run(paths("parallel"), cfg, workers=args.workers)
        identical = same_store(work / "sequential", work / "parallel")
        print(
            f"one thread: {sequential:.2f} s ({args.images / sequential:.1f} images/s); {args.workers} threads: "
            f"{parallel:.2f} s ({args.images / parallel:.1f} images/s) -> x{sequential / parallel:.2f}; "
            f"stores identical: {identical}",
            flush=True,
        )
    finally:
        shutil.rmtree(work)
    if not identical:
        sys.exit("error: the parallel stitch stage wrote other bytes than one thread; this is a bug, please report it")


if __name__ == "__main__":
    main()
