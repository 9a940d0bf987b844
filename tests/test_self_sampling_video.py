"""SSPOSelfSamplingPipeline.sample_latents with a UNetMotionModel (b c f h w latents) against
the stock AnimateDiffPipeline's ``output_type="latent"`` output."""

import pytest
import torch
from diffusers import (
    AnimateDiffPipeline,
    DDIMScheduler,
    MotionAdapter,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNetMotionModel,
)

from sspo_utils import SSPOSelfSamplingPipeline, self_sample_step


PROMPTS = ["a red circle moving right on a blue background", "a green square moving left on a white background"]
NUM_FRAMES, SIZE, STEPS = 4, 64, 5


@pytest.fixture(scope="module")
def stock_pipe(tiny_model_dir, tiny_motion_adapter_dir):
    sd = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None, requires_safety_checker=False)
    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet")
    pipe = AnimateDiffPipeline(
        vae=sd.vae,
        text_encoder=sd.text_encoder,
        tokenizer=sd.tokenizer,
        unet=unet,  # a plain 2D UNet: the pipeline converts it with the adapter
        motion_adapter=MotionAdapter.from_pretrained(tiny_motion_adapter_dir),
        scheduler=DDIMScheduler(
            beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1
        ),
    )
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.unet, UNetMotionModel)
    assert not pipe.free_init_enabled and not pipe.free_noise_enabled
    return pipe


@pytest.fixture(scope="module")
def sampler(stock_pipe):
    unet_config = dict(stock_pipe.unet.config)
    s = SSPOSelfSamplingPipeline.from_training_components(
        vae=stock_pipe.vae,
        text_encoder=stock_pipe.text_encoder,
        tokenizer=stock_pipe.tokenizer,
        unet=stock_pipe.unet,  # the converted UNetMotionModel
        scheduler=DDIMScheduler.from_config(stock_pipe.scheduler.config),
    )
    assert s.unet is stock_pipe.unet and s.scheduler is not stock_pipe.scheduler
    assert s.vae_scale_factor == stock_pipe.vae_scale_factor
    assert dict(s.unet.config) == unet_config  # wrapping it changed nothing
    return s


@pytest.fixture(scope="module")
def embeds(stock_pipe):
    with torch.no_grad():
        return stock_pipe.encode_prompt(PROMPTS, "cpu", 1, True)


def stock_latents(pipe, guidance_scale):
    return pipe(
        PROMPTS,
        num_frames=NUM_FRAMES,
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        guidance_scale=guidance_scale,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).frames


def sample(sampler, embeds, guidance_scale, **kwargs):
    prompt_embeds, negative_prompt_embeds = embeds
    return sampler.sample_latents(
        prompt_embeds,
        negative_prompt_embeds,
        SIZE,
        SIZE,
        STEPS,
        guidance_scale,
        torch.Generator().manual_seed(0),
        num_frames=NUM_FRAMES,
        **kwargs,
    )


@pytest.fixture(scope="module")
def cfg_latents(sampler, embeds):
    return sample(sampler, embeds, 7.5)


def test_video_latents_equal_animatediff_with_cfg(stock_pipe, cfg_latents):
    expected = stock_latents(stock_pipe, 7.5)
    assert cfg_latents.shape == (2, 4, NUM_FRAMES, 8, 8) == tuple(expected.shape)
    assert cfg_latents.dtype == expected.dtype
    assert torch.equal(cfg_latents, expected)
    # not trivially equal: prompts and frames differ, and denoising moved the noise
    assert not torch.allclose(cfg_latents[0], cfg_latents[1])
    assert not torch.allclose(cfg_latents[:, :, 0], cfg_latents[:, :, 1])
    initial_noise = torch.randn((2, 4, NUM_FRAMES, 8, 8), generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(cfg_latents, initial_noise, atol=1e-2)


def test_video_latents_equal_animatediff_without_cfg(stock_pipe, sampler, embeds, cfg_latents):
    expected = stock_latents(stock_pipe, 1.0)
    got = sample(sampler, embeds, 1.0)
    assert torch.equal(got, expected)
    assert not torch.allclose(got, cfg_latents)


def test_unet_sees_embeddings_repeated_per_frame(sampler, embeds):
    prompt_embeds, negative_prompt_embeds = embeds
    seen = []

    def record(module, args, kwargs):
        seen.append((tuple(args[0].shape), kwargs["encoder_hidden_states"]))

    handle = sampler.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        sample(sampler, embeds, 7.5)
    finally:
        handle.remove()
    assert len(seen) == STEPS
    shape, hidden = seen[0]
    assert shape == (4, 4, NUM_FRAMES, 8, 8)  # [uncond; cond] videos
    expected = torch.cat([negative_prompt_embeds, prompt_embeds]).repeat_interleave(NUM_FRAMES, dim=0)
    assert torch.equal(hidden, expected)


def test_video_latents_from_given_noise(sampler, embeds, cfg_latents):
    noise = torch.randn((2, 4, NUM_FRAMES, 8, 8), generator=torch.Generator().manual_seed(0))
    prompt_embeds, negative_prompt_embeds = embeds
    got = sampler.sample_latents(
        prompt_embeds, negative_prompt_embeds, SIZE, SIZE, STEPS, 7.5,
        torch.Generator().manual_seed(123), num_frames=NUM_FRAMES, latents=noise,
    )
    assert torch.equal(got, cfg_latents)


def test_batched_video_self_samples_equal_per_micro_batch(sampler, embeds):
    """Two micro-batches of one video each: one batched self_sample_step call gives the videos
    of one sample_latents call per micro-batch (same generator, drawn in order)."""
    prompt_embeds, negative_prompt_embeds = embeds
    micro_batches = list(prompt_embeds.split(1))
    generator = torch.Generator().manual_seed(5)
    expected = [sampler.sample_latents(e, negative_prompt_embeds[:1], SIZE, SIZE, STEPS, 7.5, generator,
                                       num_frames=NUM_FRAMES) for e in micro_batches]
    batched = self_sample_step(sampler, micro_batches, negative_prompt_embeds[:1], SIZE, SIZE, STEPS, 7.5,
                               torch.Generator().manual_seed(5), chunk_size=None, num_frames=NUM_FRAMES)
    assert [tuple(v.shape) for v in batched] == [(1, 4, NUM_FRAMES, 8, 8)] * 2
    for got, want in zip(batched, expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)  # batch-size-dependent fp32 kernels
    assert not torch.allclose(batched[0], batched[1])
