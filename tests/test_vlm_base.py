"""The request collator, Request validation and the backend registry (no model needed)."""

import gc
import weakref

import pytest
import torch
from PIL import Image

from zerovlm.config import parse_section
from zerovlm.io import ZeroVLMError
from zerovlm.vlm.base import (
    IdentityMemo,
    Request,
    VisionLanguageModel,
    cut_at_stop,
    image_fingerprint,
    request_seed,
    run_batched,
)
from zerovlm.vlm.registry import BACKENDS


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 100])
@pytest.mark.parametrize("workers", [0, 2])
def test_run_batched_sorts_longest_first_and_restores_order(batch_size, workers):
    items = ["a" * n for n in (3, 9, 1, 9, 5, 0, 2)]
    batches = []

    def compute(batch):
        batches.append(list(batch))
        return [f"<{x}>" for x in batch]

    out = run_batched(items, compute, batch_size=batch_size, length=len, prepare=str.upper, prefetch_workers=workers)
    assert out == [f"<{x.upper()}>" for x in items]
    flat = [x for b in batches for x in b]
    assert [len(x) for x in flat] == sorted((len(x) for x in items), reverse=True)
    assert all(len(b) <= batch_size for b in batches)


def test_run_batched_asserts_every_result_came_back():
    with pytest.raises(AssertionError, match="2 results for 3"):
        run_batched([1, 2, 3], lambda b: b[:2], batch_size=3, length=lambda x: x)


def test_run_batched_halves_batch_on_cuda_oom():
    sizes = []

    def compute(batch):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return [x * 10 for x in batch]

    assert run_batched(list(range(9)), compute, batch_size=8, length=lambda x: 0) == [x * 10 for x in range(9)]
    assert sizes[:3] == [8, 4, 2] and set(sizes[3:]) <= {1, 2}


def test_run_batched_with_finish_queues_the_next_batch_before_finishing_one():
    events = []

    def launch(batch):
        events.append(("launch", tuple(batch)))
        if len(batch) > 2 and ("oom", len(batch)) not in events:  # an OOM while a batch is in flight
            events.append(("oom", len(batch)))
            raise torch.OutOfMemoryError("CUDA out of memory")
        return tuple(batch)

    def finish(handle):
        events.append(("finish", handle))
        return [x * 10 for x in handle]

    out = run_batched(list(range(7)), launch, batch_size=2, length=lambda x: -x, finish=finish)
    assert out == [x * 10 for x in range(7)]
    order = [e for e in events if e[0] != "oom"]
    assert order == [
        ("launch", (0, 1)),
        ("launch", (2, 3)),
        ("finish", (0, 1)),
        ("launch", (4, 5)),
        ("finish", (2, 3)),
        ("launch", (6,)),
        ("finish", (4, 5)),
        ("finish", (6,)),
    ]

    events.clear()
    out = run_batched(list(range(5)), launch, batch_size=4, length=lambda x: -x, finish=finish)
    assert out == [x * 10 for x in range(5)]
    assert events[:3] == [("launch", (0, 1, 2, 3)), ("oom", 4), ("launch", (0, 1))]  # halved, nothing lost


def test_run_batched_oom_at_batch_one_is_a_clear_error():
    def compute(batch):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(ZeroVLMError, match="batch_size 1"):
        run_batched([1, 2], compute, batch_size=2, length=lambda x: 0)


def test_run_batched_other_errors_propagate():
    with pytest.raises(ValueError):
        run_batched([1], lambda b: (_ for _ in ()).throw(ValueError("boom")), batch_size=1, length=lambda x: 0)


def test_request_validates_types():
    image = Image.new("RGB", (4, 4))
    with pytest.raises(ZeroVLMError, match="images"):
        Request(images=[image], prompt="q")  # a list, not a tuple
    with pytest.raises(ZeroVLMError, match="options"):
        Request(images=(image,), prompt="q", options=["Yes"])


def test_seed_and_fingerprint_depend_on_content_only():
    a, b = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "red")
    assert image_fingerprint(a) == image_fingerprint(b) != image_fingerprint(Image.new("RGB", (4, 4), "blue"))
    assert (
        request_seed(0, Request((a,), "q"))
        == request_seed(0, Request((b,), "q"))
        != request_seed(1, Request((a,), "q"))
    )


def test_identity_memo_keeps_its_objects_so_no_id_is_reused():
    """An id-keyed memo whose objects are freed hands their values to new objects at the same address (a CI
    failure: a fresh request received a freed request's tokens). The memo holds each object until clear()."""
    calls = []
    memo = IdentityMemo(lambda request: calls.append(request.prompt) or request.prompt)
    first = Request((), "first")
    assert memo(first) == memo(first) == "first" and calls == ["first"]
    alive = weakref.ref(first)
    del first
    gc.collect()
    assert alive() is not None  # still in the memo: its id cannot go to another object
    memo.clear()
    gc.collect()
    assert alive() is None
    assert [memo(Request((), str(k))) for k in range(1000)] == [str(k) for k in range(1000)]
    with memo.scope():  # a backend call: starts empty, lets its requests go at the end
        assert memo(Request((), "inside")) == "inside" and len(memo._entries) == 1
    assert not memo._entries


def test_cut_at_stop():
    assert cut_at_stop("Yes.###Human", ("###",)) == ("Yes.", True)
    assert cut_at_stop("a\nb</s>c", ("</s>", "\n")) == ("a", True)
    assert cut_at_stop("plain", ("###", "")) == ("plain", False)


def test_unknown_backend_lists_closest():
    with pytest.raises(ZeroVLMError, match=r"unknown backend 'lava'.*Did you mean 'llava'"):
        parse_section("infer", {"backend": "lava"})
    assert {"llava", "minigpt4", "hf_auto"} <= set(BACKENDS)


def test_option_scores_use_a_float32_output_projection():
    """bf16 logits are spaced 1/16 apart near 10: rounded, the options of an uncertain example would
    often tie exactly, and a tie goes to the first option. The options' logits are float32, so the
    difference of two one-token options' scores is exact (the shared normaliser cancels)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from zerovlm.vlm.transformers_ops import CausalForward

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # logits of magnitude about 10
    prefix = [1, 5, 7, 9]
    scores = CausalForward(model).option_logprobs([prefix], [[[3], [4]]])[0]
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([prefix])).last_hidden_state[0, -1]
    reference = torch.log_softmax(hidden.double() @ model.lm_head.weight.double().T, -1)[[3, 4]]
    assert scores[0] - scores[1] == pytest.approx((reference[0] - reference[1]).item(), abs=1e-4)
    assert scores == pytest.approx(reference.tolist(), abs=0.1)  # the normaliser: bf16 logits


class Recorder(VisionLanguageModel):
    """A backend that records what the interface hands it: each request's options scored by its prompt length."""

    def __init__(self):
        self.scored, self.generated = [], []

    def render_prompt(self, request):
        return request.prompt

    def _option_logprobs(self, requests):
        self.scored.append(requests)
        return [[-float(len(r.prompt))] * len(r.options) for r in requests]

    def _generate(self, requests, max_new_tokens, stop, temperature, seed):
        self.generated.append((len(requests), max_new_tokens, stop, temperature, seed))
        return ["text"] * len(requests)


def test_option_logprobs_scores_only_requests_with_options_and_keeps_their_places():
    image = Image.new("RGB", (4, 4))
    asked = Request((image,), "Is it?", ("Yes", "No"))
    requests = [Request((image,), "Nothing to score."), asked, Request((), "Which?", ("a", "b", "c")), asked]
    backend = Recorder()
    assert backend.option_logprobs(requests) == [[], [-6.0, -6.0], [-6.0] * 3, [-6.0, -6.0]]
    assert backend.scored == [[asked, requests[2], asked]]  # one call; the same object asked twice counts twice


@pytest.mark.parametrize(
    "max_new_tokens, temperature, message",
    [(0, 0.0, r"^max_new_tokens must be >= 1, got 0$"), (4, -0.5, r"^temperature must be >= 0, got -0.5$")],
)
def test_generate_refuses_bad_limits_before_the_backend_runs(max_new_tokens, temperature, message):
    backend = Recorder()
    with pytest.raises(ZeroVLMError, match=message):
        backend.generate([Request((), "Q?")], max_new_tokens, temperature=temperature)
    assert backend.generated == []
    assert backend.generate([Request((), "Q?")], 1, ("###",), 0.5, 7) == ["text"]
    assert backend.generated == [(1, 1, ("###",), 0.5, 7)]


def test_tokenise_options_shares_the_shortest_prefix_when_merges_cross_the_boundary():
    """A tokenizer (one id per character) that merges "? Y" into one token: "Yes" reaches back into the prompt,
    "No" does not, so both options continue the prompt's first 5 tokens."""
    from zerovlm.vlm.transformers_ops import tokenise_options

    def ids(text):
        return [ord(c) for c in text.replace("? Y", "\x01")]

    prompt, shared, continuations = tokenise_options(ids, "Is it?", " ", ("Yes", "No"))
    assert prompt == ids("Is it?") and shared == 5
    assert continuations == [[1, ord("e"), ord("s")], [ord("?"), ord(" "), ord("N"), ord("o")]]
    with pytest.raises(ZeroVLMError, match=r"option 1 \(' '\) adds no tokens to the prompt"):
        tokenise_options(lambda text: ids(text.rstrip()), "Is it?", "", ("No", " "))
