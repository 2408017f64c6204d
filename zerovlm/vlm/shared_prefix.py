"""The backends that run each request as one token row sharing its prefix among the options (llava, minigpt4).

A family's backend turns a request into an encoded request (`_encode`: prefix tokens with one placeholder per
image feature, the options' continuations, the request's sampling seed, the images ready for the vision tower)
and a batch of them into token rows plus the image features that replace the placeholders
(`_rows_and_features`). Option scoring and generation are then the same for every such family:
- scoring: one forward per batch over [prefix | options] rows with a tree attention mask
  (`CausalForward.launch_option_logprobs`), queued before the previous batch's scores are read;
- generation: the prefix rows left-padded, then the KV-cached decode loop (`decode_loop`).
Both run through `run_batched` (longest first, results in request order) with the family's `_length` and
`_encode`, inside `_call_memos` (per-call tokenisation memos) and `cpu_threads_for` (tiny models on the CPU).
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from zerovlm.vlm.base import Request, VisionLanguageModel, cpu_threads_for, run_batched
from zerovlm.vlm.transformers_ops import CausalForward, PendingScores, decode_loop


class SharedPrefixBackend(VisionLanguageModel):
    """Option scoring and generation over encoded requests; a family supplies the encoding (see module doc).

    Subclasses set `forward` (a CausalForward), `tokenizer`, `placeholder` (the token id an image feature
    replaces), `batch_size` and `prefetch_workers`; `padding_side` of the scoring rows ("right" is the fast one).
    """

    forward: CausalForward
    tokenizer: Any
    placeholder: int
    batch_size: int
    prefetch_workers: int
    padding_side: str = "right"

    @abstractmethod
    def _encode(self, request: Request, seed: int = 0) -> Any:
        """The request tokenised and its images preprocessed (CPU work, run in prefetch threads); the result has
        `continuations` (per option, its tokens after the prefix) and `seed` (from `request_seed(seed, ...)`)."""

    @abstractmethod
    def _rows_and_features(self, batch: Sequence[Any]) -> tuple[list[list[int]], torch.Tensor | None]:
        """The encoded requests' prefix rows and the (N, D) image features of their placeholders, in order."""

    @abstractmethod
    def _length(self, request: Request) -> int:
        """The request's longest row in tokens (prefix with image features + longest option): batches sort by it."""

    @abstractmethod
    def _call_memos(self) -> contextlib.AbstractContextManager:
        """A scope within which each request is tokenised once (memos let go of the requests after the call)."""

    def _option_logprobs(self, requests: list[Request]) -> list[list[float]]:
        with self._call_memos(), cpu_threads_for(self.forward.model):
            return run_batched(
                requests,
                self._score_batch,
                batch_size=self.batch_size,
                length=self._length,
                prepare=self._encode,
                prefetch_workers=self.prefetch_workers,
                finish=PendingScores.result,
            )

    @torch.no_grad()
    def _score_batch(self, batch: list[Any]) -> PendingScores:
        """Queue the batch's scoring on the device (`run_batched` finishes it after queueing the next)."""
        rows, features = self._rows_and_features(batch)
        continuations = [e.continuations for e in batch]
        return self.forward.launch_option_logprobs(
            rows, continuations, side=self.padding_side, placeholder=self.placeholder, features=features
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

        plain = [Request(r.images, r.prompt) for r in requests]  # options play no part in generation
        with self._call_memos(), cpu_threads_for(self.forward.model):
            return run_batched(
                plain,
                compute,
                batch_size=self.batch_size,
                length=self._length,
                prepare=lambda r: self._encode(r, seed),
                prefetch_workers=self.prefetch_workers,
            )
