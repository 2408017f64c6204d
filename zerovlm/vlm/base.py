"""The VLM interface: requests, the two operations every backend implements, and request batching.

A backend answers batches of `Request`s in two ways (lm-evaluation-harness style):
- `option_logprobs`: for each request, the summed natural-log probability of each answer option's tokens
  given the rendered prompt and images (a log-probability, <= 0; not a mean loss).
- `generate`: text continuing the rendered prompt until a stop string, greedy when temperature == 0.
Wrappers hold no task logic: choosing an answer and parsing text live in `zerovlm.scoring`.

`run_batched` is the collator every backend uses: longest requests first (an out-of-memory error shows
on the first batch), batches of `batch_size` halved on CUDA out-of-memory, results restored to the
caller's order with a check that every request got exactly one result.

The torch helpers at the end (`CausalForward`, `decode_loop`, padding) are shared by the transformers
backends; they use only arguments that transformers 5.17 and 5.24 both accept.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
from PIL import Image

from zerovlm.io import ZeroVLMError

log = logging.getLogger(__name__)

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Request:
    images: tuple[Image.Image, ...]   # usually one stitched image; its place in the prompt is the template's
    prompt: str                       # the user message (view prompt + question), without chat template
    options: tuple[str, ...] = ()     # answer continuations to score, e.g. ("Yes", "No") or four captions

    def __post_init__(self):
        if not isinstance(self.images, tuple) or not all(isinstance(i, Image.Image) for i in self.images):
            raise ZeroVLMError(f"Request.images must be a tuple of PIL images, got {type(self.images).__name__}")
        if not isinstance(self.prompt, str):
            raise ZeroVLMError(f"Request.prompt must be a str, got {type(self.prompt).__name__}")
        if not isinstance(self.options, tuple) or not all(isinstance(o, str) for o in self.options):
            raise ZeroVLMError(f"Request.options must be a tuple of str, got {self.options!r}")


class VisionLanguageModel(ABC):
    """A vision-language model behind two batched operations. Subclasses set `name`."""

    name: str = "abstract"

    @abstractmethod
    def option_logprobs(self, requests: Sequence[Request]) -> list[list[float]]:
        """Per request, per option: summed natural-log probability of the option's tokens (<= 0)."""

    @abstractmethod
    def generate(self, requests: Sequence[Request], max_new_tokens: int, stop: tuple[str, ...] = (),
                 temperature: float = 0.0, seed: int = 0) -> list[str]:
        """Per request: the new text only, cut before the first stop string; greedy when temperature == 0.

        With temperature > 0 each request samples with its own generator seeded from (seed, request
        content), so a request's text does not depend on the batch it ran in.
        """

    @abstractmethod
    def render_prompt(self, request: Request) -> str:
        """The exact text the model sees (chat template applied; one placeholder per image)."""

    def info(self) -> dict[str, Any]:
        """Resolved settings worth recording next to results (device, dtype, template, ...)."""
        return {"name": self.name}


# ---------------------------------------------------------------- helpers shared by backends
def image_fingerprint(image: Image.Image) -> str:
    """A content hash of a PIL image (mode, size, pixels): equal images share cached features."""
    digest = hashlib.sha1(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def request_seed(seed: int, request: Request, image_keys: Sequence[str] | None = None) -> int:
    """A 63-bit sampling seed from the run seed and the request's content (prompt, options, images).

    image_keys: the images' fingerprints when already computed.
    """
    digest = hashlib.sha256(f"{seed}\x00{request.prompt}\x00{request.options!r}".encode())
    for key in image_keys if image_keys is not None else map(image_fingerprint, request.images):
        digest.update(key.encode())
    return int.from_bytes(digest.digest()[:8], "little") & ((1 << 63) - 1)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` before the earliest stop string; return (text, whether a stop string was found)."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def resolve_device_dtype(device: str, dtype: str):
    """(torch.device, torch.dtype) for cfg.device / cfg.dtype.

    device "auto" is cuda when available, else cpu. On CPU half precision is replaced by float32 (and
    logged): CPU bf16/fp16 matmuls are slow or unsupported for some ops, and the offline tests compare
    scores at float32 tolerance. `info()` of each backend records the dtype actually used.
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ZeroVLMError("infer.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    if device == "cpu" and torch_dtype != torch.float32:
        log.warning("infer.dtype %s on CPU: using float32 instead", dtype)
        torch_dtype = torch.float32
    return torch.device(device), torch_dtype


@contextlib.contextmanager
def cpu_threads_for(model) -> Iterator[None]:
    """Run a tiny model (< 50M parameters) on CPU with one intra-op thread, restoring the setting after.

    Its matmuls are far too small to split, and OpenMP's spinning worker threads made each one about
    100x slower on a busy 2-core machine (0.07 ms with 1 thread, 10 ms with 2, measured).
    """
    small = sum(p.numel() for p in model.parameters()) < 50_000_000
    if model.device.type != "cpu" or not small:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA out-of-memory errors (torch.OutOfMemoryError or its older RuntimeError text)."""
    try:
        import torch
        if isinstance(error, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(error, RuntimeError) and "CUDA out of memory" in str(error)


def _free_cuda_memory() -> None:
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# ---------------------------------------------------------------- the collator
def run_batched(items: Sequence[T], compute: Callable[[list[P]], list[R]], *, batch_size: int,
                length: Callable[[T], int], prepare: Callable[[T], P] | None = None,
                prefetch_workers: int = 0) -> list[R]:
    """Apply `compute` to batches of prepared items, longest first, and return results in input order.

    prepare: per-item CPU work (tokenising, image preprocessing); with prefetch_workers > 0 it runs in a
        thread pool for the next batch while `compute` runs on the current one.
    compute: one batch of prepared items -> one result per item, in the same order.
    On CUDA out-of-memory the batch size is halved and the failed batch retried; at batch size 1 the
    error is raised as a ZeroVLMError. The smaller size is kept for the remaining batches.
    """
    if batch_size < 1:
        raise ZeroVLMError(f"batch_size must be >= 1, got {batch_size}")
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

    try:
        start = 0
        while start < len(order):
            batch = order[start : start + batch_size]
            inputs = [prepared(i).result() for i in batch]
            if pool:  # start preparing the next batch while this one computes
                for i in order[start + len(batch) : start + 2 * len(batch)]:
                    prepared(i)
            try:
                outputs = compute(inputs)
            except Exception as error:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not is_out_of_memory(error):
                    raise
                del error
                _free_cuda_memory()
                if batch_size == 1:
                    raise ZeroVLMError("CUDA out of memory with batch_size 1: use a smaller model, a "
                                       "lower-precision dtype or a GPU with more memory") from None
                batch_size //= 2
                log.warning("CUDA out of memory: batch_size halved to %d", batch_size)
                continue
            if len(outputs) != len(batch):
                raise AssertionError(f"compute returned {len(outputs)} results for {len(batch)} items")
            for i, output in zip(batch, outputs):
                results[i] = output
                pending.pop(i, None)
            start += len(batch)
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


# ---------------------------------------------------------------- torch helpers for transformers backends
def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def expand_token(ids: Sequence[int], token: int, count: int) -> list[int]:
    """Replace each `token` by `count` copies (one image placeholder -> one position per image feature)."""
    out: list[int] = []
    for i in ids:
        out.extend([i] * count if i == token else [i])
    return out


def pad(rows: Sequence[Sequence[int]], pad_id: int, side: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, max length) int64; pads on `side` ("left" or "right")."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        if row:
            where = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[b, where] = torch.tensor(row, dtype=torch.long)
            mask[b, where] = 1
    return ids.to(device), mask.to(device)


class CausalForward:
    """Forwards of a transformers causal (vision-)language model on embeddings, version-robust.

    Positions are always explicit, so padding never shifts a real token's position, and the attention
    mask is always passed. The cache keyword is `cache` in newer transformers, `past_key_values` before.
    body: the decoder stack returning last_hidden_state (`model.model` for LLaVA and Llama); head: the
    output projection. Both default to the model's own.
    """

    def __init__(self, model, body=None, head=None):
        self.model = model
        self.body = body if body is not None else model.model
        self.head = head if head is not None else model.get_output_embeddings()
        self.embed = model.get_input_embeddings()
        parameters = inspect.signature(model.forward).parameters
        self.cache_keyword = "cache" if "cache" in parameters else "past_key_values"

    def new_cache(self):
        from transformers import DynamicCache
        return DynamicCache(config=self.model.config)

    def __call__(self, embeds, mask, positions, cache=None, logits_to_keep: int = 0) -> torch.Tensor:
        """Logits of the full model (used by generation, with a KV cache)."""
        kwargs = {self.cache_keyword: cache} if cache is not None else {}
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                         use_cache=cache is not None, logits_to_keep=logits_to_keep, **kwargs)
        return out.logits

    def embed_rows(self, rows: Sequence[Sequence[int]], side: str, placeholder: int | None = None,
                   features: torch.Tensor | None = None):
        """Padded embeddings (B, L, D) and mask (B, L); each `placeholder` position takes the next row of
        `features` (N, D) in row-major order (image features replacing image tokens). The placeholder
        may be an id outside the vocabulary (MiniGPT-4 uses -1)."""
        ids, mask = pad(rows, 0, side, self.embed.weight.device)
        where = (ids == placeholder) & (mask == 1) if placeholder is not None else None
        embeds = self.embed(ids if where is None else ids.masked_fill(where, 0))  # placeholder may be < 0
        if features is not None:
            embeds = embeds.masked_scatter(where[..., None], features.to(embeds.dtype))
        return embeds, mask

    @torch.no_grad()
    def option_logprobs(self, prefixes: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]],
                        *, side: str = "left", placeholder: int | None = None,
                        features: torch.Tensor | None = None) -> list[list[float]]:
        """Summed log-probs of every continuation given its row's prefix, in one forward of the body.

        The prefix is encoded once per row; all options share it (a tree attention mask): a row is
        [prefix | option 1 minus its last token | option 2 minus its last token | ...], each option's
        tokens attend to the prefix and to their own option's earlier tokens, positions restart after
        the prefix for every option. When every option is one token the row is just the prefix and the
        next-token distribution at its last position scores all options (plain causal mask).
        """
        rows, segments, positions, sources = [], [], [], []  # sources: (row, column, target, option)
        width = max(len(p) + sum(max(len(c) - 1, 0) for c in cs) for p, cs in zip(prefixes, continuations))
        for b, (prefix, options) in enumerate(zip(prefixes, continuations)):
            row, segment, position = list(prefix), [0] * len(prefix), list(range(len(prefix)))
            start = width - (len(prefix) + sum(len(c) - 1 for c in options)) if side == "left" else 0
            for k, option in enumerate(options):
                first_input = start + len(row)
                sources.append((b, start + len(prefix) - 1, option[0], k))
                for i in range(1, len(option)):
                    sources.append((b, first_input + i - 1, option[i], k))
                row += option[:-1]
                segment += [k + 1] * (len(option) - 1)
                position += range(len(prefix), len(prefix) + len(option) - 1)
            rows.append(row)
            segments.append(segment)
            positions.append(position)
        embeds, mask = self.embed_rows(rows, side, placeholder, features)
        device = embeds.device
        position_ids = pad(positions, 0, side, device)[0]
        if all(s == 0 for seg in segments for s in seg):
            attention = mask  # 2D padding mask: plain causal attention (flash kernels when unpadded)
        else:
            segment_ids = pad([[s + 1 for s in seg] for seg in segments], 0, side, device)[0] - 1  # pads: -1
            index = torch.arange(width, device=device)
            allowed = (index[None, :, None] >= index[None, None, :]) & (segment_ids[:, None, :] >= 0) & (
                (segment_ids[:, None, :] == 0) | (segment_ids[:, None, :] == segment_ids[:, :, None]))
            allowed |= torch.eye(width, dtype=torch.bool, device=device)[None]  # pad rows attend to themselves
            attention = torch.zeros(allowed.shape, dtype=embeds.dtype, device=device)
            attention = attention.masked_fill(~allowed, torch.finfo(embeds.dtype).min)[:, None]  # (B, 1, L, L)
        hidden = self.body(inputs_embeds=embeds, attention_mask=attention, position_ids=position_ids,
                           use_cache=False).last_hidden_state                              # (B, L, D)
        row_index, column, target, option = (torch.tensor(x, device=device) for x in zip(*sources))
        logits = self.head(hidden[row_index, column]).float()                              # (N, V)
        picked = logits.log_softmax(-1).gather(-1, target[:, None]).squeeze(-1)            # (N,)
        widest = max(len(c) for c in continuations)
        sums = torch.zeros(len(prefixes) * widest, dtype=torch.float64, device=device)
        sums.index_add_(0, row_index * widest + option, picked.double())
        sums = sums.view(len(prefixes), widest).tolist()
        return [sums[b][: len(options)] for b, options in enumerate(continuations)]


def compile_regions(*towers: torch.nn.Module) -> int:
    """torch.compile in place each block of every `...layers` ModuleList in the towers (dynamic shapes).

    Regional compilation: the blocks of a stack share their code, so one compiled graph serves them all
    and compiling takes seconds rather than the minute a whole-model compile takes. Returns the count.
    """
    blocks = [block for tower in towers for name, stack in tower.named_modules()
              if isinstance(stack, torch.nn.ModuleList) and name.split(".")[-1] == "layers" for block in stack]
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)


def decode_loop(forward: CausalForward, tokenizer, embeds, mask, positions, *, max_new_tokens: int,
                stop: Sequence[str], temperature: float, seeds: Sequence[int], eos_id: int | None,
                pad_id: int) -> list[str]:
    """Greedy (temperature 0) or sampled decoding from left-padded prefix embeddings (B, L, D).

    Sampling draws each row from its own torch.Generator seeded by `seeds[b]`, so a row's text does not
    depend on its batch. A row stops at EOS or once its decoded text contains a stop string; returned
    texts hold only new tokens, cut before the first stop string and stripped of outer whitespace.
    """
    batch = embeds.shape[0]
    device = embeds.device
    cache = forward.new_cache()
    logits = forward(embeds, mask, positions, cache, logits_to_keep=1)[:, -1].float()
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds] if temperature > 0 else []
    new: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    next_position = positions[:, -1:] + 1
    for step in range(max_new_tokens):
        if temperature > 0:
            probs = (logits / temperature).softmax(-1)
            tokens = torch.cat([torch.multinomial(probs[b], 1, generator=generators[b]) for b in range(batch)])
        else:
            tokens = logits.argmax(-1)
        for b, token in enumerate(tokens.tolist()):
            if done[b]:
                continue
            if token == eos_id:
                done[b] = True
                continue
            new[b].append(token)
            if stop and cut_at_stop(tokenizer.decode(new[b], skip_special_tokens=True), stop)[1]:
                done[b] = True
        if all(done) or step == max_new_tokens - 1:
            break
        tokens = torch.where(torch.tensor(done, device=device), torch.full_like(tokens, pad_id), tokens)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits = forward(forward.embed(tokens[:, None]), mask, next_position, cache, logits_to_keep=1)[:, -1].float()
        next_position = next_position + 1
    return [cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop)[0].strip() for ids in new]
