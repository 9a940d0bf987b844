#!/usr/bin/env python
# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""SSPO (Self-Sampling Preference Optimization, arXiv 2410.05255) LoRA fine-tuning of
Stable Diffusion XL from winning images only.

The algorithm is the SD1.5 trainer's: each optimizer step draws a reference checkpoint from
the RCR pool, lets it generate a self-sample x^s for every caption, noises x^w and x^s with a
shared (t, eps), runs one policy and one reference forward over the pair and applies the
SSR-gated DPO loss (``sspo_loss``). What is SDXL's own is the conditioning, visible below:
two frozen text encoders (penultimate hidden states concatenated, plus the second encoder's
pooled projection) and the micro-conditioning ``add_time_ids`` = (original h, w, crop top,
left, target h, w), recorded per image by the data pipeline when it resizes and crops.

    accelerate launch train_sspo_sdxl.py --pretrained_model_name_or_path stabilityai/stable-diffusion-xl-base-1.0 \
        --pretrained_vae_model_name_or_path madebyollin/sdxl-vae-fp16-fix --dataset_name ...
"""

import argparse
import os
from functools import partial

import torch
from accelerate.logging import get_logger
from peft import LoraConfig
from torchvision import transforms

from diffusers import AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.training_utils import cast_training_params
from diffusers.utils import check_min_version
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sspo_utils import (
    NonFiniteGuard, ReferencePool, SSPOInputError, SSPOSDXLSelfSamplingPipeline, SSPO_CARD_SETTINGS,
    accumulate_micro_batch, add_image_data_arguments, add_shared_arguments, apply_optimizer_step, begin_training,
    build_image_dataloader, check_image_data_args, check_pretrained_model, create_accelerator, create_hub_repo,
    create_merged_copy, create_optimizer, decode_image, dpo_loss, draw_noise_and_timesteps, draw_reference, drop_captions,
    generate_validation_images, log_optimizer_step, micro_batch_metrics, noisy_pair, optimizer_step_batches, pair_columns,
    per_sample_error, prepare_for_training, rcr_sampling_unet, run_with_clear_errors, save_lora_atomically, save_model_card, self_sample_scheduler, self_sample_step,
    snapshot_and_checkpoint, sspo_loss, start_epoch, tokenize, training_target, upload_output_dir, weight_dtype_of,
)


check_min_version("0.42.0")
logger = get_logger(__name__, log_level="INFO")

SDXL_SUBFOLDERS = ("unet", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="SSPO LoRA training for Stable Diffusion XL.")
    add_shared_arguments(parser, loss_types=("sspo", "sft", "dpo"), default_output_dir="sspo-sdxl-lora")
    parser.add_argument("--pretrained_vae_model_name_or_path", type=str, default=None,
                        help="A VAE to use instead of the base's, e.g. madebyollin/sdxl-vae-fp16-fix: SDXL's own VAE "
                             "overflows in fp16 (without this flag it runs in fp32 under fp16 mixed precision).")
    add_image_data_arguments(parser, default_resolution=1024)

    args = parser.parse_args(input_args)
    env_local_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_local_rank != -1:
        args.local_rank = env_local_rank
    check_image_data_args(args)
    return args


# ---------------------------------------------------------------------------
# Data: winners x^w (and losers x^l for --loss_type dpo) with their micro-conditioning
# ---------------------------------------------------------------------------


def compute_time_ids(original_size, crop_top_left, target_size):
    """SDXL's micro-conditioning of one image (SDXL paper, sec. 2.2): its size before resizing
    (h, w), the top-left corner (top, left) of the crop taken after resizing, the target size."""
    return torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32)


class PreprocessTrain:
    """Decode x^w (and x^l, resized to x^w's size), resize the shorter side to --resolution,
    flip and crop the pair together, normalize to [-1, 1], tokenize the caption for both
    tokenizers, and record x^w's ``add_time_ids``. The crop corner is the one in the image as
    trained (after the flip). A picklable class, so dataloader workers can run it."""

    def __init__(self, args, tokenizers, caption_column, image_columns, is_pickapic):
        self.tokenizers = tokenizers
        self.caption_column, self.image_columns, self.is_pickapic = caption_column, image_columns, is_pickapic
        self.keep_loser = args.loss_type == "dpo"
        self.resolution, self.random_crop, self.random_flip = args.resolution, args.random_crop, args.random_flip
        self.resize = transforms.Resize(args.resolution, interpolation=transforms.InterpolationMode.BILINEAR)
        self.to_tensor = transforms.ToTensor()

    def crop_top_left(self, height, width):
        if self.random_crop:  # the CPU RNG is seeded per (seed, epoch, row) by the dataset
            return int(torch.randint(height - self.resolution + 1, ())), int(torch.randint(width - self.resolution + 1, ()))
        return max(0, round((height - self.resolution) / 2)), max(0, round((width - self.resolution) / 2))

    def __call__(self, examples):
        captions = [str(c) if c is not None else "" for c in examples[self.caption_column]]
        winners, losers, time_ids = [], [], []
        for i, caption in enumerate(captions):
            columns = pair_columns(examples, i, self.image_columns, self.is_pickapic, self.keep_loser)
            images = [decode_image(examples[c][i], f"row with caption {caption!r} ({c})") for c in columns]
            original_size = (images[0].height, images[0].width)
            pair = self.resize(torch.cat([self.to_tensor(image.resize(images[0].size)) for image in images]))
            if self.random_flip and torch.rand(()) < 0.5:
                pair = pair.flip(-1)
            top, left = self.crop_top_left(*pair.shape[1:])
            pair = pair[:, top:top + self.resolution, left:left + self.resolution] * 2 - 1
            winners.append(pair[:3])
            if self.keep_loser:
                losers.append(pair[3:])
            time_ids.append(compute_time_ids(original_size, (top, left), (self.resolution, self.resolution)))
        processed = {"pixel_values": winners, "add_time_ids": time_ids,
                     "input_ids": list(tokenize(self.tokenizers[0], captions)),
                     "input_ids_2": list(tokenize(self.tokenizers[1], captions))}
        if self.keep_loser:
            processed["pixel_values_l"] = losers
        return processed


def collate_fn(examples):
    batch = {key: torch.stack([e[key] for e in examples]).contiguous()
             for key in ("pixel_values", "pixel_values_l", "add_time_ids", "input_ids", "input_ids_2") if key in examples[0]}
    batch["num_skipped"] = sum(e.get("num_skipped", 0) for e in examples)
    return batch


def build_dataloader(args, accelerator, tokenizers, generators):
    return build_image_dataloader(args, accelerator, generators, partial(PreprocessTrain, args, tokenizers), collate_fn)


# ---------------------------------------------------------------------------
# Models, SDXL's text conditioning, validation
# ---------------------------------------------------------------------------


def load_sdxl_components(args):
    """Both tokenizers and text encoders, the VAE (--pretrained_vae_model_name_or_path, else the
    base's), the UNet and the DDPM training scheduler, with a clear error when a part is missing."""
    path, revision, variant = args.pretrained_model_name_or_path, args.revision, args.variant
    if os.path.isdir(os.path.join(path, "unet")) and not os.path.isdir(os.path.join(path, "text_encoder_2")):
        raise SSPOInputError(f"--pretrained_model_name_or_path {path} is not an SDXL pipeline (it has no text_encoder_2); "
                             "use train_sspo_sd15.py for SD1.5-family models.")
    check_pretrained_model(path, SDXL_SUBFOLDERS + (() if args.pretrained_vae_model_name_or_path else ("vae",)))
    vae_path = args.pretrained_vae_model_name_or_path
    if vae_path is not None and (os.path.isabs(vae_path) or vae_path.startswith(".")) and not os.path.isdir(vae_path):
        raise SSPOInputError(f"--pretrained_vae_model_name_or_path {vae_path}: no such folder. Pass an AutoencoderKL "
                             "folder or a Hub id such as madebyollin/sdxl-vae-fp16-fix.")
    try:
        tokenizers = [CLIPTokenizer.from_pretrained(path, subfolder=name, revision=revision)
                      for name in ("tokenizer", "tokenizer_2")]
        text_encoders = [
            CLIPTextModel.from_pretrained(path, subfolder="text_encoder", revision=revision, variant=variant),
            CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", revision=revision, variant=variant)]
        vae = (AutoencoderKL.from_pretrained(vae_path) if vae_path else
               AutoencoderKL.from_pretrained(path, subfolder="vae", revision=revision, variant=variant))
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", revision=revision, variant=variant)
        noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        force_zeros = StableDiffusionXLPipeline.load_config(path, revision=revision).get("force_zeros_for_empty_prompt", True)
    except (OSError, ValueError) as error:
        raise SSPOInputError(f"Could not load the SDXL model {path}: {str(error).splitlines()[0]}") from error
    if unet.config.addition_embed_type != "text_time":
        raise SSPOInputError(f"--pretrained_model_name_or_path {path} is not an SDXL base (its UNet has no text_time "
                             "micro-conditioning); use train_sspo_sd15.py for SD1.5-family models.")
    return tokenizers, text_encoders, vae, unet, noise_scheduler, force_zeros


@torch.no_grad()
def encode_prompt(text_encoders, input_ids_pair):
    """SDXL's text conditioning: the penultimate hidden states of both encoders, concatenated,
    and the pooled (projected) output of the second. Returns (prompt_embeds, pooled_prompt_embeds)."""
    hidden_states = []
    for text_encoder, input_ids in zip(text_encoders, input_ids_pair):
        output = text_encoder(input_ids.to(text_encoder.device), output_hidden_states=True)
        hidden_states.append(output.hidden_states[-2])
    return torch.cat(hidden_states, dim=-1), output[0]


def unconditional_embeds(text_encoders, tokenizers, force_zeros):
    """The embeddings of 'no caption', as the stock pipeline makes them for CFG: zeros when the
    base sets force_zeros_for_empty_prompt (SDXL base does), else the empty caption encoded."""
    prompt_embeds, pooled = encode_prompt(text_encoders, [tokenize(tokenizer, [""]) for tokenizer in tokenizers])
    return (torch.zeros_like(prompt_embeds), torch.zeros_like(pooled)) if force_zeros else (prompt_embeds, pooled)


def added_conditioning(pooled_prompt_embeds, add_time_ids, copies=1):
    """The UNet's ``added_cond_kwargs``; ``copies=2`` for a (x^w, x^s) pair that shares them."""
    return {"text_embeds": torch.cat([pooled_prompt_embeds] * copies), "time_ids": torch.cat([add_time_ids] * copies)}


@torch.no_grad()
def encode_images(vae, pixel_values, dtype, generator):
    """z = vae.encode(x) * scaling_factor in the VAE's dtype, sampled with a dedicated generator."""
    latents = vae.encode(pixel_values.to(vae.device, dtype=vae.dtype)).latent_dist.sample(generator)
    return (latents * vae.config.scaling_factor).to(dtype)


def log_validation(args, accelerator, unet, components, weight_dtype, step, phase="validation"):
    """``--num_validation_images`` per prompt at --resolution with the current weights (the
    base's Euler scheduler), logged and saved under ``output_dir/validation``. Returns the images."""
    scheduler = EulerDiscreteScheduler.from_pretrained(args.pretrained_model_name_or_path, subfolder="scheduler")
    pipeline = StableDiffusionXLPipeline(unet=unet, scheduler=scheduler, **components)
    return generate_validation_images(args, accelerator, pipeline, weight_dtype, step, phase,
                                      height=args.resolution, width=args.resolution)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def main(args):
    accelerator, generators = create_accelerator(args, "sspo-sdxl")
    logger.info(accelerator.state, main_process_only=False)

    # Frozen base in the training dtype, LoRA adapters (the only trainable weights) in fp32.
    tokenizers, text_encoders, vae, unet, noise_scheduler, force_zeros = load_sdxl_components(args)
    weight_dtype = weight_dtype_of(accelerator)
    # SDXL's own VAE overflows in fp16: keep it in fp32 then, as diffusers' SDXL examples do.
    vae_dtype = torch.float32 if weight_dtype == torch.float16 and not args.pretrained_vae_model_name_or_path else weight_dtype
    for model in (*text_encoders, unet):
        model.requires_grad_(False)
        model.to(accelerator.device, dtype=weight_dtype)
    vae.requires_grad_(False)
    vae.to(accelerator.device, dtype=vae_dtype)
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
    components = dict(vae=vae, text_encoder=text_encoders[0], text_encoder_2=text_encoders[1], tokenizer=tokenizers[0],
                      tokenizer_2=tokenizers[1])
    self_sampler = SSPOSDXLSelfSamplingPipeline.from_training_components(
        unet=unet, scheduler=self_sample_scheduler(args, noise_scheduler), **components)
    # Built before accelerator.prepare, which wraps the trained UNet's forward in autocast.
    merged_copy = (create_merged_copy(args.self_sample_merged_copy, unet, reference_pool.names, weight_dtype)
                   if args.loss_type == "sspo" else None)
    negative_prompt_embeds, negative_pooled_embeds = unconditional_embeds(text_encoders, tokenizers, force_zeros)

    optimizer = create_optimizer(args, lora_parameters, accelerator.num_processes)
    train_dataloader = build_dataloader(args, accelerator, tokenizers, generators)
    unet, optimizer, train_dataloader, lr_scheduler, num_update_steps_per_epoch = prepare_for_training(
        args, accelerator, unet, optimizer, train_dataloader, streaming=args.streaming)
    run_config, global_step, first_epoch, resume_batches, progress_bar = begin_training(
        args, accelerator, "sspo-sdxl", StableDiffusionXLPipeline, generators, reference_pool, num_update_steps_per_epoch)
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
            step_conditions = [encode_prompt(text_encoders, (batch["input_ids"], batch["input_ids_2"])) for batch in step_batches]
            step_time_ids = [batch["add_time_ids"].to(accelerator.device, dtype=weight_dtype) for batch in step_batches]
            if args.loss_type == "sspo":  # x^s for the whole step from the drawn checkpoint, under x^w's own conditioning
                with rcr_sampling_unet(reference_pool, reference_index, self_sampler.unet, merged_copy) as sampling_unet:
                    step_latents_s = self_sample_step(
                        self_sampler, [embeds for embeds, _ in step_conditions], negative_prompt_embeds,
                        args.resolution, args.resolution, args.self_sample_steps, args.self_sample_guidance_scale,
                        generators.sampling, args.self_sample_batch_size, unet=sampling_unet,
                        pooled_prompt_embeds=[pooled for _, pooled in step_conditions],
                        negative_pooled_prompt_embeds=negative_pooled_embeds, add_time_ids=step_time_ids)
            step_metrics = []
            for i, (batch, (prompt_embeds, pooled_embeds)) in enumerate(zip(step_batches, step_conditions)):
                with accumulate_micro_batch(accelerator, unet, is_last=i == len(step_batches) - 1):
                    prompt_embeds, pooled_embeds = drop_captions(  # x^s above used the real captions
                        (prompt_embeds, pooled_embeds), (negative_prompt_embeds, negative_pooled_embeds),
                        args.proportion_empty_prompts, generators.noise)
                    latents_w = encode_images(vae, batch["pixel_values"], weight_dtype, generators.noise)  # z_w
                    noise, timesteps = draw_noise_and_timesteps(noise_scheduler, latents_w, generators.noise)

                    if args.loss_type == "sft":
                        noisy = noise_scheduler.add_noise(latents_w, noise, timesteps)
                        model_pred = unet(noisy, timesteps, prompt_embeds, return_dict=False,
                                          added_cond_kwargs=added_conditioning(pooled_embeds, step_time_ids[i]))[0]
                        errors = {"model_err_w": per_sample_error(model_pred, training_target(noise_scheduler, latents_w, noise, timesteps))}
                        loss, info = errors["model_err_w"].mean(), {}
                    else:
                        # x^w and x^s (or x^l) share the caption and x^w's micro-conditioning.
                        pair_embeds = torch.cat([prompt_embeds, prompt_embeds])
                        pair_added = added_conditioning(pooled_embeds, step_time_ids[i], copies=2)
                        if args.loss_type == "sspo":
                            latents_l = step_latents_s[i]
                        else:  # dpo: the real loser x^l
                            latents_l = encode_images(vae, batch["pixel_values_l"], weight_dtype, generators.noise)
                        noisy, target, pair_t = noisy_pair(noise_scheduler, latents_w, latents_l, noise, timesteps)
                        # The reference forward runs before the policy forward: the snapshot is swapped into
                        # the live LoRA tensors in place.
                        with reference_pool.swapped_in(reference_index), torch.no_grad():
                            ref_pred = unwrapped_unet(noisy, pair_t, pair_embeds, added_cond_kwargs=pair_added,
                                                      return_dict=False)[0]
                        ref_err_w, ref_err_s = per_sample_error(ref_pred, target).chunk(2)
                        model_pred = unet(noisy, pair_t, pair_embeds, added_cond_kwargs=pair_added, return_dict=False)[0]
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
                log_validation(args, accelerator, unwrapped_unet, components, weight_dtype, global_step)
            if global_step >= args.max_train_steps:
                break
        if global_step >= args.max_train_steps:
            break

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_lora_atomically(StableDiffusionXLPipeline, args.output_dir, unwrapped_unet)
        logger.info(f"Saved LoRA weights to {args.output_dir}")
        finish_run(args, accelerator, unwrapped_unet, components, weight_dtype, global_step)
    accelerator.end_training()


def finish_run(args, accelerator, unet, components, weight_dtype, step):
    """Final images with and without the LoRA (same seeds), the model card, the Hub upload."""
    images = []
    if args.validation_prompts:
        images = log_validation(args, accelerator, unet, components, weight_dtype, step, "final_lora")
        unet.disable_adapters()
        log_validation(args, accelerator, unet, components, weight_dtype, step, "final_base")
        unet.enable_adapters()
    repo_id = create_hub_repo(args)
    settings = {key: getattr(args, key) for key in SSPO_CARD_SETTINGS}
    settings.update(resolution=args.resolution, vae=args.pretrained_vae_model_name_or_path or "the base's")
    save_model_card(args.output_dir, args.pretrained_model_name_or_path, args.dataset_name or args.train_data_dir,
                    settings, images, repo_id=repo_id, pipeline_name="StableDiffusionXLPipeline",
                    validation_prompts=args.validation_prompts or (), extra_tags=("stable-diffusion-xl",))
    if repo_id is not None:
        upload_output_dir(args, repo_id, commit_message="SSPO SDXL LoRA")


if __name__ == "__main__":
    run_with_clear_errors(main, parse_args)
