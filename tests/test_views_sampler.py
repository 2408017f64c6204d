"""The Zero123 sampler on tiny random weights: DDIM against the original's loop, guidance, schedules, precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image
from torch.overrides import TorchFunctionMode

from tests.views_fixtures import scene, tiny_models  # noqa: F401  (pytest fixture)
from zerovlm.io import ZeroVLMError
from zerovlm.views.checkpoints import load_pose_projection
from zerovlm.views.poses import PRESETS, ViewPose, pose_vector
from zerovlm.views.zero123 import PendingViews, Zero123Pipeline, clip_preprocess, ldm_timesteps, prepare_image

SIZE = 32  # px -> 8x8 latents with the tiny VAE (downsampling 4)


@pytest.fixture(scope="module")
def pipe(tiny_models):
    return Zero123Pipeline.from_pretrained(tiny_models["kxic"], torch.float32, "cpu")


def inputs(n: int = 3, seed: int = 0):
    images = [scene(i) for i in range(n)]
    poses = torch.stack([pose_vector(ViewPose(f"v{i}", 10.0 * i, -90.0 + 60 * i, 0.1)) for i in range(n)])
    generators = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    return images, poses, generators


def capture_latents(pipe, monkeypatch) -> list[torch.Tensor]:
    """Make the pipeline record the final latents instead of decoding them (its views are then 1x1 black)."""
    captured = []

    def record(latents):
        captured.append(latents.clone())
        return torch.zeros(len(latents), 1, 1, 3, dtype=torch.uint8)

    monkeypatch.setattr(pipe, "_decode_to_uint8", record)
    return captured


def alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2  # scaled_linear
    return torch.cumprod(1.0 - betas, dim=0)


def original_ddim(pipe, images, poses, latents, steps, guidance, t_start, eta=0.0, noise=None):
    """The original's DDIM loop over the same UNet and conditioning, from its formulas
    (cvlab-columbia/zero123 ldm/modules/diffusionmodules/util.py make_ddim_timesteps and
    make_ddim_sampling_parameters, ldm/models/diffusion/ddim.py ddim_sampling and p_sample_ddim).
    t_start=-1 is the original's default; None runs the whole list. With eta > 0, `noise()` gives each step's
    standard-normal draw. -> (latents, timesteps run)."""
    context, cond, _ = pipe.encode(images, poses, SIZE)
    a = alphas_cumprod()
    ddim_timesteps = np.asarray(list(range(0, 1000, 1000 // steps))) + 1  # "uniform", steps_out = +1
    alphas = a[ddim_timesteps]
    alphas_prev = torch.cat([a[:1], a[ddim_timesteps[:-1]]])
    timesteps = ddim_timesteps[:t_start]
    total_steps, run = timesteps.shape[0], []
    x = latents.double()
    for i, step in enumerate(np.flip(timesteps)):
        index = total_steps - i - 1
        run.append(int(step))
        with torch.no_grad():
            e_c = pipe.unet(torch.cat([x.float(), cond], 1), int(step), encoder_hidden_states=context).sample.double()
            e_u = pipe.unet(
                torch.cat([x.float(), torch.zeros_like(cond)], 1),
                int(step),
                encoder_hidden_states=torch.zeros_like(context),
            ).sample.double()
        e_t = e_u + guidance * (e_c - e_u) if guidance > 1 else e_c
        a_t, a_prev = alphas[index], alphas_prev[index]
        pred_x0 = (x - (1 - a_t).sqrt() * e_t) / a_t.sqrt()
        sigma_t = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        x = a_prev.sqrt() * pred_x0 + (1 - a_prev - sigma_t**2).sqrt() * e_t
        if eta > 0:
            x = x + sigma_t * noise().double()
    return x.float(), run


@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_ddim_eta0_matches_an_independent_update(pipe, monkeypatch, guidance):
    images, poses, generators = inputs()
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    captured = capture_latents(pipe, monkeypatch)
    pipe(
        images,
        poses,
        generators,
        num_inference_steps=4,
        guidance_scale=guidance,
        eta=0.0,
        image_size_px=SIZE,
        latents=latents,
    )
    # diffusers' 4 "leading" steps are LDM's whole list for 4 (751, 501, 251, 1)
    expected, run = original_ddim(pipe, images, poses, latents, 4, guidance, t_start=None)
    assert run == [751, 501, 251, 1]
    assert torch.allclose(captured[0], expected, atol=1e-4), (captured[0] - expected).abs().max()


def test_ddim_eta1_draws_every_sample_from_its_own_generator(pipe, monkeypatch):
    """At eta 1 (the paper's setting) sample i's initial latents, then one draw per step, come from generators[i]
    in that order, and enter the original's stochastic update (p_sample_ddim)."""
    images, poses, generators = inputs()  # seeded 0, 1, 2
    captured = capture_latents(pipe, monkeypatch)
    pipe(images, poses, generators, num_inference_steps=4, guidance_scale=3.0, eta=1.0, image_size_px=SIZE)
    draws = [torch.Generator().manual_seed(i) for i in range(3)]

    def draw():
        return torch.stack([torch.randn(4, 8, 8, generator=g) for g in draws])

    expected, _ = original_ddim(pipe, images, poses, draw(), 4, 3.0, t_start=None, eta=1.0, noise=draw)
    assert torch.allclose(captured[0], expected, atol=1e-4), (captured[0] - expected).abs().max()


@pytest.mark.parametrize("steps, executed", [(50, range(961, 0, -20)), (75, range(976, 0, -13))])
def test_ldm_schedule_equals_the_original_sampler(pipe, monkeypatch, steps, executed):
    assert ldm_timesteps(steps) == list(executed)  # the highest of LDM's list is not run: 49 and 76 steps
    images, poses, generators = inputs(2)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    seen, captured = [], capture_latents(pipe, monkeypatch)
    unet_forward = pipe.unet.forward
    monkeypatch.setattr(pipe.unet, "forward", lambda x, t, *a, **k: seen.append(int(t)) or unet_forward(x, t, *a, **k))
    pipe(
        images,
        poses,
        generators,
        num_inference_steps=steps,
        guidance_scale=3.0,
        eta=0.0,
        image_size_px=SIZE,
        timesteps=ldm_timesteps(steps),
        latents=latents,
    )
    ran = list(seen)  # original_ddim below calls the same (patched) UNet
    expected, original_run = original_ddim(pipe, images, poses, latents, steps, 3.0, t_start=-1)
    assert ran == original_run == list(executed)
    assert torch.allclose(captured[0], expected, atol=1e-4), (captured[0] - expected).abs().max()


def test_guidance_one_runs_the_conditional_branch_alone(pipe, monkeypatch):
    batches = []
    unet_forward = pipe.unet.forward
    monkeypatch.setattr(pipe.unet, "forward", lambda x, *a, **k: batches.append(x.shape[0]) or unet_forward(x, *a, **k))
    pipe(*inputs(), num_inference_steps=2, guidance_scale=1.0, eta=1.0, image_size_px=SIZE)
    assert batches == [3, 3]
    batches.clear()
    pipe(*inputs(), num_inference_steps=2, guidance_scale=2.0, eta=1.0, image_size_px=SIZE)
    assert batches == [6, 6]  # guidance folded into one batch


def test_conditioning_latent_is_the_unscaled_mode(pipe):
    images, poses, _ = inputs(2)
    context, cond, _ = pipe.encode(images, poses, SIZE)
    x = torch.stack([prepare_image(im, SIZE) for im in images])
    assert context.shape == (2, 1, pipe.unet.config.cross_attention_dim)
    assert torch.allclose(cond, pipe.vae.encode(x).latent_dist.mean, atol=1e-6)


def test_input_is_composited_on_white():
    transparent = scene(0).copy()
    transparent.putalpha(0)
    assert torch.equal(prepare_image(transparent, SIZE), torch.ones(3, SIZE, SIZE))


def test_ldm_schedule_needs_two_requested_steps():
    assert ldm_timesteps(2) == [1]
    with pytest.raises(ZeroVLMError, match="views.num_inference_steps: the ldm schedule runs one step fewer"):
        ldm_timesteps(1)


def test_input_is_shrunk_to_1536_first_as_the_demo():
    rng = np.random.default_rng(0)
    large = Image.fromarray(rng.integers(0, 256, (1700, 2000, 4), dtype=np.uint8), "RGBA")
    # gradio_new.py main_run then preprocess_image without preprocessing: thumbnail, resize, composite
    raw_im = large.copy()
    raw_im.thumbnail([1536, 1536], Image.Resampling.LANCZOS)
    input_im = np.asarray(raw_im.resize([SIZE, SIZE], Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    alpha = input_im[:, :, 3:4]
    input_im = (alpha * input_im + (1.0 - alpha) * np.ones_like(input_im))[:, :, 0:3]
    expected = torch.from_numpy(input_im).permute(2, 0, 1) * 2 - 1
    assert torch.equal(prepare_image(large, SIZE), expected)


def test_pose_projection_runs_in_float32_then_casts(tiny_models):
    half = Zero123Pipeline.from_pretrained(tiny_models["kxic"], torch.float16, "cpu")
    projection = load_pose_projection(str(tiny_models["kxic"]), "kxic")  # the float32 weights on disk
    images = [scene(i) for i in range(4)]
    poses = torch.stack(
        [pose_vector(ViewPose(f"v{i}", -35.0 + 23 * i, 17.0 + 41 * i, 0.3 - 0.2 * i)) for i in range(4)]
    )
    context, _, _ = half.encode(images, poses, SIZE)
    x = torch.stack([prepare_image(im, SIZE) for im in images])
    with torch.no_grad():  # (B, E) from the fp16 CLIP
        embeds = half.image_encoder(clip_preprocess(x, half.image_encoder.config.image_size).half()).image_embeds
        inputs32 = torch.cat([embeds.float(), poses], dim=-1)  # (B, E + 4)
        expected = F.linear(inputs32, projection.weight, projection.bias).half()
        in_half = F.linear(inputs32.half(), projection.weight.half(), projection.bias.half())
    assert context.dtype == torch.float16 and torch.equal(context[:, 0], expected)
    assert not torch.equal(in_half, expected)  # a case where projecting in half precision differs


def test_same_generators_same_views_whatever_the_batch(pipe):
    images, poses, _ = inputs(3, seed=7)
    together = pipe(images, poses, [torch.Generator().manual_seed(7 + i) for i in range(3)], 3, 3.0, 1.0, SIZE)
    again = pipe(images, poses, [torch.Generator().manual_seed(7 + i) for i in range(3)], 3, 3.0, 1.0, SIZE)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(together, again))
    # Alone in its batch: the same noise; the float kernels may block a GEMM differently for another batch
    # size, so a rare pixel can differ by one level after the uint8 truncation.
    alone = pipe(images[1:2], poses[1:2], [torch.Generator().manual_seed(8)], 3, 3.0, 1.0, SIZE)
    difference = np.abs(np.asarray(together[1], dtype=int) - np.asarray(alone[0], dtype=int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01


class HostWaits(TorchFunctionMode):
    """Records, once `on`, the torch calls that make the host wait for the device on a GPU: a tensor made from
    host data on the device (a blocking copy behind everything queued) and reading a device tensor's values. A
    blocking `.to(device)` cannot be told from a no-op on the CPU and is not recorded."""

    WAITING = {
        torch.tensor,
        torch.as_tensor,
        torch.Tensor.item,
        torch.Tensor.tolist,
        torch.Tensor.__bool__,
        torch.Tensor.cpu,
        torch.Tensor.numpy,
        torch.Tensor.nonzero,
        torch.nonzero,
    }

    def __init__(self):
        super().__init__()
        self.on, self.calls = False, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.on and func in self.WAITING:
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_a_queued_call_makes_the_host_wait_for_nothing_once_it_has_queued_a_step(pipe, monkeypatch):
    """Once a call has queued its first UNet step, a host wait would hold the host until the denoising loop ended,
    so a queued call (output_type "pending") could not return before its views were nearly done."""
    images, poses, _ = inputs(2)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    pipe(images, poses, generators, 2, 3.0, 1.0, SIZE, quality_white_min_rgb=250)  # what is made once, made
    waits, unet_forward = HostWaits(), pipe.unet.forward
    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: setattr(waits, "on", True) or unet_forward(*a, **k))
    with waits:
        pending = pipe(images, poses, generators, 2, 3.0, 1.0, SIZE, quality_white_min_rgb=250, output_type="pending")
    pending.result()
    assert waits.on and waits.calls == []


def test_a_pending_call_gives_what_a_plain_call_gives(pipe):
    """output_type="pending" returns before the views reach the host; its result() is the plain call's views
    and quality records, and an unknown output_type is refused in one line."""
    images, poses, _ = inputs(2, seed=3)

    def call(**kwargs):
        generators = [torch.Generator().manual_seed(3 + i) for i in range(2)]
        return pipe(images, poses, generators, 2, 3.0, 1.0, SIZE, quality_white_min_rgb=250, **kwargs)

    plain_views, plain_qualities = call()
    pending = call(output_type="pending")
    assert isinstance(pending, PendingViews)
    views, qualities = pending.result()
    assert [np.asarray(v).tobytes() for v in views] == [np.asarray(v).tobytes() for v in plain_views]
    assert qualities == plain_qualities and set(qualities[0]) == {"clip_similarity", "pixel_std", "background_share"}
    with pytest.raises(ZeroVLMError, match='output_type: expected "pil" or "pending"'):
        call(output_type="np")


def test_single_token_cross_attention_is_exact(pipe, monkeypatch):
    images, poses, generators = inputs(2)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    captured = capture_latents(pipe, monkeypatch)
    pipe(images, poses, generators, 2, 3.0, 0.0, SIZE, latents=latents)
    processors = pipe.unet.attn_processors
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    try:
        pipe(images, poses, generators, 2, 3.0, 0.0, SIZE, latents=latents)
    finally:
        pipe.unet.set_attn_processor(processors)
    assert torch.allclose(captured[0], captured[1], atol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(poses=torch.zeros(3, 3)), "poses: expected a tensor of shape"),
        (dict(poses=torch.full((3, 4), float("nan"))), "finite"),
        (dict(generators=[]), "generators"),
        (dict(guidance_scale=0.5), "guidance_scale"),
        (dict(eta=2.0), "eta"),
        (dict(image_size_px=36), "multiple of 8"),
        (dict(timesteps=[1, 14, 27]), "descending"),
        (dict(timesteps=[901, 601, 301, 1]), r"stride 300 cannot be stepped \(DDIM goes back 1000 // 3 = 333"),
        (dict(images=["not an image"] * 3), "PIL images"),
    ],
)
def test_bad_inputs_are_clear_errors(pipe, change, message):
    images, poses, generators = inputs()
    kwargs = dict(
        images=images,
        poses=poses,
        generators=generators,
        num_inference_steps=2,
        guidance_scale=3.0,
        eta=1.0,
        image_size_px=SIZE,
    )
    kwargs.update(change)
    with pytest.raises(ZeroVLMError, match=message):
        pipe(**kwargs)


def test_preset_pose_runs(pipe):
    views = pipe([scene(0)], pose_vector(PRESETS["top"])[None], [torch.Generator().manual_seed(0)], 2, 3.0, 1.0, SIZE)
    assert views[0].size == (SIZE, SIZE) and views[0].mode == "RGB"
