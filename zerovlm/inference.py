"""The infer stage: ask the VLM every question for every view configuration, with and without the view
prompt, and record what it answered (option log-likelihoods, or generated text).

Choosing the answer is left to zerovlm.scoring: this module records evidence, not verdicts.
Identical requests (the "origin" baseline has no view prompt, so its two prompt modes coincide) are
computed once. Finished chunks are appended to a partial file, so an interrupted run resumes; the next
chunk's images are decoded in a thread while the model answers the current chunk.

A "-separate" configuration sends several images in one request. A model whose
`max_images_per_request` is smaller is never fed them: the configuration is skipped for that model with
a warning and listed in the summary's `not_evaluated` (score and report show it as not evaluated, not
as 0% accuracy). The stitch configuration list is shared by every VLM of the grid, so skipping (not
failing) lets one grid hold single-image and multi-image VLMs.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from zerovlm.compose import input_keys
from zerovlm.config import InferConfig
from zerovlm.configurations import BASELINE_CONFIGURATION, CONFIGURATIONS, images_per_request, is_separate
from zerovlm.datasets.table import Example, read_table
from zerovlm.io import ZeroVLMError, atomic_dir, atomic_path, read_json, sha256_file, stable_hash, write_json
from zerovlm.parallel import Worker, current_worker
from zerovlm.prompts import prompts_sha256, user_message
from zerovlm.report.provenance import library_versions
from zerovlm.runtime import code_identity, model_identity, peak_memory_bytes
from zerovlm.store import ShardReader
from zerovlm.vlm.base import Request, VisionLanguageModel, resolve_device_dtype
from zerovlm.vlm.registry import load_backend

log = logging.getLogger(__name__)
CHUNK_REQUESTS = 256  # about this many requests per resumable chunk (bounds the images held in memory)
PREDICTIONS_FILE = "predictions.jsonl"


@dataclass(frozen=True)
class Job:
    example: Example
    configuration: str
    with_view_prompt: bool
    text: str                 # the user message (view prompt + question)
    answers: tuple[str, ...]  # scored continuations, aligned with example.options

    @property
    def record_id(self) -> str:
        prompt_mode = "with_view_prompt" if self.with_view_prompt else "without_view_prompt"
        return f"{self.example.example_id}|{self.configuration}|{prompt_mode}"

    @property
    def image_keys(self) -> tuple[str, ...]:
        """Store keys of the request's images, in the order they are sent."""
        return tuple(input_keys(self.example.image_id, self.configuration))


def plan_jobs(cfg: InferConfig, examples: list[Example], configurations: list[str], layout: str) -> list[Job]:
    """Every (configuration, view prompt on/off, example); the baseline (origin without the view prompt)
    is asked even when infer.view_prompt is [true]: every comparison is made against it."""
    jobs = []
    for configuration in configurations:
        prompt_layout = "separate" if is_separate(configuration) else layout
        modes = cfg.view_prompt
        if configuration == BASELINE_CONFIGURATION and False not in modes:
            modes = (*modes, False)
        for with_view_prompt in modes:
            for example in examples:
                text, asked = user_message(example, cfg.question_template, CONFIGURATIONS[configuration],
                                           prompt_layout, with_view_prompt)
                jobs.append(Job(example, configuration, with_view_prompt, text, asked.answers))
    return jobs


def split_by_capability(configurations: list[str], max_images: int, backend: str) -> tuple[list[str], dict]:
    """(configurations the model can answer, {configuration: why not evaluated}) for a model taking at
    most `max_images` images per request."""
    runnable, not_evaluated = [], {}
    for configuration in configurations:
        needed = images_per_request(configuration)
        if needed <= max_images:
            runnable.append(configuration)
        else:
            not_evaluated[configuration] = (f"backend {backend} takes at most {max_images} image(s) per "
                                            f"request; this configuration sends {needed}")
    return runnable, not_evaluated


def plan_chunks(jobs: list[Job], examples: list[Example]) -> list[list[Job]]:
    """Resumable units of work: every job of a block of consecutive examples.

    Chunks depend only on the plan, never on what is done or on the number of processes, and a chunk
    is always computed whole (a partly finished one is recomputed), so every request is answered in
    the same batch composition: the output is bitwise the same for 1 or N processes and after a resume
    on the CPU (same dtype, batch size and thread count; tested). On a GPU, low-order bits can still
    differ: LLaVA caches image features across chunks, so which images share a vision-tower batch
    depends on what the process answered before.
    """
    jobs_per_example = max(1, len(jobs) // len(examples))
    block = max(1, CHUNK_REQUESTS // jobs_per_example)
    block_of = {example.example_id: index // block for index, example in enumerate(examples)}
    chunks: dict[int, list[Job]] = {}
    for job in jobs:
        chunks.setdefault(block_of[job.example.example_id], []).append(job)
    return [chunks[key] for key in sorted(chunks)]


def backend_code_identity() -> str:
    """A content hash of the backends' code (zerovlm/vlm/*.py, zerovlm/fp8.py): a partial run written before
    a change to how answers are computed (e.g. float32 option logits) must not be finished by the new code."""
    package = Path(__file__).parent
    return code_identity(package / "vlm", package / "fp8.py")


def _fingerprint(cfg: InferConfig, prepared_dir: Path, stitched_dir: Path) -> str:
    """What the answers depend on; a partial file from other inputs is discarded, not resumed.

    The settings, the kind of device and the dtype used there, a local model folder's content or a hub
    model's commit, the backends' code, the examples, the prompts, and the stitched images themselves (the shard indexes
    hold no pixels).
    """
    knobs = cfg.model_dump(exclude={"batch_size", "device"})
    device, dtype = resolve_device_dtype(cfg.device, cfg.dtype, warn=False)
    stitched = sorted((p.name, sha256_file(p)) for p in stitched_dir.glob("shard-*"))
    return stable_hash([knobs, device.type, str(dtype), model_identity(cfg.model, cfg.revision),
                        backend_code_identity(), sha256_file(prepared_dir / "examples.jsonl"), stitched,
                        prompts_sha256()])


def _answer(model: VisionLanguageModel, cfg: InferConfig, requests: list[Request]) -> list[dict]:
    if cfg.answer_mode == "loglik":
        return [{"option_logprobs": scores} for scores in model.option_logprobs(requests)]
    # paper: the authors' evaluator sampled at its temperature until EOS ("</s>", also the stop string of the
    # llava_v1 template: its sep2) or until the answer held its question's ", please answer me yes or no", which
    # it kept in the answer. That text contains "yes", so decoding on to EOS gives the same verdict by its
    # "contains yes" rule: no stop string is needed.
    temperature = cfg.temperature if cfg.answer_mode == "paper" else 0.0
    texts = model.generate(requests, max_new_tokens=getattr(cfg.max_new_tokens, cfg.answer_mode),
                           temperature=temperature, seed=cfg.seed)
    return [{"output_text": text} for text in texts]


@dataclass
class ChunkRequests:
    """A chunk's distinct requests (identical (images, text, answers) asked once) with their images
    decoded, and for each job the index of its request."""

    jobs: list[Job]
    requests: list[Request]
    index: list[int]


def load_chunk(jobs: list[Job], stitched: ShardReader) -> ChunkRequests:
    unique: dict[tuple, int] = {}
    requests: list[Request] = []
    for job in jobs:
        key = (job.image_keys, job.text, job.answers)
        if key not in unique:
            unique[key] = len(requests)
            images = tuple(stitched.image(k) for k in job.image_keys)
            requests.append(Request(images=images, prompt=job.text, options=job.answers))
    return ChunkRequests(jobs, requests, [unique[(j.image_keys, j.text, j.answers)] for j in jobs])


def answer_chunk(model, cfg, chunk: ChunkRequests) -> list[dict]:
    answers = _answer(model, cfg, chunk.requests)
    if len(answers) != len(chunk.requests):
        raise ZeroVLMError(f"backend {cfg.backend} returned {len(answers)} results for {len(chunk.requests)} requests")
    return [{"record_id": job.record_id, "example_id": job.example.example_id,
             "configuration": job.configuration, "with_view_prompt": job.with_view_prompt,
             "answers": list(job.answers), "rendered_prompt": model.render_prompt(chunk.requests[index]),
             **answers[index]} for job, index in zip(chunk.jobs, chunk.index)]


def infer_stage(cfg: InferConfig, prepared_dir: Path, stitched_dir: Path, out_dir: Path,
                worker: Worker | None = None, run_record: Path | None = None) -> dict | None:
    """Answer every planned request; under a multi-process launch each process answers its share
    (by example id) and the main process merges. Returns the summary (None on non-main processes).

    `out_dir/summary.json` holds the part of the summary that the same answers always give (so that
    re-running infer with an identical result leaves score cached); `run_record`, if given, the run's
    own facts (timings, resumed requests, processes, device, peak memory, versions).
    """
    worker = worker or current_worker()
    examples = read_table(prepared_dir)
    stitch_summary = read_json(stitched_dir / "summary.json", "run the stitch stage first (`dvc repro`)")
    configurations = stitch_summary["configurations"]
    start = time.perf_counter()
    seconds_loading = 0.0  # issue 7 (overhead): model loading, reported apart from answering
    model = None
    if any(images_per_request(c) > 1 for c in configurations):  # ask the model how many images it takes
        model = load_backend(cfg)
        seconds_loading = time.perf_counter() - start
    max_images = model.max_images_per_request if model is not None else 1
    configurations, not_evaluated = split_by_capability(configurations, max_images, cfg.backend)
    for configuration, reason in not_evaluated.items():
        log.warning("infer: configuration %s not evaluated with %s: %s", configuration, cfg.model, reason)
    jobs = plan_jobs(cfg, examples, configurations, stitch_summary["layout"])

    partial_dir = out_dir.parent / f".{out_dir.name}.partial"
    fingerprint = _fingerprint(cfg, prepared_dir, stitched_dir)
    done = _resume(partial_dir, fingerprint, worker)
    chunks = [chunk for chunk in plan_chunks(jobs, examples) if any(job.record_id not in done for job in chunk)]
    reused = len(jobs) - sum(len(chunk) for chunk in chunks)  # a partly done chunk is recomputed whole
    mine = worker.owned(chunks, key=lambda chunk: chunk[0].example.example_id)
    log.info("infer [%s]: %d requests planned, %d already done, %d chunks to run here",
             worker.part_name, len(jobs), reused, len(mine))

    if mine and model is None:
        loading_start = time.perf_counter()
        model = load_backend(cfg)
        seconds_loading = time.perf_counter() - loading_start
    if mine:
        stitched = ShardReader(stitched_dir)  # read by the loader thread only
        with open(partial_dir / f"{worker.part_name}.jsonl", "a", encoding="utf-8") as sink, \
                ThreadPoolExecutor(max_workers=1) as loader:
            pending = loader.submit(load_chunk, mine[0], stitched)
            for number in range(1, len(mine) + 1):
                chunk = pending.result()
                if number < len(mine):  # decode the next chunk's images while the model answers this one
                    pending = loader.submit(load_chunk, mine[number], stitched)
                for record in answer_chunk(model, cfg, chunk):
                    sink.write(json.dumps(record, sort_keys=True) + "\n")
                sink.flush()
                log.info("infer [%s]: chunk %d / %d", worker.part_name, number, len(mine))
        stitched.close()
    seconds = time.perf_counter() - start
    worker.barrier()
    if not worker.is_main:
        return None

    done = _read_parts(partial_dir)
    missing = [job.record_id for job in jobs if job.record_id not in done]
    if missing:
        raise ZeroVLMError(f"infer: {len(missing)} requests have no answer (first: {missing[0]}), a process "
                           f"stopped early; re-run the stage to finish them (finished answers are kept)")
    summary = {"requests": len(jobs), "not_evaluated": not_evaluated,
               "requests_not_evaluated": len(examples) * len(cfg.view_prompt) * len(not_evaluated),
               "backend": cfg.backend, "model": cfg.model, "answer_mode": cfg.answer_mode,
               "prompts_sha256": prompts_sha256(), "fingerprint": fingerprint}
    run = {"resumed": reused, "processes": worker.world_size, "seconds": round(seconds, 3),
           "seconds_loading": round(seconds_loading, 3),  # issue 7: overhead, provenance
           "model_info": model.info() if model is not None else None,
           "model_revision": cfg.revision,  # a hub model's commit under `dvc repro` (pinned by the check stage)
           **_runtime()}
    with atomic_dir(out_dir) as tmp:
        with open(tmp / PREDICTIONS_FILE, "w", encoding="utf-8") as f:
            for job in jobs:  # plan order, whatever process or chunk answered it
                f.write(json.dumps(done[job.record_id], sort_keys=True) + "\n")
        write_json(tmp / "summary.json", summary)
    if run_record is not None:
        write_json(run_record, run)
    shutil.rmtree(partial_dir)
    return {**summary, **run}


# ---- issue 7 (overhead and provenance, read by zerovlm.scoring): where this run ran, its peak memory
def _runtime() -> dict:
    """Device, peak memory (zerovlm.runtime.peak_memory_bytes) and the versions the model ran with."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        device = "cpu"
    installed = library_versions()
    versions = {package: installed[package] for package in ("torch", "transformers", "accelerate")}
    return {"device": device, "peak_memory_bytes": peak_memory_bytes(), "versions": versions}
# ---- end issue 7


def _read_part(path: Path) -> list[dict]:
    """The sound records of one part file: reading stops at a line an interruption cut."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def _read_parts(partial_dir: Path) -> dict[str, dict]:
    """Every finished record of every part, whichever launch (and number of processes) wrote it."""
    return {record["record_id"]: record for part in sorted(partial_dir.glob("part-*.jsonl"))
            for record in _read_part(part)}


def _resume(partial_dir: Path, fingerprint: str, worker: Worker) -> dict[str, dict]:
    """Records finished by an interrupted run with the same fingerprint; otherwise start afresh."""
    header = partial_dir / "fingerprint"
    if worker.is_main and not (header.is_file() and header.read_text() == fingerprint):
        if partial_dir.exists():
            log.info("infer: discarding a partial run made with other inputs or settings")
            shutil.rmtree(partial_dir)
        partial_dir.mkdir(parents=True)
        header.write_text(fingerprint)
    worker.barrier()
    own = partial_dir / f"{worker.part_name}.jsonl"
    if own.exists():  # drop a cut tail so that appending to this part stays valid
        with atomic_path(own) as tmp:
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in _read_part(own)))
    return _read_parts(partial_dir)
