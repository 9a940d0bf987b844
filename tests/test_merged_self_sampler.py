"""The merged-copy self-sampler (MergedSnapshotUNet, rcr_sampling_unet): its latents against the LoRA-layer
sampler's in fp32 and in bf16, the trained UNet left untouched, the copy refreshed only when the drawn
snapshot changes, full-module snapshots (AnimateDiff motion modules), and the --self_sample_merged_copy
choice."""

import logging
import os

import pytest
import torch
from diffusers import DDIMScheduler, MotionAdapter, StableDiffusionPipeline, UNet2DConditionModel, UNetMotionModel
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer

from sspo_utils import (
    MergedSnapshotUNet,
    ReferencePool,
    SSPOSelfSamplingPipeline,
    create_merged_copy,
    rcr_sampling_unet,
    self_sample_step,
)


PROMPTS = ["a red circle on a blue background", "a green square on a white background"]
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def embeds(pipe):
    with torch.no_grad():
        return pipe.encode_prompt(PROMPTS, "cpu", 1, True)


def lora_unet(model_dir, dtype=torch.float32):
    """A trained-looking LoRA UNet as the trainers build it (frozen base in ``dtype``, LoRA in fp32), and its
    pool: snapshot 0 is the initial model, snapshot 1 has a non-zero LoRA B."""
    unet = UNet2DConditionModel.from_pretrained(os.path.join(model_dir, "unet")).to(dtype)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    trainable = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    for _, p in trainable:
        p.data = p.data.float()
    pool = ReferencePool(trainable)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in trainable:
            if ".lora_B." in name:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    pool.add(step=1)
    unet.train()
    return unet, pool


def sampler_for(pipe, unet):
    return SSPOSelfSamplingPipeline.from_training_components(
        pipe.vae, pipe.text_encoder, pipe.tokenizer, unet, DDIMScheduler.from_config(pipe.scheduler.config))


def sample(sampler, embeds, steps, dtype=torch.float32, unet=None, autocast=False):
    prompt_embeds, negative = (e.to(dtype) for e in embeds)
    with torch.autocast("cpu", dtype, enabled=autocast):
        return sampler.sample_latents(prompt_embeds, negative, 64, 64, steps, 7.5, torch.Generator().manual_seed(0),
                                      unet=unet).float()


def lora_layer_latents(sampler, pool, index, embeds, steps, dtype=torch.float32):
    """The LoRA-layer sampler as the trainers ran it before: snapshot swapped in, autocast in bf16."""
    with rcr_sampling_unet(pool, index, sampler.unet) as unet:
        return sample(sampler, embeds, steps, dtype, unet, autocast=dtype != torch.float32)


def merged_latents(sampler, pool, index, merged, embeds, steps, dtype=torch.float32):
    with rcr_sampling_unet(pool, index, sampler.unet, merged) as unet:
        assert unet is merged.unet
        return sample(sampler, embeds, steps, dtype, unet)


@pytest.mark.parametrize("steps", [4, pytest.param(20, marks=pytest.mark.slow)])
def test_fp32_merged_latents_equal_lora_layer_latents(pipe, embeds, tiny_model_dir, steps):
    """(W + s B A) x against W x + s B (A x): fp32 reordering only. Measured on this model (2026-12-04): max
    difference 2.7e-05 at 4 steps and 4.9e-05 at 20, with latents up to 17 and 44 (about 1.5e-06 relative);
    the tolerance is 1e-05 of the largest latent."""
    unet, pool = lora_unet(tiny_model_dir)
    sampler = sampler_for(pipe, unet)
    merged = MergedSnapshotUNet(unet, pool.names, torch.float32)
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.unet.modules())  # no LoRA layers left
    for index in (1, 0):
        expected = lora_layer_latents(sampler, pool, index, embeds, steps)
        got = merged_latents(sampler, pool, index, merged, embeds, steps)
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max(), index
    # the snapshot matters: 1 and 0 give different samples
    assert not torch.allclose(merged_latents(sampler, pool, 1, merged, embeds, steps), got, atol=1e-2)


def test_bf16_merged_copy_without_autocast_is_as_accurate_as_the_lora_layers(pipe, embeds, tiny_model_dir):
    """bf16, merged copy without autocast against the LoRA-layer sampler under autocast, both measured against
    the fp32 sampler on the same weights. Measured (2026-12-04, 4 steps; latents up to 17): LoRA layers differ
    from fp32 by 0.327 (max) / 0.095 (RMS), the merged copy by 0.340 / 0.097, and the two by 0.414 / 0.124;
    at 20 steps 0.946 / 0.215, 0.879 / 0.212 and 1.375 / 0.274. So the tolerance is what bf16 itself costs:
    the merged copy within 1.25x the LoRA layers' RMS error against fp32, and the two samplers within 2x
    the LoRA layers' max error of each other."""
    steps = 4
    unet, pool = lora_unet(tiny_model_dir)
    sampler = sampler_for(pipe, unet)
    fp32 = lora_layer_latents(sampler, pool, 1, embeds, steps)
    unet.to(torch.bfloat16)
    for p in pool.params:
        p.data = p.data.float()  # LoRA in fp32, as cast_training_params leaves it
    merged = MergedSnapshotUNet(unet, pool.names, torch.bfloat16)
    assert {p.dtype for p in merged.unet.parameters()} == {torch.bfloat16}  # cast once
    lora_bf16 = lora_layer_latents(sampler, pool, 1, embeds, steps, torch.bfloat16)
    merged_bf16 = merged_latents(sampler, pool, 1, merged, embeds, steps, torch.bfloat16)

    def rms(x):
        return float(x.pow(2).mean().sqrt())

    lora_error, merged_error = lora_bf16 - fp32, merged_bf16 - fp32
    assert 0 < rms(lora_error) < 0.05 * rms(fp32)  # bf16 really ran, and stayed close
    assert rms(merged_error) <= 1.25 * rms(lora_error)
    assert (merged_bf16 - lora_bf16).abs().max() <= 2 * lora_error.abs().max()


def test_merged_copy_runs_without_autocast_and_casts(pipe, embeds, tiny_model_dir):
    """No autocast and no dtype conversion of any weight during a bf16 merged sampling call."""
    unet, pool = lora_unet(tiny_model_dir, torch.bfloat16)
    sampler = sampler_for(pipe, unet)
    merged = MergedSnapshotUNet(unet, pool.names, torch.bfloat16)
    seen = []
    hook = merged.unet.register_forward_pre_hook(lambda module, args: seen.append(torch.is_autocast_enabled("cpu")))
    merged_latents(sampler, pool, 1, merged, embeds, 2, torch.bfloat16)
    hook.remove()
    assert seen == [False, False]


def test_trained_unet_is_untouched_by_merged_sampling(pipe, embeds, tiny_model_dir):
    unet, pool = lora_unet(tiny_model_dir)
    sampler = sampler_for(pipe, unet)
    merged = MergedSnapshotUNet(unet, pool.names, torch.float32)
    before = {n: (p.detach().clone(), p._version) for n, p in unet.named_parameters()}
    merged_latents(sampler, pool, 1, merged, embeds, 2)
    merged_latents(sampler, pool, 0, merged, embeds, 2)
    for name, p in unet.named_parameters():
        value, version = before[name]
        assert torch.equal(p, value) and p._version == version, name  # bit-identical, never written in place
    assert unet.training and any(isinstance(m, BaseTunerLayer) for m in unet.modules())
    # and the copy shares no storage with the trained UNet
    trained = {p.data_ptr() for p in unet.parameters()}
    assert not any(p.data_ptr() in trained for p in merged.unet.parameters())


def test_copy_is_refreshed_only_when_the_drawn_snapshot_changes(tiny_model_dir):
    unet, pool = lora_unet(tiny_model_dir)
    merged = MergedSnapshotUNet(unet, pool.names, torch.float32)
    merged.merge(pool.snapshots[1])
    after_1 = {n: p.clone() for n, p in merged.unet.named_parameters()}
    merged.merge(pool.snapshots[1])
    assert merged.merges == 1  # same snapshot drawn again: nothing recomputed
    merged.merge(pool.snapshots[0])
    assert merged.merges == 2
    assert not all(torch.equal(p, after_1[n]) for n, p in merged.unet.named_parameters())
    # merged again after another one: bit-identical to the first merge (never accumulated onto the last one)
    merged.merge(pool.snapshots[1])
    assert merged.merges == 3 and all(torch.equal(p, after_1[n]) for n, p in merged.unet.named_parameters())
    # a fresh copy (as after a resume) merges the same weights
    fresh = MergedSnapshotUNet(unet, pool.names, torch.float32)
    fresh.merge(pool.snapshots[1])
    assert all(torch.equal(p, after_1[n]) for n, p in fresh.unet.named_parameters())
    # a slot whose content the pool replaced is a new snapshot, even at the same index
    with torch.no_grad():
        for p in pool.params:
            p.mul_(2)
    pool.snapshots[1] = pool._copy_live()
    merged.merge(pool.snapshots[1])
    assert merged.merges == 4


def test_snapshot_zero_merged_equals_the_frozen_base(tiny_model_dir):
    """Snapshot 0 (B = 0) merged gives back the base weights exactly."""
    unet, pool = lora_unet(tiny_model_dir)
    base = UNet2DConditionModel.from_pretrained(os.path.join(tiny_model_dir, "unet"))
    merged = MergedSnapshotUNet(unet, pool.names, torch.float32).merge(pool.snapshots[0])
    base_params = dict(base.named_parameters())
    assert set(dict(merged.named_parameters())) == set(base_params)
    assert all(torch.equal(p, base_params[n]) for n, p in merged.named_parameters())


def test_motion_module_snapshots_are_copied_in(tiny_model_dir, tiny_motion_adapter_dir):
    """--train_target motion_modules: the pool snapshots whole modules, which the copy takes as they are; and
    self_sample_step through rcr_sampling_unet gives the swapped-in sampler's videos."""
    unet2d = UNet2DConditionModel.from_pretrained(os.path.join(tiny_model_dir, "unet"))
    unet = UNetMotionModel.from_unet2d(unet2d, MotionAdapter.from_pretrained(tiny_motion_adapter_dir))
    unet.requires_grad_(False)
    unet.freeze_unet2d_params()
    trainable = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    pool = ReferencePool(trainable)
    with torch.no_grad():
        for _, p in trainable:
            p.mul_(1.5)
    pool.add(step=1)
    merged = MergedSnapshotUNet(unet, pool.names, torch.float32)
    assert not merged.lora_merges and len(merged.full_copies) == len(trainable)
    copy_params = dict(merged.merge(pool.snapshots[0]).named_parameters())
    assert all(torch.equal(copy_params[n], s) for n, s in zip(pool.names, pool.snapshots[0]))
    assert not any(p.requires_grad for p in merged.unet.parameters())

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None, requires_safety_checker=False)
    sampler = sampler_for(pipe, unet)
    with torch.no_grad():
        prompt_embeds, negative = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    results = []
    for copy in (None, merged):
        with rcr_sampling_unet(pool, 0, unet, copy) as sampling_unet:
            results.append(self_sample_step(sampler, [prompt_embeds[:1], prompt_embeds[1:]], negative, 64, 64, 3, 7.5,
                                            torch.Generator().manual_seed(0), num_frames=4, unet=sampling_unet))
    for swapped, copied in zip(*results):
        assert swapped.shape == (1, 4, 4, 8, 8)
        assert (swapped - copied).abs().max() <= 1e-5 * swapped.abs().max()


def test_merged_copy_choice(tiny_model_dir, caplog):
    unet, pool = lora_unet(tiny_model_dir)
    with caplog.at_level(logging.INFO, logger="sspo_utils"):
        assert create_merged_copy("off", unet, pool.names, torch.float32) is None
        assert create_merged_copy("auto", unet, pool.names, torch.float32) is None  # CPU: the LoRA layers
        merged = create_merged_copy("on", unet, pool.names, torch.bfloat16)
    assert isinstance(merged, MergedSnapshotUNet)
    frozen = sum(p.numel() for n, p in unet.named_parameters() if ".lora_" not in n)
    assert merged.nbytes == 2 * frozen  # one UNet in bf16
    assert f"{merged.nbytes / 2**30:.2f} GiB more memory" in caplog.text and "swapped in" in caplog.text
