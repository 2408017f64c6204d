"""The backends that run each request as one token row sharing its prefix among the options (llava, minigpt4).

A family's backend turns a request into an encoded request (`_encode`: prefix tokens with one placeholder per
image feature, the options' continuations, the request's sampling seed, the images ready for the vision tower)
and a batch of them into token rows plus the image features that replace the placeholders
(`_rows_and_features`). Option scoring and generation are then the same for every such family:
- scoring: the requests of one call are grouped by what they share (equal images by content hash, equal
  tokens up to the last image placeholder: system text and image; both view-prompt modes of a configuration,
  the several captions of an image); each group is one row [shared | request 1 | its options | request 2 |
  ...] with a tree attention mask (`CausalForward.launch_option_logprobs`), so the image prefix is computed
  once per group and every score equals the request's score computed alone; one forward per batch of
  groups, queued before the previous batch's scores are read;
- generation: each request's prefix row left-padded, then the KV-cached decode loop (`decode_loop`); it
  does not share prefixes (that would need a KV cache copied per request, and generation is not the paper's
  bulk path).
Both run through `run_batched` (longest first, results in request order) with the family's `_length` and
`_encode`, inside `_call_memos` (per-call rendering and tokenisation memos) and `cpu_threads_for` (tiny models on
the CPU).
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch

from zerovlm.parallel import host_threads
from zerovlm.vlm.base import IdentityMemo, Request, VisionLanguageModel, cpu_threads_for, image_fingerprint, run_batched
from zerovlm.vlm.transformers_ops import CausalForward, PendingScores, compile_regions, decode_loop


class SharedPrefixBackend(VisionLanguageModel):
    """Option scoring and generation over encoded requests; a family supplies the encoding (see module doc).

    Subclasses set `forward` (a CausalForward), `tokenizer`, `placeholder` (the token id an image feature
    replaces), `option_separator` (the text between the rendered prompt and an option), `image_marker` (see
    `_ids`), `batch_size` and `prefetch_workers` (`prefetch_threads`); `padding_side` of the scoring rows
    ("right" is the fast one); may call `_compile_regions`; and call `_init_memos()` (the per-call memos
    `_tokenise`, `_image_key`, the rendered prompts and the segments' tokens, scoped by `_call_memos`).
    """

    forward: CausalForward
    tokenizer: Any
    placeholder: int
    option_separator: str
    # None: the tokenizer reads the image token itself (one placeholder per image); else the text `_ids` cuts the
    # prompt at, tokenising the pieces apart and putting one placeholder per image feature in each cut
    image_marker: str | None = None
    tokens_per_image: int
    batch_size: int
    prefetch_workers: int
    padding_side: str = "right"
    compiled: bool = False
    _tokenise: IdentityMemo
    _image_key: IdentityMemo
    _segment_ids: dict[tuple[str, bool], list[int]]
    _rendered_prompts: dict[tuple[int, str], str]

    @abstractmethod
    def _encode(self, request: Request, seed: int = 0, pixels: bool = True) -> Any:
        """The request tokenised and (with `pixels`) its images preprocessed (CPU work, run in prefetch threads);
        the result has `prefix` (tokens before the options, one placeholder per image or per image feature),
        `continuations` (per option, its tokens after the prefix) and `seed` (from `request_seed(seed, ...)`)."""

    @abstractmethod
    def _rows_and_features(self, batch: Sequence[Any]) -> tuple[list[list[int]], torch.Tensor | None]:
        """The encoded requests' prefix rows and the (N, D) image features of their placeholders, in order."""

    @abstractmethod
    def _length(self, request: Request) -> int:
        """The request's longest row in tokens (prefix with image features + longest option): batches sort by it."""

    @abstractmethod
    def _tokenise_uncached(self, request: Request) -> tuple[list[int], list[list[int]]]:
        """The request's prefix tokens (one placeholder per image or image feature) and its options' continuations:
        `tokenise_options(self._ids, self._rendered(request), self.option_separator, request.options)` and the
        family's checks."""

    def _ids(self, text: str) -> list[int]:
        """The tokens of a rendered prompt (or prompt + option): with an `image_marker`, BOS + the text before
        the first marker, then per marker one placeholder per image feature + the next piece without BOS."""
        first, *rest = self._segments(text)
        ids = list(self._segment(first, True))
        for piece in rest:
            ids += [self.placeholder] * self.tokens_per_image
            ids += self._segment(piece, False)
        return ids

    def _segments(self, text: str) -> list[str]:
        return [text] if self.image_marker is None else text.split(self.image_marker)

    def _segment(self, text: str, special: bool) -> list[int]:
        ids = self._segment_ids.get((text, special))
        if ids is None:
            ids = self._segment_ids[(text, special)] = self.tokenizer(text, add_special_tokens=special)["input_ids"]
        return ids

    def _rendered(self, request: Request) -> str:
        """`render_prompt(request)`, rendered once per call for each (image count, prompt) it depends on: a hub chat
        template is a jinja render, which cost more than tokenising on the paper mix."""
        key = (len(request.images), request.prompt)
        text = self._rendered_prompts.get(key)
        if text is None:
            text = self._rendered_prompts[key] = self.render_prompt(request)
        return text

    def _image_fingerprints(self, request: Request) -> tuple[str, ...]:
        """The fingerprints of the request's images: the caller's (`Request.image_fingerprints`), else hashed once
        per call."""
        if request.image_fingerprints is not None:
            return request.image_fingerprints
        return tuple(self._image_key(image) for image in request.images)

    def _tokenise_ahead(self, requests: Sequence[Request]) -> None:
        """Tokenise every piece of text the requests' `_tokenise` will read in two batched tokenizer calls (with
        and without BOS): the fast tokenizer encodes a batch in parallel, without a Python call per piece, and
        the constant system text is tokenised once. This runs before a call's first batch, with the device idle."""
        wanted: dict[tuple[str, bool], None] = {}
        for request in requests:
            rendered = self._rendered(request)
            for text in (rendered, *(rendered + self.option_separator + option for option in request.options)):
                first, *rest = self._segments(text)
                wanted[(first, True)] = None
                wanted.update(((piece, False), None) for piece in rest)
        for special in (True, False):
            texts = [text for text, s in wanted if s == special and (text, special) not in self._segment_ids]
            if texts:
                encoded = self.tokenizer(texts, add_special_tokens=special)["input_ids"]
                self._segment_ids.update(((text, special), ids) for text, ids in zip(texts, encoded, strict=True))

    def _compile_regions(self, *towers: torch.nn.Module) -> None:
        """torch.compile the decoder blocks of the towers (`compile_regions`) for scoring's cache-free forwards;
        generation, with its KV cache and a new shape every step, runs them eagerly (`_generate`)."""
        compile_regions(*towers)
        self.compiled = True

    def _init_memos(self) -> None:
        """Memoised per call: `run_batched` tokenises everything first (length) on the calling thread, so prefetch
        threads never touch the tokenizer (fast tokenizers are not safe to share across threads)."""
        self._tokenise = IdentityMemo(self._tokenise_uncached)
        self._image_key = IdentityMemo(image_fingerprint)
        self._segment_ids = {}
        self._rendered_prompts = {}

    @contextlib.contextmanager
    def _call_memos(self) -> Iterator[None]:
        """Each request is tokenised, each prompt rendered and each image hashed once per call; the memos let go of
        them after."""
        self._segment_ids.clear()
        self._rendered_prompts.clear()
        try:
            with self._tokenise.scope(), self._image_key.scope():
                yield
        finally:
            self._segment_ids.clear()
            self._rendered_prompts.clear()

    def _common_info(self) -> dict[str, Any]:
        """What every family's `info()` starts with."""
        return {
            "name": self.name,
            "model": self.model_id,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "tokens_per_image": self.tokens_per_image,
        }

    def _option_logprobs(self, requests: list[Request]) -> list[list[float]]:
        with self._call_memos(), cpu_threads_for(self.forward.model):
            groups = self._image_groups(requests)
            scores = run_batched(
                groups,
                self._score_batch,
                batch_size=self.batch_size,
                length=lambda group: sum(self._length(requests[i]) for i in group),
                # the group's images are read from its first request: the others' stay unprocessed
                prepare=lambda group: [self._encode(requests[i], pixels=k == 0) for k, i in enumerate(group)],
                prefetch_workers=self.prefetch_workers,
                finish=PendingScores.result,
            )
        results: list[list[float]] = [[] for _ in requests]
        for group, group_scores in zip(groups, scores):
            for i, request_scores in zip(group, group_scores, strict=True):
                results[i] = request_scores
        return results

    def _image_groups(self, requests: Sequence[Request]) -> list[list[int]]:
        """Request indices grouped by what their forward shares: equal images (content hashes) and equal prefix
        tokens up to the last image placeholder. A group holds at most `batch_size` requests, so that one row of
        the forward stays within about `batch_size` requests' tokens; requests without images are alone."""
        self._tokenise_ahead(requests)
        groups: dict[Any, list[int]] = {}
        for i, request in enumerate(requests):
            prefix = self._tokenise(request)[0]
            key = (self._image_fingerprints(request), tuple(prefix[: _image_end(prefix, self.placeholder)]))
            groups.setdefault(key if request.images else i, []).append(i)
        return [
            group[k : k + self.batch_size] for group in groups.values() for k in range(0, len(group), self.batch_size)
        ]

    @torch.no_grad()
    def _score_batch(self, batch: list[list[Any]]) -> PendingScores:
        """Queue the scoring of a batch of request groups on the device, one row per group (`run_batched`
        finishes it after queueing the next): the group's shared tokens and image features once, then each
        request's own tokens and options (`CausalForward.launch_option_logprobs`)."""
        rows, features = self._rows_and_features([group[0] for group in batch])  # the image features once per group
        shared = [row[: _image_end(row, self.placeholder)] for row in rows]
        requests = [
            [(e.prefix[_image_end(e.prefix, self.placeholder) :], e.continuations) for e in group] for group in batch
        ]
        return self.forward.launch_option_logprobs(
            shared, requests, side=self.padding_side, placeholder=self.placeholder, features=features
        )

    def _generate(
        self, requests: Sequence[Request], max_new_tokens: int, stop: tuple[str, ...], temperature: float, seed: int
    ) -> list[str]:
        @torch.no_grad()
        def compute(batch: list[Any]) -> list[str]:
            rows, features = self._rows_and_features(batch)
            return decode_loop(
                self.forward,
                self.tokenizer,
                rows,
                placeholder=self.placeholder,
                features=features,
                max_new_tokens=max_new_tokens,
                stop=stop,
                temperature=temperature,
                seeds=[e.seed for e in batch],
            )

        plain = [replace(r, options=()) for r in requests]  # options play no part in generation
        eager = torch.compiler.set_stance("force_eager") if self.compiled else contextlib.nullcontext()
        with self._call_memos(), cpu_threads_for(self.forward.model), eager:
            self._tokenise_ahead(plain)
            return run_batched(
                plain,
                compute,
                batch_size=self.batch_size,
                length=self._length,
                prepare=lambda r: self._encode(r, seed),
                prefetch_workers=self.prefetch_workers,
            )


def prefetch_threads(requested: int | None) -> int:
    """Threads that prepare batches (tokens, image preprocessing) while the device runs: `requested`, or by
    default one per CPU up to 8 (`host_threads`), so that the host keeps a large GPU fed."""
    return host_threads() if requested is None else requested


def _image_end(tokens: Sequence[int], placeholder: int) -> int:
    """The length of `tokens` up to and including the last image placeholder (0 without one)."""
    for i in range(len(tokens) - 1, -1, -1):
        if tokens[i] == placeholder:
            return i + 1
    return 0
