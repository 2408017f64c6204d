"""MiniGPT-4 (Vicuna v0 and Llama-2 variants) assembled from transformers parts, behind the
VisionLanguageModel interface.

Architecture (Vision-CAIR/MiniGPT-4, minigpt4/models/minigpt4.py `encode_img`):
- vicuna0: EVA-CLIP ViT-g/14 -> `ln_vision` -> BLIP-2 Q-Former with 32 query tokens -> `llama_proj`
  Linear(768, 4096 | 5120) -> Vicuna v0 7B / 13B.
- llama2 (`has_qformer: False`): EVA-CLIP ViT-g/14 -> `ln_vision` -> the 256 patch tokens (CLS dropped),
  every 4 consecutive ones concatenated -> 64 tokens of width 5632 -> `llama_proj` Linear(5632, 4096)
  -> Llama-2-7b-chat. Without a Q-Former the original never loads BLIP-2 weights, so its `ln_vision` is
  a freshly initialised, frozen LayerNorm (weight 1, bias 0): reproduced here.
Here: Blip2VisionModel (its `post_layernorm` is LAVIS' `ln_vision`, eps set to the original 1e-5) +
`query_tokens` + Blip2QFormerModel, read selectively (only the shards holding them) from a BLIP-2
checkpoint such as Salesforce/blip2-flan-t5-xxl (its vision tower is EVA-CLIP ViT-g, frozen in BLIP-2);
`llama_proj` from the released .pth with torch.load(weights_only=True); LlamaForCausalLM + its tokenizer.

cfg.model is a folder with a `minigpt4.json` manifest naming the parts. `vision_qformer` and `llm`: a folder
(relative to the manifest) or a hub id; `llama_proj`: a file (relative to the manifest) or `gdrive:<file_id>`,
a Google Drive file fetched once into the zerovlm cache and checked against the SHA-256 recorded on its
first download (zerovlm/vlm/model_files.py; the sum is in info(), hence in the run records):
    {"vision_qformer": "Salesforce/blip2-flan-t5-xxl", "llama_proj": "gdrive:1RY9jV0dyqLX-o38LrumkKRh6Jtaop58R",
     "llm": "Vision-CAIR/vicuna-7b"}
    {"variant": "llama2", "vision_qformer": "Salesforce/blip2-flan-t5-xxl",
     "llama_proj": "pretrained_minigpt4_llama2_7b.pth", "llm": "meta-llama/Llama-2-7b-chat-hf",
     "revisions": {"llm": "<branch, tag or commit>"}}
("variant" defaults to "vicuna0"; the llama2 variant reads only the vision tower of the BLIP-2 checkpoint;
"revisions", optional, names a hub part's revision, default main.) Under `dvc repro` the check stage pins
each hub part's revision to a commit (models.lock, data/inputs/vlm-<name>.json) and the infer stage passes
those commits in `part_revisions`; every file of that part is read at its commit (info()["parts"]).
The paper's models are committed manifests under zerovlm/vlm/manifests/ (the `vlms:` entries name them):
the released checkpoints on Google Drive and Vicuna v0 as the MiniGPT-4 README links it, already merged
with LLaMA (Vision-CAIR/vicuna-7b, Vision-CAIR/vicuna for 13B).

Prompts (minigpt4/conversation/conversation.py, SeparatorStyle.SINGLE):
- vicuna0 (CONV_VISION_Vicuna0): `{system}###Human: <Img><ImageHere></Img> {prompt}###Assistant: `;
  generation stops at "###".
- llama2 (CONV_VISION_LLama2): `{system}<s>[INST] <Img><ImageHere></Img> {prompt} [/INST] ` (the literal
  `<s>` is the BOS token); generation stops at EOS.
The image's embeddings replace <ImageHere>; only the first text segment gets BOS from the tokenizer.
Images: 224x224 bicubic resize (no crop), CLIP mean/std (Blip2ImageEvalProcessor).
Precision: ViT, llama_proj and the LLM in cfg.dtype; Q-Former and query tokens in float32 (as the HF
BLIP-2 port keeps them). Remaining difference: the official eval configs load the LLM in 8 bit and run
the ViT in fp16; this backend does neither.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zerovlm.io import ZeroVLMError, read_json
from zerovlm.pickles import refused_pickles
from zerovlm.runtime import resolve_device_dtype
from zerovlm.vlm.base import Request, request_seed
from zerovlm.vlm.loading import on_device, pretrained
from zerovlm.vlm.model_files import REPOSITORY_PARTS, Manifest, read_manifest, repository_file, single_file
from zerovlm.vlm.shared_prefix import SharedPrefixBackend, prefetch_threads
from zerovlm.vlm.transformers_ops import CausalForward, to_device, tokenise_options, uses_fp8

SYSTEM = (
    "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I "
    "provide it to you. Please answer my questions."
)
IMAGE_HERE = "<ImageHere>"


@dataclass(frozen=True)
class Conversation:
    """One variant's conversation template (sep is empty or "###", SeparatorStyle.SINGLE)."""

    user: str  # system + sep + user role
    assistant: str  # sep + assistant role
    stop: tuple[str, ...]  # text that ends an answer besides EOS


CONVERSATIONS = {
    "vicuna0": Conversation("###Human: ", "###Assistant: ", ("###",)),
    "llama2": Conversation("<s>[INST] ", " [/INST] ", ()),
}
PATCHES_PER_TOKEN = 4  # llama2: consecutive ViT patch tokens concatenated into one LLM token
PLACEHOLDER = -1  # token id standing for one image embedding position (never looked up)
IMAGE_PX = 224
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
BLIP2_PREFIXES = ("vision_model.", "qformer.", "query_tokens")
VISION_PREFIXES = ("vision_model.",)
LN_VISION_EPS = 1e-5  # LAVIS ln_vision = nn.LayerNorm(1408): torch's default eps


def preprocess(image: Image.Image) -> torch.Tensor:
    """(3, 224, 224) float32: bicubic resize to 224x224 (no crop), scale to [0, 1], CLIP normalisation."""
    pixels = np.asarray(image.convert("RGB").resize((IMAGE_PX, IMAGE_PX), Image.BICUBIC), dtype=np.float32) / 255
    pixels = (pixels - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


def load_llama_proj(path: str | Path) -> dict[str, torch.Tensor]:
    """`llama_proj.weight` and `.bias` from a released MiniGPT-4 .pth, never unpickling arbitrary objects."""
    try:
        with refused_pickles(path):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as error:
        raise ZeroVLMError(f"{path}: not a readable PyTorch checkpoint ({error})") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    wanted = ("llama_proj.weight", "llama_proj.bias")
    if not isinstance(state, dict) or any(k not in state for k in wanted):
        found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise ZeroVLMError(f"{path}: expected {list(wanted)} under 'model', found {found}")
    for key in wanted:
        if not isinstance(state[key], torch.Tensor):
            raise ZeroVLMError(f"{path}: {key} is a {type(state[key]).__name__}, not a tensor")
    return {key.removeprefix("llama_proj."): state[key] for key in wanted}


def load_blip2_parts(
    source: str, with_qformer: bool = True, where: str = "vision_qformer", revision: str | None = None
) -> tuple[Any, Any, Any, Any]:
    """(config, query_tokens, vision model, Q-Former) from a BLIP-2 checkpoint (folder, or hub id at `revision`),
    reading only their shards; `where` names the setting in errors.

    with_qformer=False (the llama2 variant): only the vision tower is read; query_tokens and Q-Former are
    None, and `post_layernorm` (ln_vision) is reset to the fresh LayerNorm the original uses there.
    """
    from safetensors import safe_open
    from transformers import Blip2Config, Blip2QFormerModel, Blip2VisionModel

    prefixes = BLIP2_PREFIXES if with_qformer else VISION_PREFIXES
    config_path = repository_file(source, "config.json", where, revision)
    if config_path is None:
        raise ZeroVLMError(
            f"{where}: {source} has no config.json; name a BLIP-2 checkpoint (e.g. Salesforce/blip2-flan-t5-xxl)"
        )
    config = Blip2Config.from_pretrained(config_path.parent)  # the folder, or the snapshot of `revision`
    index = repository_file(source, "model.safetensors.index.json", where, revision)
    if index is not None:
        weight_map = read_json(index, "the model folder is damaged: write it again")["weight_map"]
        shards = sorted({f for key, f in weight_map.items() if key.startswith(prefixes)})
    else:
        shards = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        path = repository_file(source, shard, where, revision)
        if path is None:
            raise ZeroVLMError(f"{where}: {source} has no {shard} (safetensors weights are required)")
        with safe_open(str(path), framework="pt") as f:
            state.update({k: f.get_tensor(k) for k in f.keys() if k.startswith(prefixes)})

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}

    # Built on the meta device and given the checkpoint's tensors (assign): a random initialisation of EVA
    # ViT-g's billion parameters on the CPU, overwritten at once, took about 9 s of each load. Neither part has
    # buffers outside its state dict, so nothing stays on the meta device (strict loading checks every key).
    with torch.device("meta"):
        vision = Blip2VisionModel(config.vision_config)
    vision.post_layernorm.eps = LN_VISION_EPS
    try:
        vision.load_state_dict(part("vision_model."), strict=True, assign=True)
    except RuntimeError as error:
        raise ZeroVLMError(f"{source}: vision weights do not match their config ({error})") from None
    if not with_qformer:
        vision.post_layernorm.reset_parameters()  # weight 1, bias 0: the llama2 variant's untrained ln_vision
        return config, None, vision.float().eval(), None
    with torch.device("meta"):
        qformer = Blip2QFormerModel(config.qformer_config)
    try:
        qformer.load_state_dict(part("qformer."), strict=True, assign=True)
    except RuntimeError as error:
        raise ZeroVLMError(f"{source}: Q-Former weights do not match their config ({error})") from None
    if "query_tokens" not in state:
        raise ZeroVLMError(f"{source}: no query_tokens in the checkpoint")
    # assign keeps the checkpoint's dtype: the Q-Former runs in float32 whatever the checkpoint stores
    return config, torch.nn.Parameter(state["query_tokens"].float()), vision.float().eval(), qformer.float().eval()


@dataclass
class Encoded:
    """One request, tokenised and preprocessed (CPU)."""

    prefix: list[int]  # BOS + first segment, PLACEHOLDER per image embedding, the rest of the prompt
    continuations: list[list[int]]  # per option: joint tokens after the shared prefix
    pixels: torch.Tensor | None  # (images, 3, 224, 224) float32; None without images or when not asked for
    seed: int  # of sampled generation


class MiniGPT4Backend(SharedPrefixBackend):
    name = "minigpt4"
    max_images_per_request = 1  # trained and evaluated on single images
    placeholder = PLACEHOLDER
    image_marker = IMAGE_HERE  # BOS + first segment, then per <ImageHere> one placeholder per image embedding
    option_separator = ""  # none: the prompt ends with a space

    def __init__(
        self,
        vision,
        query_tokens,
        qformer,
        llama_proj,
        llm,
        tokenizer,
        *,
        model_id: str = "",
        batch_size: int = 16,
        prefetch_workers: int | None = None,
        variant: str = "vicuna0",
        parts: dict[str, str] | None = None,
        compile: bool = False,
    ):
        if variant not in CONVERSATIONS:
            raise ZeroVLMError(f"MiniGPT-4 variant must be one of {sorted(CONVERSATIONS)}, got {variant!r}")
        if (qformer is None) != (variant == "llama2"):
            raise ZeroVLMError(f"MiniGPT-4 {variant}: the vicuna0 variant needs the Q-Former, llama2 has none")
        self.vision, self.qformer, self.llama_proj, self.llm = vision, qformer, llama_proj, llm.eval()
        self.query_tokens, self.tokenizer, self.model_id = query_tokens, tokenizer, model_id
        self.batch_size, self.prefetch_workers = batch_size, prefetch_threads(prefetch_workers)
        self.variant, self.conversation = variant, CONVERSATIONS[variant]
        self.parts = parts or {}  # where each part came from, the hub parts' revisions, llama_proj's SHA-256
        self.device, self.dtype = llm.device, llm.dtype
        patches = (vision.config.image_size // vision.config.patch_size) ** 2
        self.tokens_per_image = query_tokens.shape[1] if qformer is not None else patches // PATCHES_PER_TOKEN
        self.forward = CausalForward(llm)
        if compile:  # the LLM's decoder blocks and the vision tower's; the Q-Former (float32) stays eager
            self._compile_regions(llm.model, vision)
        self._init_memos()

    def info(self) -> dict[str, Any]:
        return {
            **self._common_info(),
            "variant": self.variant,
            "qformer_dtype": "float32" if self.qformer is not None else None,
            "fp8_linear": uses_fp8(self.llm),
            "compiled": self.compiled,
            "ln_vision_eps": self.vision.post_layernorm.eps,
            "parts": self.parts,
        }

    def render_prompt(self, request: Request) -> str:
        images = " ".join(f"<Img>{IMAGE_HERE}</Img>" for _ in request.images)
        message = f"{images} {request.prompt}" if images else request.prompt
        return f"{SYSTEM}{self.conversation.user}{message}{self.conversation.assistant}"

    def _tokenise_uncached(self, request: Request) -> tuple[list[int], list[list[int]]]:
        prefix, shared, continuations = tokenise_options(
            self._ids, self._rendered(request), self.option_separator, request.options
        )
        if prefix[:shared].count(PLACEHOLDER) != len(request.images) * self.tokens_per_image:
            raise ZeroVLMError(f"prompt {request.prompt!r} must not contain {IMAGE_HERE!r}")
        return prefix[:shared], continuations

    def _encode(self, request: Request, seed: int = 0, pixels: bool = True) -> Encoded:
        prefix, continuations = self._tokenise(request)
        images = torch.stack([preprocess(i) for i in request.images]) if pixels and request.images else None
        keys = self._image_fingerprints(request)
        return Encoded(prefix, continuations, images, request_seed(seed, request, keys))

    @torch.no_grad()
    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, 224, 224) -> (n, tokens_per_image, llm hidden): ViT + ln_vision, then the Q-Former (float32)
        or (llama2) groups of 4 patch tokens, then llama_proj."""
        vision_device = self.vision.post_layernorm.weight.device
        image = self.vision(pixel_values=to_device(pixels, vision_device).to(self.vision.dtype)).last_hidden_state
        if self.qformer is None:
            patches = image[:, 1:, :]  # (n, 256, 1408): CLS dropped
            n, count, width = patches.shape
            tokens = patches.reshape(n, count // PATCHES_PER_TOKEN, width * PATCHES_PER_TOKEN)  # (n, 64, 5632)
        else:
            queries = self.query_tokens.expand(image.shape[0], -1, -1).to(vision_device)
            # No encoder_attention_mask: the original's is all ones (every patch attended), which is no mask;
            # passing one makes transformers test it with `.all()`, a host synchronisation per batch that
            # stalls the queueing of the next batch's forward.
            tokens = self.qformer(query_embeds=queries, encoder_hidden_states=image.float()).last_hidden_state
        projected = self.llama_proj(tokens.to(self.llama_proj.weight.dtype))
        return projected.to(self.device, self.dtype)

    def _rows_and_features(self, batch: Sequence[Encoded]) -> tuple[list[list[int]], torch.Tensor | None]:
        """The prefix token rows (one PLACEHOLDER per image embedding) and the (N, D) embeddings in order."""
        rows = [e.prefix for e in batch]
        pixels = [e.pixels for e in batch if e.pixels is not None]
        if not pixels:
            return rows, None
        embeddings = self.image_embeddings(torch.cat(pixels))
        return rows, embeddings.reshape(-1, embeddings.shape[-1])

    def _length(self, request: Request) -> int:
        prefix, continuations = self._tokenise(request)
        return len(prefix) + max((len(c) for c in continuations), default=0)

    def _generate(
        self, requests: Sequence[Request], max_new_tokens: int, stop: tuple[str, ...], temperature: float, seed: int
    ) -> list[str]:
        stops = tuple(dict.fromkeys((*stop, *self.conversation.stop)))  # vicuna0's "###" always ends an answer
        return super()._generate(requests, max_new_tokens, stops, temperature, seed)


def part_sources(manifest: Manifest, part_revisions: dict[str, str] | None) -> dict[str, tuple[str, str | None]]:
    """vision_qformer and llm -> (folder or hub id, revision): the pinned commit of each hub part, or without
    pins the revision the manifest gives it (main)."""
    sources = {part: manifest.repository(part) for part in REPOSITORY_PARTS}
    if part_revisions is None:
        return sources
    hub_parts = sorted(part for part, (_, revision) in sources.items() if revision is not None)
    if sorted(part_revisions) != hub_parts:
        raise ZeroVLMError(
            f"{manifest.path}: its hub parts are {hub_parts}, but commits were pinned for "
            f"{sorted(part_revisions)}; run `dvc repro`, whose check stage pins them again"
        )
    return {
        part: (source, None if revision is None else part_revisions[part])
        for part, (source, revision) in sources.items()
    }


def load_minigpt4(cfg, part_revisions: dict[str, str] | None = None) -> MiniGPT4Backend:
    """MiniGPT-4 from the folder cfg.model (see the module docstring for its minigpt4.json); `part_revisions`:
    the commit of each hub part (vision_qformer, llm) as the check stage pinned it (None: the manifest's)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    manifest = read_manifest(Path(cfg.model), "infer.model")
    variant = manifest.variant or "vicuna0"
    if variant not in CONVERSATIONS:
        raise ZeroVLMError(f"{manifest.path}: variant must be one of {sorted(CONVERSATIONS)}, got {variant!r}")
    device, dtype = resolve_device_dtype(cfg.device, cfg.dtype, "infer")

    # 1. vision tower (+ Q-Former), LLM and tokenizer: folders relative to the manifest, or hub ids at a revision
    sources = part_sources(manifest, part_revisions)
    blip2, blip2_revision = sources["vision_qformer"]
    llm_source, llm_revision = sources["llm"]
    where = manifest.where("llm")
    config, query_tokens, vision, qformer = load_blip2_parts(
        blip2, variant == "vicuna0", manifest.where("vision_qformer"), blip2_revision
    )
    if repository_file(llm_source, "config.json", where, llm_revision) is None:
        raise ZeroVLMError(f"{where}: {llm_source} has no config.json; name a Llama model")
    try:
        llm = pretrained(LlamaForCausalLM, llm_source, dtype, device, llm_revision)
        tokenizer = AutoTokenizer.from_pretrained(llm_source, revision=llm_revision)
    except (OSError, ValueError, ImportError) as error:
        # transformers reads a tokenizer.model without tokenizer.json (common in Llama-1 era repos) only with
        # sentencepiece, and without it reports a failed fallback to tiktoken
        hint = (
            ""
            if importlib.util.find_spec("sentencepiece")
            else ("; a tokenizer given only as tokenizer.model needs `pip install sentencepiece protobuf`")
        )
        raise ZeroVLMError(
            f"{where}: cannot load {llm_source!r} as a Llama model and its tokenizer "
            f"({str(error).splitlines()[0] if str(error) else type(error).__name__}){hint}"
        ) from None

    # 2. llama_proj: a file relative to the manifest, or a Google Drive file fetched once into the cache
    proj_path, proj_sha256 = single_file(
        manifest.path.parent, manifest.parts["llama_proj"], manifest.where("llama_proj")
    )
    weights = load_llama_proj(proj_path)
    image_width = (
        config.qformer_config.hidden_size
        if qformer is not None
        else config.vision_config.hidden_size * PATCHES_PER_TOKEN
    )
    llama_proj = torch.nn.Linear(image_width, llm.config.hidden_size)
    if tuple(weights["weight"].shape) != tuple(llama_proj.weight.shape):
        raise ZeroVLMError(
            f"{proj_path}: llama_proj.weight has shape {tuple(weights['weight'].shape)}; the "
            f"{variant} image tokens and the LLM need {tuple(llama_proj.weight.shape)} (a .pth of "
            "another variant or LLM size?)"
        )
    llama_proj.load_state_dict(weights)

    # 3. devices and precision
    llm = on_device(llm, device, cfg.fp8_linear)
    if qformer is not None:
        query_tokens, qformer = query_tokens.to(device), qformer.to(device)
    parts = {
        **manifest.parts,
        "llama_proj_sha256": proj_sha256,
        "revisions": {part: revision for part, (_, revision) in sources.items() if revision is not None},
    }
    return MiniGPT4Backend(
        vision.to(device, dtype),
        query_tokens,
        qformer,
        llama_proj.to(device, dtype),
        llm,
        tokenizer,
        model_id=cfg.model,
        batch_size=cfg.batch_size,
        variant=variant,
        parts=parts,
        compile=cfg.compile and device.type == "cuda",
    )
