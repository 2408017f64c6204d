"""The VLM interface: requests, the two operations every backend implements, and request batching.

A backend answers batches of `Request`s in two ways (lm-evaluation-harness style):
- `option_logprobs`: for each request, the summed natural-log probability of each answer option's tokens
  given the rendered prompt and images (a log-probability, <= 0; not a mean loss).
- `generate`: text continuing the rendered prompt until a stop string, greedy when temperature == 0.
Wrappers hold no task logic: choosing an answer and parsing text live in `zerovlm.scoring`.

`run_batched` is the collator every backend uses: longest requests first (an out-of-memory error shows
on the first batch), batches of `batch_size` halved on CUDA out-of-memory, results restored to the
caller's order with a check that every request got exactly one result.

What only the transformers backends share lives in `zerovlm.vlm.transformers_ops` (joint tokenisation of
prompt and options, `CausalForward`, `decode_loop`) and `zerovlm.vlm.loading` (the model loader).
"""

from __future__ import annotations

import contextlib
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from PIL import Image

from zerovlm.io import ZeroVLMError
from zerovlm.runtime import BatchSize, is_out_of_memory, one_intra_op_thread

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Request:
    images: tuple[Image.Image, ...]  # usually one stitched image; its place in the prompt is the template's
    prompt: str  # the user message (view prompt + question), without chat template
    options: tuple[str, ...] = ()  # answer continuations to score, e.g. ("Yes", "No") or four captions
    # `image_fingerprint` of each image, when the caller has computed it; else the backend hashes the images.
    # The infer stage hashes a chunk's images in its loader thread, while the device answers the chunk before:
    # hashed in the backend's call, they would leave the device idle before the call's first batch. Trusted, not
    # checked: a wrong one groups the request with another image's (and LLaVA caches features under it), so a
    # request made from another with other images (`dataclasses.replace`) must give their fingerprints too.
    image_fingerprints: tuple[str, ...] | None = None

    def __post_init__(self):
        if not isinstance(self.images, tuple) or not all(isinstance(i, Image.Image) for i in self.images):
            raise ZeroVLMError(f"Request.images must be a tuple of PIL images, got {type(self.images).__name__}")
        fingerprints = self.image_fingerprints
        if fingerprints is not None and (
            not isinstance(fingerprints, tuple)
            or len(fingerprints) != len(self.images)
            or not all(isinstance(f, str) for f in fingerprints)
        ):
            count = f"{len(self.images)} image{'s' if len(self.images) != 1 else ''}"
            raise ZeroVLMError(
                f"Request.image_fingerprints must be a tuple of one str per image ({count}), got {fingerprints!r}"
            )
        if not isinstance(self.prompt, str):
            raise ZeroVLMError(f"Request.prompt must be a str, got {type(self.prompt).__name__}")
        if not isinstance(self.options, tuple) or not all(isinstance(o, str) for o in self.options):
            raise ZeroVLMError(f"Request.options must be a tuple of str, got {self.options!r}")


class VisionLanguageModel(ABC):
    """A vision-language model behind two batched operations. Subclasses set `name` and implement
    `_option_logprobs`, `_generate` and `render_prompt`; the public operations check their arguments and keep
    the results aligned with the requests."""

    name: str = "abstract"
    # How many images one request may hold. 1 for models trained on single images: they take several only
    # mechanically (one placeholder each), so the infer stage does not send them "-separate" configurations.
    max_images_per_request: int = 1

    def option_logprobs(self, requests: Sequence[Request]) -> list[list[float]]:
        """Per request, per option: summed natural-log probability of the option's tokens (<= 0); [] for a
        request without options."""
        scored = [i for i, r in enumerate(requests) if r.options]
        results: list[list[float]] = [[] for _ in requests]
        for i, output in zip(scored, self._option_logprobs([requests[i] for i in scored])):
            results[i] = output
        return results

    def generate(
        self,
        requests: Sequence[Request],
        max_new_tokens: int,
        stop: tuple[str, ...] = (),
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[str]:
        """Per request: the new text only, cut before the first stop string; greedy when temperature == 0.

        With temperature > 0 each request samples with its own generator seeded from (seed, request
        content), so a request's text does not depend on the batch it ran in.
        """
        if max_new_tokens < 1:
            raise ZeroVLMError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0:
            raise ZeroVLMError(f"temperature must be >= 0, got {temperature}")
        return self._generate(requests, max_new_tokens, stop, temperature, seed)

    @abstractmethod
    def _option_logprobs(self, requests: list[Request]) -> list[list[float]]:
        """`option_logprobs` of requests that all have options."""

    @abstractmethod
    def _generate(
        self, requests: Sequence[Request], max_new_tokens: int, stop: tuple[str, ...], temperature: float, seed: int
    ) -> list[str]:
        """`generate`, its arguments checked."""

    @abstractmethod
    def render_prompt(self, request: Request) -> str:
        """The exact text the model sees (chat template applied; one placeholder per image)."""

    def info(self) -> dict[str, Any]:
        """Resolved settings worth recording next to results (device, dtype, template, ...)."""
        return {"name": self.name, "max_images_per_request": self.max_images_per_request}


# ---------------------------------------------------------------- helpers shared by backends
K = TypeVar("K")
V = TypeVar("V")


class IdentityMemo(Generic[K, V]):
    """`compute(obj)` once per object, keyed by identity (requests and PIL images are not hashable by content
    cheaply). Each entry keeps its object alive, so a later object can never inherit a freed one's id, and with it
    the wrong value; `scope()` around a call lets the call's objects go when it ends."""

    def __init__(self, compute: Callable[[K], V]):
        self._compute = compute
        self._entries: dict[int, tuple[K, V]] = {}

    def __call__(self, obj: K) -> V:
        entry = self._entries.get(id(obj))
        if entry is None:
            entry = self._entries[id(obj)] = (obj, self._compute(obj))
        return entry[1]

    def clear(self) -> None:
        self._entries.clear()

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        self.clear()
        try:
            yield
        finally:
            self.clear()


def image_fingerprint(image: Image.Image) -> str:
    """A content hash of a PIL image (mode, size, pixels): equal images share cached features."""
    digest = hashlib.sha1(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def request_seed(seed: int, request: Request, image_keys: Sequence[str] | None = None) -> int:
    """A 63-bit sampling seed from the run seed and the request's content (prompt, options, images).

    image_keys: the images' fingerprints when already computed (else the request's `image_fingerprints`, else
    hashed here).
    """
    digest = hashlib.sha256(f"{seed}\x00{request.prompt}\x00{request.options!r}".encode())
    if image_keys is None:
        image_keys = request.image_fingerprints
    if image_keys is None:
        image_keys = tuple(map(image_fingerprint, request.images))
    for key in image_keys:
        digest.update(key.encode())
    return int.from_bytes(digest.digest()[:8], "little") & ((1 << 63) - 1)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` before the earliest stop string; return (text, whether a stop string was found)."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


@contextlib.contextmanager
def cpu_threads_for(model) -> Iterator[None]:
    """Run a tiny model (< 50M parameters) on CPU with one intra-op thread (`one_intra_op_thread`): its matmuls
    are far too small to split."""
    small = sum(p.numel() for p in model.parameters()) < 50_000_000
    if model.device.type != "cpu" or not small:
        yield
        return
    with one_intra_op_thread():
        yield


# ---------------------------------------------------------------- the collator
def run_batched(
    items: Sequence[T],
    compute: Callable[[list[P]], Any],
    *,
    batch_size: int,
    length: Callable[[T], int],
    prepare: Callable[[T], P] | None = None,
    prefetch_workers: int = 0,
    finish: Callable[[Any], list[R]] | None = None,
) -> list[R]:
    """Apply `compute` to batches of prepared items, longest first, and return results in input order.

    prepare: per-item CPU work (tokenising, image preprocessing); with prefetch_workers > 0 it runs in a
        thread pool for the next batch while `compute` runs on the current one.
    compute: one batch of prepared items -> one result per item, in the same order; or, with `finish`,
        a handle to work queued on the device, which `finish(handle)` turns into those results. Then the
        next batch is queued before the previous one is finished, so the device never idles while the
        host prepares a batch (compute must not wait for the device).
    On CUDA out-of-memory the batch size is halved and the failed batch retried; at batch size 1 the
    error is raised as a ZeroVLMError. The smaller size is kept for the remaining batches.
    """
    size = BatchSize(batch_size, "infer", "use a smaller model, a lower-precision dtype or a GPU with more memory")
    prepare = prepare or (lambda item: item)  # type: ignore[assignment, return-value]
    lengths = [length(item) for item in items]
    order = sorted(range(len(items)), key=lambda i: -lengths[i])  # stable: ties keep input order
    results: list[Any] = [_MISSING] * len(items)
    pool = ThreadPoolExecutor(prefetch_workers) if prefetch_workers > 0 else None
    pending: dict[int, Any] = {}

    def prepared(index: int):
        if index not in pending:
            pending[index] = pool.submit(prepare, items[index]) if pool else _Done(prepare(items[index]))
        return pending[index]

    def store(batch: list[int], outputs) -> None:
        outputs = finish(outputs) if finish else outputs
        if len(outputs) != len(batch):
            raise AssertionError(f"compute returned {len(outputs)} results for {len(batch)} items")
        for i, output in zip(batch, outputs):
            results[i] = output
            pending.pop(i, None)

    in_flight: tuple[list[int], Any] | None = None  # the batch queued last, not yet finished
    try:
        start = 0
        while start < len(order):
            batch = order[start : start + size.value]
            inputs = [prepared(i).result() for i in batch]
            following = order[start + len(batch) : start + 2 * len(batch)]
            if pool and not finish:  # prepare the next batch while this one computes
                for i in following:
                    prepared(i)
            try:
                outputs = compute(inputs)
            except Exception as error:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not is_out_of_memory(error):
                    raise
                del error
                size.halve()
                continue
            if pool and finish:
                # Prepare the next batch only now, while this thread waits for the device below, so that
                # prefetch threads do not contend for the GIL while this one queues thousands of kernels.
                for i in following:
                    prepared(i)
            if in_flight:
                store(*in_flight)
            in_flight = (batch, outputs)
            start += len(batch)
        if in_flight:
            store(*in_flight)
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    missing = [i for i, r in enumerate(results) if r is _MISSING]
    assert not missing, f"requests without a result: {missing[:10]}"
    return results


class _Done:
    """A finished 'future' for the inline (no thread pool) path."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


_MISSING = object()
