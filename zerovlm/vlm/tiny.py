"""Tiny, randomly initialised VLMs in the real on-disk layouts, built offline (demo profile and tests).

`build_tiny_llava(out_dir, seed)` writes a LLaVA-1.5 folder in the llava-hf layout (config.json,
model.safetensors, tokenizer.json, preprocessor_config.json, processor_config.json, chat_template) that
`zerovlm.vlm.llava.load_llava` opens with the same `from_pretrained` calls as `llava-hf/llava-1.5-7b-hf`.
The model answers at chance: its weights are random. Likewise `build_tiny_minigpt4` (both variants:
BLIP-2 checkpoint, llama_proj .pth, Llama) and `build_tiny_idefics3` (a natively multi-image model for
the hf_auto backend, with the PIL image processor).

The tokenizer is word level (built with the `tokenizers` library, no download): text is lower-cased and
split into words, single digits and single punctuation marks, each carrying sentencepiece's word-start
mark when a space precedes it (so decoding restores the text); a word outside the vocabulary becomes
`<unk>`. The vocabulary covers the chat templates, the paper's view prompts and questions, spatial
relations, colours, shapes, COCO and What'sUp object names, the letters a-z and the digits, so the
demo prompts are mostly known words; an unknown object name costs one `<unk>` token, nothing more.
Like Llama's tokenizer it prepends `<s>`; `<image>` and `<pad>` are special tokens.
"""

from __future__ import annotations

import string
from pathlib import Path

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
HUB_LLAVA_CHAT_TEMPLATE = (  # llava-hf/llava-1.5-7b-hf chat_template, verbatim
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != "
    "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

_WORDS = """
user assistant human system a chat between curious and an artificial intelligence the gives helpful detailed
polite answers to s questions give following image img imagecontent you will be able see once i provide it
please answer my inst sys
this is 3d single view generated from original centered on object objects in upper lower left right corner
random based these four images judging by pictures picture me yes or no true false top bottom front back
side sides panel panels shows shown show showing camera rotated degrees novel views first second third one
two three five six statement caption captions describes describe describing best correct which what where
how many is are was were of at with for as that there it its they them their letter option options choose
choice respond directly only word words short sentence following then than not do does can could would
should relation relations spatial position positioned located placed sitting standing lying near far next
beside behind above below under underneath over beneath inside outside onto into across against along
around between among facing away toward towards touching contains containing part edge middle center
centre surface ground floor wall sky background foreground scene photo photograph
red green blue yellow orange purple pink brown black white gray grey cyan magenta gold silver dark light
small large big tiny little tall short long round square circle triangle rectangle star cube sphere
cylinder cone box ball disk ring diamond hexagon pentagon cross heart shape shapes colour color colored
person people man woman boy girl child bicycle car motorcycle airplane bus train truck boat traffic fire
hydrant stop sign parking meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack
umbrella handbag tie suitcase frisbee skis snowboard sports kite baseball bat glove skateboard surfboard
tennis racket bottle wine glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot
pizza donut cake chair couch potted plant bed dining table toilet tv laptop mouse remote keyboard cell
phone microwave oven toaster sink refrigerator book clock vase scissors teddy hair drier toothbrush
mug can candle sunglasses headphones tape flower pot plate lamp pen pencil cap hat shoe shoes bag wallet
key keys spectacles paper towel roll knob door window shelf cabinet desk tray basket towel pillow
computer screen monitor tablet camera bucket jar lid bin
"""


# Every tiny vision tower and Q-Former (LLaVA's CLIP, MiniGPT-4's EVA stand-in and Q-Former, Zero123's image
# encoder): 2 layers of width 32, small enough to build in a second and run the demo on 2 cores.
TINY_ENCODER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
SPACE = "\u2581"  # sentencepiece's word-start mark, as in Llama's tokenizer


def _vocabulary() -> list[str]:
    """Special tokens, then each word, letter, digit and punctuation mark with and without SPACE."""
    words = dict.fromkeys(_WORDS.split())  # ordered, de-duplicated
    pieces = [*string.ascii_lowercase, *string.digits, *string.punctuation, "\n", *words]
    vocab = list(SPECIAL_TOKENS)
    for piece in pieces:
        for token in (SPACE + piece, piece):
            if token not in vocab:
                vocab.append(token)
    vocab.append(SPACE)  # a lone space (e.g. a prompt that ends with one)
    return vocab


def build_word_tokenizer(model_max_length: int = 2048):
    """A word-level PreTrainedTokenizerFast (see the module docstring).

    Like sentencepiece, a space becomes SPACE glued to the next piece, so decoding restores the text
    exactly (up to case): stop strings such as "###" survive a round trip.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = _vocabulary()
    ids = {token: i for i, token in enumerate(vocab)}
    core = Tokenizer(WordLevel(ids, unk_token="<unk>"))
    core.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", SPACE)])
    pattern = f"{SPACE}?(?:[a-z]+|[0-9]|[^a-z0-9{SPACE}])|{SPACE}"
    core.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    core.decoder = decoders.Sequence([decoders.Replace(SPACE, " ")])
    core.add_special_tokens(SPECIAL_TOKENS)
    return _llama_style(core, model_max_length)


def build_unsplit_bpe_tokenizer(corpus: list[str], vocab_size: int = 512, model_max_length: int = 2048):
    """A byte-pair PreTrainedTokenizerFast trained on `corpus` with no pre-tokenizer, so that its merges
    cross spaces ("? ASSISTANT: Yes" can be one token), as in tokenizers that do not split at spaces.

    The special tokens keep the word tokenizer's ids (SPECIAL_TOKENS first), so a tiny model built for that
    tokenizer runs this one when vocab_size is at most the model's; like it, it prepends `<s>`. Every
    printable ASCII character is in the vocabulary; decoding concatenates the pieces.
    """
    from tokenizers import Tokenizer, decoders, trainers
    from tokenizers.models import BPE

    core = Tokenizer(BPE(unk_token="<unk>"))
    core.add_special_tokens(SPECIAL_TOKENS)  # before training: the trainer does not merge across them
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=list(string.printable),
        show_progress=False,
    )
    core.train_from_iterator(corpus, trainer)
    core.decoder = decoders.Fuse()
    return _llama_style(core, model_max_length)


def _llama_style(core, model_max_length: int):
    """A PreTrainedTokenizerFast around the `tokenizers` object `core` that, like Llama's, prepends `<s>` and
    names `<s>`, `</s>`, `<unk>` and `<pad>` as its special tokens."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bos = ("<s>", core.token_to_id("<s>"))
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[bos])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=model_max_length,
    )


def tiny_llama_config(vocab_size: int, tokenizer, hidden_size: int = 32):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_llava(out_dir: Path, seed: int, image_size_px: int = 56, patch_size_px: int = 14) -> None:
    """Write a tiny random LLaVA-1.5 (llava-hf layout) to out_dir; the same seed gives the same bytes.

    Vision: CLIP ViT with 2 layers of width 32 on image_size_px images ((56/14)^2 = 16 image tokens).
    Language: Llama with 2 layers of width 32 over the word-level vocabulary. Projector: LLaVA's MLP.
    """
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out_dir = Path(out_dir)
    tokenizer = build_word_tokenizer()
    vocab_size = -(-len(tokenizer) // 8) * 8  # padded like llava-hf's 32064
    vision = CLIPVisionConfig(
        **TINY_ENCODER,
        image_size=image_size_px,
        patch_size=patch_size_px,
        projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=tiny_llama_config(vocab_size, tokenizer).to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # larger random weights than the default init, so options get distinct scores
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.2)

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size_px}, crop_size={"height": image_size_px, "width": image_size_px}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size_px,
        vision_feature_select_strategy="default",
        chat_template=HUB_LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def _init_image_path(blip2) -> None:
    """Weights that make the image matter: Blip2's config initialises the ViT with std 1e-10 and the query
    tokens with zeros, so images barely moved the embeddings and the 32 query outputs were one vector.

    The ViT's residual stream gets a per-token variance of about 2e-5, near ln_vision's eps (1e-5), and
    is dominated by the image (patch embedding) over the class and position embeddings: a wrong eps or a
    wrong ViT weight then moves the embeddings far beyond float error. The LayerNorms (ln_vision included)
    look trained, so that tests can tell the loaded ln_vision from a fresh one.
    """
    import torch

    hidden = blip2.config.vision_config.hidden_size
    with torch.no_grad():
        for name, parameter in blip2.vision_model.named_parameters():
            if "layer_norm" in name or name.startswith("post_layernorm"):
                parameter.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
            elif name.startswith("embeddings.patch_embedding"):
                parameter.normal_(0.0, 6e-5)  # 3 x 28 x 28 pixels of about unit size -> std about 3e-3
            elif name.startswith("embeddings."):
                parameter.normal_(0.0, 1e-3)  # class and position embeddings
            elif ".projection." in name or ".fc2." in name:
                parameter.normal_(0.0, 3e-4)  # what each block adds to the residual stream
            else:
                parameter.normal_(0.0, 0.2)
        for layer in blip2.vision_model.encoder.layers:  # EVA has no key bias (the HF conversion writes zeros)
            layer.self_attn.qkv.bias[hidden : 2 * hidden] = 0.0
        for parameter in blip2.qformer.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.2)
        blip2.query_tokens.normal_(0.0, 0.2)


def build_tiny_minigpt4(out_dir: Path, seed: int, variant: str = "vicuna0") -> None:
    """Write a tiny random MiniGPT-4 folder: minigpt4.json + blip2/ (a BLIP-2 checkpoint with a tiny T5,
    sharded with an index like Salesforce/blip2-flan-t5-xxl) + llama_proj.pth (released-checkpoint
    layout: {"model": {"llama_proj.weight", "llama_proj.bias"}}) + vicuna/ (Llama + word tokenizer).
    variant "llama2": llama_proj takes 4 concatenated ViT patch tokens instead of the Q-Former output."""
    import json

    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        LlamaForCausalLM,
        T5Config,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_word_tokenizer()
    torch.manual_seed(seed)
    vision = Blip2VisionConfig(**TINY_ENCODER, image_size=224, patch_size=28)
    qformer = Blip2QFormerConfig(
        **TINY_ENCODER,
        cross_attention_frequency=1,
        encoder_hidden_size=32,
        vocab_size=64,
    )
    text = T5Config(
        vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0, pad_token_id=0
    )
    blip2 = Blip2ForConditionalGeneration(
        Blip2Config(
            vision_config=vision.to_dict(),
            qformer_config=qformer.to_dict(),
            text_config=text.to_dict(),
            num_query_tokens=32,
        )
    )
    _init_image_path(blip2)
    blip2.save_pretrained(out_dir / "blip2", max_shard_size="100KB")

    llm = LlamaForCausalLM(tiny_llama_config(-(-len(tokenizer) // 8) * 8, tokenizer)).eval()
    with torch.no_grad():
        for parameter in llm.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.2)
    llm.save_pretrained(out_dir / "vicuna")
    tokenizer.save_pretrained(out_dir / "vicuna")
    from zerovlm.vlm.minigpt4 import PATCHES_PER_TOKEN

    image_width = qformer.hidden_size if variant == "vicuna0" else PATCHES_PER_TOKEN * vision.hidden_size
    projection = {
        "llama_proj.weight": torch.randn(llm.config.hidden_size, image_width) * 0.2,
        "llama_proj.bias": torch.zeros(llm.config.hidden_size),
    }
    torch.save({"model": projection, "epoch": 0}, out_dir / "llama_proj.pth")
    manifest = {"variant": variant, "vision_qformer": "blip2", "llama_proj": "llama_proj.pth", "llm": "vicuna"}
    (out_dir / "minigpt4.json").write_text(json.dumps(manifest, indent=2) + "\n")


# Modelled on HuggingFaceM4/Idefics3-8B-Llama3's template: images inline as <image>, "User:"/"Assistant:".
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_tiny_idefics3(out_dir: Path, seed: int) -> None:
    """Write a tiny random Idefics3 (a natively multi-image model) in the hub layout: no image splitting,
    56 px images, 4 tokens per image after the pixel shuffle; PIL image processor (no torchvision)."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tokenizer = build_word_tokenizer()
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]}
    )
    text = tiny_llama_config(-(-len(tokenizer) // 8) * 8, tokenizer).to_dict()
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=56, patch_size=14
    )
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = Idefics3Config(text_config=text, scale_factor=2, vision_config=vision, image_token_id=image_token_id)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": 56}, max_image_size={"longest_edge": 56}
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4, chat_template=IDEFICS3_CHAT_TEMPLATE
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
