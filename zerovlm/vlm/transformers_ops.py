"""Helpers shared by the transformers backends (llava, minigpt4, hf_auto): the joint tokenisation of a prompt
and its options, token-row padding, a causal forward that scores option continuations after a shared prefix,
a greedy/sampled decode loop, and the FP8 / float32-head / compilation switches.

They use only arguments that transformers 5.17 (the GPU image) and 5.24 both accept.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Callable, Sequence

import torch

from zerovlm.io import ZeroVLMError
from zerovlm.runtime import use_compile_cache
from zerovlm.vlm.base import cut_at_stop
from zerovlm.vlm.fp8 import Float8Linear, check_fp8_device, convert_linears

log = logging.getLogger(__name__)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenise_options(
    ids: Callable[[str], list[int]], text: str, separator: str, options: Sequence[str]
) -> tuple[list[int], int, list[list[int]]]:
    """(tokens of the rendered prompt `text`, shared, per option its continuation): the option's tokens in
    `ids(text + separator + option)` after the first `shared` tokens, the longest prefix that the prompt's
    tokens share with every option's joint tokens. Tokenising jointly scores exactly the text the model would
    read when BPE merges across the prompt/option boundary, and one prefix serves every option."""
    prompt = ids(text)
    joints = [ids(text + separator + option) for option in options]
    shared = min([len(prompt)] + [common_prefix_length(prompt, joint) for joint in joints])
    for k, joint in enumerate(joints):
        if len(joint) <= shared:
            raise ZeroVLMError(f"option {k} ({options[k]!r}) adds no tokens to the prompt")
    return prompt, shared, [joint[shared:] for joint in joints]


def expand_token(ids: Sequence[int], token: int, count: int) -> list[int]:
    """Replace each `token` by `count` copies (one image placeholder -> one position per image feature)."""
    out: list[int] = []
    for i in ids:
        out.extend([i] * count if i == token else [i])
    return out


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """Copy a CPU tensor to `device` without waiting for the GPU: a plain `.to("cuda")` from pageable
    memory synchronises the stream, which would stall the next batch's launch behind the current one."""
    if tensor.device.type != "cpu" or torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


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
    return to_device(ids, device), to_device(mask, device)


class PendingScores:
    """Option log-probabilities still being computed on the device; `result()` waits and returns them, per row
    of the forward, per request of the row, per option.

    On CUDA the sums are copied to pinned host memory right behind the batch's own kernels, followed by an
    event, so `result()` waits for this batch only. A `.tolist()` in `result()` would queue its copy behind
    everything launched since, which includes the next batch (`run_batched` queues it before finishing this
    one): the host would wait for that batch too, and the device would idle while the host prepared the one
    after it.
    """

    def __init__(self, sums: torch.Tensor, counts: Sequence[Sequence[int]]):
        self.counts = counts  # per row, per request: its option count; sums: (requests, widest count) float64
        self._ready: torch.cuda.Event | None = None
        if sums.device.type == "cuda":
            self._sums = torch.empty(sums.shape, dtype=sums.dtype, pin_memory=True).copy_(sums, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record(torch.cuda.current_stream(sums.device))
        else:
            self._sums = sums

    def result(self) -> list[list[list[float]]]:
        if self._ready is not None:
            self._ready.synchronize()  # the one host synchronisation of a batch
        flat = iter(self._sums.tolist())
        return [[next(flat)[:count] for count in row] for row in self.counts]


class CausalForward:
    """Forwards of a transformers causal (vision-)language model on embeddings, version-robust.

    Positions are always explicit, so padding never shifts a real token's position; a padded batch always
    gets an attention mask. The cache keyword is `cache` in newer transformers, `past_key_values` before.
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
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            use_cache=cache is not None,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        return out.logits

    def embed_rows(
        self,
        rows: Sequence[Sequence[int]],
        side: str,
        placeholder: int | None = None,
        features: torch.Tensor | None = None,
    ):
        """Padded embeddings (B, L, D) and mask (B, L); each `placeholder` position takes the next row of
        `features` (N, D) in row-major order (image features replacing image tokens). The placeholder
        may be an id outside the vocabulary (MiniGPT-4 uses -1)."""
        ids, mask = pad(rows, 0, side, self.embed.weight.device)
        where = (ids == placeholder) & (mask == 1) if placeholder is not None else None
        embeds = self.embed(ids if where is None else ids.masked_fill(where, 0))  # placeholder may be < 0
        if features is not None:
            embeds = embeds.masked_scatter(where[..., None], features.to(embeds.dtype))
        return embeds, mask

    def option_logprobs(
        self, prefixes: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]], **kwargs
    ) -> list[list[float]]:
        """Summed log-probs of every continuation given its prefix, one row per prefix (see
        `launch_option_logprobs`)."""
        rows = self.launch_option_logprobs(prefixes, [[([], options)] for options in continuations], **kwargs)
        return [requests[0] for requests in rows.result()]

    @torch.no_grad()
    def launch_option_logprobs(
        self,
        shared: Sequence[Sequence[int]],
        requests: Sequence[Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]],
        *,
        side: str = "right",
        placeholder: int | None = None,
        features: torch.Tensor | None = None,
    ) -> PendingScores:
        """Queue one forward of the body that scores every continuation; nothing waits for the device.

        shared: per row, the tokens that all of the row's requests continue (e.g. system text and image);
        requests: per row, per request, (its tokens after `shared`, per option the option's tokens).
        Everything shared is encoded once per row (a tree attention mask): a row is
        [shared | request 1's tokens | its option 1 minus its last token | its option 2 ... | request 2's
        tokens | ...]. A request's tokens attend to `shared` and to themselves; an option's tokens to
        `shared`, to their request's tokens and to their own option's earlier tokens. Positions continue
        along that path: they restart after `shared` for every request and after the request for every
        option, so each score equals the request's score computed alone. One-token options (Yes/No, A-D)
        are all scored by the next-token distribution at their request's last position. A row holding one
        request with one-token options needs no mask when right-padded or of full width (plain causal
        attention: flash kernels); otherwise the mask is built here, on the device, so that transformers
        does not inspect it on the host (a synchronisation). Right padding (the default) is the fast side.
        """
        rows, owners, branches, positions = [], [], [], []  # per token: request (-1: shared), option (-1: none)
        sources = []  # (row, column, target, output row, option)
        lengths = [
            len(s) + sum(len(tokens) + sum(len(c) - 1 for c in options) for tokens, options in row_requests)
            for s, row_requests in zip(shared, requests)
        ]
        width, scored = max(lengths), 0  # scored: requests of earlier rows (the output row of a request)
        for b, (prefix, row_requests) in enumerate(zip(shared, requests)):
            row, owner, branch = list(prefix), [-1] * len(prefix), [-1] * len(prefix)
            position = list(range(len(prefix)))
            start = width - lengths[b] if side == "left" else 0
            for q, (tokens, options) in enumerate(row_requests):
                row += tokens
                owner += [q] * len(tokens)
                branch += [-1] * len(tokens)
                position += range(len(prefix), len(prefix) + len(tokens))
                context = len(prefix) + len(tokens)
                if not context:
                    raise ZeroVLMError("a request to score has no tokens before its options")
                last = start + (len(row) if tokens else len(prefix)) - 1  # the column of the context's last token
                for k, option in enumerate(options):
                    first_input = start + len(row)
                    sources.append((b, last, option[0], scored + q, k))
                    for i in range(1, len(option)):
                        sources.append((b, first_input + i - 1, option[i], scored + q, k))
                    row += option[:-1]
                    owner += [q] * (len(option) - 1)
                    branch += [k] * (len(option) - 1)
                    position += range(context, context + len(option) - 1)
            rows.append(row)
            owners.append(owner)
            branches.append(branch)
            positions.append(position)
            scored += len(row_requests)
        embeds, _ = self.embed_rows(rows, side, placeholder, features)
        device = embeds.device
        plain = all(len(r) <= 1 for r in requests) and all(k == -1 for branch in branches for k in branch)
        if plain and (side == "right" or all(len(r) == width for r in rows)):
            # Plain causal attention: right padding follows every real token, so no real token sees it,
            # and every row's positions are 0, 1, ... Passing neither mask nor positions also keeps
            # transformers from inspecting the positions on the host for packed sequences (a sync).
            attention = position_ids = None
        else:
            position_ids = pad(positions, 0, side, device)[0]
            # ids shifted by 2 so that padding (0 after the shift back) reads -2: no token's request or option
            owner = pad([[q + 2 for q in o] for o in owners], 0, side, device)[0] - 2  # (B, L)
            branch = pad([[k + 2 for k in o] for o in branches], 0, side, device)[0] - 2  # (B, L)
            index = torch.arange(width, device=device)
            query_owner, key_owner = owner[:, :, None], owner[:, None, :]
            query_branch, key_branch = branch[:, :, None], branch[:, None, :]
            allowed = (
                (index[None, :, None] >= index[None, None, :])
                & (key_owner >= -1)
                & (
                    (key_owner == -1)
                    | ((key_owner == query_owner) & ((key_branch == -1) | (key_branch == query_branch)))
                )
            )
            allowed |= torch.eye(width, dtype=torch.bool, device=device)[None]  # pad rows attend to themselves
            attention = torch.zeros(allowed.shape, dtype=embeds.dtype, device=device)
            attention = attention.masked_fill(~allowed, torch.finfo(embeds.dtype).min)[:, None]  # (B, 1, L, L)
        hidden = self.body(
            inputs_embeds=embeds, attention_mask=attention, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # (B, L, D)
        row_index, column, target, output, option = (to_device(torch.tensor(x), device) for x in zip(*sources))
        selected = hidden[row_index, column]  # (N, D)
        normaliser = self.head(selected).float().logsumexp(-1)  # (N,)
        # The target tokens' logits in float32 (a dot product per row; a float32 head would cost a
        # float32 GEMM over the vocabulary): bf16 logits are spaced 1/16 apart near 10, so the options
        # of an uncertain example would often tie exactly, and a tie goes to the first option.
        weight = self.head.weight[target].float()  # (N, D)
        target_logits = (selected.float() * weight).sum(-1)
        if self.head.bias is not None:
            target_logits = target_logits + self.head.bias[target].float()
        picked = target_logits - normaliser  # (N,)
        widest = max(len(options) for row_requests in requests for _, options in row_requests)
        sums = torch.zeros(scored * widest, dtype=torch.float64, device=device)
        sums.index_add_(0, output * widest + option, picked.double())
        counts = [[len(options) for _, options in row_requests] for row_requests in requests]
        return PendingScores(sums.view(scored, widest), counts)


def use_fp8_linears(decoder: torch.nn.Module, device: torch.device) -> int:
    """Run the Linear layers of the decoder blocks as FP8 matmuls (zerovlm.vlm.fp8); the embeddings, lm_head
    and vision tower keep their dtype. Call before compiling. Returns the number of layers converted."""
    check_fp8_device(device)
    layers = getattr(decoder, "layers", None)
    count = convert_linears(layers) if isinstance(layers, torch.nn.ModuleList) else 0
    if not count:
        raise ZeroVLMError(
            "infer.fp8_linear: no bfloat16/float16 Linear layer in the decoder blocks (set infer.dtype to bfloat16)"
        )
    log.info("fp8_linear: %d decoder Linear layers run as FP8 matmuls", count)
    return count


class Float32Head(torch.nn.Module):
    """An output head computing its logits in float32, from a float32 copy of a low-precision head's weights.

    bf16 logits near 10 are 1/16 apart: rounded, two options' scores can tie exactly, and a tie goes to the
    first option. The bf16 head is freed unless tied to the input embeddings: vocab x hidden x 2 bytes more
    (4 when tied). The model's own post-processing of the logits (scaling, capping) still applies."""

    def __init__(self, head: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = head.in_features, head.out_features  # read by some loss paths
        self.weight = torch.nn.Parameter(head.weight.detach().float(), requires_grad=False)
        self.bias = None if head.bias is None else torch.nn.Parameter(head.bias.detach().float(), requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden.float(), self.weight, self.bias)


def use_float32_head(model) -> bool:
    """Give a transformers model a Float32Head when its output head is a low-precision Linear; returns whether
    the logits are float32 now."""
    head = model.get_output_embeddings()
    if isinstance(head, Float32Head) or (isinstance(head, torch.nn.Linear) and head.weight.dtype == torch.float32):
        return True
    if not isinstance(head, torch.nn.Linear):
        log.warning(
            "%s: output head %s is not a Linear layer; option logits stay in %s",
            type(model).__name__,
            type(head).__name__,
            model.dtype,
        )
        return False
    model.set_output_embeddings(Float32Head(head))
    return True


def uses_fp8(model) -> bool:
    """Whether any layer of `model` runs as an FP8 matmul (recorded in the backends' info())."""
    return isinstance(model, torch.nn.Module) and any(isinstance(m, Float8Linear) for m in model.modules())


RECOMPILE_LIMIT_PER_MODEL = torch._dynamo.config.recompile_limit  # dynamo's own (8), given to each compiled model
_compiled_models: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()  # the first tower of each, while it lives


def compile_regions(*towers: torch.nn.Module) -> int:
    """torch.compile in place each block of every `...layers` ModuleList in the towers (dynamic shapes).

    Regional compilation: the blocks of a stack share their code, so one compiled graph serves them all
    and compiling takes seconds rather than the minute a whole-model compile takes; the compiled graphs go
    to the project's compile cache (zerovlm/runtime.py), so a later instance or run loads them. Returns the count.
    """
    use_compile_cache()
    # Dynamo's recompile limit counts the graphs of one code object across the process, and every transformers
    # layer's forward runs through the same code (`forward_with_checkpointing`, the wrapper GradientCheckpointingLayer
    # puts around it). A model needs several of those graphs (mask or none, one row or several), so a second model of
    # another width compiled in the same process would reach dynamo's limit and run its remaining shapes eagerly, with
    # one log warning. The limit covers every compiled model alive.
    _compiled_models.add(towers[0])
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT_PER_MODEL * len(_compiled_models))
    blocks = [
        block
        for tower in towers
        for name, stack in tower.named_modules()
        if isinstance(stack, torch.nn.ModuleList) and name.split(".")[-1] == "layers"
        for block in stack
    ]
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)


def decode_loop(
    forward: CausalForward,
    tokenizer,
    rows: Sequence[Sequence[int]],
    *,
    placeholder: int | None,
    features: torch.Tensor | None,
    max_new_tokens: int,
    stop: Sequence[str],
    temperature: float,
    seeds: Sequence[int],
) -> list[str]:
    """Greedy (temperature 0) or sampled decoding after the prefix token rows, left-padded; each `placeholder`
    position takes the next row of `features` (as in `CausalForward.embed_rows`).

    Sampling draws each row from its own torch.Generator seeded by `seeds[b]`, so a row's text does not
    depend on its batch. A row stops at the tokenizer's EOS or once its decoded text contains a stop string;
    returned texts hold only new tokens, cut before the first stop string and stripped of outer whitespace.
    """
    embeds, mask = forward.embed_rows(rows, "left", placeholder, features)  # (B, L, D), (B, L)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
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
