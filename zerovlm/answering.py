"""What the infer stage asks the VLM, and the records of what it answered (option log-likelihoods, or text).

Choosing the answer is left to zerovlm.scoring: this module records evidence, not verdicts.
One `AnswerJob` per (example, view configuration, view prompt on/off); identical requests (the "origin"
baseline has no view prompt, so its two prompt modes coincide) are computed once per chunk.

A "-separate" configuration sends several images in one request. A model whose
`max_images_per_request` is smaller is never fed them: the configuration is skipped for that model
(`split_by_capability`) and listed in the summary's `not_evaluated` (score and report show it as not
evaluated, not as 0% accuracy). The stitch configuration list is shared by every VLM of the grid, so
skipping (not failing) lets one grid hold single-image and multi-image VLMs.

Questions and answers in, records out: the infer stage (zerovlm/pipeline/infer.py) reads the stitched images
and writes the predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from zerovlm.config import InferConfig
from zerovlm.datasets.table import Example
from zerovlm.io import ZeroVLMError
from zerovlm.prompts import user_message
from zerovlm.stitching import input_keys
from zerovlm.view_configurations import BASELINE_CONFIGURATION, CONFIGURATIONS, images_per_request, is_separate
from zerovlm.vlm.base import Request, VisionLanguageModel, image_fingerprint

# About this many jobs per resumable chunk (`examples_per_chunk`). A chunk bounds the work an interruption loses
# and the decoded images held in memory (this chunk's and the next one's, decoded ahead: 56 examples each in the
# paper profile). Each chunk also leaves the device idle while its requests are tokenised and grouped and its first
# batch prepared (a few tenths of a second on an H100), against 3 s for MiniGPT-4 7B to 16 s for LLaVA-13B of work in
# a chunk of this size, so chunks are large.
CHUNK_JOBS = 1024


@dataclass(frozen=True)
class AnswerJob:
    """One question to the VLM: an example, in one view configuration, with or without the view prompt."""

    example: Example
    configuration: str
    with_view_prompt: bool
    text: str  # the user message (view prompt + question)
    answers: tuple[str, ...]  # scored continuations, aligned with example.options

    @property
    def record_id(self) -> str:
        prompt_mode = "with_view_prompt" if self.with_view_prompt else "without_view_prompt"
        return f"{self.example.example_id}|{self.configuration}|{prompt_mode}"

    @property
    def image_keys(self) -> tuple[str, ...]:
        """Store keys of the request's images, in the order they are sent."""
        return tuple(input_keys(self.example.image_id, self.configuration))


def plan_answer_jobs(
    cfg: InferConfig, examples: list[Example], configurations: list[str], layout: str
) -> list[AnswerJob]:
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
                text, asked = user_message(
                    example, cfg.question_template, CONFIGURATIONS[configuration], prompt_layout, with_view_prompt
                )
                jobs.append(AnswerJob(example, configuration, with_view_prompt, text, asked.answers))
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
            not_evaluated[configuration] = (
                f"backend {backend} takes at most {max_images} image(s) per request; this configuration sends {needed}"
            )
    return runnable, not_evaluated


def examples_per_chunk(jobs_per_example: int) -> int:
    """The examples in each chunk but the last, when every example has about `jobs_per_example` jobs."""
    return max(1, CHUNK_JOBS // max(1, jobs_per_example))


def plan_chunks(jobs: list[AnswerJob], examples: list[Example]) -> list[list[AnswerJob]]:
    """Resumable units of work: every job of a block of consecutive examples.

    Chunks depend only on the plan, never on what is done or on the number of processes, and a chunk
    is always computed whole (a partly finished one is recomputed), so every request is answered in
    the same batch composition: the output is bitwise the same for 1 or N processes and after a resume
    on the CPU (same dtype, batch size and thread count; tested). On a GPU, low-order bits can still
    differ: LLaVA caches image features across chunks, so which images share a vision-tower batch
    depends on what the process answered before.
    """
    block = examples_per_chunk(len(jobs) // len(examples))
    block_of = {example.example_id: index // block for index, example in enumerate(examples)}
    chunks: dict[int, list[AnswerJob]] = {}
    for job in jobs:
        chunks.setdefault(block_of[job.example.example_id], []).append(job)
    return [chunks[key] for key in sorted(chunks)]


@dataclass
class ChunkRequests:
    """A chunk's distinct requests (identical (images, text, answers) asked once) with their images
    decoded, and for each job the index of its request."""

    jobs: list[AnswerJob]
    requests: list[Request]
    index: list[int]


def chunk_requests(jobs: list[AnswerJob], image: Callable[[str], Image.Image]) -> ChunkRequests:
    """The chunk's distinct requests; `image`: the stitched image of a store key. Each key is decoded and
    fingerprinted once per chunk (`Request.image_fingerprints`: the infer stage runs this in a thread, while the device
    answers the chunk before) and its image object shared by every request showing it (both prompt modes, every
    caption), so a backend that keys its work by image (the shared prefix) meets each image once."""
    unique: dict[tuple, int] = {}
    requests: list[Request] = []
    decoded: dict[str, tuple[Image.Image, str]] = {}  # store key -> (image, its fingerprint)
    for job in jobs:
        key = (job.image_keys, job.text, job.answers)
        if key not in unique:
            unique[key] = len(requests)
            for k in job.image_keys:
                if k not in decoded:
                    picture = image(k)
                    decoded[k] = picture, image_fingerprint(picture)
            shown = [decoded[k] for k in job.image_keys]
            requests.append(
                Request(
                    images=tuple(picture for picture, _ in shown),
                    prompt=job.text,
                    options=job.answers,
                    image_fingerprints=tuple(fingerprint for _, fingerprint in shown),
                )
            )
    return ChunkRequests(jobs, requests, [unique[(j.image_keys, j.text, j.answers)] for j in jobs])


def _answer(model: VisionLanguageModel, cfg: InferConfig, requests: list[Request]) -> list[dict]:
    if cfg.answer_mode == "loglik":
        return [{"option_logprobs": scores} for scores in model.option_logprobs(requests)]
    # paper: the authors' evaluator sampled at its temperature until EOS ("</s>", also the stop string of the
    # llava_v1 template: its sep2) or until the answer held its question's ", please answer me yes or no", which
    # it kept in the answer. That text contains "yes", so decoding on to EOS gives the same verdict by its
    # "contains yes" rule: no stop string is needed.
    temperature = cfg.temperature if cfg.answer_mode == "paper" else 0.0
    texts = model.generate(
        requests, max_new_tokens=getattr(cfg.max_new_tokens, cfg.answer_mode), temperature=temperature, seed=cfg.seed
    )
    return [{"output_text": text} for text in texts]


def answer_chunk(model: VisionLanguageModel, cfg: InferConfig, chunk: ChunkRequests) -> list[dict]:
    """One prediction record per job of the chunk, in the chunk's order."""
    answers = _answer(model, cfg, chunk.requests)
    if len(answers) != len(chunk.requests):
        raise ZeroVLMError(f"backend {cfg.backend} returned {len(answers)} results for {len(chunk.requests)} requests")
    return [
        {
            "record_id": job.record_id,
            "example_id": job.example.example_id,
            "configuration": job.configuration,
            "with_view_prompt": job.with_view_prompt,
            "answers": list(job.answers),
            "rendered_prompt": model.render_prompt(chunk.requests[index]),
            **answers[index],
        }
        for job, index in zip(chunk.jobs, chunk.index)
    ]
