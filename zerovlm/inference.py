"""The infer stage: ask the VLM every question for every view configuration, with and without the view
prompt, and record what it answered (option log-likelihoods, or generated text).

Choosing the answer is left to zerovlm.scoring: this module records evidence, not verdicts.
Identical requests (the "origin" baseline has no view prompt, so its two prompt modes coincide) are
computed once. Finished chunks are appended to a partial file, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from zerovlm.config import CONFIGURATIONS, InferConfig
from zerovlm.datasets.table import Example, read_table
from zerovlm.io import ZeroVLMError, atomic_dir, atomic_path, sha256_file, stable_hash, write_json
from zerovlm.prompts import prompts_sha256, user_message
from zerovlm.store import ShardReader
from zerovlm.vlm.base import Request, VisionLanguageModel
from zerovlm.vlm.registry import load_backend

log = logging.getLogger(__name__)
CHUNK_REQUESTS = 256  # requests per resumable chunk (also bounds how many images are held in memory)
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
    def image_key(self) -> str:
        return f"{self.example.image_id}.{self.configuration}"


def plan_jobs(cfg: InferConfig, examples: list[Example], configurations: list[str], layout: str) -> list[Job]:
    jobs = []
    for configuration in configurations:
        for with_view_prompt in cfg.view_prompt:
            for example in examples:
                text, asked = user_message(example, cfg.question_template, CONFIGURATIONS[configuration],
                                           layout, with_view_prompt)
                jobs.append(Job(example, configuration, with_view_prompt, text, asked.answers))
    return jobs


def _fingerprint(cfg: InferConfig, prepared_dir: Path, stitched_dir: Path) -> str:
    """What the answers depend on; a partial file from other inputs is discarded, not resumed."""
    knobs = cfg.model_dump(exclude={"batch_size", "device"})
    stitched = sorted((p.name, sha256_file(p)) for p in stitched_dir.glob("shard-*.jsonl"))
    stitched += sorted((p.name, p.stat().st_size) for p in stitched_dir.glob("shard-*.tar"))
    return stable_hash([knobs, sha256_file(prepared_dir / "examples.jsonl"), stitched, prompts_sha256()])


def _answer(model: VisionLanguageModel, cfg: InferConfig, requests: list[Request]) -> list[dict]:
    if cfg.answer_mode == "loglik":
        return [{"option_logprobs": scores} for scores in model.option_logprobs(requests)]
    temperature = cfg.temperature if cfg.answer_mode == "paper" else 0.0
    texts = model.generate(requests, max_new_tokens=cfg.max_new_tokens, temperature=temperature, seed=cfg.seed)
    return [{"output_text": text} for text in texts]


def _run_chunk(model, cfg, jobs: list[Job], stitched: ShardReader) -> list[dict]:
    # Deduplicate identical (image, text, answers) requests within the chunk.
    unique: dict[tuple, int] = {}
    requests: list[Request] = []
    for job in jobs:
        key = (job.image_key, job.text, job.answers)
        if key not in unique:
            unique[key] = len(requests)
            requests.append(Request(images=(stitched.image(job.image_key),), prompt=job.text, options=job.answers))
    answers = _answer(model, cfg, requests)
    if len(answers) != len(requests):
        raise ZeroVLMError(f"backend {cfg.backend} returned {len(answers)} results for {len(requests)} requests")
    records = []
    for job in jobs:
        index = unique[(job.image_key, job.text, job.answers)]
        records.append({
            "record_id": job.record_id, "example_id": job.example.example_id,
            "configuration": job.configuration, "with_view_prompt": job.with_view_prompt,
            "answers": list(job.answers), "rendered_prompt": model.render_prompt(requests[index]),
            **answers[index]})
    return records


def infer_stage(cfg: InferConfig, prepared_dir: Path, stitched_dir: Path, out_dir: Path) -> dict:
    examples = read_table(prepared_dir)
    stitch_summary = json.loads((stitched_dir / "summary.json").read_text())
    jobs = plan_jobs(cfg, examples, stitch_summary["configurations"], stitch_summary["layout"])

    partial = out_dir.parent / f".{out_dir.name}.partial.jsonl"
    fingerprint = _fingerprint(cfg, prepared_dir, stitched_dir)
    done = _resume(partial, fingerprint)
    todo = [job for job in jobs if job.record_id not in done]
    log.info("infer: %d requests planned, %d already done, %d to run", len(jobs), len(jobs) - len(todo), len(todo))

    start = time.perf_counter()
    if todo:
        model = load_backend(cfg)
        stitched = ShardReader(stitched_dir)
        with open(partial, "a", encoding="utf-8") as sink:
            for begin in range(0, len(todo), CHUNK_REQUESTS):
                for record in _run_chunk(model, cfg, todo[begin:begin + CHUNK_REQUESTS], stitched):
                    sink.write(json.dumps(record, sort_keys=True) + "\n")
                    done[record["record_id"]] = record
                sink.flush()
                log.info("infer: %d / %d", min(begin + CHUNK_REQUESTS, len(todo)), len(todo))
        stitched.close()
    seconds = time.perf_counter() - start

    summary = {"requests": len(jobs), "resumed": len(jobs) - len(todo), "seconds": round(seconds, 3),
               "backend": cfg.backend, "model": cfg.model, "answer_mode": cfg.answer_mode,
               "prompts_sha256": prompts_sha256(), "fingerprint": fingerprint}
    with atomic_dir(out_dir) as tmp:
        with open(tmp / PREDICTIONS_FILE, "w", encoding="utf-8") as f:
            for job in jobs:  # plan order, whatever order chunks finished in
                f.write(json.dumps(done[job.record_id], sort_keys=True) + "\n")
        write_json(tmp / "summary.json", summary)
    partial.unlink(missing_ok=True)
    partial.with_suffix(".fingerprint").unlink(missing_ok=True)
    return summary


def _resume(partial: Path, fingerprint: str) -> dict[str, dict]:
    """Records finished by an interrupted run with the same fingerprint; otherwise start afresh."""
    header = partial.with_suffix(".fingerprint")
    if partial.exists() and header.exists() and header.read_text() == fingerprint:
        records: dict[str, dict] = {}
        for line in partial.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # the line the interruption cut; everything before it is sound
            records[record["record_id"]] = record
        with atomic_path(partial) as tmp:  # drop the cut tail so that appending stays valid
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records.values()))
        return records
    if partial.exists():
        log.info("infer: discarding a partial run made with other inputs or settings")
    partial.unlink(missing_ok=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    header.write_text(fingerprint)
    return {}
