"""LLaVA-1.5's prompt templates and image preprocessing choices, as data.

Torch-free, so that zerovlm.config validates infer.chat_format and infer.image_preprocess against the very
names the llava backend implements, without importing a model library.
"""

from __future__ import annotations

# The original templates' system sentences (haotian-liu/LLaVA llava/conversation.py, conv_vicuna_v1 and
# conv_llava_v1); both render system + sep + "USER: " + "<image>\n" + question + sep + "ASSISTANT:" with
# sep " " (sep2 "</s>" ends a reply).
ORIGINAL_SYSTEMS = {
    "vicuna_v1": (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    ),
    "llava_v1": (
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions."
    ),
}
ORIGINAL_SEP = " "
# "hub": the model's own chat template; the others: the original templates above
CHAT_FORMATS = ("hub", *ORIGINAL_SYSTEMS)
# "crop": the HF processor's resize and centre crop; "pad": the original `expand2square` (pad to a square with
# the mean colour) first, as LLaVA-1.5's image_aspect_ratio=pad
IMAGE_PREPROCESSES = ("crop", "pad")
