"""Requests of one image are scored as continuations of one shared prefix (system text + image), with scores
equal to scoring each request alone, for every LLaVA template and both MiniGPT-4 variants."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from zerovlm.config import InferConfig
from zerovlm.io import ZeroVLMError
from zerovlm.vlm.base import IdentityMemo, Request, image_fingerprint
from zerovlm.vlm.llava import LlavaBackend
from zerovlm.vlm.llava_conventions import CHAT_FORMATS
from zerovlm.vlm.registry import load_backend
from zerovlm.vlm.tiny import build_tiny_llava, build_tiny_minigpt4
from zerovlm.vlm.transformers_ops import CausalForward

CAPTIONS = ("A mug on a table", "A mug under a table", "A mug to the left of a table", "A mug behind a table")


def image(seed: int, size=(48, 40)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def mixed_requests() -> list[Request]:
    """Three images, several requests each (view prompt on and off, yes/no and four captions, options of several
    token lengths), an equal-content copy of one image as another object, a text-only and a two-image request."""
    a, b, c = image(0), image(1), image(2, (64, 32))
    a_again = image(0)  # equal content, another object: shares a's prefix
    view = "This is a 3D single-view image generated from the original image. Centered on the object."
    return [
        Request((a,), "Is the red cube left of the mug?", ("Yes", "No")),
        Request((b,), "Which caption is right?", CAPTIONS),
        Request((a,), f"{view} Is the red cube left of the mug?", ("Yes", "No")),
        Request((c,), "Is it true?", ("True", "False", "not sure at all")),
        Request((a_again,), "Which caption is right?", CAPTIONS),
        Request((b,), f"{view} Which caption is right?", CAPTIONS),
        Request((), "A question without an image?", ("Yes", "No")),
        Request((c,), f"{view} Is the cup above the table? please answer me yes or no", ("Yes", "No")),
        Request((a, c), "Two images. Is the dog left of the cat?", ("Yes", "No", "yes it is")),
        Request((a,), "Is the ball below the box?", ("yes", "no")),
        Request((b,), "Is the cup above the bowl?", ("Yes", "No")),
        Request((a, c), "Two images. Which caption is right?", CAPTIONS),
    ]


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llava")
    build_tiny_llava(folder, seed=0)
    return load_backend(InferConfig(model=str(folder), device="cpu", dtype="float32"))


@pytest.fixture(scope="module", params=["vicuna0", "llama2"])
def minigpt4(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"tiny_minigpt4_{request.param}")
    build_tiny_minigpt4(folder, seed=0, variant=request.param)
    return load_backend(InferConfig(backend="minigpt4", model=str(folder), device="cpu", dtype="float32"))


def llava_backends(llava):
    for chat_format in CHAT_FORMATS:
        for side in ("right", "left"):
            for batch_size in (2, 16):
                yield LlavaBackend(
                    llava.model, llava.processor, chat_format=chat_format, batch_size=batch_size, padding_side=side
                )


def assert_shared_equals_alone(backend):
    requests = mixed_requests()
    shared = backend.option_logprobs(requests)
    alone = [backend.option_logprobs([r])[0] for r in requests]
    assert [len(s) for s in shared] == [len(r.options) for r in requests]
    for got, expected in zip(shared, alone):
        assert got == pytest.approx(expected, abs=1e-5)


def test_llava_shared_prefix_scores_equal_each_request_alone(llava):
    for backend in llava_backends(llava):
        assert_shared_equals_alone(backend)


@pytest.mark.parametrize("batch_size", [2, 16])
def test_minigpt4_shared_prefix_scores_equal_each_request_alone(minigpt4, batch_size):
    minigpt4.batch_size, before = batch_size, minigpt4.batch_size
    try:
        assert_shared_equals_alone(minigpt4)
    finally:
        minigpt4.batch_size = before


def image_positions_scored(backend, requests) -> int:
    """How many image-feature positions the decoder computes while scoring `requests` in one call."""
    rows_seen = []
    embed_rows = backend.forward.embed_rows

    def spy(rows, *args, **kwargs):
        rows_seen.extend(rows)
        return embed_rows(rows, *args, **kwargs)

    backend.forward.embed_rows = spy
    try:
        backend.option_logprobs(requests)
    finally:
        del backend.forward.embed_rows
    return sum(row.count(backend.placeholder) for row in rows_seen)


def test_each_image_prefix_is_computed_once_per_call(llava, minigpt4):
    requests = mixed_requests()
    for backend in (llava, minigpt4):
        # a, b, c (the copy of a counts as a) and (a, c): 5 images' features, whatever the batch size
        assert image_positions_scored(backend, requests) == 5 * backend.tokens_per_image


def test_a_backend_takes_the_callers_fingerprints_instead_of_hashing(llava, minigpt4, monkeypatch):
    """The infer stage fingerprints a chunk's images ahead (Request.image_fingerprints): the backend then hashes
    none, neither to group nor to seed sampling, and answers the same; fingerprints it is given are trusted
    (equal ones share a prefix, whatever the pixels)."""
    requests = mixed_requests()
    fingerprinted = [replace(r, image_fingerprints=tuple(image_fingerprint(i) for i in r.images)) for r in requests]
    for backend in (llava, minigpt4):
        expected = backend.option_logprobs(requests)
        expected_texts = backend.generate(requests[:4], max_new_tokens=3, temperature=0.7, seed=1)
        hashed: list = []

        def counting(picture, seen=hashed):
            seen.append(picture)
            return image_fingerprint(picture)

        with monkeypatch.context() as patched:
            patched.setattr(backend, "_image_key", IdentityMemo(counting))  # the backend's per-call memo
            patched.setattr("zerovlm.vlm.base.image_fingerprint", counting)  # request_seed's
            assert backend.option_logprobs(fingerprinted) == expected
            assert backend.generate(fingerprinted[:4], max_new_tokens=3, temperature=0.7, seed=1) == expected_texts
            assert hashed == []
            assert backend.option_logprobs(requests) == expected and len(hashed) == 4  # a, its copy, b, c
        same = [replace(r, image_fingerprints=("same",) * len(r.images)) for r in requests]
        assert backend.option_logprobs(same) != expected


@pytest.mark.parametrize("fingerprints", [("k", "k"), ["k"], (1,)])
def test_request_fingerprints_must_be_a_tuple_of_one_str_per_image(fingerprints):
    with pytest.raises(ZeroVLMError, match=r"one str per image \(1 image\)"):
        Request((image(0),), "Is it?", ("Yes", "No"), image_fingerprints=fingerprints)


def piecewise_ids(backend, text: str) -> list[int]:
    """The prompt's tokens, one tokenizer call per piece: the whole text (LLaVA's tokenizer reads <image>
    itself), or as the original MiniGPT-4's get_context_emb: the text cut at <ImageHere>, BOS on the first
    piece only, the image embeddings' positions between the pieces."""
    if backend.image_marker is None:
        return backend.tokenizer(text, add_special_tokens=True)["input_ids"]
    first, *rest = text.split("<ImageHere>")
    ids = backend.tokenizer(first, add_special_tokens=True)["input_ids"]
    for piece in rest:
        ids += [backend.placeholder] * backend.tokens_per_image
        ids += backend.tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids


def recording_calls(monkeypatch, tokenizer) -> list:
    """The texts each call of `tokenizer` (its class) is given, in order."""
    calls, original = [], type(tokenizer).__call__

    def call(self, text, **kwargs):
        calls.append(text)
        return original(self, text, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", call)
    return calls


def test_a_call_tokenises_ahead_in_batches_to_the_tokens_of_one_call_per_piece(llava, minigpt4, monkeypatch):
    requests = mixed_requests()
    for backend in (llava, minigpt4):
        with monkeypatch.context() as patched, backend._call_memos():
            calls = recording_calls(patched, backend.tokenizer)
            backend._tokenise_ahead(requests)
            assert len(calls) <= 2 and all(isinstance(texts, list) for texts in calls)  # with and without BOS
            calls.clear()
            tokens = [backend._tokenise(r) for r in requests]
            assert calls == []  # every piece was tokenised ahead
        for request, (prefix, continuations) in zip(requests, tokens):
            rendered = backend.render_prompt(request)
            assert prefix == piecewise_ids(backend, rendered)[: len(prefix)]
            for option, continuation in zip(request.options, continuations, strict=True):
                assert prefix + continuation == piecewise_ids(backend, rendered + backend.option_separator + option)


def test_a_call_renders_each_prompt_once_per_image_count(llava, minigpt4, monkeypatch):
    """A hub chat template is a jinja render: a call renders each (image count, prompt) once, for grouping and
    tokenising alike, and keeps none of them after."""
    requests = mixed_requests()
    requests += [replace(r, images=r.images[:1]) for r in requests]  # each prompt again: the two-image ones with one
    distinct = {(len(r.images), r.prompt) for r in requests}
    assert len(distinct) < len(requests)
    for backend in (llava, minigpt4):
        expected = backend.option_logprobs(requests)
        rendered: list = []
        render = type(backend).render_prompt

        def counting(self, request, seen=rendered, render=render):
            seen.append((len(request.images), request.prompt))
            return render(self, request)

        with monkeypatch.context() as patched:
            patched.setattr(type(backend), "render_prompt", counting)
            assert backend.option_logprobs(requests) == expected
            assert sorted(rendered) == sorted(distinct)
            rendered.clear()
            backend.generate(requests[:3], max_new_tokens=2)
            assert sorted(rendered) == sorted({(len(r.images), r.prompt) for r in requests[:3]})
        assert backend._rendered_prompts == {}


def test_a_big_group_is_split_into_rows_of_batch_size_requests(llava):
    a = image(0)
    requests = [Request((a,), f"Is the cube number {n} left of the mug?", ("Yes", "No")) for n in range(5)]
    backend = LlavaBackend(llava.model, llava.processor, batch_size=2)
    assert image_positions_scored(backend, requests) == 3 * backend.tokens_per_image  # rows of 2, 2 and 1
    alone = [backend.option_logprobs([r])[0] for r in requests]
    np.testing.assert_allclose(backend.option_logprobs(requests), alone, rtol=0, atol=1e-5)


def test_tree_rows_equal_independent_causal_forwards():
    """CausalForward on its own: two requests continuing one shared prefix, with one- and multi-token options,
    score as each full sequence does in a plain forward of the model (log-softmax over the vocabulary)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    model = LlamaForCausalLM(config).eval()
    shared = [1, 7, 8, 9]
    requests = [([11, 12], [[3], [4, 5, 6]]), ([13], [[20, 21], [22]]), ([], [[30], [31]])]
    scores = CausalForward(model).launch_option_logprobs([shared], [requests]).result()[0]

    def plain(tokens, option):
        ids = torch.tensor([shared + tokens + option])
        with torch.no_grad():
            logprobs = model(input_ids=ids).logits[0].double().log_softmax(-1)
        start = len(shared) + len(tokens)
        return sum(logprobs[start - 1 + i, t].item() for i, t in enumerate(option))

    expected = [[plain(tokens, option) for option in options] for tokens, options in requests]
    for got, want in zip(scores, expected):
        assert got == pytest.approx(want, abs=1e-5)
