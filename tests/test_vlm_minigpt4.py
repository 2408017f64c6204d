"""MiniGPT-4 assembled from parts, on the tiny offline build: loading, prompt, scores, checkpoint safety."""

import hashlib
import json
import shutil

import pytest
import torch
from PIL import Image

from zerovlm.config import InferConfig
from zerovlm.io import ZeroVLMError
from zerovlm.vlm.base import Request
from zerovlm.vlm.minigpt4 import PLACEHOLDER, load_llama_proj, preprocess
from zerovlm.vlm.registry import load_backend
from zerovlm.vlm.tiny import build_tiny_minigpt4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_minigpt4")
    build_tiny_minigpt4(folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def backend(tiny_dir):
    return load_backend(InferConfig(backend="minigpt4", model=str(tiny_dir), device="cpu", batch_size=3))


def requests():
    a, b = Image.new("RGB", (90, 50), (200, 20, 20)), Image.new("RGB", (40, 70), (20, 200, 90))
    return [Request((a,), "Is the red cube left of the mug?", ("Yes", "No")),
            Request((b,), "Which caption describes the image?", ("A mug on a table", "A mug under a table", "No")),
            Request((a,), "Is the ball behind the box?", ()),
            Request((b,), "Is the cup above the bowl? Answer yes or no.", ("yes", "no", "yes it is"))]


def hashes(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_tiny_build_is_deterministic_and_sharded(tiny_dir, tmp_path):
    build_tiny_minigpt4(tmp_path / "again", seed=0)
    assert hashes(tmp_path / "again") == hashes(tiny_dir)
    assert (tiny_dir / "blip2" / "model.safetensors.index.json").is_file()


def test_prompt_matches_the_vicuna0_conversation(backend):
    image = Image.new("RGB", (8, 8))
    assert backend.render_prompt(Request((image,), "Is it left?")) == (
        "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it "
        "to you. Please answer my questions.###Human: <Img><ImageHere></Img> Is it left?###Assistant: ")


def reference_scores(backend, request):
    """The original's get_context_emb: segments embedded separately (BOS on the first), joined by the image."""
    llm, tok = backend.llm, backend.tokenizer
    text = backend.render_prompt(request)
    image = backend.image_embeddings(preprocess(request.images[0])[None])[0]
    scores = []
    for option in request.options:
        first, second = (text + option).split("<ImageHere>")
        ids_first = tok(first, add_special_tokens=True)["input_ids"]
        ids_second = tok(second, add_special_tokens=False)["input_ids"]
        prompt_second = tok(text.split("<ImageHere>")[1], add_special_tokens=False)["input_ids"]
        shared = next(i for i, (x, y) in enumerate(zip(prompt_second + [None], ids_second)) if x != y)
        embed = llm.get_input_embeddings()
        embeds = torch.cat([embed(torch.tensor(ids_first)), image, embed(torch.tensor(ids_second))])[None]
        with torch.no_grad():
            logprobs = llm(inputs_embeds=embeds).logits[0].log_softmax(-1)
        offset = len(ids_first) + image.shape[0]
        scores.append(sum(logprobs[offset + p - 1, ids_second[p]].item() for p in range(shared, len(ids_second))))
    return scores


def test_scores_match_the_original_embedding_concatenation(backend):
    for request, scores in zip(requests(), backend.option_logprobs(requests())):
        assert scores == pytest.approx(reference_scores(backend, request), abs=1e-4)


def test_option_after_the_trailing_space_is_scored_as_one_word(backend):
    prefix, continuations = backend._tokenise(requests()[0])
    assert prefix.count(PLACEHOLDER) == 32
    assert [len(c) for c in continuations] == [1, 1]  # "▁yes", not "▁" + "yes"


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_batched_scores_equal_one_at_a_time(backend, batch_size):
    single = [backend.option_logprobs([r])[0] for r in requests()]
    backend.batch_size, before = batch_size, backend.batch_size
    try:
        batched = backend.option_logprobs(requests())
    finally:
        backend.batch_size = before
    for a, b in zip(batched, single):
        assert a == pytest.approx(b, abs=1e-4)


def test_generation_stops_at_stop_strings(backend):
    full = backend.generate(requests()[:2], max_new_tokens=8)
    assert all("###" not in text for text in full)
    word = full[0].split()[1] if len(full[0].split()) > 1 else full[0][2:5]
    cut = backend.generate(requests()[:2], max_new_tokens=8, stop=(word,))
    assert cut[0] == full[0][: full[0].index(word)].strip()


def test_precision_and_layer_norm_follow_the_original(backend):
    assert backend.vision.post_layernorm.eps == 1e-5
    assert next(backend.qformer.parameters()).dtype == torch.float32


def test_only_vision_and_qformer_shards_are_read(tiny_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    index = json.loads((copy / "blip2" / "model.safetensors.index.json").read_text())["weight_map"]
    needed = {f for k, f in index.items() if k.startswith(("vision_model.", "qformer.", "query_tokens"))}
    unused = set(index.values()) - needed
    assert unused, "the tiny build should have a language-model-only shard"
    for name in unused:
        (copy / "blip2" / name).unlink()
    load_backend(InferConfig(backend="minigpt4", model=str(copy), device="cpu"))


class Payload:
    """Anything that is not a tensor or a plain container."""


@pytest.mark.parametrize("content, message", [
    ({"model": {"llama_proj.weight": torch.zeros(2, 2), "llama_proj.bias": torch.zeros(2)}, "cfg": Payload()},
     "refusing to unpickle"),
    ({"model": {"llama_proj.weight": [[0.0]], "llama_proj.bias": torch.zeros(2)}}, "not a tensor"),
    ({"model": {"other": torch.zeros(1)}}, "expected"),
])
def test_unsafe_or_malformed_projection_checkpoints_are_refused(tmp_path, content, message):
    path = tmp_path / "llama_proj.pth"
    torch.save(content, path)
    with pytest.raises(ZeroVLMError, match=message):
        load_llama_proj(path)


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ZeroVLMError, match="minigpt4.json"):
        load_backend(InferConfig(backend="minigpt4", model=str(tmp_path), device="cpu"))


# ---------------------------------------------------------------- the Llama-2 variant
@pytest.fixture(scope="module")
def llama2_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_minigpt4_llama2")
    build_tiny_minigpt4(folder, seed=0, variant="llama2")
    return folder


@pytest.fixture(scope="module")
def llama2(llama2_dir):
    return load_backend(InferConfig(backend="minigpt4", model=str(llama2_dir), device="cpu", batch_size=3))


def test_llama2_prompt_matches_conv_vision_llama2(llama2):
    image = Image.new("RGB", (8, 8))
    assert llama2.render_prompt(Request((image,), "Is it left?")) == (
        "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it "
        "to you. Please answer my questions.<s>[INST] <Img><ImageHere></Img> Is it left? [/INST] ")
    prefix, _ = llama2._tokenise(Request((image,), "Is it left?", ("Yes", "No")))
    assert prefix.count(llama2.tokenizer.bos_token_id) == 2  # the tokenizer's BOS and the template's "<s>"


def test_llama2_image_tokens_are_four_patches_after_a_fresh_ln_vision(llama2, backend):
    """encode_img without a Q-Former: ln_vision (never loaded: weight 1, bias 0), CLS dropped, every 4
    consecutive patch tokens concatenated, llama_proj."""
    vision = llama2.vision
    assert torch.equal(vision.post_layernorm.weight, torch.ones_like(vision.post_layernorm.weight))
    assert torch.equal(vision.post_layernorm.bias, torch.zeros_like(vision.post_layernorm.bias))
    assert not torch.allclose(backend.vision.post_layernorm.weight, vision.post_layernorm.weight)  # vicuna0 loads it
    pixels = torch.stack([preprocess(Image.new("RGB", (50, 30), (200, 30, 30))),
                          preprocess(Image.new("RGB", (30, 50), (30, 30, 200)))])
    with torch.no_grad():
        hidden = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]  # before ln_vision
        normed = torch.nn.functional.layer_norm(hidden, hidden.shape[-1:], eps=1e-5)[:, 1:]
        grouped = torch.stack([torch.cat([row[i + k] for k in range(4)]) for row in normed
                               for i in range(0, row.shape[0], 4)]).reshape(2, -1, 4 * hidden.shape[-1])
        expected = llama2.llama_proj(grouped)
    got = llama2.image_embeddings(pixels)
    assert got.shape == (2, llama2.tokens_per_image, llama2.llm.config.hidden_size) and llama2.tokens_per_image == 16
    assert torch.allclose(got, expected, atol=1e-5)


def test_llama2_scores_match_the_original_and_batching(llama2):
    for request, scores in zip(requests(), llama2.option_logprobs(requests())):
        assert scores == pytest.approx(reference_scores(llama2, request), abs=1e-4)
    single = [llama2.option_logprobs([r])[0] for r in requests()]
    for a, b in zip(llama2.option_logprobs(requests()), single):
        assert a == pytest.approx(b, abs=1e-4)
    assert llama2.info()["variant"] == "llama2" and llama2.conversation.stop == ()  # stops at EOS only
    assert len(llama2.generate(requests()[:2], max_new_tokens=4)) == 2


def test_llama2_reads_no_qformer_shard(llama2_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(llama2_dir, copy)
    index = json.loads((copy / "blip2" / "model.safetensors.index.json").read_text())["weight_map"]
    vision = {f for k, f in index.items() if k.startswith("vision_model.")}
    for name in set(index.values()) - vision:
        (copy / "blip2" / name).unlink()
    assert load_backend(InferConfig(backend="minigpt4", model=str(copy), device="cpu")).qformer is None


@pytest.mark.parametrize("change, message", [({"variant": "llama3"}, "variant must be one of"),
                                             ({"variant": "llama2", "llama_proj": "../vicuna0/llama_proj.pth"},
                                              "llama2 image tokens")])
def test_bad_variant_or_projection_is_a_clear_error(tiny_dir, llama2_dir, tmp_path, change, message):
    copy = tmp_path / "llama2"
    shutil.copytree(llama2_dir, copy)
    shutil.copytree(tiny_dir, tmp_path / "vicuna0")
    manifest = json.loads((copy / "minigpt4.json").read_text()) | change
    (copy / "minigpt4.json").write_text(json.dumps(manifest))
    with pytest.raises(ZeroVLMError, match=message):
        load_backend(InferConfig(backend="minigpt4", model=str(copy), device="cpu"))
