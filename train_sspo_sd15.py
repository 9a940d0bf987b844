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
import io
import logging
import math
import os
from contextlib import nullcontext

import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from datasets import load_dataset
from peft import LoraConfig
from PIL import Image
from torchvision import transforms
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

import diffusers
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from diffusers.utils import check_min_version

from sspo_utils import (
    REFERENCE_STRATEGIES,
    SSR_MODES,
    ReferencePool,
    SSPOInputError,
    SSPOSelfSamplingPipeline,
    TrainingGenerators,
    check_pretrained_model,
    check_run_config,
    check_xformers_available,
    dpo_loss,
    load_generators,
    log_images_to_trackers,
    optimizer_class,
    per_sample_error,
    register_lora_checkpoint_hooks,
    resolve_resume_checkpoint,
    run_with_clear_errors,
    save_checkpoint_atomically,
    save_lora_atomically,
    save_model_card,
    sspo_loss,
)


check_min_version("0.42.0")
logger = get_logger(__name__, log_level="INFO")

PICKAPIC_COLUMNS = ("jpg_0", "jpg_1", "label_0")
CAPTION_COLUMN_GUESSES = ("caption", "text", "prompt")
IMAGE_COLUMN_GUESSES = ("image", "jpg", "img")
SELF_SAMPLE_SCHEDULERS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="SSPO LoRA training for Stable Diffusion 1.5.")
    group = parser.add_argument_group("model")
    group.add_argument("--pretrained_model_name_or_path", type=str, required=True,
                       help="Hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or local diffusers folder.")
    group.add_argument("--revision", type=str, default=None)
    group.add_argument("--variant", type=str, default=None, help="Weights variant, e.g. fp16.")
    group.add_argument("--rank", type=int, default=8, help="LoRA rank.")
    group.add_argument("--lora_alpha", type=int, default=None, help="LoRA alpha (default: --rank).")

    group = parser.add_argument_group("SSPO")
    group.add_argument("--loss_type", choices=("sspo", "sft", "dpo"), default="sspo",
                       help="sspo: SSPO on winners. sft: plain MSE on winners (no self-sampling). "
                            "dpo: Diffusion-DPO on real pairs (Pick-a-Pic jpg_0/jpg_1/label_0), base model as reference.")
    group.add_argument("--beta_dpo", type=float, default=5000.0,
                       help="β of the DPO/SSPO loss; the loss uses β/2 as in Diffusion-DPO's code (5000 for SD1.5).")
    group.add_argument("--ssr", choices=SSR_MODES, default="sft",
                       help="SSR: sft (SSPO) drops a sample's DPO term when the reference beats the policy on x^w; "
                            "flip (SePPO v1) then counts the self-sample as a second winner; off never switches.")
    group.add_argument("--reference_strategy", choices=REFERENCE_STRATEGIES, default="uniform",
                       help="uniform: RCR, a uniform draw over the pool; latest: newest snapshot (SPIN-Diffusion-like); "
                            "initial: always the base model.")
    group.add_argument("--snapshot_steps", type=int, default=100,
                       help="Add a snapshot of the LoRA weights to the reference pool every N optimizer steps.")
    group.add_argument("--max_snapshots", type=int, default=None,
                       help="Bound the pool to K snapshots. When full, the initial model is kept and the other slots are "
                            "replaced by reservoir sampling, so the pool stays a uniform sample of the whole history. "
                            "Default: unbounded (one LoRA copy per snapshot).")
    group.add_argument("--snapshots_on_device", action="store_true",
                       help="Keep pool snapshots on the accelerator instead of CPU (faster swaps, more GPU memory).")
    group.add_argument("--self_sample_steps", type=int, default=20, help="Denoising steps of each self-sample x^s.")
    group.add_argument("--self_sample_guidance_scale", type=float, default=7.5, help="CFG scale of self-sampling.")
    group.add_argument("--self_sample_scheduler", choices=sorted(SELF_SAMPLE_SCHEDULERS), default="ddim",
                       help="Sampler of self-sampling, built from the model's scheduler config.")

    group = parser.add_argument_group("data")
    group.add_argument("--dataset_name", type=str, default=None,
                       help="Hub dataset id, local dataset folder, or .parquet/.jsonl/.csv file. Pick-a-Pic v2 "
                            "(jpg_0, jpg_1, label_0) is detected: the winner is kept, ties and unlabeled rows dropped.")
    group.add_argument("--dataset_config_name", type=str, default=None)
    group.add_argument("--dataset_split_name", type=str, default="train")
    group.add_argument("--train_data_dir", type=str, default=None, help="An imagefolder with metadata.jsonl.")
    group.add_argument("--image_column", type=str, default=None, help="Default: image, jpg or img, whichever exists.")
    group.add_argument("--caption_column", type=str, default=None, help="Default: caption, text or prompt.")
    group.add_argument("--cache_dir", type=str, default=None)
    group.add_argument("--streaming", action="store_true",
                       help="Stream the dataset instead of downloading it (Pick-a-Pic v2 train is ~300 GB). "
                            "Needs --max_train_steps.")
    group.add_argument("--max_train_samples", type=int, default=None)
    group.add_argument("--resolution", type=int, default=512)
    crop = group.add_mutually_exclusive_group()
    crop.add_argument("--center_crop", action="store_true", help="Center crop (the default).")
    crop.add_argument("--random_crop", action="store_true")
    group.add_argument("--random_flip", action="store_true")
    group.add_argument("--dataloader_num_workers", type=int, default=0)

    group = parser.add_argument_group("optimization")
    group.add_argument("--train_batch_size", type=int, default=4)
    group.add_argument("--gradient_accumulation_steps", type=int, default=1)
    group.add_argument("--num_train_epochs", type=int, default=1)
    group.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    group.add_argument("--learning_rate", type=float, default=1e-5)
    group.add_argument("--scale_lr", action="store_true",
                       help="Multiply the lr by accumulation steps, batch size and number of processes.")
    group.add_argument("--lr_scheduler", type=str, default="constant_with_warmup",
                       help='"linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup".')
    group.add_argument("--lr_warmup_steps", type=int, default=0)
    group.add_argument("--adam_beta1", type=float, default=0.9)
    group.add_argument("--adam_beta2", type=float, default=0.999)
    group.add_argument("--adam_weight_decay", type=float, default=1e-2)
    group.add_argument("--adam_epsilon", type=float, default=1e-8)
    group.add_argument("--max_grad_norm", type=float, default=1.0)
    group.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes' 8-bit AdamW.")
    group.add_argument("--seed", type=int, default=None, help="Any integer, 0 included, makes the run reproducible.")
    group.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None)
    group.add_argument("--allow_tf32", action="store_true")
    group.add_argument("--gradient_checkpointing", action="store_true")
    group.add_argument("--enable_xformers_memory_efficient_attention", action="store_true")

    group = parser.add_argument_group("checkpoints, logging, validation, hub")
    group.add_argument("--output_dir", type=str, default="sspo-sd15-lora")
    group.add_argument("--checkpointing_steps", type=int, default=500)
    group.add_argument("--checkpoints_total_limit", type=int, default=None)
    group.add_argument("--resume_from_checkpoint", type=str, default=None, help='A checkpoint folder, or "latest".')
    group.add_argument("--logging_dir", type=str, default="logs")
    group.add_argument("--report_to", type=str, default="tensorboard", help='"tensorboard", "wandb", "all" or "none".')
    group.add_argument("--validation_prompts", type=str, nargs="+", default=None)
    group.add_argument("--validation_steps", type=int, default=200, help="Validate every N optimizer steps.")
    group.add_argument("--num_validation_images", type=int, default=2, help="Images per validation prompt.")
    group.add_argument("--validation_inference_steps", type=int, default=30)
    group.add_argument("--push_to_hub", action="store_true")
    group.add_argument("--hub_model_id", type=str, default=None)
    group.add_argument("--hub_token", type=str, default=None)

    args = parser.parse_args(input_args)
    env_local_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_local_rank != -1:
        args.local_rank = env_local_rank
    check_args(args)
    return args


def check_args(args):
    """Reject nonsense flag values before any model is loaded."""
    if args.dataset_name is None and args.train_data_dir is None:
        raise SSPOInputError("Pass --dataset_name (hub id, folder or parquet) or --train_data_dir (imagefolder).")
    if args.resolution <= 0 or args.resolution % 8:
        raise SSPOInputError(f"--resolution {args.resolution} must be a positive multiple of 8 (the VAE downsamples by 8).")
    positive = ("rank", "snapshot_steps", "self_sample_steps", "train_batch_size", "gradient_accumulation_steps",
                "checkpointing_steps", "validation_steps", "num_validation_images", "validation_inference_steps")
    for name in positive:
        if getattr(args, name) < 1:
            raise SSPOInputError(f"--{name} {getattr(args, name)} must be at least 1.")
    if args.max_snapshots is not None and args.max_snapshots < 2:
        raise SSPOInputError(f"--max_snapshots {args.max_snapshots} cannot hold the initial model plus any other; use >= 2.")
    if args.beta_dpo <= 0:
        raise SSPOInputError(f"--beta_dpo {args.beta_dpo} must be positive.")
    if args.streaming and args.max_train_steps is None:
        raise SSPOInputError("--streaming datasets have no length: pass --max_train_steps.")
    if args.lora_alpha is None:
        args.lora_alpha = args.rank


# ---------------------------------------------------------------------------
# Data: winners x^w (and losers x^l for --loss_type dpo)
# ---------------------------------------------------------------------------


def load_raw_dataset(args):
    if args.train_data_dir is not None:
        if not os.path.isdir(args.train_data_dir):
            raise SSPOInputError(f"--train_data_dir {args.train_data_dir}: no such folder.")
        return load_dataset("imagefolder", data_dir=args.train_data_dir, split="train", cache_dir=args.cache_dir,
                            streaming=args.streaming)
    name = args.dataset_name
    file_format = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}.get(os.path.splitext(name)[1])
    try:
        if file_format and os.path.isfile(name):
            return load_dataset(file_format, data_files=name, split="train", streaming=args.streaming)
        return load_dataset(name, args.dataset_config_name, split=args.dataset_split_name, cache_dir=args.cache_dir,
                            streaming=args.streaming)
    except (FileNotFoundError, ValueError, ConnectionError) as error:
        raise SSPOInputError(f"Could not load --dataset_name {name} (split {args.dataset_split_name}): {error}") from error


def pick_column(columns, requested, guesses, flag):
    if requested is not None:
        if requested not in columns:
            raise SSPOInputError(f"{flag} {requested!r} is not a dataset column; columns are {sorted(columns)}.")
        return requested
    for guess in guesses:
        if guess in columns:
            return guess
    raise SSPOInputError(f"No {flag.strip('-').replace('_', ' ')} found among columns {sorted(columns)}; pass {flag}.")


def prepare_dataset(args):
    """Load the data and bring it to columns ``caption``, ``image_w`` (and ``image_l``).
    Pick-a-Pic v2 rows keep the labelled winner; ties and unlabeled rows are dropped."""
    dataset = load_raw_dataset(args)
    columns = list(dataset.column_names or dataset.features or [])
    caption_column = pick_column(columns, args.caption_column, CAPTION_COLUMN_GUESSES, "--caption_column")
    is_pickapic = all(column in columns for column in PICKAPIC_COLUMNS) and args.image_column is None
    if args.loss_type == "dpo" and not is_pickapic:
        raise SSPOInputError("--loss_type dpo needs preference pairs in Pick-a-Pic format (columns jpg_0, jpg_1, "
                             f"label_0); this dataset has {sorted(columns)}. Use --loss_type sspo for winner-only data.")
    if is_pickapic:
        def is_decided(label_0, has_label=True):
            return bool(has_label) and label_0 in (0, 1)

        label_columns = ["label_0", "has_label"] if "has_label" in columns else ["label_0"]
        num_rows = None if args.streaming else len(dataset)
        dataset = dataset.filter(is_decided, input_columns=label_columns)
        if num_rows is not None:
            logger.info(f"Pick-a-Pic format: kept {len(dataset)} of {num_rows} rows "
                        f"({num_rows - len(dataset)} ties or unlabeled rows dropped).")
        else:
            logger.info("Pick-a-Pic format (streaming): ties and unlabeled rows are dropped on the fly.")
        image_columns = ("jpg_0", "jpg_1")
    else:
        image_columns = (pick_column(columns, args.image_column, IMAGE_COLUMN_GUESSES, "--image_column"),)
        if isinstance(dataset.features, datasets.Features) and isinstance(dataset.features.get(image_columns[0]), datasets.Image):
            # Decode ourselves, so a corrupt file is reported with its name.
            dataset = dataset.cast_column(image_columns[0], datasets.Image(decode=False))
    if args.max_train_samples is not None:
        dataset = dataset.take(args.max_train_samples) if args.streaming else dataset.shuffle(seed=args.seed).select(
            range(min(args.max_train_samples, len(dataset))))
    if not args.streaming and len(dataset) == 0:
        raise SSPOInputError("The training dataset is empty (after dropping ties/unlabeled rows and --max_train_samples). "
                             "Check --dataset_name/--train_data_dir and --dataset_split_name.")
    return dataset, caption_column, image_columns, is_pickapic


def decode_image(value, description):
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict):
            image = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
        else:
            image = Image.open(io.BytesIO(value))
        return image.convert("RGB")
    except Exception as error:
        raise SSPOInputError(f"Could not decode the image of {description}: {error}. Fix or remove that row.") from error


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
            if self.is_pickapic:
                winner_first = examples["label_0"][i] == 1
                columns = ("jpg_0", "jpg_1") if winner_first else ("jpg_1", "jpg_0")
            else:
                columns = self.image_columns
            columns = columns[: 2 if self.keep_loser else 1]
            images = [self.to_tensor(self.resize(decode_image(examples[c][i], f"row with caption {caption!r} ({c})")))
                      for c in columns]
            pair = self.augment(torch.cat(images, dim=0))  # one crop/flip for the whole pair
            winners.append(pair[:3])
            if self.keep_loser:
                losers.append(pair[3:])
        input_ids = self.tokenizer(captions, max_length=self.tokenizer.model_max_length, padding="max_length",
                                   truncation=True, return_tensors="pt").input_ids
        processed = {"pixel_values": winners, "input_ids": list(input_ids)}
        if self.keep_loser:
            processed["pixel_values_l"] = losers
        return processed


def collate_fn(examples):
    batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples]).contiguous(),
             "input_ids": torch.stack([e["input_ids"] for e in examples])}
    if "pixel_values_l" in examples[0]:
        batch["pixel_values_l"] = torch.stack([e["pixel_values_l"] for e in examples]).contiguous()
    return batch


def build_dataloader(args, accelerator, tokenizer, generators):
    with accelerator.main_process_first():
        dataset, caption_column, image_columns, is_pickapic = prepare_dataset(args)
    preprocess = PreprocessTrain(args, tokenizer, caption_column, image_columns, is_pickapic)
    if args.streaming:
        dataset = dataset.shuffle(seed=args.seed or 0, buffer_size=1000).map(
            preprocess, batched=True, remove_columns=list(dataset.column_names or []))
        return torch.utils.data.DataLoader(dataset.with_format("torch"), batch_size=args.train_batch_size,
                                           collate_fn=collate_fn, num_workers=args.dataloader_num_workers)
    dataset = dataset.with_transform(preprocess)
    # A dedicated generator: building the resumed iterator must not consume the global RNG.
    return torch.utils.data.DataLoader(dataset, shuffle=True, batch_size=args.train_batch_size, collate_fn=collate_fn,
                                       num_workers=args.dataloader_num_workers, generator=generators.dataloader)


# ---------------------------------------------------------------------------
# Models, validation
# ---------------------------------------------------------------------------


def load_models(args):
    check_pretrained_model(args.pretrained_model_name_or_path)
    path, revision, variant = args.pretrained_model_name_or_path, args.revision, args.variant
    try:
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", revision=revision)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", revision=revision, variant=variant)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", revision=revision, variant=variant)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", revision=revision, variant=variant)
        noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    except OSError as error:
        raise SSPOInputError(f"Could not load the model {path}: {str(error).splitlines()[0]}") from error
    return tokenizer, text_encoder, vae, unet, noise_scheduler


@torch.no_grad()
def encode_prompt_ids(text_encoder, input_ids):
    return text_encoder(input_ids.to(text_encoder.device), return_dict=False)[0]


def log_validation(args, accelerator, unet, vae, text_encoder, tokenizer, weight_dtype, step, phase="validation"):
    """Generate ``--num_validation_images`` per prompt with the current weights; log them and
    save them under ``output_dir/validation``. Returns the PIL images."""
    logger.info(f"Running {phase}: {args.num_validation_images} image(s) for each of {len(args.validation_prompts)} prompt(s).")
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=accelerator.unwrap_model(unet),
        scheduler=DDIMScheduler.from_pretrained(args.pretrained_model_name_or_path, subfolder="scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(args.seed if args.seed is not None else 0)
    autocast = torch.autocast(accelerator.device.type, dtype=weight_dtype) if weight_dtype != torch.float32 else nullcontext()
    images = []
    with autocast:
        for prompt in args.validation_prompts:
            images += pipeline(prompt, num_inference_steps=args.validation_inference_steps,
                               num_images_per_prompt=args.num_validation_images, generator=generator).images
    folder = os.path.join(args.output_dir, "validation")
    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(images):
        image.save(os.path.join(folder, f"{phase}_step{step}_{i}.png"))
    log_images_to_trackers(accelerator, images, args.validation_prompts, phase, step)
    return images


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def main(args):
    logging_dir = os.path.join(args.output_dir, args.logging_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=logging_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    for library in (datasets, transformers, diffusers):
        library.utils.logging.set_verbosity_warning() if accelerator.is_local_main_process else library.utils.logging.set_verbosity_error()
    if args.seed is not None:
        set_seed(args.seed)
    generators = TrainingGenerators(args.seed if args.seed is not None else 0, accelerator.process_index)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    if args.enable_xformers_memory_efficient_attention:
        check_xformers_available()
    optimizer_cls = optimizer_class(args.use_8bit_adam)

    # Frozen base in the training dtype, LoRA adapters (the only trainable weights) in fp32.
    tokenizer, text_encoder, vae, unet, noise_scheduler = load_models(args)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
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
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    lora_parameters = [p for p in unet.parameters() if p.requires_grad]  # a list: clipping must not see an exhausted iterator

    # RCR pool: snapshot 0 is the fresh adapter (B = 0), i.e. the initial model.
    reference_pool = ReferencePool(
        [(n, p) for n, p in unet.named_parameters() if p.requires_grad], max_snapshots=args.max_snapshots,
        storage_device=accelerator.device if args.snapshots_on_device else "cpu", seed=args.seed or 0)
    self_sampler = SSPOSelfSamplingPipeline.from_training_components(
        vae, text_encoder, tokenizer, unet, SELF_SAMPLE_SCHEDULERS[args.self_sample_scheduler].from_config(noise_scheduler.config))
    negative_prompt_embeds = encode_prompt_ids(text_encoder, tokenizer([""], max_length=tokenizer.model_max_length,
                                                                        padding="max_length", return_tensors="pt").input_ids)

    if args.scale_lr:
        args.learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    optimizer = optimizer_cls(lora_parameters, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                              weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    train_dataloader = build_dataloader(args, accelerator, tokenizer, generators)
    if args.max_train_steps is None:
        num_update_steps_per_epoch = math.ceil(len(train_dataloader) / accelerator.num_processes / args.gradient_accumulation_steps)
        args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, train_dataloader, lr_scheduler)
    if not args.streaming:
        num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
        args.num_train_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)
    else:
        args.num_train_epochs = 10**9  # a stream ends when --max_train_steps is reached
    register_lora_checkpoint_hooks(accelerator, StableDiffusionPipeline)
    accelerator.register_for_checkpointing(reference_pool)
    run_config = {"rank": args.rank, "lora_alpha": args.lora_alpha, "loss_type": args.loss_type,
                  "pretrained_model_name_or_path": args.pretrained_model_name_or_path}
    if accelerator.is_main_process:
        accelerator.init_trackers("sspo-sd15", config={k: v for k, v in vars(args).items() if not isinstance(v, list)})

    global_step, first_epoch, resume_batches = 0, 0, 0
    resume_path = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)
    if resume_path is not None:
        check_run_config(resume_path, run_config)
        accelerator.print(f"Resuming from {resume_path}")
        accelerator.load_state(resume_path)
        load_generators(resume_path, generators, accelerator.process_index)
        global_step = int(os.path.basename(os.path.normpath(resume_path)).split("-")[1])
        if not args.streaming:
            first_epoch = global_step // num_update_steps_per_epoch
            resume_batches = (global_step % num_update_steps_per_epoch) * args.gradient_accumulation_steps
    elif args.resume_from_checkpoint:
        accelerator.print(f"No complete checkpoint in {args.output_dir}; starting a new run.")

    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(f"***** Running {args.loss_type} training *****  steps={args.max_train_steps} "
                f"total batch={total_batch_size} (per device {args.train_batch_size} x {accelerator.num_processes} "
                f"processes x {args.gradient_accumulation_steps} accumulation); pool: {len(reference_pool)} snapshot(s), "
                f"{reference_pool.nbytes_per_snapshot() / 2**20:.1f} MiB each")
    progress_bar = tqdm(range(args.max_train_steps), initial=global_step, desc="Steps",
                        disable=not accelerator.is_local_main_process)
    unwrapped_unet = accelerator.unwrap_model(unet)
    reference_index, step_metrics = None, []
    validation_images = []

    for epoch in range(first_epoch, args.num_train_epochs):
        unet.train()
        if hasattr(train_dataloader, "set_epoch"):
            train_dataloader.set_epoch(epoch)  # shuffle order depends only on (seed, epoch)
        batches = accelerator.skip_first_batches(train_dataloader, resume_batches) if epoch == first_epoch and resume_batches else train_dataloader
        for batch in batches:
            with accelerator.accumulate(unet):
                # RCR: one reference per optimizer step, shared by all its micro-batches.
                if reference_index is None and args.loss_type != "sft":
                    strategy = "initial" if args.loss_type == "dpo" else args.reference_strategy
                    reference_index = reference_pool.sample(strategy, generators.rcr)
                with torch.no_grad():
                    pixels = batch["pixel_values"].to(accelerator.device, dtype=weight_dtype)
                    latents_w = vae.encode(pixels).latent_dist.sample(generators.noise) * vae.config.scaling_factor
                    prompt_embeds = encode_prompt_ids(text_encoder, batch["input_ids"])
                bsz = latents_w.shape[0]
                # t and eps are shared by x^w and x^s (or x^l), as in Diffusion-DPO.
                noise = torch.randn(latents_w.shape, generator=generators.noise).to(latents_w)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,),
                                          generator=generators.noise).to(accelerator.device)

                if args.loss_type == "sft":
                    noisy = noise_scheduler.add_noise(latents_w, noise, timesteps)
                    model_pred = unet(noisy, timesteps, prompt_embeds, return_dict=False)[0]
                    model_err_w = per_sample_error(model_pred, training_target(noise_scheduler, latents_w, noise, timesteps))
                    loss, info = model_err_w.mean(), {}
                    errors = {"model_err_w": model_err_w}
                else:
                    with reference_pool.swapped_in(reference_index):
                        if args.loss_type == "sspo":  # x^s: a full sample from the drawn checkpoint
                            latents_l = self_sampler.sample_latents(
                                prompt_embeds, negative_prompt_embeds, args.resolution, args.resolution,
                                args.self_sample_steps, args.self_sample_guidance_scale, generators.sampling)
                        else:
                            pixels_l = batch["pixel_values_l"].to(accelerator.device, dtype=weight_dtype)
                            latents_l = vae.encode(pixels_l).latent_dist.sample(generators.noise) * vae.config.scaling_factor
                        latents = torch.cat([latents_w, latents_l.to(latents_w)])
                        pair_noise, pair_t, pair_embeds = noise.repeat(2, 1, 1, 1), timesteps.repeat(2), prompt_embeds.repeat(2, 1, 1)
                        noisy = noise_scheduler.add_noise(latents, pair_noise, pair_t)
                        target = training_target(noise_scheduler, latents, pair_noise, pair_t)
                        with torch.no_grad():  # reference forward, before the policy forward (in-place swap)
                            ref_pred = unwrapped_unet(noisy, pair_t, pair_embeds, return_dict=False)[0]
                    ref_err_w, ref_err_l = per_sample_error(ref_pred, target).chunk(2)
                    model_pred = unet(noisy, pair_t, pair_embeds, return_dict=False)[0]
                    model_err_w, model_err_l = per_sample_error(model_pred, target).chunk(2)
                    if args.loss_type == "sspo":
                        loss, info = sspo_loss(model_err_w, model_err_l, ref_err_w, ref_err_l, args.beta_dpo, args.ssr)
                    else:
                        loss, info = dpo_loss(model_err_w, model_err_l, ref_err_w, ref_err_l, args.beta_dpo)
                    errors = {"model_err_w": model_err_w, "model_err_s": model_err_l, "ref_err_w": ref_err_w, "ref_err_s": ref_err_l}

                accelerator.backward(loss)
                grad_norm = accelerator.clip_grad_norm_(lora_parameters, args.max_grad_norm) if accelerator.sync_gradients else None
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
                step_metrics.append(micro_batch_metrics(loss, info, errors))

            if accelerator.sync_gradients:
                global_step += 1
                progress_bar.update(1)
                logs = reduce_step_metrics(accelerator, step_metrics)
                logs.update(lr=lr_scheduler.get_last_lr()[0], grad_norm=float(grad_norm))
                if reference_index is not None:
                    logs.update(pool_size=len(reference_pool), snapshot_age=global_step - 1 - reference_pool.steps[reference_index])
                progress_bar.set_postfix(loss=f"{logs['loss']:.4f}", ssr_sft=f"{logs.get('ssr_sft_fraction', 0):.2f}")
                accelerator.log(logs, step=global_step)
                reference_index, step_metrics = None, []
                if args.loss_type == "sspo" and global_step % args.snapshot_steps == 0:
                    reference_pool.add(global_step)
                if global_step % args.checkpointing_steps == 0:
                    path = save_checkpoint_atomically(accelerator, args.output_dir, global_step, run_config, generators,
                                                      args.checkpoints_total_limit)
                    logger.info(f"Saved state to {path}")
                if args.validation_prompts and global_step % args.validation_steps == 0 and accelerator.is_main_process:
                    log_validation(args, accelerator, unet, vae, text_encoder, tokenizer, weight_dtype, global_step)
            if global_step >= args.max_train_steps:
                break
        if global_step >= args.max_train_steps:
            break

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_lora_atomically(StableDiffusionPipeline, args.output_dir, unwrapped_unet)
        logger.info(f"Saved LoRA weights to {args.output_dir}")
        if args.validation_prompts:
            validation_images = log_validation(args, accelerator, unet, vae, text_encoder, tokenizer, weight_dtype,
                                               global_step, phase="final_lora")
            unwrapped_unet.disable_adapters()
            log_validation(args, accelerator, unet, vae, text_encoder, tokenizer, weight_dtype, global_step, phase="final_base")
            unwrapped_unet.enable_adapters()
        finish_run(args, validation_images)
    accelerator.end_training()


def training_target(noise_scheduler, latents, noise, timesteps):
    """eps for epsilon-prediction models, v for v-prediction models."""
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    return noise


def micro_batch_metrics(loss, info, errors):
    """Detached per-micro-batch tensors; reduced once per optimizer step (no .item() here)."""
    metrics = {"loss": loss.detach()}
    for key in ("ssr_sft_fraction", "implicit_acc"):
        if key in info:
            metrics[key] = info[key]
    if "reward_margin" in info:
        metrics["reward_margin"] = info["reward_margin"].mean()
    metrics.update({key: value.detach().mean() for key, value in errors.items()})
    return metrics


def reduce_step_metrics(accelerator, step_metrics):
    """Average over the step's micro-batches and over processes; one sync per step."""
    keys = list(step_metrics[0])
    stacked = torch.stack([torch.stack([m[k].float() for k in keys]) for m in step_metrics]).mean(dim=0)
    stacked = accelerator.reduce(stacked.to(accelerator.device), reduction="mean")
    return dict(zip(keys, stacked.tolist()))


def finish_run(args, validation_images):
    """Model card (always) and the Hub upload (with --push_to_hub)."""
    repo_id = None
    if args.push_to_hub:
        from huggingface_hub import create_repo, upload_folder

        repo_id = create_repo(args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir)),
                              exist_ok=True, token=args.hub_token).repo_id
    settings = {key: getattr(args, key) for key in (
        "loss_type", "ssr", "reference_strategy", "beta_dpo", "snapshot_steps", "max_snapshots", "self_sample_steps",
        "self_sample_guidance_scale", "self_sample_scheduler", "rank", "lora_alpha", "learning_rate", "train_batch_size",
        "gradient_accumulation_steps", "max_train_steps", "resolution", "mixed_precision", "seed")}
    save_model_card(args.output_dir, args.pretrained_model_name_or_path, args.dataset_name or args.train_data_dir,
                    settings, validation_images, repo_id=repo_id, validation_prompts=args.validation_prompts or ())
    if args.push_to_hub:
        upload_folder(repo_id=repo_id, folder_path=args.output_dir, commit_message="SSPO LoRA", token=args.hub_token,
                      ignore_patterns=["step_*", "epoch_*", "checkpoint-*", ".tmp-*", "logs/*"])


if __name__ == "__main__":
    run_with_clear_errors(main, parse_args)
