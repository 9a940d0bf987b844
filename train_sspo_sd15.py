#!/usr/bin/env python
# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""SSPO (Self-Sampling Preference Optimization, arXiv 2410.05255) LoRA fine-tuning of
Stable Diffusion 1.5 from winning images only.

Each training step: draw a reference checkpoint from the RCR pool, let it generate a
self-sample x^s for every caption, noise x^w and x^s with a shared (t, eps), run one policy
and one reference forward over the pair, and apply the SSR-gated DPO loss (``sspo_loss``).
``--loss_type sft`` and ``--loss_type dpo`` run the SFT and Diffusion-DPO baselines.

    accelerate launch train_sspo_sd15.py --pretrained_model_name_or_path ... --dataset_name ...
"""

import argparse
import os
from functools import partial

import torch
from accelerate.logging import get_logger
from peft import LoraConfig
from torchvision import transforms

from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.training_utils import cast_training_params
from diffusers.utils import check_min_version

from sspo_utils import (
    SSPO_CARD_SETTINGS,
    NonFiniteGuard,
    ReferencePool,
    SSPOSelfSamplingPipeline,
    accumulate_micro_batch,
    add_image_data_arguments,
    add_shared_arguments,
    apply_optimizer_step,
    begin_training,
    build_image_dataloader,
    check_image_data_args,
    create_accelerator,
    create_hub_repo,
    create_merged_copy,
    create_optimizer,
    decode_image,
    dpo_loss,
    draw_noise_and_timesteps,
    draw_reference,
    drop_captions,
    encode_prompt_ids,
    generate_validation_images,
    load_base_components,
    log_optimizer_step,
    micro_batch_metrics,
    noisy_pair,
    optimizer_step_batches,
    pair_columns,
    per_sample_error,
    prepare_for_training,
    rcr_sampling_unet,
    run_with_clear_errors,
    save_lora_atomically,
    save_model_card,
    self_sample_scheduler,
    self_sample_step,
    snapshot_and_checkpoint,
    sspo_loss,
    start_epoch,
    tokenize,
    training_target,
    upload_output_dir,
    weight_dtype_of,
)


check_min_version("0.42.0")
logger = get_logger(__name__, log_level="INFO")


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="SSPO LoRA training for Stable Diffusion 1.5.")
    add_shared_arguments(parser, loss_types=("sspo", "sft", "dpo"), default_output_dir="sspo-sd15-lora")
    add_image_data_arguments(parser, default_resolution=512)

    args = parser.parse_args(input_args)
    env_local_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_local_rank != -1:
        args.local_rank = env_local_rank
    check_image_data_args(args)
    return args


# ---------------------------------------------------------------------------
# Data: winners x^w (and losers x^l for --loss_type dpo)
# ---------------------------------------------------------------------------


class PreprocessTrain:
    """Decode, resize, crop and flip x^w (and x^l with the *same* crop and flip), normalize to
    [-1, 1], tokenize the caption. A picklable class, so dataloader workers can run it."""

    def __init__(self, args, tokenizer, caption_column, image_columns, is_pickapic):
        self.tokenizer = tokenizer
        self.caption_column, self.image_columns, self.is_pickapic = caption_column, image_columns, is_pickapic
        self.keep_loser = args.loss_type == "dpo"
        self.resize = transforms.Resize(args.resolution, interpolation=transforms.InterpolationMode.BILINEAR)
        crop = transforms.RandomCrop if args.random_crop else transforms.CenterCrop
        flip = [transforms.RandomHorizontalFlip()] if args.random_flip else []
        self.augment = transforms.Compose([crop(args.resolution), *flip, transforms.Normalize([0.5], [0.5])])
        self.to_tensor = transforms.ToTensor()

    def __call__(self, examples):
        captions = [str(c) if c is not None else "" for c in examples[self.caption_column]]
        winners, losers = [], []
        for i, caption in enumerate(captions):
            columns = pair_columns(examples, i, self.image_columns, self.is_pickapic, self.keep_loser)
            images = [self.to_tensor(self.resize(decode_image(examples[c][i], f"row with caption {caption!r} ({c})")))
                      for c in columns]
            pair = self.augment(torch.cat(images, dim=0))  # one crop/flip for the whole pair
            winners.append(pair[:3])
            if self.keep_loser:
                losers.append(pair[3:])
        input_ids = tokenize(self.tokenizer, captions)
        processed = {"pixel_values": winners, "input_ids": list(input_ids)}
        if self.keep_loser:
            processed["pixel_values_l"] = losers
        return processed


def collate_fn(examples):
    batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples]).contiguous(),
             "input_ids": torch.stack([e["input_ids"] for e in examples]),
             "num_skipped": sum(e.get("num_skipped", 0) for e in examples)}
    if "pixel_values_l" in examples[0]:
        batch["pixel_values_l"] = torch.stack([e["pixel_values_l"] for e in examples]).contiguous()
    return batch


def build_dataloader(args, accelerator, tokenizer, generators):
    return build_image_dataloader(args, accelerator, generators, partial(PreprocessTrain, args, tokenizer), collate_fn)


# ---------------------------------------------------------------------------
# Models, validation
# ---------------------------------------------------------------------------


@torch.no_grad()
def encode_images(vae, pixel_values, weight_dtype, generator):
    """z = vae.encode(x) * scaling_factor, sampled with a dedicated generator."""
    pixels = pixel_values.to(vae.device, dtype=weight_dtype)
    return vae.encode(pixels).latent_dist.sample(generator) * vae.config.scaling_factor


def log_validation(args, accelerator, unet, vae, text_encoder, tokenizer, weight_dtype, step, phase="validation"):
    """Generate ``--num_validation_images`` per prompt with the current weights; log them and
    save them under ``output_dir/validation``. Returns the PIL images."""
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler.from_pretrained(args.pretrained_model_name_or_path, subfolder="scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return generate_validation_images(args, accelerator, pipeline, weight_dtype, step, phase)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def main(args):
    accelerator, generators = create_accelerator(args, "sspo-sd15")
    logger.info(accelerator.state, main_process_only=False)

    # Frozen base in the training dtype, LoRA adapters (the only trainable weights) in fp32.
    tokenizer, text_encoder, vae, unet, noise_scheduler = load_base_components(args)
    weight_dtype = weight_dtype_of(accelerator)
    for model in (vae, text_encoder, unet):
        model.requires_grad_(False)
        model.to(accelerator.device, dtype=weight_dtype)
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.lora_alpha, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    cast_training_params(unet, dtype=torch.float32)
    if args.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    lora_parameters = [p for p in unet.parameters() if p.requires_grad]  # a list: clipping must not see an exhausted iterator

    # RCR pool: snapshot 0 is the fresh adapter (B = 0), i.e. the initial model.
    reference_pool = ReferencePool(
        [(n, p) for n, p in unet.named_parameters() if p.requires_grad], max_snapshots=args.max_snapshots,
        storage_device=accelerator.device if args.snapshots_on_device else "cpu", seed=args.seed or 0)
    self_sampler = SSPOSelfSamplingPipeline.from_training_components(
        vae, text_encoder, tokenizer, unet, self_sample_scheduler(args, noise_scheduler))
    # Built before accelerator.prepare, which wraps the trained UNet's forward in autocast.
    merged_copy = (create_merged_copy(args.self_sample_merged_copy, unet, reference_pool.names, weight_dtype)
                   if args.loss_type == "sspo" else None)
    negative_prompt_embeds = encode_prompt_ids(text_encoder, tokenize(tokenizer, [""]))

    optimizer = create_optimizer(args, lora_parameters, accelerator.num_processes)
    train_dataloader = build_dataloader(args, accelerator, tokenizer, generators)
    unet, optimizer, train_dataloader, lr_scheduler, num_update_steps_per_epoch = prepare_for_training(
        args, accelerator, unet, optimizer, train_dataloader, streaming=args.streaming)
    run_config, global_step, first_epoch, resume_batches, progress_bar = begin_training(
        args, accelerator, "sspo-sd15", StableDiffusionPipeline, generators, reference_pool, num_update_steps_per_epoch)
    unwrapped_unet = accelerator.unwrap_model(unet)
    num_skipped = 0
    nonfinite_guard = NonFiniteGuard(args.max_nonfinite_steps)

    for epoch in range(first_epoch, args.num_train_epochs):
        unet.train()
        start_epoch(train_dataloader, epoch)  # shuffle order and augmentations depend only on (seed, epoch)
        skip = resume_batches if epoch == first_epoch else 0
        for step_batches in optimizer_step_batches(accelerator, train_dataloader, skip):
            num_skipped += sum(int(batch["num_skipped"]) for batch in step_batches)
            reference_index = draw_reference(args, reference_pool, generators.rcr)  # RCR: one per optimizer step
            with torch.no_grad():
                step_prompt_embeds = [encode_prompt_ids(text_encoder, batch["input_ids"]) for batch in step_batches]
            if args.loss_type == "sspo":  # x^s for the whole step from the drawn checkpoint, kept as latents
                with rcr_sampling_unet(reference_pool, reference_index, self_sampler.unet, merged_copy) as sampling_unet:
                    step_latents_s = self_sample_step(
                        self_sampler, step_prompt_embeds, negative_prompt_embeds, args.resolution, args.resolution,
                        args.self_sample_steps, args.self_sample_guidance_scale, generators.sampling,
                        args.self_sample_batch_size, unet=sampling_unet)
            step_metrics = []
            for i, (batch, prompt_embeds) in enumerate(zip(step_batches, step_prompt_embeds)):
                with accumulate_micro_batch(accelerator, unet, is_last=i == len(step_batches) - 1):
                    prompt_embeds = drop_captions(prompt_embeds, negative_prompt_embeds, args.proportion_empty_prompts,
                                                  generators.noise)  # x^s above used the real captions
                    with torch.no_grad():
                        latents_w = encode_images(vae, batch["pixel_values"], weight_dtype, generators.noise)  # z_w
                    noise, timesteps = draw_noise_and_timesteps(noise_scheduler, latents_w, generators.noise)

                    if args.loss_type == "sft":
                        noisy = noise_scheduler.add_noise(latents_w, noise, timesteps)
                        model_pred = unet(noisy, timesteps, prompt_embeds, return_dict=False)[0]
                        errors = {"model_err_w": per_sample_error(model_pred, training_target(noise_scheduler, latents_w, noise, timesteps))}
                        loss, info = errors["model_err_w"].mean(), {}
                    else:
                        pair_embeds = torch.cat([prompt_embeds, prompt_embeds])
                        if args.loss_type == "sspo":
                            latents_l = step_latents_s[i]
                        else:  # dpo: the real loser x^l
                            with torch.no_grad():
                                latents_l = encode_images(vae, batch["pixel_values_l"], weight_dtype, generators.noise)
                        noisy, target, pair_t = noisy_pair(noise_scheduler, latents_w, latents_l, noise, timesteps)
                        # The reference forward runs before the policy forward: the snapshot is swapped into
                        # the live LoRA tensors in place.
                        with reference_pool.swapped_in(reference_index), torch.no_grad():
                            ref_pred = unwrapped_unet(noisy, pair_t, pair_embeds, return_dict=False)[0]
                        ref_err_w, ref_err_s = per_sample_error(ref_pred, target).chunk(2)
                        model_pred = unet(noisy, pair_t, pair_embeds, return_dict=False)[0]
                        model_err_w, model_err_s = per_sample_error(model_pred, target).chunk(2)
                        if args.loss_type == "sspo":
                            loss, info = sspo_loss(model_err_w, model_err_s, ref_err_w, ref_err_s, args.beta_dpo, args.ssr)
                        else:
                            loss, info = dpo_loss(model_err_w, model_err_s, ref_err_w, ref_err_s, args.beta_dpo)
                        errors = {"model_err_w": model_err_w, "model_err_s": model_err_s, "ref_err_w": ref_err_w, "ref_err_s": ref_err_s}

                    accelerator.backward(loss)
                    step_metrics.append(micro_batch_metrics(loss, info, errors))

            grad_norm = accelerator.clip_grad_norm_(lora_parameters, args.max_grad_norm)
            global_step += 1
            log_optimizer_step(accelerator, progress_bar, step_metrics, global_step, lr_scheduler, grad_norm,
                               reference_pool, reference_index, nonfinite_guard, num_skipped)
            step_is_finite = apply_optimizer_step(optimizer, lr_scheduler, nonfinite_guard)  # NaN/inf: skipped
            snapshot_and_checkpoint(args, accelerator, global_step, reference_pool, generators, run_config,
                                    nonfinite_guard, step_is_finite)
            if args.validation_prompts and global_step % args.validation_steps == 0 and accelerator.is_main_process:
                log_validation(args, accelerator, unwrapped_unet, vae, text_encoder, tokenizer, weight_dtype, global_step)
            if global_step >= args.max_train_steps:
                break
        if global_step >= args.max_train_steps:
            break

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_lora_atomically(StableDiffusionPipeline, args.output_dir, unwrapped_unet)
        logger.info(f"Saved LoRA weights to {args.output_dir}")
        finish_run(args, accelerator, unwrapped_unet, vae, text_encoder, tokenizer, weight_dtype, global_step)
    accelerator.end_training()


def finish_run(args, accelerator, unet, vae, text_encoder, tokenizer, weight_dtype, step):
    """Final images with and without the LoRA (same seeds), the model card, the Hub upload."""
    images = []
    if args.validation_prompts:
        images = log_validation(args, accelerator, unet, vae, text_encoder, tokenizer, weight_dtype, step, "final_lora")
        unet.disable_adapters()
        log_validation(args, accelerator, unet, vae, text_encoder, tokenizer, weight_dtype, step, "final_base")
        unet.enable_adapters()
    repo_id = create_hub_repo(args)
    save_model_card(args.output_dir, args.pretrained_model_name_or_path, args.dataset_name or args.train_data_dir,
                    {key: getattr(args, key) for key in SSPO_CARD_SETTINGS}, images, repo_id=repo_id,
                    validation_prompts=args.validation_prompts or ())
    if repo_id is not None:
        upload_output_dir(args, repo_id, commit_message="SSPO LoRA")


if __name__ == "__main__":
    run_with_clear_errors(main, parse_args)
