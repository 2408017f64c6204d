"""The generic AutoModelForImageTextToText backend, on the tiny LLaVA (a model it must handle like any other)."""

import os
import shutil
from dataclasses import replace

import pytest
import torch
from PIL import Image

from zerovlm.config import InferConfig
from zerovlm.io import ZeroVLMError
from zerovlm.vlm.base import Request, image_fingerprint
from zerovlm.vlm.registry import load_backend
from zerovlm.vlm.tiny import build_tiny_llava


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llava_auto")
    build_tiny_llava(folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def backends(tiny_folder):
    def make(name, batch_size):
        return load_backend(InferConfig(backend=name, model=str(tiny_folder), device="cpu", batch_size=batch_size))

    return make("hf_auto", 3), make("llava", 16), make("hf_auto", 1)


def requests():
    a, b = Image.new("RGB", (64, 48), (200, 10, 10)), Image.new("RGB", (30, 60), (10, 200, 10))
    return [
        Request((a,), "Is the red cube left of the mug?", ("Yes", "No")),
        Request((b,), "Which caption?", ("A mug on a table", "A mug under a table", "a")),
        Request((a, b), "The left view, then the right view. Is it left?", ("Yes", "No")),  # two images
        Request((), "A question without an image?", ("Yes", "No")),
        Request((a,), "Nothing to score.", ()),
    ]


def test_compile_is_not_applied_and_says_so(tiny_folder, caplog):
    """A grid entry inherits infer.compile from its profile (the paper's turns it on): hf_auto runs eagerly,
    with a warning and `compiled: false` in the run record's model_info."""
    backend = load_backend(InferConfig(backend="hf_auto", model=str(tiny_folder), device="cpu", compile=True))
    assert "infer.compile" in caplog.text and "runs eagerly under hf_auto" in caplog.text
    assert backend.info()["compiled"] is False


def test_prompt_is_the_model_chat_template(backends):
    auto, llava, _ = backends
    image = Image.new("RGB", (8, 8))
    assert auto.render_prompt(Request((image, image), "Q?")) == "USER: <image>\n<image>\nQ? ASSISTANT:"
    assert auto.info()["native_multi_image"] is False  # LLaVA-1.5 takes several images only mechanically


def test_scores_equal_the_dedicated_llava_backend(backends):
    auto, llava, single = backends
    got, expected = auto.option_logprobs(requests()), llava.option_logprobs(requests())
    one_by_one = [single.option_logprobs([r])[0] for r in requests()]
    for a, b, c in zip(got, expected, one_by_one):
        assert a == pytest.approx(b, abs=1e-4) and a == pytest.approx(c, abs=1e-4)


def test_the_same_request_object_asked_twice_gets_its_scores_twice(backends):
    auto, llava, _ = backends
    request = requests()[0]
    twice = auto.option_logprobs([request, request])
    assert twice[0] == twice[1] and len(twice[0]) == len(request.options)
    for dedicated in llava.option_logprobs([request, request]):
        assert dedicated == pytest.approx(twice[0], abs=1e-4)


def test_bf16_option_logits_are_float32(tiny_folder, backends):
    """In bf16 the head's logits would be rounded (two options could tie exactly, the first winning); the
    backend swaps in a float32 copy of the head, so the logits equal a float64 product of its input."""
    from transformers import AutoModelForImageTextToText

    from zerovlm.vlm.hf_auto import HFAutoBackend
    from zerovlm.vlm.transformers_ops import Float32Head

    # infer.dtype bfloat16 becomes float32 on a CPU, so the bf16 model is built by hand
    model = AutoModelForImageTextToText.from_pretrained(tiny_folder, dtype=torch.bfloat16)
    backend = HFAutoBackend(model, backends[0].processor)
    head = backend.model.get_output_embeddings()
    assert isinstance(head, Float32Head) and backend.info()["float32_logits"]
    assert backend.model.get_input_embeddings().weight.dtype == torch.bfloat16  # the rest stays bf16
    seen = []
    hook = head.register_forward_hook(lambda module, inputs, output: seen.append((inputs[0], output)))
    try:
        backend.option_logprobs(requests()[:2])
    finally:
        hook.remove()
    assert seen
    for hidden, logits in seen:
        assert hidden.dtype == torch.bfloat16 and logits.dtype == torch.float32
        reference = hidden.double() @ head.weight.double().T
        assert torch.allclose(logits.double(), reference, atol=1e-5)
        assert not torch.allclose(
            hidden.double() @ head.weight.to(torch.bfloat16).double().T,
            (hidden @ head.weight.to(torch.bfloat16).T).double(),
            atol=1e-5,
        )  # bf16 rounds


def test_generation_matches_and_stops(backends):
    auto, llava, _ = backends
    reqs = requests()[:3]
    full = auto.generate(reqs, max_new_tokens=6)
    assert full == llava.generate(reqs, max_new_tokens=6)
    word = full[0].split()[1]
    assert auto.generate(reqs, max_new_tokens=6, stop=(" " + word,))[0] == full[0][: full[0].index(" " + word)].strip()


def test_sampling_is_seeded_per_request(backends):
    auto, _, _ = backends
    reqs = requests()[:3]
    first = auto.generate(reqs, max_new_tokens=5, temperature=1.0, seed=7)
    assert auto.generate(reqs[::-1], max_new_tokens=5, temperature=1.0, seed=7) == first[::-1]


def test_sampling_seeds_from_the_callers_fingerprints_without_hashing(backends, monkeypatch):
    auto, _, _ = backends
    reqs = requests()[:3]
    expected = auto.generate(reqs, max_new_tokens=5, temperature=1.0, seed=7)
    fingerprinted = [replace(r, image_fingerprints=tuple(map(image_fingerprint, r.images))) for r in reqs]
    hashed = []
    monkeypatch.setattr("zerovlm.vlm.base.image_fingerprint", lambda picture: hashed.append(picture) or "unused")
    assert auto.generate(fingerprinted, max_new_tokens=5, temperature=1.0, seed=7) == expected and hashed == []


def test_model_without_chat_template_is_refused(backends):
    auto, _, _ = backends
    from zerovlm.vlm.hf_auto import HFAutoBackend

    class NoTemplate:
        chat_template = None
        tokenizer = auto.tokenizer

    with pytest.raises(ZeroVLMError, match="chat template"):
        HFAutoBackend(auto.model, NoTemplate())


def scores_and_pixels(backend, request):
    """The request's option scores and the pixel_values of every forward that computed them."""
    seen = []
    hook = backend.model.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs["pixel_values"]), with_kwargs=True
    )
    try:
        return backend.option_logprobs([request])[0], seen
    finally:
        hook.remove()


def test_several_images_reach_the_model_in_order(backends):
    auto, _, _ = backends
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    panels = tuple(Image.new("RGB", (20, 20), c) for c in colours)  # origin, left, right, random
    request = Request(panels, "The original image first, the left view image second. Is it left?", ("Yes", "No"))
    assert auto.render_prompt(request).startswith("USER: " + "<image>\n" * 4 + "The original image first")
    scores, seen = scores_and_pixels(auto, request)
    expected = auto.processor.image_processor(images=list(panels), return_tensors="pt")["pixel_values"]
    (pixels,) = seen  # one batch: both options, each with the four images in request order
    assert pixels.shape[0] == 2 * len(panels)
    assert torch.equal(pixels[:4], expected) and torch.equal(pixels[4:], expected)
    reversed_scores = auto.option_logprobs([Request(panels[::-1], request.prompt, request.options)])[0]
    assert scores != pytest.approx(reversed_scores, abs=1e-6)  # the model sees the order


def test_images_per_request_follows_the_model_type(backends):
    from types import SimpleNamespace

    from zerovlm.vlm.hf_auto import HFAutoBackend
    from zerovlm.vlm.minigpt4 import MiniGPT4Backend

    auto, llava, _ = backends
    assert auto.max_images_per_request == llava.max_images_per_request == MiniGPT4Backend.max_images_per_request == 1

    class Stub:  # only what the constructor reads from a model
        config, device, dtype = SimpleNamespace(model_type="qwen2_vl"), torch.device("cpu"), torch.float32

        def eval(self):
            return self

        def get_output_embeddings(self):
            return torch.nn.Linear(2, 2)

    native = HFAutoBackend(Stub(), auto.processor)
    assert native.max_images_per_request > 4 and native.info()["native_multi_image"]


# ---------------------------------------------------------------- a natively multi-image model
@pytest.fixture(scope="module")
def idefics3(tmp_path_factory):
    from zerovlm.vlm.tiny import build_tiny_idefics3

    folder = tmp_path_factory.mktemp("tiny_idefics3")
    build_tiny_idefics3(folder, seed=0)
    return lambda batch_size: load_backend(
        InferConfig(backend="hf_auto", model=str(folder), device="cpu", batch_size=batch_size)
    )


def test_native_multi_image_model_gets_the_separate_views_in_order(idefics3):
    from zerovlm.answering import split_by_capability

    backend = idefics3(3)
    assert backend.info()["model_type"] == "idefics3" and backend.max_images_per_request == 8
    runnable, skipped = split_by_capability(
        ["origin", "origin+left-separate", "all-separate"], backend.max_images_per_request, "hf_auto"
    )
    assert runnable == ["origin", "origin+left-separate", "all-separate"] and not skipped
    a, b = Image.new("RGB", (64, 48), (200, 10, 10)), Image.new("RGB", (30, 60), (10, 200, 10))
    request = Request((a, b), "The original image first, the left view second. Is it left?", ("Yes", "No"))
    assert backend.render_prompt(request) == (
        "<|im_start|>User:<image><image>The original image first, the left view second. Is it left?"
        "<end_of_utterance>\nAssistant:"
    )
    scores, seen = scores_and_pixels(backend, request)
    assert seen[0].shape[:2] == (2, 2)  # two options, each with both images
    swapped = backend.option_logprobs([Request((b, a), request.prompt, request.options)])[0]
    assert scores != pytest.approx(swapped, abs=1e-6)  # the model sees the order


def test_native_multi_image_batched_equals_one_at_a_time(idefics3):
    a, b = Image.new("RGB", (64, 48), (200, 10, 10)), Image.new("RGB", (30, 60), (10, 200, 10))
    reqs = [
        Request((a,), "Is it left?", ("Yes", "No")),
        Request((a, b), "Two views. Is it left?", ("Yes", "No", "maybe so")),
        Request((b, a, b, a), "Four views. Which caption?", ("A mug on a table", "A mug under a table")),
    ]
    batched, single = idefics3(3), idefics3(1)
    for got, expected in zip(batched.option_logprobs(reqs), [single.option_logprobs([r])[0] for r in reqs]):
        assert got == pytest.approx(expected, abs=1e-4)
    assert len(batched.generate(reqs, max_new_tokens=3)) == 3


# ---------------------------------------------------------------- a tokenizer that merges across spaces
@pytest.fixture(scope="module")
def unsplit_bpe(tiny_folder, backends, tmp_path_factory):
    """hf_auto on the tiny LLaVA with a BPE tokenizer that does not split at spaces, trained on the prompts and
    on answers that say yes: "? ASSISTANT: Y" becomes one token, so "Yes" reaches back into the prompt and "No"
    does not."""
    from zerovlm.vlm.tiny import build_unsplit_bpe_tokenizer

    folder = tmp_path_factory.mktemp("tiny_llava_unsplit_bpe")
    shutil.copytree(tiny_folder, folder, dirs_exist_ok=True)
    corpus = [backends[0].render_prompt(r) for r in requests()] + ["? ASSISTANT: Yes, it is."] * 8
    build_unsplit_bpe_tokenizer(corpus, vocab_size=200).save_pretrained(folder)
    return load_backend(InferConfig(backend="hf_auto", model=str(folder), device="cpu", batch_size=3))


def test_options_are_scored_from_one_prefix_when_merges_cross_the_boundary(unsplit_bpe):
    """Each option's score is the sum of the log-probabilities of its tokens after the longest prefix that the
    prompt's tokens share with every option's tokens, computed here by a plain forward of one unpadded sequence."""
    backend = unsplit_bpe
    reqs = requests()[:4]
    prefixes_differ = False
    for request, scores in zip(reqs, backend.option_logprobs(reqs)):
        text = backend.render_prompt(request)
        prompt = backend.tokenizer(text, add_special_tokens=False)["input_ids"]
        joints = [backend.tokenizer(text + " " + o, add_special_tokens=False)["input_ids"] for o in request.options]
        shared = len(os.path.commonprefix([prompt, *joints]))
        prefixes_differ |= len({len(os.path.commonprefix([prompt, j])) for j in joints}) > 1
        for option, joint, score in zip(request.options, joints, scores):
            inputs = backend.processor(
                text=text + " " + option, images=list(request.images) or None, return_tensors="pt"
            )
            with torch.no_grad():
                logprobs = backend.model(**inputs).logits[0, :-1].float().log_softmax(-1)
            picked = logprobs.gather(-1, inputs["input_ids"][0, 1:, None]).squeeze(-1)
            assert score == pytest.approx(picked[-(len(joint) - shared) :].sum().item(), abs=1e-4)
    assert prefixes_differ  # the case in point: some option's merges reach back into the prompt


def test_by_image_count_runs_one_image_count_per_call_and_restores_the_order():
    from zerovlm.vlm.hf_auto import by_image_count

    items = [("a", (1,)), ("b", ()), ("c", (1, 2)), ("d", (1,)), ("e", ())]
    calls = []

    def run(group):
        calls.append([name for name, _ in group])
        return [name.upper() for name, _ in group]

    assert by_image_count(items, lambda item: item[1], run) == ["A", "B", "C", "D", "E"]
    assert calls == [["b", "e"], ["a", "d"], ["c"]]  # fewest images first, input order within a count


def test_generation_limits_are_refused_alike_by_every_backend(backends):
    for backend in backends[:2]:  # hf_auto, llava
        with pytest.raises(ZeroVLMError, match=r"^max_new_tokens must be >= 1, got 0$"):
            backend.generate(requests(), max_new_tokens=0)
        with pytest.raises(ZeroVLMError, match=r"^temperature must be >= 0, got -1.0$"):
            backend.generate(requests(), max_new_tokens=2, temperature=-1.0)
