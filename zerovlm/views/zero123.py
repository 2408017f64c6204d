"""The Zero-1-to-3 sampler as numbered steps, on diffusers/transformers building blocks.

It follows the original (cvlab-columbia/zero123: gradio_new.py `sample_model`, ldm DDIMSampler):
  1. encode: the input view (thumbnailed to 1536 px, as the demo's main_run) resized and put on white in
     [-1, 1]; CLIP embedding of it (bicubic, align_corners, no antialias, CLIP mean/std) concatenated with
     the pose and projected to the cross-attention context (B, 1, 768) in float32 whatever the pipeline's
     dtype, as the original's fp32 demo; the conditioning latent = VAE posterior mode, NOT scaled.
  2. timesteps: diffusers' "leading" DDIM steps, or any uniform list such as the steps the original
     sampler runs (`ldm_timesteps`).
  3. prepare latents: N(0, I) from one torch.Generator per sample, so a view does not depend on its batch.
  4. denoise: classifier-free guidance folded into one UNet batch [unconditional; conditional], where the
     unconditional branch is a zero context (after the projection) and a zero conditioning latent.
  5. decode: vae.decode(latent / scaling_factor), then uint8 by truncation as the original does.
  6. optionally, each view's quality record (not in the original; quality.py): the cosine similarity between
     step 1's CLIP embedding of the input and the same encoder's embedding of the uint8 view, prepared the
     same way, and the view's pixel statistics, all computed on the device.
Speed without changing the math: one UNet call for all images x views x both guidance branches, each
distinct input image encoded once, explicit dtype (no autocast), channels_last, SDPA, the DDIM noise drawn
while the GPU works, `SingleTokenCrossAttnProcessor` (the context has one token, so softmax over it is
exactly 1 and cross-attention reduces to to_out(to_v(context)) for every query), and optionally
`compile()` (fused q/k/v projections, torch.compile with CUDA graphs).
"""

from __future__ import annotations

import contextlib
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, FusedAttnProcessor2_0
from PIL import Image

from zerovlm.io import ZeroVLMError
from zerovlm.runtime import one_intra_op_thread, use_compile_cache
from zerovlm.views.checkpoints import Zero123Components, load_components
from zerovlm.views.quality import pixel_sums, quality_records

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP, as the original's FrozenCLIPImageEmbedder
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEMO_MAX_INPUT_PX = 1536  # gradio_new.py main_run: raw_im.thumbnail([1536, 1536], LANCZOS) before anything else


def ldm_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """The timesteps the original sampler runs, descending, each step going back c = T // n.

    LDM's "uniform" discretisation is range(0, T, c) + 1 (make_ddim_timesteps), but zero123's
    DDIMSampler.ddim_sampling(t_start=-1) runs `timesteps[:t_start]`, dropping the highest one:
    50 requested -> 49 steps (961..1), 75 -> 76 steps (976..1).
    """
    if not 2 <= num_inference_steps <= num_train_timesteps:
        raise ZeroVLMError(
            f"views.num_inference_steps: the ldm schedule runs one step fewer than requested (as "
            f"the original sampler), so it needs 2..{num_train_timesteps}, got {num_inference_steps}"
        )
    stride = num_train_timesteps // num_inference_steps
    return [t + 1 for t in range(0, num_train_timesteps, stride)][-2::-1]


def demo_input(image: Image.Image) -> Image.Image:
    """The demo's input image: RGBA (its upload widget's mode), shrunk to fit 1536 px (a smaller one is kept)."""
    image = image.convert("RGBA")  # a new image: thumbnail works in place
    image.thumbnail((DEMO_MAX_INPUT_PX, DEMO_MAX_INPUT_PX), Image.Resampling.LANCZOS)
    return image


def prepare_image(image: Image.Image, size_px: int) -> torch.Tensor:
    """(3, size, size) float32 in [-1, 1]: the demo's input, LANCZOS-resized, then alpha-composited on white."""
    rgba = demo_input(image).resize((size_px, size_px), Image.Resampling.LANCZOS)
    array = np.asarray(rgba, dtype=np.float32) / 255.0  # (H, W, 4) in [0, 1]
    alpha = array[:, :, 3:4]
    rgb = alpha * array[:, :, :3] + (1.0 - alpha)  # on white, as the demo's "new method"
    return torch.from_numpy(rgb).permute(2, 0, 1) * 2.0 - 1.0


def clip_preprocess(x: torch.Tensor, size_px: int) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> CLIP input (B, 3, size, size), as kornia's resize in the original."""
    x = F.interpolate(x, size=(size_px, size_px), mode="bicubic", align_corners=True, antialias=False)
    x = (x + 1.0) / 2.0
    mean, std = clip_normalisation(x.device, x.dtype)
    return (x - mean) / std


@functools.cache
def clip_normalisation(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's mean and std, (1, 3, 1, 1) each, made once per device and dtype. A tensor made from host data on a GPU
    is a copy the host waits for, behind all the work queued before it: made in every call, at its views' quality
    (`clip_similarity`), it would wait for the call's whole denoising loop, and a queued call would return only when
    its views were nearly done."""
    mean = torch.tensor(CLIP_MEAN, device=device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device, dtype=dtype).view(1, 3, 1, 1)
    return mean, std


def _stride(timesteps: list[int], num_inference_steps: int, num_train_timesteps: int) -> int:
    """How far back each step of a timestep list goes: its spacing, or T // n for a single timestep."""
    return timesteps[0] - timesteps[1] if len(timesteps) > 1 else num_train_timesteps // num_inference_steps


class NoiseDraws:
    """A call's standard-normal draws in the order it makes them, each (B, *shape) float32 on `device`, sample i
    from generators[i], so that a sample's noise does not depend on its batch.

    CPU generators draw into the rows of one host buffer made for the call, page-locked when `device` is a GPU
    (102 MiB requested for 128 views of 256 px and 50 steps), and each row is copied to the device without waiting.
    That is one page-locked allocation per call instead of one per draw (`pin_memory()`): CUDA lists such
    allocations among its implicit synchronisations, and one per step could keep the host in step with the device
    rather than queuing ahead of it. The CPU fills the same buffer, so that one code path serves both. Generators on
    a device draw there.
    """

    def __init__(self, generators: list[torch.Generator], shape: tuple[int, ...], count: int, device):
        self.generators, self.shape, self.device = generators, shape, torch.device(device)
        on_cpu = count > 0 and all(g.device.type == "cpu" for g in generators)
        size = (count, len(generators), *shape)
        self.buffer = torch.empty(size, pin_memory=self.device.type == "cuda") if on_cpu else None
        self.drawn = 0

    def next(self) -> torch.Tensor:
        if self.buffer is None:
            noise = torch.stack([torch.randn(self.shape, generator=g, device=g.device) for g in self.generators])
            return noise.to(self.device)
        row = self.buffer[self.drawn]
        self.drawn += 1
        for generator, sample in zip(self.generators, row):
            torch.randn(self.shape, generator=generator, out=sample)
        return row.to(self.device, non_blocking=True)


class PendingViews:
    """A call's views, and optionally their quality (CLIP similarities and `pixel_sums`), on their way to the
    host: the copies are queued behind the call's own kernels, so `result()` waits for this call alone, not for
    work queued after it."""

    def __init__(self, views: torch.Tensor, quality: tuple[torch.Tensor, torch.Tensor] | None = None):
        # From a CUDA device the copies are non-blocking into pinned host memory, valid once the event (on the
        # views' device's stream, where the copies run) has passed; from any other device they are plain copies.
        cuda = views.device.type == "cuda"
        self._views = views.to("cpu", non_blocking=cuda)
        self._quality = None if quality is None else tuple(t.to("cpu", non_blocking=cuda) for t in quality)
        self._copied = None
        if cuda:
            self._copied = torch.cuda.Event()
            self._copied.record(torch.cuda.current_stream(views.device))

    def result(self) -> list[Image.Image] | tuple[list[Image.Image], list[dict]]:
        """The views (and their quality records, when the call computed them)."""
        if self._copied is not None:
            self._copied.synchronize()
        images = [Image.fromarray(array) for array in self._views.numpy()]
        if self._quality is None:
            return images
        similarity, sums = self._quality
        _, height, width, _ = self._views.shape
        return images, quality_records(similarity.tolist(), sums.tolist(), height, width)


class SingleTokenCrossAttnProcessor:
    """Exact cross-attention for a one-token context: softmax over one key is 1, so out = to_out(to_v(c))."""

    def __init__(self):
        self.fallback = AttnProcessor2_0()

    def __call__(
        self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs
    ):
        if (
            encoder_hidden_states is None
            or encoder_hidden_states.shape[1] != 1
            or hidden_states.ndim != 3
            or attention_mask is not None
            or attn.norm_cross
            or attn.spatial_norm is not None
            or attn.group_norm is not None
        ):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        value = attn.to_v(encoder_hidden_states)  # (B, 1, inner_dim)
        out = attn.to_out[1](attn.to_out[0](value))  # (B, 1, C): the same for every query
        out = out.expand(-1, hidden_states.shape[1], -1)  # (B, N, C)
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class Zero123Pipeline:
    """Zero123 novel-view sampler holding the loaded components (see the module docstring)."""

    def __init__(self, components: Zero123Components):
        self.unet, self.vae = components.unet, components.vae
        self.image_encoder = components.image_encoder
        self.pose_projection = components.pose_projection.float()  # see encode
        self.scheduler = components.scheduler
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.unet_multiple = 2 ** (len(self.unet.config.block_out_channels) - 1)  # latent side must divide
        self.fused = False
        self._set_processors(AttnProcessor2_0)

    def _set_processors(self, self_attention) -> None:
        """attn1 (self-attention): `self_attention`; attn2 (one-token cross-attention): the exact shortcut."""
        self.unet.set_attn_processor(
            {
                name: SingleTokenCrossAttnProcessor() if name.endswith("attn2.processor") else self_attention()
                for name in self.unet.attn_processors
            }
        )

    @classmethod
    def from_pretrained(
        cls,
        model,
        dtype: torch.dtype = torch.float16,
        device: str | torch.device = "cpu",
        variant: str | None = None,
        revision: str | None = None,
    ) -> Zero123Pipeline:
        """Load a hub id (at `revision`; None: main) or local folder (kxic or bennyguo layout) onto `device`
        in `dtype`: the weights are read straight onto the device (no float32 copy in host memory)."""
        return cls(load_components(model, dtype, variant, revision, device)).to(device)

    def to(self, device: str | torch.device) -> Zero123Pipeline:
        for module in (self.unet, self.vae):
            module.to(device, memory_format=torch.channels_last)
        self.image_encoder.to(device)
        self.pose_projection.to(device)
        return self

    def fuse_projections(self) -> None:
        """One (C, 3C) GEMM for q, k, v of each self-attention instead of three (the same math)."""
        if not self.fused:
            self.unet.fuse_qkv_projections()
            self._set_processors(FusedAttnProcessor2_0)
            self.fused = True

    def compile(self, mode: str = "reduce-overhead") -> None:
        """Fuse projections and torch.compile the UNet (and the VAE decoder) for static shapes (CUDA).

        "reduce-overhead" replays the UNet as a CUDA graph (H200, 256 px, bf16, 128 views per call:
        UNet 430 TFLOP/s, about 50 s of compilation per batch shape). "max-autotune" also autotunes every
        GEMM: over 8 minutes of compilation on the H200, not finished within the benchmark's limit.
        Convolutions stay on cuDNN; 1x1 convolutions become GEMMs that the compiler can fuse.
        """
        import torch._inductor.config as inductor

        use_compile_cache()  # a later run (or process) loads the compiled graphs instead of compiling again
        torch.backends.cudnn.benchmark = True
        inductor.conv_1x1_as_mm = True
        inductor.coordinate_descent_tuning = mode.startswith("max-autotune")  # slower compile, faster kernels
        inductor.max_autotune_conv_backends = "ATEN"
        self.fuse_projections()
        self.unet = torch.compile(self.unet, mode=mode, fullgraph=True)
        # The VAE decoder runs once per batch, but at 256 px it costs as much as five UNet steps eager
        # (H200, 128 views: 546 ms eager, 194 ms compiled). No CUDA graph: it is one long call.
        self._decode_to_uint8 = torch.compile(self._decode_to_uint8, fullgraph=True)

    @property
    def device(self) -> torch.device:
        return self.pose_projection.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the UNet, VAE and CLIP; the pose projection stays float32 (see encode)."""
        return self.vae.dtype

    def check_inputs(
        self, images, poses, generators, num_inference_steps, guidance_scale, eta, image_size_px, timesteps, latents
    ) -> None:
        if not images or not all(isinstance(im, Image.Image) for im in images):
            raise ZeroVLMError("images: expected a non-empty list of PIL images")
        batch = len(images)
        if not isinstance(poses, torch.Tensor) or tuple(poses.shape) != (batch, 4):
            raise ZeroVLMError(
                f"poses: expected a tensor of shape ({batch}, 4), got "
                f"{tuple(poses.shape) if isinstance(poses, torch.Tensor) else type(poses).__name__}"
            )
        if not torch.isfinite(poses).all():
            raise ZeroVLMError(f"poses: values must be finite, got {poses.tolist()}")
        if len(generators) != batch or not all(isinstance(g, torch.Generator) for g in generators):
            raise ZeroVLMError(f"generators: expected {batch} torch.Generator (one per sample), got {len(generators)}")
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= 1000:
            raise ZeroVLMError(f"num_inference_steps: expected an int in [1, 1000], got {num_inference_steps!r}")
        if not math.isfinite(guidance_scale) or guidance_scale < 1.0:
            raise ZeroVLMError(f"guidance_scale: expected >= 1.0 (1.0 disables guidance), got {guidance_scale!r}")
        if not 0.0 <= eta <= 1.0:
            raise ZeroVLMError(f"eta: expected a value in [0, 1], got {eta!r}")
        multiple = self.vae_scale_factor * self.unet_multiple
        if image_size_px % multiple:
            raise ZeroVLMError(
                f"image_size_px: {image_size_px} is not a multiple of {multiple} (VAE downsampling x UNet downsampling)"
            )
        if timesteps is not None:
            strides = {a - b for a, b in zip(timesteps, timesteps[1:])}
            train = self.scheduler.config.num_train_timesteps
            if (
                not timesteps
                or len(strides) > 1
                or min(strides, default=1) <= 0
                or not 0 <= min(timesteps) <= max(timesteps) < train
            ):
                raise ZeroVLMError(
                    f"timesteps: expected a descending list with one stride in [0, {train}), got {timesteps}"
                )
            stride = _stride(timesteps, num_inference_steps, train)
            if train // (train // stride) != stride:  # DDIMScheduler.step goes back T // (its step count)
                raise ZeroVLMError(
                    f"timesteps: stride {stride} cannot be stepped (DDIM goes back {train} // "
                    f"{train // stride} = {train // (train // stride)} per step); use a stride "
                    f"{train} // n for some n, as ldm_timesteps(n) does"
                )
        if latents is not None:
            side = image_size_px // self.vae_scale_factor
            expected = (batch, self.vae.config.latent_channels, side, side)
            if tuple(latents.shape) != expected:
                raise ZeroVLMError(f"latents: expected shape {expected}, got {tuple(latents.shape)}")

    def _set_timesteps(self, scheduler: DDIMScheduler, num_inference_steps: int, timesteps) -> torch.Tensor:
        if timesteps is None:
            scheduler.set_timesteps(num_inference_steps)
            return scheduler.timesteps
        # DDIMScheduler.step goes back T // num_inference_steps: pick n giving the list's stride (ldm 75 -> 76).
        train = scheduler.config.num_train_timesteps
        scheduler.set_timesteps(train // _stride(timesteps, num_inference_steps, train))
        scheduler.timesteps = torch.tensor(timesteps, dtype=torch.long)
        return scheduler.timesteps

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings (B, E), projected and not normalised, of images (B, 3, H, W) in [-1, 1]."""
        clip_size = self.image_encoder.config.image_size
        return self.image_encoder(clip_preprocess(x, clip_size).to(self.dtype)).image_embeds

    @torch.no_grad()
    def encode(self, images: list[Image.Image], poses: torch.Tensor, image_size_px: int):
        """Cross-attention context (B, 1, D), the unscaled conditioning latent (B, 4, h, w) and the input's
        CLIP embedding (B, E).

        The views of one image arrive as the same PIL object: each distinct object is encoded once.
        """
        slot: dict[int, int] = {}
        index = [slot.setdefault(id(image), len(slot)) for image in images]
        distinct = list({id(image): image for image in images}.values())
        x = torch.stack([prepare_image(im, image_size_px) for im in distinct]).to(self.device)  # (U, 3, H, W)
        embeds = self.embed(x)  # (U, E)
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        cond_latent = self.vae.encode(x).latent_dist.mode()  # (U, 4, h, w)
        index = torch.tensor(index, device=self.device)
        embeds, cond_latent = embeds[index], cond_latent[index]  # (B, ...)
        # The pose and its projection in float32, cast afterwards, as the original (an fp32 demo): half
        # precision would round the pose angles, the projection weights and its (E + 4)-term sums.
        pose = poses.to(self.device, torch.float32)[:, None, :]  # (B, 1, 4)
        context = self.pose_projection(torch.cat([embeds[:, None, :].float(), pose], dim=-1))  # (B, 1, D)
        return context.to(self.dtype), cond_latent, embeds

    @torch.no_grad()
    def clip_similarity(self, input_embeds: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """(B,) float32 cosine similarity between the inputs' CLIP embeddings (B, E) and those of the views
        (B, H, W, 3) uint8, the pixels as stored, prepared as the input is (encode) for the same encoder."""
        x = views.permute(0, 3, 1, 2).float() / 255.0 * 2.0 - 1.0  # (B, 3, H, W) in [-1, 1], as prepare_image
        return F.cosine_similarity(input_embeds.float(), self.embed(x).float(), dim=-1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        return PendingViews(self._decode_to_uint8(latents)).result()

    def _decode_to_uint8(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) latents -> (B, H, W, 3) uint8 on the device (compiled by `compile`)."""
        latents = (latents / self.vae.config.scaling_factor).to(self.dtype)
        x = self.vae.decode(latents.contiguous(memory_format=torch.channels_last)).sample  # (B, 3, H, W)
        x = ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)
        # uint8 by truncation (numpy astype in the original demo; diffusers rounds instead)
        return (255.0 * x.permute(0, 2, 3, 1)).to(torch.uint8)

    @torch.no_grad()
    def __call__(
        self,
        images: list[Image.Image],
        poses: torch.Tensor,
        generators: list[torch.Generator],
        num_inference_steps: int = 50,
        guidance_scale: float = 3.0,
        eta: float = 1.0,
        image_size_px: int = 256,
        timesteps: list[int] | None = None,
        latents: torch.Tensor | None = None,
        quality_white_min_rgb: int | None = None,
        output_type: str = "pil",
    ) -> list[Image.Image] | tuple[list[Image.Image], list[dict]] | PendingViews:
        """The views; with `quality_white_min_rgb`, also each view's quality record (quality.py). With
        output_type "pending", the call returns once its work is queued on the device: its `PendingViews.result()`
        gives the same, so the caller can queue the next call first and keep the device busy."""
        self.check_inputs(
            images, poses, generators, num_inference_steps, guidance_scale, eta, image_size_px, timesteps, latents
        )
        if output_type not in ("pil", "pending"):
            raise ZeroVLMError(f'output_type: expected "pil" or "pending", got {output_type!r}')
        do_guidance = guidance_scale > 1.0

        # On a GPU the host's tensor work between steps (drawing the noise) is small: on one thread it presumably no
        # longer waits at OpenMP's parallel operators for cores that the caller's PNG encoders hold (not yet measured
        # on a GPU: benchmarks/views_encoding.py sets this beside torch's default threads).
        host = one_intra_op_thread() if self.device.type == "cuda" else contextlib.nullcontext()
        with host:
            # 1. encode the input views and poses
            context, cond_latent, input_embeds = self.encode(images, poses, image_size_px)
            if do_guidance:  # [unconditional; conditional]: zeros after the projection, zero image latent
                context = torch.cat([torch.zeros_like(context), context])
                cond_latent = torch.cat([torch.zeros_like(cond_latent), cond_latent])

            # 2. timesteps (a fresh scheduler: set_timesteps mutates it)
            scheduler = DDIMScheduler.from_config(self.scheduler.config)
            steps = self._set_timesteps(scheduler, num_inference_steps, timesteps)

            # 3. prepare latents (B, 4, h, w), float32: the DDIM arithmetic stays in full precision
            side = image_size_px // self.vae_scale_factor
            shape = (self.vae.config.latent_channels, side, side)
            draws = (1 if latents is None else 0) + (len(steps) if eta > 0 else 0)
            noise = NoiseDraws(generators, shape, draws, self.device)
            if latents is None:
                latents = noise.next() * scheduler.init_noise_sigma
            latents = latents.to(self.device, torch.float32)
            cond_latent = cond_latent.float()
            steps_device = steps.to(self.device)  # (steps,): no host-device copy inside the loop

            # 4. denoise
            for index, t in enumerate(steps.tolist()):
                model_input = torch.cat([latents, latents]) if do_guidance else latents
                model_input = scheduler.scale_model_input(model_input, t)
                model_input = torch.cat([model_input, cond_latent], dim=1).to(self.dtype)  # (2B, 8, h, w)
                eps = self.unet(model_input, steps_device[index], encoder_hidden_states=context, return_dict=False)[
                    0
                ].float()
                if do_guidance:
                    eps_uncond, eps_cond = eps.chunk(2)
                    eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
                # the CPU draws the next noise while the GPU runs this step
                variance_noise = noise.next() if eta > 0 else None
                latents = scheduler.step(eps, t, latents, eta=eta, variance_noise=variance_noise).prev_sample

            # 5. decode (6. with `quality_white_min_rgb`: the views' quality, from the views still on the device)
            views = self._decode_to_uint8(latents)  # (B, H, W, 3)
            if quality_white_min_rgb is None:
                pending = PendingViews(views)
            else:
                quality = (self.clip_similarity(input_embeds, views), pixel_sums(views, quality_white_min_rgb))
                pending = PendingViews(views, quality)
        return pending if output_type == "pending" else pending.result()
