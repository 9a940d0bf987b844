"""SSPOSelfSamplingPipeline.sample_latents against the stock StableDiffusionPipeline, its
train/eval and inference-mode hygiene, and sampling from an RCR snapshot of a LoRA UNet."""

import os

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from sspo_utils import ReferencePool, SSPOSelfSamplingPipeline


PROMPTS = ["a red circle on a blue background", "a green square on a white background"]


@pytest.fixture(scope="module")
def stock_pipe(tiny_model_dir):
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model_dir, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    return pipe


def make_sampler(pipe, unet=None):
    return SSPOSelfSamplingPipeline.from_training_components(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=unet if unet is not None else pipe.unet,
        scheduler=DDIMScheduler.from_config(pipe.scheduler.config),
    )


@pytest.fixture(scope="module")
def sampler(stock_pipe):
    s = make_sampler(stock_pipe)
    assert s.scheduler is not stock_pipe.scheduler
    return s


@pytest.fixture(scope="module")
def embeds(stock_pipe):
    with torch.no_grad():
        prompt_embeds, negative_prompt_embeds = stock_pipe.encode_prompt(
            PROMPTS, "cpu", 1, True, negative_prompt=None
        )
    return prompt_embeds, negative_prompt_embeds


def stock_latents(pipe, guidance_scale, steps, seed=0):
    return pipe(
        PROMPTS,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        output_type="latent",
        generator=torch.Generator().manual_seed(seed),
    ).images


def sample(sampler, embeds, guidance_scale, steps, seed=0, **kwargs):
    prompt_embeds, negative_prompt_embeds = embeds
    return sampler.sample_latents(
        prompt_embeds,
        negative_prompt_embeds,
        height=64,
        width=64,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def test_latents_equal_stock_pipeline_with_cfg(stock_pipe, sampler, embeds):
    expected = stock_latents(stock_pipe, guidance_scale=7.5, steps=20)
    got = sample(sampler, embeds, guidance_scale=7.5, steps=20)
    assert got.shape == (2, 4, 8, 8) == tuple(expected.shape)
    assert got.dtype == expected.dtype
    assert torch.equal(got, expected)
    # not trivially equal: the two prompts give different latents, and denoising moved them
    assert not torch.allclose(got[0], got[1])
    initial_noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(got, initial_noise, atol=1e-2)


def test_latents_equal_stock_pipeline_without_cfg(stock_pipe, sampler, embeds):
    expected = stock_latents(stock_pipe, guidance_scale=1.0, steps=5)
    got = sample(sampler, embeds, guidance_scale=1.0, steps=5)
    assert torch.equal(got, expected)
    with_cfg = sample(sampler, embeds, guidance_scale=7.5, steps=5)
    assert not torch.allclose(got, with_cfg)


def test_single_negative_embedding_is_broadcast(sampler, embeds):
    prompt_embeds, negative_prompt_embeds = embeds
    # the negative prompt is "" for both rows, so one row stands for both
    assert torch.equal(negative_prompt_embeds[0], negative_prompt_embeds[1])
    full = sample(sampler, embeds, guidance_scale=7.5, steps=3)
    single = sample(sampler, (prompt_embeds, negative_prompt_embeds[:1]), guidance_scale=7.5, steps=3)
    assert torch.equal(full, single)


def test_given_latents_match_generated_ones(sampler, embeds):
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    from_noise = sample(sampler, embeds, guidance_scale=7.5, steps=3, seed=123, latents=noise)
    from_seed = sample(sampler, embeds, guidance_scale=7.5, steps=3, seed=0)
    assert torch.equal(from_noise, from_seed)


@pytest.mark.parametrize("training", [True, False])
def test_unet_mode_is_restored_and_eval_during_sampling(sampler, embeds, training):
    unet = sampler.unet
    seen = []
    handle = unet.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    try:
        unet.train(training)
        sample(sampler, embeds, guidance_scale=7.5, steps=2)
    finally:
        handle.remove()
        was = unet.training
        unet.eval()
    assert was is training
    assert seen == [False, False]  # one batched CFG call per step, in eval mode


def test_unet_mode_is_restored_when_sampling_raises(sampler, embeds):
    unet = sampler.unet

    def fail(module, args):
        raise RuntimeError("unet failed")

    handle = unet.register_forward_pre_hook(fail)
    try:
        unet.train()
        with pytest.raises(RuntimeError, match="unet failed"):
            sample(sampler, embeds, guidance_scale=7.5, steps=2)
        assert unet.training
        assert all(m.training for m in unet.modules())
    finally:
        handle.remove()
        unet.eval()


def test_inference_mode_latents_feed_a_grad_forward(sampler, embeds):
    unet = sampler.unet
    z_s = sample(sampler, embeds, guidance_scale=7.5, steps=2)
    assert z_s.is_inference()
    assert not torch.is_inference_mode_enabled()

    noise = torch.randn(z_s.shape, generator=torch.Generator().manual_seed(3))
    noisy = torch.add(z_s, noise)
    assert not noisy.is_inference()
    was_requires_grad = [p.requires_grad for p in unet.parameters()]
    unet.requires_grad_(True)
    try:
        pred = unet(noisy, torch.tensor([100, 700]), encoder_hidden_states=embeds[0].detach()).sample
        loss = (pred - noise).pow(2).mean()
        loss.backward()
        grads = [p.grad for p in unet.parameters()]
        assert all(g is not None for g in grads)
        assert all(torch.isfinite(g).all() for g in grads)
    finally:
        unet.zero_grad(set_to_none=True)
        for p, flag in zip(unet.parameters(), was_requires_grad):
            p.requires_grad_(flag)


def test_lora_snapshot_zero_samples_like_the_initial_model(stock_pipe, tiny_model_dir, embeds):
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(os.path.join(tiny_model_dir, "unet"))
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                   target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    unet.train()
    lora_params = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    assert lora_params
    pool = ReferencePool(lora_params)
    lora_sampler = make_sampler(stock_pipe, unet=unet)

    z_initial = sample(lora_sampler, embeds, guidance_scale=7.5, steps=4)

    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, p in lora_params:
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    live = [p.detach().clone() for _, p in lora_params]
    z_perturbed = sample(lora_sampler, embeds, guidance_scale=7.5, steps=4)
    assert not torch.allclose(z_perturbed, z_initial, atol=1e-4)

    with pool.swapped_in(0):
        z_reference = sample(lora_sampler, embeds, guidance_scale=7.5, steps=4)
    assert torch.equal(z_reference, z_initial)

    # live (perturbed) weights and training mode are back
    assert unet.training
    for (_, p), saved in zip(lora_params, live):
        assert torch.equal(p, saved)
    assert torch.equal(sample(lora_sampler, embeds, guidance_scale=7.5, steps=4), z_perturbed)
