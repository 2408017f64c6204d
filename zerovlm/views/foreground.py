"""Optional background removal and recentring of the input image, as the official Zero-1-to-3 demo.

The demo (cvlab-columbia/zero123 gradio_new.py `main_run` -> `preprocess_image` -> ldm/util.py
`load_and_preprocess`) shrinks the input to fit 1536 px, masks it with carvekit (alpha > 127), whitens the
background of the RGB image, crops to the mask's bounding box, thumbnails the crop to 200x200 and pastes it
centred on a 256x256 white canvas. `recentre` does exactly that after the mask; the mask comes from a
pluggable backend (`views.foreground`):

- `none` (default): no step at all, inputs are used as they are; downloads nothing.
- `border`: downloads nothing; suited to plain backgrounds (the synthetic "vertical" scenes, What'sUp's
  controlled images), NOT to cluttered COCO photos (VSR) nor the synthetic ground-plane scenes (sky and
  ground differ, so one of them counts as object).

`border` takes the median colour of the image's outermost pixel ring as the background and marks every
pixel farther than `views.foreground_threshold_rgb` (Euclidean distance of 8-bit RGB, 0..441) from it as
object. To decide, it composites transparent pixels on white first, as the sampler does (the cropped pixels
themselves are the RGB values, alpha dropped, as the demo's `convert('RGB')`).

Adding a learned backend (e.g. rembg's U^2-Net or carvekit's tracer-b7, as the demo): write a factory
`make_<name>(threshold_rgb: float) -> MaskFn` that loads the model ONCE and returns a function
`image -> (H, W) uint8 alpha mask`, register it in BACKENDS and add the name to `ViewsConfig.foreground`.
Such backends download model weights (rembg: ~170 MB u2net.onnx into ~/.u2net on first use; carvekit:
several hundred MB from the hub); they are deliberately not dependencies of zerovlm, so import them inside
the factory and say in docs/views.md what they fetch.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable

import numpy as np
from PIL import Image

from zerovlm.io import ZeroVLMError
from zerovlm.views.zero123 import demo_input

log = logging.getLogger(__name__)

MaskFn = Callable[[Image.Image], np.ndarray]  # image -> (H, W) uint8 alpha mask, 255 = object
DEMO_SIZE_PX, DEMO_OBJECT_PX = 256, 200  # the demo's canvas and the side its object is fitted to
MASK_CUTOFF = 127  # the demo's `> 127`: a (soft) mask value that counts as object


def _on_white(image: Image.Image) -> np.ndarray:
    """(H, W, 3) float32 in 0..255: the image alpha-composited on white (as zero123.prepare_image)."""
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
    alpha = rgba[:, :, 3:4] / 255.0
    return alpha * rgba[:, :, :3] + (1.0 - alpha) * 255.0


def make_border(threshold_rgb: float) -> MaskFn:
    """Background = median colour of the outermost pixel ring; object = pixels farther than threshold_rgb."""
    if threshold_rgb < 0:
        raise ZeroVLMError(f"threshold_rgb must be >= 0, got {threshold_rgb}")

    def border_mask(image: Image.Image) -> np.ndarray:
        rgb = _on_white(image)  # (H, W, 3)
        ring = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])  # (2W + 2H - 4, 3)
        background = np.median(ring, axis=0)  # (3,): robust to an object touching the edge
        distance = np.linalg.norm(rgb - background, axis=-1)  # (H, W)
        return np.where(distance > threshold_rgb, 255, 0).astype(np.uint8)

    return border_mask


# name -> factory(threshold_rgb) returning the mask function; a learned backend loads its weights there.
BACKENDS: dict[str, Callable[[float], MaskFn]] = {
    "border": make_border,  # downloads nothing
}


def backend_names() -> list[str]:
    return sorted(BACKENDS)


def load_foreground(name: str, threshold_rgb: float = 30.0) -> MaskFn:
    """The mask function of backend `name` (an unknown name lists the valid ones)."""
    if name not in BACKENDS:
        close = difflib.get_close_matches(name, BACKENDS, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ZeroVLMError(
            f"views.foreground: unknown backend {name!r}.{hint} Valid: none, {', '.join(backend_names())}"
        )
    return BACKENDS[name](threshold_rgb)


def demo_object_px(size_px: int) -> int:
    """The side the object is fitted to, at the demo's ratio (200 of 256): 256 -> 200, 64 -> 50."""
    return max(1, round(size_px * DEMO_OBJECT_PX / DEMO_SIZE_PX))


def recentre(image: Image.Image, mask: np.ndarray, size_px: int, object_px: int) -> Image.Image | None:
    """RGB size_px x size_px: the object cropped to its box, shrunk to fit object_px, centred on white.

    The demo's load_and_preprocess after its mask: the image's RGB (alpha dropped, nothing composited)
    with the pixels of mask <= 127 set to white, cropped to the mask's bounding box, `thumbnail`ed
    (LANCZOS; a crop that already fits keeps its size) and pasted at ((size - w) // 2, (size - h) // 2)
    on white. None when the mask is empty (nothing to centre on).
    """
    if not 1 <= object_px <= size_px:
        raise ZeroVLMError(f"object_px must be in [1, size_px={size_px}], got {object_px}")
    if mask.shape != (image.height, image.width):
        raise ZeroVLMError(f"mask: expected shape {(image.height, image.width)}, got {mask.shape}")
    foreground = mask > MASK_CUTOFF  # (H, W) bool
    if not foreground.any():
        return None
    rows, cols = np.flatnonzero(foreground.any(axis=1)), np.flatnonzero(foreground.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1  # cv2.boundingRect's box
    rgb = np.array(image.convert("RGB"))  # (H, W, 3) uint8
    rgb[~foreground] = 255  # whiten the background
    crop = Image.fromarray(rgb[top:bottom, left:right])
    crop.thumbnail((object_px, object_px), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size_px, size_px), (255, 255, 255))
    canvas.paste(crop, ((size_px - crop.width) // 2, (size_px - crop.height) // 2))
    return canvas


def remove_background(image: Image.Image, mask_fn: MaskFn, size_px: int, name: str = "") -> tuple[Image.Image, bool]:
    """(input for the sampler, recentred?): the demo's input (shrunk to fit 1536 px) masked and recentred
    at the demo's ratio, or the image unchanged (with a warning) when the backend finds no object."""
    demo = demo_input(image)
    centred = recentre(demo, mask_fn(demo), size_px, demo_object_px(size_px))
    if centred is None:
        log.warning("views.foreground: no object found in %s; using the image as it is", name or "an image")
        return image, False
    return centred, True
