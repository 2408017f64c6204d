"""DVC add / push / pull of a 10,000-view set to a local remote: shard store vs a folder of PNG files.

Builds realistic views (256 px PNGs of smooth shaded shapes on gradients plus mild sensor-like noise,
about 100 KB each, encoded at zlib level 1 to keep the build fast; transfer time depends on bytes, not
on the level), writes them once as the project's shard store (zerovlm.store.ShardWriter, 256 views per
shard) and once as one PNG file per view, each in its own temp git + DVC repo with its own local
remote. For each layout it times, with the `dvc` of this environment:
  add:   `dvc add` in the producer repo (hash every file, copy into the cache), once
  push:  `dvc push` to an empty local remote (a new one each run)
  pull:  `dvc pull` in a fresh `git clone` with an empty cache, remote `verify = false` (DVC's default)
  pull+verify: the same with `verify = true` (the setting docs/sharing.md recommends)
--repeat times each (min and median reported; other work on the machine shows as spread), and the
folder's time per view over the shard store's. Page cache warm, DVC defaults otherwise (cache type
reflink,copy, i.e. copies on ext4; 4 x CPUs transfer jobs).

    python benchmarks/dvc_transfer.py --views 10000 --repeat 3 | tee benchmarks/results/dvc_transfer_2core.txt
    python benchmarks/dvc_transfer.py --tiny   # smoke run: 16 views, one repeat
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import parse_args  # noqa: E402

from zerovlm.store import ShardReader, ShardWriter  # noqa: E402

VIEWS = ("left", "right", "top", "random")
SIZE_PX = 256
DVC = shutil.which("dvc", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}") or "dvc"


def render_view(index: int, noise: float = 1.5) -> bytes:
    """One view as PNG bytes: gradient background, 2-4 shaded soft-edged blobs, Gaussian noise."""
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:SIZE_PX, 0:SIZE_PX].astype(np.float32) / SIZE_PX
    image = rng.uniform(60, 200, 3) + xx[..., None] * rng.uniform(-60, 60, 3) + yy[..., None] * rng.uniform(-60, 60, 3)
    for _ in range(rng.integers(2, 5)):
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.25)
        inside = np.clip(1.5 - ((xx - cx) ** 2 + (yy - cy) ** 2) / r**2, 0, 1)[..., None]  # soft edge
        light = 1.0 - 0.5 * np.clip(((xx - cx + r / 2) ** 2 + (yy - cy + r / 2) ** 2) / (2 * r * r), 0, 1)
        image = image * (1 - inside) + rng.uniform(0, 255, 3) * light[..., None] * inside
    image += rng.normal(0, noise, image.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def build_views(n_views: int, shard_dir: Path, folder_dir: Path | None, n_folder: int) -> int:
    """Write n_views views as a shard store and the first n_folder as PNG files; return total bytes."""
    if folder_dir is not None:
        folder_dir.mkdir(parents=True)
    total = 0
    with multiprocessing.Pool(os.cpu_count()) as pool, ShardWriter(shard_dir) as writer:
        for index, png in enumerate(pool.imap(render_view, range(n_views), chunksize=32)):
            image_id, view = f"{index // len(VIEWS):016x}", VIEWS[index % len(VIEWS)]
            key = f"{image_id}.{view}"
            writer.add_png(key, png, {"image_id": image_id, "view": view})
            if folder_dir is not None and index < n_folder:
                (folder_dir / f"{key}.png").write_bytes(png)
            total += len(png)
    return total


def dvc(args: list[str], cwd: Path) -> tuple[float, str]:
    """Run `dvc ARGS` in cwd; return (wall seconds, last output line)."""
    start = time.perf_counter()
    result = subprocess.run([DVC, *args], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed in {cwd}:\n{result.stdout}\n{result.stderr}")
    lines = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return seconds, (lines[-1] if lines else "")


def git(args: list[str], cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def time_case(name: str, data: Path, root: Path, count_files, repeat: int) -> dict[str, list[float]]:
    """add once, then `repeat` x (push to a new empty remote; pull into fresh clones, verify off / on)."""
    repo, relative = data.parents[1], str(data.relative_to(data.parents[1]))
    git(["init", "-q"], repo)
    subprocess.run([DVC, "init", "-q"], cwd=repo, check=True)
    for args in (["config", "core.analytics", "false"], ["remote", "add", "-d", "shared", str(root / "remote")]):
        subprocess.run([DVC, *args], cwd=repo, check=True, capture_output=True)
    seconds = {"add": [dvc(["add", "-q", relative], repo)[0]]}
    git(["add", "-A"], repo)
    git(["commit", "-qm", "views"], repo)
    for attempt in range(repeat):
        remote = root / f"{name}-remote-{attempt}"
        subprocess.run([DVC, "remote", "modify", "--local", "shared", "url", str(remote)], cwd=repo, check=True)
        took, said = dvc(["push"], repo)
        seconds.setdefault("push", []).append(took)
        print(f"#   {name} push {attempt + 1}: {took:.1f} s ({said})", flush=True)
        for step, verify in (("pull", "false"), ("pull+verify", "true")):
            clone = root / f"{name}-clone"
            git(["clone", "-q", str(repo), str(clone)], root)
            for key, value in (("url", str(remote)), ("verify", verify)):
                subprocess.run([DVC, "remote", "modify", "--local", "shared", key, value], cwd=clone, check=True)
            took, said = dvc(["pull"], clone)
            seconds.setdefault(step, []).append(took)
            print(
                f"#   {name} {step} {attempt + 1}: {took:.1f} s ({said}; {count_files(clone / relative)} views "
                f"in the workspace)",
                flush=True,
            )
            shutil.rmtree(clone)
        shutil.rmtree(remote)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=10_000, help="views in the shard store")
    parser.add_argument("--folder-views", type=int, default=None, help="views in the PNG folder (default: --views)")
    parser.add_argument("--repeat", type=int, default=3, help="push/pull runs per layout (fresh remote, clone)")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir (default: system temp)")
    args = parse_args(parser, {"views": 16, "repeat": 1}, needs_cuda=False)
    n_folder = args.views if args.folder_views is None else args.folder_views
    dvc_version = subprocess.run([DVC, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, DVC {dvc_version}")
    print(
        f"# command: python benchmarks/dvc_transfer.py --views {args.views} --folder-views {n_folder} "
        f"--repeat {args.repeat}"
    )
    print(f"# load average at the start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min)")

    with tempfile.TemporaryDirectory(prefix="dvc-transfer-", dir=args.workdir) as tmp:
        root = Path(tmp)
        shards, folder = root / "shards/data/views", root / "folder/data/views"
        start = time.perf_counter()
        total = build_views(args.views, shards, folder if n_folder else None, n_folder)
        n_shards = len(list(shards.glob("*.tar")))
        print(
            f"# built {args.views} views ({total / 1e6:.0f} MB, {total / args.views / 1e3:.0f} KB per PNG) "
            f"in {time.perf_counter() - start:.0f} s: {n_shards} shards (+ {n_shards} JSONL indexes); "
            f"{n_folder} of them also as PNG files"
        )
        cases = [("shards", shards, args.views, lambda path: len(ShardReader(path)))]
        if n_folder:
            cases.append(("folder", folder, n_folder, lambda path: len(list(path.glob("*.png")))))
        table, per_view = [], {}
        for name, data, n_views, count_files in cases:
            n_files = len(list(data.iterdir()))
            size = sum(p.stat().st_size for p in data.iterdir())
            for step, runs in time_case(name, data, root, count_files, args.repeat).items():
                per_view[name, step] = min(runs) / n_views
                table.append(
                    f"{name:<8} {n_views:>6} {n_files:>6} {step:<12} {min(runs):>6.1f} "
                    f"{statistics.median(runs):>7.1f} {size / 1e6 / min(runs):>6.0f}  "
                    f"{' '.join(f'{t:.1f}' for t in runs)}"
                )
    print(f"# load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min)")
    print(f"{'layout':<8} {'views':>6} {'files':>6} {'step':<12} {'min s':>6} {'median':>7} {'MB/s':>6}  every run (s)")
    print("\n".join(table))
    if n_folder:
        steps = [step for layout, step in per_view if layout == "shards"]
        print(
            "folder / shards, min seconds per view: "
            + ", ".join(f"{step} x{per_view['folder', step] / per_view['shards', step]:.1f}" for step in steps)
        )


if __name__ == "__main__":
    sys.exit(main())
