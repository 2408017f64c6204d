"""Smoke runs of the benchmark scripts (benchmarks/*.py): each runs as a subprocess at tiny scale on the CPU,
exits 0 and prints its labelled figures (their values are not checked: tiny random models on a shared CPU).
Nothing else runs the scripts between GPU sessions, so a change to the library's internals that breaks one
shows here. CUDA is hidden from the scripts, so the GPU scripts take their CPU path (tiny, GPU-only
measurements skipped with a reason) on any machine.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
N = r"-?[\d.]+"  # a figure
HAS_TRITON = importlib.util.find_spec("triton") is not None
ZERO123_PROFILES = (
    "zero123",
    "zero123-convs",
    "zero123-fp8",
    "zero123-inductor",
    "zero123-layouts",
    "zero123-autotune",
)

# script -> (arguments, lines it must print, as regular expressions matched at a line's start)
RUNS = {
    "vlm_throughput": (
        [],
        [
            r"no CUDA device: tiny scale \(--tiny\)",
            r"== LLaVA-1\.5, tiny",
            r"== MiniGPT-4, tiny",
            rf"naive: 1 at a time, generate 16 tokens +{N} +1\.0$",
            rf"batched scoring, yes/no, eager, bs \d+ +{N} +{N} +{N}",
            rf"batched scoring, 4 captions, eager, bs \d+ +{N} +{N} +{N}",
            rf"batched scoring, yes/no \d+-\d+ text tokens, eager +{N} +{N} +{N}",
            rf"     host, of {N} s: group {N} s, length {N} s, prepare {N} s, .*; graphs compiled during the call: 0$",
            r"paper mix: \d+ examples x 9 configurations \(stitched images\): \d+ yes/no requests, \d+ four-caption",
            rf"paper mix, yes/no, eager, one request a row +{N} +{N} +{N}",
            *(
                rf"paper mix, {mix}, eager, image prefix shared{call} +{N} +{N} +{N}"
                for mix in ("yes/no", "4 captions")
                for call in (", first call", "")
            ),
            (
                rf"   paper mix, yes/no, eager: {N} requests/s image prefix shared \({N} on a first call\), "
                rf"{N} one request a row \(x{N}\); max \|shared - one at a time\| = {N}"
            ),
            rf"   paper mix, 4 captions, eager: {N} requests/s image prefix shared \({N} on a first call\), "
            rf"{N} one request a row",
            rf"  model side only \(pre-encoded\), yes/no, eager +{N} +{N}",
            rf"  model side only \(pre-encoded\), 4 captions, eager +{N} +{N}",
            rf"   eager: max \|batched - one at a time\| = {N}",
            r"   eager: skipped: host synchronisations, counted by CUDA's sync debug mode \(",
            r"skipped: compiled variant \(",
            r"skipped: compiled, FP8 variant \(",
        ],
    ),
    "zero123_throughput": (
        [],
        [
            r"no CUDA device: tiny scale \(--tiny\)",
            rf"UNet FLOPs per view per guided step: {N} GFLOP",
            rf"naive +float32 1 view/call eager: +{N} views/s",
            rf"project +float32 \d+ views/call eager +: +{N} views/s +x +{N} vs naive; UNet +{N} ms/step",
            r"skipped: project path compiled \(reduce-overhead\) \(",
            rf"best: eager {N} views/s = x{N} the naive loop",
        ],
    ),
    "paper_grid": (
        [],
        [
            r"no CUDA device: tiny scale \(--tiny\)",
            r"skipped: GPU busy fraction and compiled stages \(",
            rf"views: \d+ views, loading {N} s, first batch {N} s, steady {N} views/s",
            rf"llava-7b: hashing the local model folder \(infer's resume fingerprint\) takes {N} s an instance",
            # --tiny runs one full chunk: 56 examples x 18 jobs
            rf"infer@vsr_random-llava-7b: 1008 jobs in 1 chunks, loading {N} s, first chunk {N} s",
            r"infer@whatsup_b-minigpt4-7b: 1008 jobs in 1 chunks",
            r"models so far: \['llava-7b', 'minigpt4-7b'\]",
            rf"stitch@whatsup_a +{N} +- +{N} +{N}$",
            rf"infer@vsr_zeroshot-minigpt4-7b +{N} +- +{N} +{N}$",
            rf"whole paper grid: {N} GPU-hours",
            rf"authors' way for the same work: {N} GPU-hours \(one view per call: {N} s/view; .*llava-7b {N} s/request",
        ],
    ),
    "views_stage": (
        ["--batches", "3"],  # two alternated turns of threads and worker processes: the pool outlives a writer
        [
            r"no CUDA device: tiny scale \(--tiny\)",
            r"skipped: compiled stage and pipeline \(",
            (
                rf"stage: 1 batch: loading {N} s, first batch {N} s, after it {N} s; 3 batches: loading {N} s, "
                rf"first batch {N} s, after it {N} s -> {N} views/s in steady state"
            ),
            (
                rf"pipeline alone: {N} views/s; stage / pipeline = {N}; pipeline while the PNG threads store the "
                rf"previous batch: {N} views/s \({N} of alone\), with the PNG encoders in \d+ worker processes "
                rf"instead: {N} views/s \({N}\); PNG encoding of one batch on one core: {N} s; "
                r"the long run's store holds \d+ views"
            ),
            r"the stores written by PNG threads and by worker processes are byte-identical: yes",
            r"two calls queued before either is read give the plain calls' views and quality records: yes",
        ],
    ),
    "views_encoding": (
        [],
        [
            r"no CUDA device: tiny scale \(--tiny\)",
            r"device cpu, torch \S+, Pillow \S+; \d+ px, \d+ DDIM steps, float32, \d+ views per batch, eager$",
            rf"first call: {N} s$",
            *(
                rf"host ahead, noise {noise}: a queued call returns after {N} s, its views are on the host after "
                rf"{N} s; page-locked allocations during the call: 0$"
                for noise in ("in one buffer", "pinned per draw")
            ),
            r"skipped: synchronising calls \(CUDA's sync debug mode\) \(",
            *(
                rf"encoder PNG level {level}: {N} s per batch on one core, {N} kB a view"
                for level in (r"6 \(the stage's\)", "1", "0")
            ),
            rf"pipeline alone: {N} views/s \(1.000 of alone\)",
            rf"pipeline alone \(host work on torch's default intra-op threads: \d+\): {N} views/s \({N} of alone\)",
            rf"pipeline alone \(noise pinned per draw\): {N} views/s \({N} of alone\)",
            *(
                rf"pipeline while storing, encoder {encoder}: {N} views/s \({N} of alone\)"
                for encoder in (
                    "none",
                    r"PNG level 6 \(the stage's\), 4 threads",
                    r"PNG level 6 \(the stage's\), 4 threads \(host work on torch's default intra-op threads: \d+\)",
                    r"PNG level 6 \(the stage's\), 4 threads \(noise pinned per draw\)",
                    "PNG level 6, 1 thread",
                    "PNG level 1, 4 threads",
                    "PNG level 0, 4 threads",
                )
            ),
        ],
    ),
    "gpu_profile": (
        [*ZERO123_PROFILES, "llava", "minigpt4"],
        [
            r"no CUDA device: tiny scale \(--tiny\)",
            rf"-- UNet eager, float32, \d+ samples: {N} ms of CPU operators per call",
            rf"   convolution +{N} ms +{N}%",
            rf"   gemm +{N} ms +{N}%",
            rf"encode \d+ views \(\d+ distinct images\): {N} ms; decode \d+ views: {N} ms",
            r"skipped: compiled UNet and VAE decode, FP8 linears \(",
            r"skipped: FP8 Triton convolutions \(",
            rf"   \(\d+, \d+, \d+, \d+\) +\d+->\d+ +k3 s1  float32 +{N} \( *{N} TFLOP/s\)  x\d+",
            (
                rf"3x3 stride-1 convolutions the FP8 kernel takes, per UNet call: float32 {N} ms; "
                rf"other convolutions {N} ms"
            ),
            rf"float32 eager +UNet +{N} ms per call of \d+ samples",
            r"skipped: fp8 convs\+linears \(",
            r"skipped: coordinate descent \(",
            r"skipped: torch\.contiguous_format \(",
            r"skipped: max-autotune \(",
            rf"-- LLaVA tiny model side, yes/no, \d+ per batch, eager: {N} ms of CPU operators per call",
            rf"-- LLaVA tiny model side, paper mix yes/no, image prefix shared, \d+ rows of \d+ requests: {N} ms",
            rf"model side: {N} requests/s one a row, {N} paper-mix requests/s image prefix shared",
            rf"full path, 3 batches of \d+: wall {N} s, CPU operators {N} s -> operators busy {N}% \({N} samples/s\)",
            rf"   host: group {N} s, tokenise {N} s, length {N} s, prepare {N} s, queue {N} s, wait {N} s",
            r"skipped: synchronising calls",
            rf"-- MiniGPT-4 tiny model side, paper mix yes/no, image prefix shared, \d+ rows of \d+ requests: {N} ms",
            rf"model side: {N} requests/s",
            rf"full path, paper mix yes/no, \d+ requests: wall {N} s, CPU operators {N} s -> operators busy {N}%",
            *(
                rf"plain call, paper mix yes/no, \d+ requests, {shapes}: wall {N} s \({N} requests/s\)"
                for shapes in ("first sight of most batch shapes", "every batch shape seen before")
            ),
        ],
    ),
    "fp8_conv": (
        [],
        [
            rf"e4m3 operands vs float32 convolution: relative error {N}",
            rf"Triton interpreter vs float32 convolution: max relative difference {N}"
            if HAS_TRITON
            else r"skipped: Triton interpreter check of the kernel \(Triton is not installed",
        ],
    ),
    "stitch_stage": (
        ["--tiny"],
        [
            r"\d+ CPUs; \d+ images of \d+ px, 4 views of 256 px each, 9 configurations",
            (
                rf"one thread: {N} s \({N} images/s\); \d+ threads: {N} s \({N} images/s\) -> x{N}; "
                r"stores identical: True$"
            ),
        ],
    ),
    "dvc_transfer": (
        ["--tiny"],
        [
            *(
                rf"{layout} +\d+ +\d+ {re.escape(step)} +{N} +{N} +{N}  {N}"
                for layout in ("shards", "folder")
                for step in ("add", "push", "pull", "pull+verify")
            ),
            rf"folder / shards, min seconds per view: add x{N}, push x{N}, pull x{N}, pull\+verify x{N}$",
        ],
    ),
}


def test_every_benchmark_script_has_a_smoke_run():
    scripts = {path.stem for path in BENCHMARKS.glob("*.py") if 'if __name__ == "__main__":' in path.read_text()}
    assert scripts == set(RUNS)


# The VLM benchmarks run with the backends' own image hashing refused: the infer stage hands a backend requests
# that carry their images' fingerprints (hashed in a thread while the device answers the chunk before), and a
# benchmark request without them would charge the backend's rates for hashing on the critical path.
FINGERPRINTED = {"vlm_throughput", "gpu_profile"}
REFUSE_HASHING = """
import pathlib, runpy, sys
import zerovlm.vlm.shared_prefix

def refuse(picture):
    raise AssertionError("a benchmark request reached the backend without its images' fingerprints")

zerovlm.vlm.shared_prefix.image_fingerprint = refuse
sys.argv = sys.argv[1:]
sys.path.insert(0, str(pathlib.Path(sys.argv[0]).parent))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("script", sorted(RUNS))
def test_benchmark_runs_at_tiny_scale_on_the_cpu(script):
    arguments, figures = RUNS[script]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    prelude = ["-c", REFUSE_HASHING] if script in FINGERPRINTED else []
    result = subprocess.run(
        [sys.executable, *prelude, str(BENCHMARKS / f"{script}.py"), *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    missing = [figure for figure in figures if not re.search("^" + figure, result.stdout, re.MULTILINE)]
    assert not missing, f"{script} did not print {missing}:\n{result.stdout}"


def test_paper_grid_extrapolates_a_run_to_its_own_size_as_its_own_time():
    """Extrapolation counts in the units the run records count: a grid of the run's own size takes the run's
    time (counting distinct requests, 17 an example, against records that count 18 jobs an example would leave
    out about 4% of the infer time)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import paper_grid
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    jobs = [1008, 1008, 1008, 252]  # chunk_requests counts jobs: 182 examples x 18
    infer = {"seconds": 30.0, "chunk_seconds": [12.0, 8.0, 8.0, 2.0], "chunk_requests": jobs}
    per_job, seconds = paper_grid.infer_grid_seconds(infer, grid_examples=182)
    assert seconds == pytest.approx(30.0) and per_job == pytest.approx(18.0 / 2268)
    views = {"views": 40, "seconds_loading": 2.0, "seconds_first_batch": 10.0, "seconds_generating": 25.0}
    steady, seconds = paper_grid.views_grid_seconds(views, batch_size=8, grid_views=40)
    assert seconds == pytest.approx(2.0 + 25.0) and steady == pytest.approx(15.0 / 32)


def test_views_stage_takes_the_steady_state_from_the_run_records():
    """The stage's steady rate is the long run's batches after its first over the time they added to the short
    run's after its first batch: loading and the first batch (compilation) count in neither, storing the last
    batch cancels; a long run no longer than the short one after its first batch gives no rate."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import views_stage
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    short = {"seconds_loading": 9.0, "seconds_first_batch": 30.0, "seconds_generating": 30.5}
    long = {"seconds_loading": 3.0, "seconds_first_batch": 8.0, "seconds_generating": 26.5}
    assert views_stage.steady_rate(short, long, batches=4, batch=128) == pytest.approx(3 * 128 / 18.0)
    assert views_stage.steady_rate(short, dict(long, seconds_generating=8.5), batches=4, batch=128) is None


def test_vlm_throughput_hands_requests_as_the_infer_stage_does():
    """The infer stage fingerprints a chunk's images in a thread while the device answers the chunk before, so a
    backend's grouping hashes nothing there; the benchmark's requests carry the same fingerprints, or its rates
    would charge the backend for hashing 640x480 images on the critical path."""
    from zerovlm.vlm.base import image_fingerprint

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import vlm_throughput
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    images = vlm_throughput.random_images(18, seed=0)
    for four_captions in (False, True):
        mix = vlm_throughput.paper_mix(images, four_captions=four_captions, seed=0)
        assert len(mix) >= 2 * 17
        assert all(r.image_fingerprints == tuple(map(image_fingerprint, r.images)) for r in mix)
