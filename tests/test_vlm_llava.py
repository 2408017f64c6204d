"""LLaVA backend on the tiny offline model: prompts, inputs, option scores, generation, loading."""

import copy
import hashlib
import typing

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration

from zerovlm.config import InferConfig
from zerovlm.io import ZeroVLMError
from zerovlm.runtime import compiled_graph_count
from zerovlm.vlm.base import Request
from zerovlm.vlm.llava import LlavaBackend, expand_to_square
from zerovlm.vlm.llava_conventions import CHAT_FORMATS, IMAGE_PREPROCESSES
from zerovlm.vlm.registry import load_backend
from zerovlm.vlm.tiny import build_tiny_llava


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llava")
    build_tiny_llava(folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def backend(tiny_dir):
    return load_backend(InferConfig(model=str(tiny_dir), device="cpu", dtype="float32", batch_size=4))


def images(n=3):
    return [Image.new("RGB", (40 + 16 * i, 56 - 4 * i), (60 * i % 255, 120, 200 - 30 * i)) for i in range(n)]


def mixed_requests():
    a, b, c = images()
    return [
        Request((a,), "Is the red cube left of the mug?", ("Yes", "No")),
        Request(
            (b,),
            "This is a 3D single-view image generated from the original image. Centered on the "
            "Object. Is the cup above the table?",
            ("Yes", "No"),
        ),
        Request(
            (c,),
            "Which caption is right?",
            ("A mug on a table", "A mug under a table", "A mug to the left of a table", "A mug behind a table"),
        ),
        Request((a,), "Is the ball below the box?", ()),  # no options: no scores
        Request((b,), "Is it true?", ("True", "False", "not sure at all")),  # mixed lengths
        Request((), "A question without an image?", ("Yes", "No")),
        Request((a, c), "Two images. Is the dog left of the cat?", ("Yes", "No", "yes it is")),
    ]


def file_hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_tiny_build_is_deterministic(tiny_dir, tmp_path):
    build_tiny_llava(tmp_path / "again", seed=0)
    build_tiny_llava(tmp_path / "other", seed=1)
    assert file_hashes(tmp_path / "again") == file_hashes(tiny_dir)
    assert file_hashes(tmp_path / "other")["model.safetensors"] != file_hashes(tiny_dir)["model.safetensors"]


def test_rendered_prompts_match_golden_strings(backend):
    image = images(1)[0]
    one, two = Request((image,), "Is it left?"), Request((image, image), "Is it left?")
    assert backend.render_prompt(one) == "USER: <image>\nIs it left? ASSISTANT:"
    assert backend.render_prompt(two) == "USER: <image>\n<image>\nIs it left? ASSISTANT:"


# The system sentences of conv_vicuna_v1 and conv_llava_v1, copied from haotian-liu/LLaVA llava/conversation.py
# (commit 053c284); with sep " " and roles USER / ASSISTANT, run_llava.py's prompt for one image is
# system + " USER: <image>\n" + question + " ASSISTANT:".
CONV_VICUNA_V1 = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
CONV_LLAVA_V1 = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


@pytest.mark.parametrize("chat_format, system", [("vicuna_v1", CONV_VICUNA_V1), ("llava_v1", CONV_LLAVA_V1)])
def test_original_templates_render_as_the_original_conversations(backend, chat_format, system):
    question = "The cat is left of the dog., please answer me yes or no"
    original = LlavaBackend(backend.model, backend.processor, chat_format=chat_format)
    assert original.render_prompt(Request(tuple(images(1)), question)) == (
        system + " USER: <image>\n" + question + " ASSISTANT:"
    )
    assert original.info()["chat_format"] == chat_format


def test_the_config_offers_exactly_the_backends_chat_formats_and_image_preprocessing(backend):
    assert typing.get_args(InferConfig.model_fields["chat_format"].annotation) == CHAT_FORMATS
    assert typing.get_args(InferConfig.model_fields["image_preprocess"].annotation) == IMAGE_PREPROCESSES
    with pytest.raises(ZeroVLMError, match="image_preprocess must be one of crop, pad, got 'squash'"):
        LlavaBackend(backend.model, backend.processor, image_preprocess="squash")


def test_input_ids_match_the_processor(backend):
    for request in mixed_requests():
        if not request.images:
            continue
        encoded = backend._encode(request)
        text = backend.render_prompt(request)
        expected = backend.processor(text=text, images=list(request.images), return_tensors="pt")["input_ids"][0]
        ours = [
            t for i in encoded.prefix for t in ([i] * backend.tokens_per_image if i == backend.image_token_id else [i])
        ]
        assert ours == expected.tolist()


def reference_scores(backend, request):
    """Full forward of processor(prompt + " " + option) per option, summing the option tokens' log-probs."""
    text = backend.render_prompt(request)
    kwargs = {"images": list(request.images)} if request.images else {}
    n_prompt = backend.processor(text=text, return_tensors="pt", **kwargs)["input_ids"].shape[1]
    scores = []
    for option in request.options:
        inputs = backend.processor(text=text + " " + option, return_tensors="pt", **kwargs)
        with torch.no_grad():
            logprobs = backend.model(**inputs).logits[0].log_softmax(-1)
        ids = inputs["input_ids"][0]
        scores.append(sum(logprobs[p - 1, ids[p]].item() for p in range(n_prompt, len(ids))))
    return scores


def test_option_scores_match_a_plain_full_forward(backend):
    requests = mixed_requests()
    got = backend.option_logprobs(requests)
    for request, scores in zip(requests, got):
        assert len(scores) == len(request.options)
        assert scores == pytest.approx(reference_scores(backend, request), abs=1e-4)
        assert all(s <= 0 for s in scores)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batched_scores_equal_one_at_a_time(backend, padding_side, batch_size):
    requests = mixed_requests()
    single = [backend.option_logprobs([r])[0] for r in requests]
    other = LlavaBackend(
        backend.model, backend.processor, batch_size=batch_size, padding_side=padding_side, prefetch_workers=2
    )
    batched = other.option_logprobs(requests)
    for a, b in zip(batched, single):
        assert a == pytest.approx(b, abs=1e-4)


def test_image_features_are_computed_once_per_image(backend):
    calls = []
    hook = backend.model.get_image_features
    backend._features.clear()
    backend.model.get_image_features = lambda **kw: calls.append(kw["pixel_values"].shape[0]) or hook(**kw)
    try:
        a, b, _ = images()
        requests = [
            Request((img,), f"Is the cup left of the box {i}?", ("Yes", "No", "maybe so"))
            for i, img in enumerate([a, b, a, a.copy(), b, a])
        ]
        backend.option_logprobs(requests)
    finally:
        del backend.model.get_image_features
    assert sum(calls) == 2


def test_greedy_generation_matches_transformers_generate(backend):
    request = mixed_requests()[0]
    text = backend.render_prompt(request)
    inputs = backend.processor(text=text, images=list(request.images), return_tensors="pt")
    out = backend.model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None)
    expected = backend.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert backend.generate([request], max_new_tokens=6) == [expected]


def test_generation_stops_at_the_stop_string(backend):
    requests = mixed_requests()[:3]
    full = backend.generate(requests, max_new_tokens=8)
    words = full[0].split()
    assert len(words) >= 3, full
    stop = " " + words[2]
    cut = backend.generate(requests, max_new_tokens=8, stop=(stop, "@@never@@"))
    assert cut[0] == full[0][: full[0].index(stop)].strip()
    assert stop not in cut[0]


def test_generation_is_batch_independent_and_seeded(backend):
    requests = [r for r in mixed_requests() if r.images]
    other = LlavaBackend(backend.model, backend.processor, batch_size=16)
    for temperature, seed in [(0.0, 0), (1.0, 3)]:
        single = [backend.generate([r], max_new_tokens=5, temperature=temperature, seed=seed)[0] for r in requests]
        assert other.generate(requests, max_new_tokens=5, temperature=temperature, seed=seed) == single
    sampled = [other.generate(requests, max_new_tokens=5, temperature=1.0, seed=s) for s in (3, 4)]
    assert sampled[0] != sampled[1]


def test_pad_to_square_uses_the_mean_colour(backend):
    wide = Image.new("RGB", (60, 20), (255, 0, 0))
    square = expand_to_square(wide, backend.processor.image_processor.image_mean)
    assert square.size == (60, 60) and square.getpixel((0, 0)) == (122, 116, 104)
    assert square.getpixel((30, 30)) == (255, 0, 0)
    padded = LlavaBackend(backend.model, backend.processor, image_preprocess="pad")
    assert not torch.equal(padded._preprocess([wide]), backend._preprocess([wide]))


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ZeroVLMError, match="not found"):
        load_backend(InferConfig(model=str(tmp_path / "missing"), device="cpu"))


def test_literal_image_placeholder_in_prompt_is_refused(backend):
    with pytest.raises(ZeroVLMError, match="image placeholders"):
        backend.option_logprobs([Request(tuple(images(1)), "look <image> here", ("Yes", "No"))])


@pytest.mark.parametrize("side", [56, 336])
def test_fast_preprocessing_equals_the_image_processor(backend, tmp_path, side):
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from zerovlm.vlm.loading import load_processor

    LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side}),
        tokenizer=backend.tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    ).save_pretrained(tmp_path)
    processor = load_processor(str(tmp_path))
    fast = LlavaBackend(backend.model, processor, chat_format="llava_v1")
    assert fast._fast_crop == (side, side, side)
    generator = torch.Generator().manual_seed(0)
    for width, height in [(640, 480), (480, 640), (333, 333), (10, 7), (1001, 57)]:
        array = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).numpy()
        image = Image.fromarray(array)
        expected = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        got = fast._normalise(fast._preprocess([image]))
        assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5), (width, height)


def original_pad_and_process(image, image_processor):
    """LLaVA-1.5's preprocessing, transcribed independently of zerovlm: haotian-liu/LLaVA llava/mm_utils.py
    `process_images` with image_aspect_ratio "pad" (`expand2square` with the mean colour, then
    CLIPImageProcessor.preprocess: shortest edge resized with PIL bicubic, centre crop, x / 255, (x - mean) / std)."""
    mean, std = np.array(image_processor.image_mean), np.array(image_processor.image_std)
    background = tuple(int(x * 255) for x in image_processor.image_mean)
    width, height = image.size
    if width > height:
        square = Image.new(image.mode, (width, width), background)
        square.paste(image, (0, (width - height) // 2))
    else:
        square = Image.new(image.mode, (height, height), background)
        square.paste(image, ((height - width) // 2, 0))
    side = image_processor.size["shortest_edge"]  # a square stays square: (side, side)
    square = square.resize((side, side), Image.BICUBIC)
    crop_h, crop_w = image_processor.crop_size["height"], image_processor.crop_size["width"]
    top, left = (side - crop_h) // 2, (side - crop_w) // 2
    pixels = np.asarray(square, dtype=np.float64)[top : top + crop_h, left : left + crop_w] / 255
    return torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1).astype(np.float32))


@pytest.mark.parametrize("side", [56, 336])
def test_pad_equals_the_original_llava_preprocessing(backend, tmp_path, side):
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from zerovlm.vlm.loading import load_processor

    LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side}),
        tokenizer=backend.tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    ).save_pretrained(tmp_path)
    processor = load_processor(str(tmp_path))
    padded = LlavaBackend(backend.model, processor, image_preprocess="pad")
    generator = torch.Generator().manual_seed(1)
    for width, height in [(61, 40), (40, 77), (500, 333)]:  # odd differences: the paste offset rounds down
        array = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).numpy()
        image = Image.fromarray(array)
        expected = original_pad_and_process(image, processor.image_processor)
        got = padded._normalise(padded._preprocess([image]))[0]
        assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5), (width, height)


def test_weights_are_read_in_the_target_dtype_straight_onto_the_device(tiny_dir, monkeypatch):
    """from_pretrained places the weights (device_map) in the dtype: no full float32 copy on the CPU first."""
    from transformers import LlavaForConditionalGeneration

    calls, original = [], LlavaForConditionalGeneration.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        calls.append(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(LlavaForConditionalGeneration, "from_pretrained", classmethod(spy))
    load_backend(InferConfig(model=str(tiny_dir), device="cpu", dtype="float32", batch_size=4))
    assert [(c["device_map"], c["dtype"]) for c in calls] == [("cpu", torch.float32)]


def test_models_compiled_in_one_process_all_run_compiled(backend, tmp_path, monkeypatch):
    """The blocks of every compiled model share dynamo's per-code recompile limit (transformers_ops.compile_regions):
    a second model of another width, compiled while the first lives, compiles the same graphs for the same calls as
    the first instead of running its later shapes eagerly once the first model's graphs have used up dynamo's
    default limit."""
    monkeypatch.setenv("ZEROVLM_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    a, b, c = images()
    calls = [
        [Request((image,), "Is the cup left of the box?", ("Yes", "No")) for image in (a, b)],  # several rows
        [Request((c,), f"Is the cup {side} of the box?", ("Yes", "No")) for side in ("left", "right")],  # a mask
        [Request((a,), "Is the cup left of the box?", ("Yes", "No"))],  # one row, one image
        # masks, several rows
        [
            Request((image,), f"Is the cup {where} the box?", ("Yes", "No"))
            for image in (b, c)
            for where in ("on", "in")
        ],
    ]
    graphs_per_call, models = [], []
    for width in (40, 48):  # widths no other test compiles, so that each model starts from no graph of its own
        config = copy.deepcopy(backend.model.config)
        for tower in (config.text_config, config.vision_config):
            tower.hidden_size, tower.intermediate_size = width, 2 * width
        torch.manual_seed(0)
        compiled = LlavaBackend(LlavaForConditionalGeneration(config).eval(), backend.processor, compile=True)
        models.append(compiled)  # both alive, as when a benchmark compares two models
        counts = []
        for requests in calls:
            before = compiled_graph_count()
            compiled.option_logprobs(requests)
            counts.append(compiled_graph_count() - before)
        graphs_per_call.append(counts)
    first, second = graphs_per_call
    assert all(first) and second == first
