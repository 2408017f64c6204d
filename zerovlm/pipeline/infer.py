"""Stage `infer`: ask the VLM every question for every view configuration, with and without the view prompt,
and record what it answered (zerovlm/answering.py).

    out/predictions.jsonl  one record per question, in plan order
    out/summary.json       the part of the summary that the same answers always give (so that re-running infer
                           with an identical result leaves score cached)
    run_record             the run's own facts: timings, resumed requests, processes, device, dtype, peak
                           memory, versions

Finished chunks are appended to this process' part of a partial run (zerovlm/partial_run.py), so an
interrupted run resumes; the next chunk's images are decoded in a thread while the model answers this one.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from zerovlm.answering import answer_chunk, chunk_requests, plan_answer_jobs, plan_chunks, split_by_capability
from zerovlm.config import InferConfig
from zerovlm.datasets.table import read_table
from zerovlm.io import ZeroVLMError, atomic_path, read_json, sha256_file, sha256_files, stable_hash, write_json
from zerovlm.parallel import Worker, current_worker
from zerovlm.partial_run import PartialRun, unfinished
from zerovlm.prompts import prompts_sha256
from zerovlm.provenance import library_versions
from zerovlm.runtime import (
    code_identity,
    model_identity,
    peak_memory_bytes,
    pin_revision,
    pinned_part_revisions,
    resolve_device_dtype,
)
from zerovlm.stage import model_source_flag, path_flag, run_record_flag
from zerovlm.store import ShardReader
from zerovlm.view_configurations import images_per_request
from zerovlm.vlm.registry import load_backend

log = logging.getLogger(__name__)
PREDICTIONS_FILE = "predictions.jsonl"


@dataclass(frozen=True)
class Paths:
    prepared: Path = path_flag("the dataset's prepared folder (examples.jsonl)")
    stitched: Path = path_flag("the dataset's stitched image store")
    out: Path = path_flag("predictions folder")
    run_record: Path | None = run_record_flag("timings, peak memory and versions")
    model_source: Path | None = model_source_flag(
        "data/inputs/vlm-<name>.json; each hub part of an assembled model such as MiniGPT-4 likewise",
        "at the revision param, or the manifest's, as it stands",
    )


def backend_code_identity() -> str:
    """A content hash of the code that computes the answers (zerovlm/vlm/*.py, answering.py): a partial run
    written before a change to how answers are computed (e.g. float32 option logits) must not be finished by
    the new code."""
    package = Path(__file__).parents[1]
    return code_identity(package / "vlm", package / "answering.py")


def _fingerprint(
    cfg: InferConfig, device: torch.device, dtype: torch.dtype, paths: Paths, part_revisions: dict[str, str] | None
) -> str:
    """What the answers depend on besides the code: the settings, the kind of device and the dtype used there,
    a local model folder's content or a hub model's commit (and the commits of an assembled model's hub parts),
    the examples, the prompts, and the stitched images themselves (the shard indexes hold no pixels)."""
    knobs = cfg.model_dump(exclude={"batch_size", "device"})
    shards = sorted(paths.stitched.glob("shard-*"))
    stitched = [(p.name, digest) for p, digest in zip(shards, sha256_files(shards))]
    return stable_hash(
        [
            knobs,
            device.type,
            str(dtype),
            model_identity(cfg.model, cfg.revision),
            part_revisions,
            sha256_file(paths.prepared / "examples.jsonl"),
            stitched,
            prompts_sha256(),
        ]
    )


def _read_part(path: Path) -> list[dict]:
    """The sound records of one part file: reading stops at a line an interruption cut."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def _finished(partial: PartialRun) -> dict[str, dict]:
    """Every finished record of every part, whichever launch (and number of processes) wrote it."""
    return {record["record_id"]: record for part in partial.parts("part-*.jsonl") for record in _read_part(part)}


def _own_part(partial: PartialRun, worker: Worker) -> Path:
    """This process' part file, without a line an interruption cut, so that appending to it stays valid."""
    own = partial.part(worker).with_suffix(".jsonl")
    if own.exists():
        with atomic_path(own) as tmp:
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in _read_part(own)))
    return own


def _runtime(dtype: torch.dtype) -> dict:
    """Device, dtype, peak memory and the versions the model ran with."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        device = "cpu"
    installed = library_versions()
    versions = {package: installed[package] for package in ("torch", "transformers", "accelerate")}
    return {
        "device": device,
        "dtype_used": str(dtype).removeprefix("torch."),
        "peak_memory_bytes": peak_memory_bytes(),
        "versions": versions,
    }


def run(paths: Paths, cfg: InferConfig, worker: Worker | None = None) -> dict | None:
    """Answer every planned request; under a multi-process launch each process answers the chunks it owns
    (round-robin over the plan's chunks) and the main process merges. Returns the summary (None on non-main
    processes)."""
    worker = worker or current_worker()
    part_revisions = None
    if paths.model_source is not None:
        cfg = pin_revision(cfg, paths.model_source)
        part_revisions = pinned_part_revisions(paths.model_source)
    examples = read_table(paths.prepared)
    stitch_summary = read_json(paths.stitched / "summary.json", "run the stitch stage first (`dvc repro`)")
    configurations = stitch_summary["configurations"]
    device, dtype = resolve_device_dtype(cfg.device, cfg.dtype, "infer")
    log.info("infer: on %s in %s", device, dtype)
    start = time.perf_counter()
    seconds_loading = 0.0  # model loading, reported apart from answering (overhead metrics)
    model = None
    if any(images_per_request(c) > 1 for c in configurations):  # ask the model how many images it takes
        model = load_backend(cfg, part_revisions)
        seconds_loading = time.perf_counter() - start
    max_images = model.max_images_per_request if model is not None else 1
    configurations, not_evaluated = split_by_capability(configurations, max_images, cfg.backend)
    for configuration, reason in not_evaluated.items():
        log.warning("infer: configuration %s not evaluated with %s: %s", configuration, cfg.model, reason)
    jobs = plan_answer_jobs(cfg, examples, configurations, stitch_summary["layout"])

    fingerprint = _fingerprint(cfg, device, dtype, paths, part_revisions)
    partial = PartialRun(paths.out, "infer", fingerprint, backend_code_identity())
    partial.open(worker)
    own_part = _own_part(partial, worker)
    done = _finished(partial)
    chunks = plan_chunks(jobs, examples)
    reused = len(jobs) - sum(len(chunk) for chunk in unfinished(chunks, done, key=lambda job: job.record_id))
    mine = unfinished(worker.owned(chunks), done, key=lambda job: job.record_id)  # a partly done chunk runs whole
    log.info(
        "infer [%s]: %d requests planned, %d already done, %d chunks to run here",
        worker.part_name,
        len(jobs),
        reused,
        len(mine),
    )

    if mine and model is None:
        loading_start = time.perf_counter()
        model = load_backend(cfg, part_revisions)
        seconds_loading = time.perf_counter() - loading_start
    chunk_seconds = []  # per chunk answered here; compiling (or loading from the compile cache) is in the first
    if mine:
        with (
            ShardReader(paths.stitched) as stitched,  # read by the loader thread only
            open(own_part, "a", encoding="utf-8") as sink,
            ThreadPoolExecutor(max_workers=1) as loader,
        ):
            pending = loader.submit(chunk_requests, mine[0], stitched.image)
            chunk_start = time.perf_counter()
            for number in range(1, len(mine) + 1):
                chunk = pending.result()
                if number < len(mine):  # decode the next chunk's images while the model answers this one
                    pending = loader.submit(chunk_requests, mine[number], stitched.image)
                for record in answer_chunk(model, cfg, chunk):
                    sink.write(json.dumps(record, sort_keys=True) + "\n")
                sink.flush()
                chunk_end = time.perf_counter()
                chunk_seconds.append(round(chunk_end - chunk_start, 3))
                chunk_start = chunk_end
                log.info("infer [%s]: chunk %d / %d", worker.part_name, number, len(mine))
    seconds = time.perf_counter() - start
    worker.barrier()
    if not worker.is_main:
        return None

    done = _finished(partial)
    missing = [job.record_id for job in jobs if job.record_id not in done]
    if missing:
        raise ZeroVLMError(
            f"infer: {len(missing)} requests have no answer (first: {missing[0]}), a process "
            f"stopped early; re-run the stage to finish them (finished answers are kept)"
        )
    summary = {
        "requests": len(jobs),
        "not_evaluated": not_evaluated,
        "requests_not_evaluated": len(examples) * len(cfg.view_prompt) * len(not_evaluated),
        "backend": cfg.backend,
        "model": cfg.model,
        "answer_mode": cfg.answer_mode,
        "prompts_sha256": prompts_sha256(),
        "fingerprint": fingerprint,
    }
    run_facts = {
        "resumed": reused,
        "processes": worker.world_size,
        "seconds": round(seconds, 3),
        "seconds_loading": round(seconds_loading, 3),
        "chunk_seconds": chunk_seconds,  # the first holds compilation; with chunk_requests: the steady rate after it
        "chunk_requests": [len(chunk) for chunk in mine],  # jobs (the baseline's two prompt modes count twice)
        "model_info": model.info() if model is not None else None,
        # under `dvc repro` the commit the check stage pinned: of a hub model, or of each hub part
        "model_revision": cfg.revision if part_revisions is None else part_revisions,
        **_runtime(dtype),
    }
    with partial.publish() as tmp:
        with open(tmp / PREDICTIONS_FILE, "w", encoding="utf-8") as f:
            for job in jobs:  # plan order, whatever process or chunk answered it
                f.write(json.dumps(done[job.record_id], sort_keys=True) + "\n")
        write_json(tmp / "summary.json", summary)
        if paths.run_record is not None:
            write_json(paths.run_record, run_facts)
    return {**summary, **run_facts}
