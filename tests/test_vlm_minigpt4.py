"""MiniGPT-4 assembled from parts, on the tiny offline build: loading, prompt, scores, checkpoint safety,
the image path against an independent computation, the paper's manifests served from a hub cache and a
loopback Google Drive, and hub parts loaded at the commits the check stage pins."""

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from tests.test_download import LoopbackServer, send_bytes
from tests.test_inputs import SHA_A, SHA_B, build_hub_cache, params, write
from zerovlm.config import InferConfig
from zerovlm.io import ZeroVLMError
from zerovlm.pipeline import check
from zerovlm.runtime import pin_revision, pinned_part_revisions
from zerovlm.vlm.base import Request
from zerovlm.vlm.minigpt4 import PLACEHOLDER, MiniGPT4Backend, load_blip2_parts, load_llama_proj, preprocess
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
    return [
        Request((a,), "Is the red cube left of the mug?", ("Yes", "No")),
        Request((b,), "Which caption describes the image?", ("A mug on a table", "A mug under a table", "No")),
        Request((a,), "Is the ball behind the box?", ()),
        Request((b,), "Is the cup above the bowl? Answer yes or no.", ("yes", "no", "yes it is")),
    ]


def hashes(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_tiny_build_is_deterministic_and_sharded(tiny_dir, tmp_path):
    build_tiny_minigpt4(tmp_path / "again", seed=0)
    assert hashes(tmp_path / "again") == hashes(tiny_dir)
    assert (tiny_dir / "blip2" / "model.safetensors.index.json").is_file()


def test_prompt_matches_the_vicuna0_conversation(backend):
    image = Image.new("RGB", (8, 8))
    assert backend.render_prompt(Request((image,), "Is it left?")) == (
        "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it "
        "to you. Please answer my questions.###Human: <Img><ImageHere></Img> Is it left?###Assistant: "
    )


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


def test_compiled_blocks_score_as_eager_and_generation_runs_them_eagerly(tiny_dir, backend, tmp_path, monkeypatch):
    """infer.compile (a CUDA option; inductor's CPU backend here): the LLM's and the vision tower's blocks are
    compiled, the scores equal eager ones, and generation, with its KV cache, runs eagerly to the same text."""
    monkeypatch.setenv("ZEROVLM_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    parts = load_backend(InferConfig(backend="minigpt4", model=str(tiny_dir), device="cpu"))  # not the fixture's
    compiled = MiniGPT4Backend(
        parts.vision, parts.query_tokens, parts.qformer, parts.llama_proj, parts.llm, parts.tokenizer, compile=True
    )
    blocks = [*compiled.llm.model.layers, *compiled.vision.encoder.layers]
    assert compiled.info()["compiled"] and all(block._compiled_call_impl is not None for block in blocks)
    assert not backend.info()["compiled"]
    stances, set_stance = [], torch.compiler.set_stance

    def recorded_set_stance(stance, **kwargs):
        stances.append(stance)
        return set_stance(stance, **kwargs)

    monkeypatch.setattr(torch.compiler, "set_stance", recorded_set_stance)
    for a, b in zip(compiled.option_logprobs(requests()), backend.option_logprobs(requests())):
        assert a == pytest.approx(b, abs=1e-4)
    assert stances == []  # scoring runs the compiled blocks
    assert compiled.generate(requests()[:2], max_new_tokens=6) == backend.generate(requests()[:2], max_new_tokens=6)
    assert stances == ["force_eager"]  # the compiled backend's generation only


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


def test_parts_hold_the_checkpoint_weights_in_float32_whatever_it_stores(tiny_dir, tmp_path):
    """The vision tower and Q-Former are built on the meta device and given the checkpoint's tensors: none may
    stay on meta, and a float16 checkpoint still gives float32 parts (the Q-Former's precision), its values exact."""
    copy = tmp_path / "blip2"
    shutil.copytree(tiny_dir / "blip2", copy)
    stored = {}
    for shard in sorted(copy.glob("*.safetensors")):
        halves = {k: v.half() if v.is_floating_point() else v for k, v in load_file(shard).items()}
        save_file(halves, shard)
        stored.update(halves)
    _, query_tokens, vision, qformer = load_blip2_parts(str(copy))
    for prefix, part in (("vision_model.", vision), ("qformer.", qformer)):
        for name, tensor in part.state_dict().items():
            assert tensor.device.type == "cpu" and tensor.dtype == torch.float32, name
            assert torch.equal(tensor, stored[prefix + name].float()), name
    assert query_tokens.dtype == torch.float32


class Payload:
    """Anything that is not a tensor or a plain container."""


@pytest.mark.parametrize(
    "content, message",
    [
        (
            {"model": {"llama_proj.weight": torch.zeros(2, 2), "llama_proj.bias": torch.zeros(2)}, "cfg": Payload()},
            "refused to unpickle .*nothing in it was run",
        ),
        ({"model": {"llama_proj.weight": [[0.0]], "llama_proj.bias": torch.zeros(2)}}, "not a tensor"),
        ({"model": {"other": torch.zeros(1)}}, "expected"),
    ],
)
def test_unsafe_or_malformed_projection_checkpoints_are_refused(tmp_path, content, message):
    path = tmp_path / "llama_proj.pth"
    torch.save(content, path)
    with pytest.raises(ZeroVLMError, match=message):
        load_llama_proj(path)


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ZeroVLMError, match="minigpt4.json"):
        load_backend(InferConfig(backend="minigpt4", model=str(tmp_path), device="cpu"))


# ---------------------------------------------------------------- the image path, computed independently
EVA_EPS = 1e-6  # eva_vit.py: norm_layer=partial(nn.LayerNorm, eps=1e-6)
BERT_EPS = 1e-12  # Qformer.py: BertConfig (bert-base-uncased) layer_norm_eps
LN_VISION_EPS = 1e-5  # minigpt4.py: ln_vision = LayerNorm(num_features), torch's default eps
TOLERANCE = 2e-5  # float32; the embeddings' entries reach about 5


def checkpoint_state(folder):
    """Every tensor of the tiny BLIP-2 checkpoint (all shards), read without the backend's loader."""
    state = {}
    for shard in sorted((folder / "blip2").glob("*.safetensors")):
        state.update(load_file(shard))
    return state


def eva_vit(state, pixels, heads, patch_px):
    """VisionTransformer.forward_features of Vision-CAIR/MiniGPT-4 minigpt4/models/eva_vit.py (no final norm;
    commit f1a33af), on the weights under their HF Blip2 names: (n, 1 + patches, width)."""

    def w(name):
        return state[f"vision_model.{name}"]

    x = (
        F.conv2d(pixels, w("embeddings.patch_embedding.weight"), w("embeddings.patch_embedding.bias"), stride=patch_px)
        .flatten(2)
        .transpose(1, 2)
    )  # PatchEmbed: (n, patches, width)
    n, _, width = x.shape
    x = torch.cat([w("embeddings.class_embedding").expand(n, -1, -1), x], 1) + w("embeddings.position_embedding")
    layers = {key.split(".")[3] for key in state if key.startswith("vision_model.encoder.layers.")}
    for i in range(len(layers)):

        def b(name, layer=i):
            return w(f"encoder.layers.{layer}.{name}")

        h = F.layer_norm(x, (width,), b("layer_norm1.weight"), b("layer_norm1.bias"), EVA_EPS)
        bias = b("self_attn.qkv.bias")
        qkv_bias = torch.cat([bias[:width], torch.zeros(width), bias[2 * width :]])  # q_bias, no key bias, v_bias
        qkv = F.linear(h, b("self_attn.qkv.weight"), qkv_bias).reshape(n, -1, 3, heads, width // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attention = (q * (width // heads) ** -0.5 @ k.transpose(-2, -1)).softmax(-1)
        mixed = (attention @ v).transpose(1, 2).reshape(n, -1, width)
        x = x + F.linear(mixed, b("self_attn.projection.weight"), b("self_attn.projection.bias"))
        h = F.layer_norm(x, (width,), b("layer_norm2.weight"), b("layer_norm2.bias"), EVA_EPS)
        x = x + F.linear(
            F.gelu(F.linear(h, b("mlp.fc1.weight"), b("mlp.fc1.bias"))), b("mlp.fc2.weight"), b("mlp.fc2.bias")
        )
    return x


def qformer(state, image, heads, cross_attention_frequency):
    """BertModel of minigpt4/models/Qformer.py given only query_embeds: the embeddings' LayerNorm, then per
    layer self-attention, cross-attention to the image (every `cross_attention_frequency` layers) and the
    queries' feed-forward, each post-norm with a residual: (n, queries, width)."""

    def w(name):
        return state[f"qformer.{name}"]

    queries = state["query_tokens"].expand(image.shape[0], -1, -1)
    width = queries.shape[-1]
    x = F.layer_norm(queries, (width,), w("layernorm.weight"), w("layernorm.bias"), BERT_EPS)

    def attend(prefix, hidden, context):  # BertAttention: BertSelfAttention + BertSelfOutput
        def a(name):
            return w(f"{prefix}.{name}")

        def heads_of(t):
            return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

        q = heads_of(F.linear(hidden, a("attention.query.weight"), a("attention.query.bias")))
        k = heads_of(F.linear(context, a("attention.key.weight"), a("attention.key.bias")))
        v = heads_of(F.linear(context, a("attention.value.weight"), a("attention.value.bias")))
        probabilities = (q @ k.transpose(-1, -2) / (width // heads) ** 0.5).softmax(-1)
        mixed = (probabilities @ v).transpose(1, 2).reshape(hidden.shape)
        return F.layer_norm(
            F.linear(mixed, a("output.dense.weight"), a("output.dense.bias")) + hidden,
            (width,),
            a("output.LayerNorm.weight"),
            a("output.LayerNorm.bias"),
            BERT_EPS,
        )

    layers = {key.split(".")[3] for key in state if key.startswith("qformer.encoder.layer.")}
    for i in range(len(layers)):
        x = attend(f"encoder.layer.{i}.attention", x, x)
        if i % cross_attention_frequency == 0:
            x = attend(f"encoder.layer.{i}.crossattention", x, image)
        h = F.gelu(
            F.linear(
                x,
                w(f"encoder.layer.{i}.intermediate_query.dense.weight"),
                w(f"encoder.layer.{i}.intermediate_query.dense.bias"),
            )
        )
        x = F.layer_norm(
            F.linear(
                h, w(f"encoder.layer.{i}.output_query.dense.weight"), w(f"encoder.layer.{i}.output_query.dense.bias")
            )
            + x,
            (width,),
            w(f"encoder.layer.{i}.output_query.LayerNorm.weight"),
            w(f"encoder.layer.{i}.output_query.LayerNorm.bias"),
            BERT_EPS,
        )
    return x


@torch.no_grad()
def reference_embeddings(folder, pixels, ln_vision_eps=LN_VISION_EPS, state=None):
    """MiniGPT-4's encode_img (minigpt4/models/minigpt4.py) on a tiny build: EVA ViT -> ln_vision -> Q-Former
    (vicuna0) or, for llama2, a fresh ln_vision, CLS dropped and 4 consecutive patch tokens concatenated ->
    llama_proj. `state`: the BLIP-2 weights to use instead of the checkpoint's."""
    manifest = json.loads((folder / "minigpt4.json").read_text())
    config = json.loads((folder / "blip2" / "config.json").read_text())
    vision = config["vision_config"]
    state = state if state is not None else checkpoint_state(folder)
    hidden = eva_vit(state, pixels, vision["num_attention_heads"], vision["patch_size"])
    width = hidden.shape[-1]
    if manifest["variant"] == "vicuna0":
        image = F.layer_norm(
            hidden,
            (width,),
            state["vision_model.post_layernorm.weight"],
            state["vision_model.post_layernorm.bias"],
            ln_vision_eps,
        )
        tokens = qformer(
            state,
            image,
            config["qformer_config"]["num_attention_heads"],
            config["qformer_config"]["cross_attention_frequency"],
        )
    else:
        patches = F.layer_norm(hidden, (width,), eps=ln_vision_eps)[:, 1:]
        tokens = torch.stack(
            [torch.cat([row[i + k] for k in range(4)]) for row in patches for i in range(0, row.shape[0], 4)]
        ).reshape(len(patches), -1, 4 * width)
    projection = torch.load(folder / "llama_proj.pth", weights_only=True)["model"]
    return F.linear(tokens, projection["llama_proj.weight"], projection["llama_proj.bias"])


def varied_pixels():
    """Two noise images and a flat one, preprocessed: (3, 3, 224, 224)."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)) for _ in range(2)]
    return torch.stack([preprocess(image) for image in (*images, Image.new("RGB", (90, 50), (200, 20, 20)))])


def test_image_embeddings_are_eva_vit_ln_vision_qformer_llama_proj(backend, tiny_dir):
    pixels = varied_pixels()
    got = backend.image_embeddings(pixels)
    assert got.shape == (3, 32, backend.llm.config.hidden_size)
    assert (got - reference_embeddings(tiny_dir, pixels)).abs().max() < TOLERANCE


def test_a_wrong_ln_vision_eps_vit_weight_or_image_moves_the_embeddings_far_beyond_the_tolerance(backend, tiny_dir):
    """The tiny build's image path is alive: each mistake shows at 100x the tolerance of the test above."""
    pixels = varied_pixels()
    got = backend.image_embeddings(pixels)
    state = checkpoint_state(tiny_dir)
    fc1 = "vision_model.encoder.layers.1.mlp.fc1.weight"
    for wrong in (
        reference_embeddings(tiny_dir, pixels, ln_vision_eps=1e-6),  # Blip2VisionConfig's eps
        reference_embeddings(tiny_dir, pixels, state={**state, fc1: state[fc1] * 1.02}),  # one ViT weight
        got[[1, 2, 0]],
    ):  # other images
        assert (wrong - got).abs().max() > 100 * TOLERANCE


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
        "to you. Please answer my questions.<s>[INST] <Img><ImageHere></Img> Is it left? [/INST] "
    )
    prefix, _ = llama2._tokenise(Request((image,), "Is it left?", ("Yes", "No")))
    assert prefix.count(llama2.tokenizer.bos_token_id) == 2  # the tokenizer's BOS and the template's "<s>"


def test_llama2_image_tokens_are_four_patches_after_a_fresh_ln_vision(llama2, llama2_dir, backend):
    """encode_img without a Q-Former: ln_vision (never loaded: weight 1, bias 0), CLS dropped, every 4
    consecutive patch tokens concatenated, llama_proj."""
    vision = llama2.vision
    assert torch.equal(vision.post_layernorm.weight, torch.ones_like(vision.post_layernorm.weight))
    assert torch.equal(vision.post_layernorm.bias, torch.zeros_like(vision.post_layernorm.bias))
    assert not torch.allclose(backend.vision.post_layernorm.weight, vision.post_layernorm.weight)  # vicuna0 loads it
    pixels = varied_pixels()
    got = llama2.image_embeddings(pixels)
    assert got.shape == (3, llama2.tokens_per_image, llama2.llm.config.hidden_size) and llama2.tokens_per_image == 16
    assert (got - reference_embeddings(llama2_dir, pixels)).abs().max() < TOLERANCE


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


@pytest.mark.parametrize(
    "change, message",
    [
        ({"variant": "llama3"}, "variant must be one of"),
        ({"variant": "llama2", "llama_proj": "../vicuna0/llama_proj.pth"}, "llama2 image tokens"),
    ],
)
def test_bad_variant_or_projection_is_a_clear_error(tiny_dir, llama2_dir, tmp_path, change, message):
    copy = tmp_path / "llama2"
    shutil.copytree(llama2_dir, copy)
    shutil.copytree(tiny_dir, tmp_path / "vicuna0")
    manifest = json.loads((copy / "minigpt4.json").read_text()) | change
    (copy / "minigpt4.json").write_text(json.dumps(manifest))
    with pytest.raises(ZeroVLMError, match=message):
        load_backend(InferConfig(backend="minigpt4", model=str(copy), device="cpu"))


def test_an_llm_whose_tokenizer_cannot_be_read_is_one_line_naming_the_setting(tiny_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (copy / "vicuna" / name).unlink()
    (copy / "vicuna" / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    (copy / "vicuna" / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer"}')
    with pytest.raises(
        ZeroVLMError,
        match=r"minigpt4.json: llm: cannot load .*vicuna' as a Llama model and its "
        r"tokenizer",
    ) as error:
        load_backend(InferConfig(backend="minigpt4", model=str(copy), device="cpu"))
    if importlib.util.find_spec("sentencepiece") is None:
        assert str(error.value).endswith("needs `pip install sentencepiece protobuf`")


# ---------------------------------------------------------------- the paper's manifests, served offline
MANIFESTS = Path(__file__).resolve().parents[1] / "zerovlm" / "vlm" / "manifests"


def put_in_hub_cache(cache, repo_id, folder):
    """`folder` as the main revision of hub repo `repo_id` in the hub cache layout
    (models--owner--name/refs/main naming a snapshots/<commit>/ folder)."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("ZEROVLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "hub"


@pytest.mark.parametrize(
    "name, variant", [("minigpt4-7b", "vicuna0"), ("minigpt4-13b", "vicuna0"), ("minigpt4-llama2-7b", "llama2")]
)
def test_a_committed_manifest_loads_from_the_hub_cache_and_a_drive_file(
    request, offline_hub, monkeypatch, tmp_path, name, variant
):
    """The manifest as committed, through the code path of a GPU run: its hub ids come from a hub cache holding
    the tiny build's parts, its Drive file (llama_proj) from a loopback server standing in for Google Drive,
    which asks to confirm the download as Drive does for large files. The result equals the tiny build loaded
    from its folder; a second load is served by the zerovlm cache alone."""
    folder = request.getfixturevalue("tiny_dir" if variant == "vicuna0" else "llama2_dir")
    local = request.getfixturevalue("backend" if variant == "vicuna0" else "llama2")
    manifest = json.loads((MANIFESTS / name / "minigpt4.json").read_text())
    assert manifest["variant"] == variant and manifest["llama_proj"].startswith("gdrive:")
    put_in_hub_cache(offline_hub, manifest["vision_qformer"], folder / "blip2")
    put_in_hub_cache(offline_hub, manifest["llm"], folder / "vicuna")
    payload = (folder / "llama_proj.pth").read_bytes()
    file_id = manifest["llama_proj"].removeprefix("gdrive:")
    cfg = InferConfig(backend="minigpt4", model=str(MANIFESTS / name), device="cpu", batch_size=3)
    with LoopbackServer() as drive:

        def uc(handler, hits):
            page = (
                f'<form id="download-form" action="/download" method="get">'
                f'<input type="hidden" name="id" value="{file_id}"></form>'
            ).encode()
            send_bytes(handler, page, "text/html; charset=utf-8")

        drive.routes["/uc"] = uc
        drive.routes["/download"] = lambda handler, hits: (
            send_bytes(handler, payload) if f"id={file_id}" in handler.path else handler.send_error(404)
        )
        monkeypatch.setenv("ZEROVLM_GDRIVE_URL", f"{drive.url}/uc?export=download&id={{file_id}}")
        served = load_backend(cfg)
        assert drive.hits == {"/uc": 1, "/download": 1}  # the confirmation page, then the file
    for got, expected in zip(served.option_logprobs(requests()), local.option_logprobs(requests())):
        assert got == pytest.approx(expected, abs=1e-6)
    assert served.generate(requests()[:2], max_new_tokens=4) == local.generate(requests()[:2], max_new_tokens=4)
    sha256 = hashlib.sha256(payload).hexdigest()
    assert served.info()["parts"] == {
        "vision_qformer": manifest["vision_qformer"],
        "llm": manifest["llm"],
        "llama_proj": manifest["llama_proj"],
        "llama_proj_sha256": sha256,
        "revisions": {"vision_qformer": "main", "llm": "main"},
    }
    assert load_backend(cfg).info()["parts"]["llama_proj_sha256"] == sha256  # the server is gone: from the cache


def test_a_part_missing_from_an_offline_hub_cache_is_one_line_naming_it(offline_hub):
    with pytest.raises(
        ZeroVLMError,
        match=r"minigpt4.json: vision_qformer: cannot reach the Hugging Face hub for "
        r"'Salesforce/blip2-flan-t5-xxl' at main \(config.json\) and it is not "
        r"in the local cache",
    ):
        load_backend(InferConfig(backend="minigpt4", model=str(MANIFESTS / "minigpt4-7b"), device="cpu"))


def test_info_names_the_parts_and_the_checksum_of_a_local_llama_proj(backend, tiny_dir):
    assert backend.info()["parts"] == {
        "vision_qformer": "blip2",
        "llm": "vicuna",
        "llama_proj": "llama_proj.pth",
        "llama_proj_sha256": hashlib.sha256((tiny_dir / "llama_proj.pth").read_bytes()).hexdigest(),
        "revisions": {},
    }  # local folders: no hub revision


# ---------------------------------------------------------------- hub parts at the commits the check stage pins
@pytest.fixture(scope="module")
def other_vicuna(tmp_path_factory):
    """The tiny build's LLM with other weights (seed 1): a second commit of the hub's tiny Vicuna."""
    folder = tmp_path_factory.mktemp("tiny_minigpt4_seed1")
    build_tiny_minigpt4(folder, seed=1)
    return folder / "vicuna"


def write_manifest(folder, **changes):
    manifest = {"vision_qformer": "org/blip2-tiny", "llm": "org/vicuna-tiny", "llama_proj": "llama_proj.pth"}
    (folder / "minigpt4.json").write_text(json.dumps(manifest | changes, indent=2) + "\n")


@pytest.fixture
def hub_minigpt4(offline_hub, tiny_dir, other_vicuna, tmp_path):
    """A manifest folder naming hub parts, in an offline hub cache: org/blip2-tiny at SHA_A, and org/vicuna-tiny
    at SHA_A (the tiny build's LLM, main) and SHA_B (other weights)."""

    def copy(source):
        return lambda snapshot: shutil.copytree(source, snapshot)

    build_hub_cache(offline_hub, "org/blip2-tiny", {SHA_A: copy(tiny_dir / "blip2")}, main=SHA_A)
    build_hub_cache(
        offline_hub, "org/vicuna-tiny", {SHA_A: copy(tiny_dir / "vicuna"), SHA_B: copy(other_vicuna)}, main=SHA_A
    )
    folder = tmp_path / "minigpt4-hub"
    folder.mkdir()
    shutil.copy2(tiny_dir / "llama_proj.pth", folder)
    write_manifest(folder)
    return folder


def holds_weights(model, snapshot) -> bool:
    """Whether the loaded LLM holds exactly the weights of the hub snapshot folder."""
    state = model.llm.state_dict()
    return all(torch.equal(state[key], tensor) for key, tensor in load_file(snapshot / "model.safetensors").items())


def test_the_infer_stage_loads_each_hub_part_at_the_commit_check_pinned(
    hub_minigpt4, offline_hub, tmp_path, monkeypatch
):
    """check pins the manifest's hub parts; the infer stage passes those commits to the loader, which reads
    main's pinned commit even after upstream moved on, and the other snapshot once the manifest names it."""
    monkeypatch.chdir(tmp_path)  # the params' model paths are relative to the repository root
    values = params()
    values["vlms"]["mg"] = {"backend": "minigpt4", "model": str(hub_minigpt4)}
    values["grid"]["vlms"] = ["mg"]
    params_path = write(tmp_path / "params.yaml", values)
    cfg = InferConfig(backend="minigpt4", model=str(hub_minigpt4), device="cpu")
    snapshots = offline_hub / "models--org--vicuna-tiny" / "snapshots"

    def check_and_load():
        check.run(
            check.Paths(
                out=Path("inputs"), lock=Path("models.lock"), built_models=Path("data/models"), params=params_path
            )
        )
        source = Path("inputs/vlm-mg.json")
        pinned = pinned_part_revisions(source)
        return pinned, load_backend(pin_revision(cfg, source), pinned)

    pinned, model = check_and_load()
    assert pinned == {"vision_qformer": SHA_A, "llm": SHA_A} == model.info()["parts"]["revisions"]
    assert holds_weights(model, snapshots / SHA_A)
    (offline_hub / "models--org--vicuna-tiny" / "refs" / "main").write_text(SHA_B)  # upstream moved on
    pinned, model = check_and_load()
    assert pinned["llm"] == SHA_A and holds_weights(model, snapshots / SHA_A)  # models.lock holds main's commit
    write_manifest(hub_minigpt4, revisions={"llm": SHA_B})
    pinned, model = check_and_load()
    assert pinned == {"vision_qformer": SHA_A, "llm": SHA_B} == model.info()["parts"]["revisions"]
    assert holds_weights(model, snapshots / SHA_B) and not holds_weights(model, snapshots / SHA_A)


def test_unpinned_each_hub_part_loads_at_the_manifests_revision(hub_minigpt4, offline_hub):
    cfg = InferConfig(backend="minigpt4", model=str(hub_minigpt4), device="cpu")
    snapshots = offline_hub / "models--org--vicuna-tiny" / "snapshots"
    assert holds_weights(load_backend(cfg), snapshots / SHA_A)  # main
    write_manifest(hub_minigpt4, revisions={"llm": SHA_B})
    model = load_backend(cfg)
    assert holds_weights(model, snapshots / SHA_B)
    assert model.info()["parts"]["revisions"] == {"vision_qformer": "main", "llm": SHA_B}


def test_pins_that_miss_a_hub_part_or_reach_a_single_model_backend_are_one_line_errors(hub_minigpt4):
    cfg = InferConfig(backend="minigpt4", model=str(hub_minigpt4), device="cpu")
    with pytest.raises(
        ZeroVLMError,
        match=r"minigpt4.json: its hub parts are \['llm', 'vision_qformer'\], but "
        r"commits were pinned for \['llm'\]; run `dvc repro`",
    ):
        load_backend(cfg, {"llm": SHA_A})
    with pytest.raises(
        ZeroVLMError,
        match=r"minigpt4-hub: a model assembled from parts .* but backend 'llava' loads "
        r"one model; set the backend to one of \['minigpt4'\]",
    ):
        load_backend(cfg.model_copy(update={"backend": "llava"}), {"llm": SHA_A})
