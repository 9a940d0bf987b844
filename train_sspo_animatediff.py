#!/usr/bin/env python
# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""SSPO (Self-Sampling Preference Optimization, arXiv 2410.05255) for AnimateDiff text-to-video,
trained from winning clips only (e.g. MagicTime's ChronoMagic time-lapses).

Per step: draw a reference from the RCR pool, let it generate a self-sample video x^s for each
caption (latents b c f h w), noise the winner clip x^w and x^s with a shared (t, eps), run one
policy and one reference forward over the pair (text embeddings repeated per frame), and apply
the SSR-gated DPO loss. ``--loss_type sft`` is plain fine-tuning on the clips.

    accelerate launch train_sspo_animatediff.py --pretrained_model_name_or_path ... \
        --motion_adapter_name_or_path guoyww/animatediff-motion-adapter-v1-5-2 --video_folder ... --metadata_file ...
"""

import argparse
import csv
import io
import json
import os

import numpy as np
import torch
from accelerate.logging import get_logger
from peft import LoraConfig
from torchvision import transforms
from tqdm.auto import tqdm

from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, UNetMotionModel
from diffusers.training_utils import cast_training_params
from diffusers.utils import check_min_version

from sspo_utils import (
    SSPO_CARD_SETTINGS,
    BadSamplePolicyDataset,
    NonFiniteGuard,
    ReferencePool,
    SSPOInputError,
    SSPOSelfSamplingPipeline,
    accumulate_micro_batch,
    add_bad_sample_argument,
    add_shared_arguments,
    apply_optimizer_step,
    check_shared_args,
    create_accelerator,
    create_hub_repo,
    create_merged_copy,
    create_optimizer,
    draw_noise_and_timesteps,
    drop_captions,
    encode_prompt_ids,
    load_base_components,
    log_optimizer_step,
    log_run_header,
    log_videos_to_trackers,
    micro_batch_metrics,
    noisy_pair,
    optimizer_step_batches,
    per_sample_error,
    pick_column,
    prepare_for_training,
    rcr_sampling_unet,
    register_checkpoint_hooks,
    register_lora_checkpoint_hooks,
    resume_training_state,
    run_config_of,
    run_with_clear_errors,
    save_files_durably,
    save_lora_atomically,
    save_model_card,
    save_video,
    self_sample_scheduler,
    self_sample_step,
    snapshot_and_checkpoint,
    sspo_loss,
    start_epoch,
    tokenize,
    tracker_config,
    training_target,
    upload_output_dir,
    weight_dtype_of,
)


check_min_version("0.42.0")
logger = get_logger(__name__, log_level="INFO")

MOTION_ATTENTION = r".*motion_modules.*\.(to_q|to_k|to_v|to_out\.0)"
ALL_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
VIDEO_COLUMN_GUESSES = ("video", "file", "path", "videoid", "video_path")
CAPTION_COLUMN_GUESSES = ("name", "caption", "text", "prompt")


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="SSPO training for AnimateDiff (text-to-video).")
    # The paper's SSR: the study that made self_sample the image trainers' default measured no video.
    add_shared_arguments(parser, loss_types=("sspo", "sft"), default_output_dir="sspo-animatediff", ssr_default="sft")
    group = parser.add_argument_group("AnimateDiff")
    group.add_argument("--motion_adapter_name_or_path", type=str, required=True,
                       help="e.g. guoyww/animatediff-motion-adapter-v1-5-2, or a local MotionAdapter folder.")
    group.add_argument("--train_target", choices=("motion_lora", "lora", "motion_modules"), default="motion_lora",
                       help="motion_lora: LoRA on motion-module attention only. lora: LoRA on spatial and motion attention. "
                            "motion_modules: full fine-tuning of the motion modules (~450M parameters for a real adapter: "
                            "each pool snapshot is a full copy, so keep snapshots on CPU and bound --max_snapshots).")
    group.add_argument("--beta_schedule", type=str, default="linear",
                       help="Noise schedule of training and self-sampling; AnimateDiff uses linear 0.00085-0.012.")

    group = parser.add_argument_group("data")
    group.add_argument("--video_folder", type=str, default=None, help="Folder the metadata's video paths are relative to.")
    group.add_argument("--metadata_file", type=str, default=None,
                       help="CSV or JSONL. ChronoMagic (videoid,name) is detected: the clip is <video_folder>/<videoid>.mp4.")
    group.add_argument("--dataset_name", type=str, default=None,
                       help="A datasets hub id or folder with a video path or bytes column (instead of --metadata_file).")
    group.add_argument("--dataset_config_name", type=str, default=None)
    group.add_argument("--dataset_split_name", type=str, default="train")
    group.add_argument("--cache_dir", type=str, default=None)
    group.add_argument("--video_column", type=str, default=None, help="Default: video, file, path or videoid.")
    group.add_argument("--caption_column", type=str, default=None, help="Default: name, caption, text or prompt.")
    group.add_argument("--max_train_samples", type=int, default=None)
    group.add_argument("--num_frames", type=int, default=16)
    group.add_argument("--sample_stride", type=int, default=4,
                       help="Frame stride; shortened for clips shorter than (num_frames-1)*stride+1 frames.")
    group.add_argument("--resolution", type=int, default=256)
    group.add_argument("--random_crop", action="store_true", help="Random instead of center crop.")
    group.add_argument("--random_flip", action="store_true")
    add_bad_sample_argument(group, "clip that is undecodable or has fewer than --num_frames frames")
    group.add_argument("--num_validation_videos", type=int, default=1, help="Videos per validation prompt.")
    group.add_argument("--validation_fps", type=int, default=8)

    args = parser.parse_args(input_args)
    if args.metadata_file is None and args.dataset_name is None:
        raise SSPOInputError("Pass --video_folder with --metadata_file (CSV/JSONL), or --dataset_name.")
    if args.metadata_file is not None and not os.path.isfile(args.metadata_file):
        raise SSPOInputError(f"--metadata_file {args.metadata_file}: no such file. Pass the CSV or JSONL that lists "
                             "the clips (e.g. ChronoMagic's caption/ChronoMagic_train.csv), or use --dataset_name.")
    if args.video_folder is not None and not os.path.isdir(args.video_folder):
        raise SSPOInputError(f"--video_folder {args.video_folder}: no such folder.")
    check_shared_args(args, positive=("num_frames", "sample_stride", "num_validation_videos", "validation_fps"))
    return args


# ---------------------------------------------------------------------------
# Data: winning clips x^w, sampled as in AnimateDiff's trainer, decoded with PyAV
# ---------------------------------------------------------------------------


def read_metadata(path):
    """Rows of a CSV or JSONL metadata file, as dicts."""
    with open(path, newline="", encoding="utf-8") as f:
        if path.endswith((".jsonl", ".json")):
            rows = [json.loads(line) for line in f if line.strip()]
        else:
            rows = list(csv.DictReader(f))
    if not rows:
        raise SSPOInputError(f"--metadata_file {path} has no rows.")
    return rows


def load_video_records(args):
    """(video source, caption) pairs. A source is a file path or raw bytes."""
    if args.metadata_file is not None:
        rows = read_metadata(args.metadata_file)
        columns = list(rows[0])
        chronomagic = {"videoid", "name"} <= set(columns) and args.video_column is None
        video_column = "videoid" if chronomagic else pick_column(columns, args.video_column, VIDEO_COLUMN_GUESSES, "--video_column")
        caption_column = pick_column(columns, args.caption_column, CAPTION_COLUMN_GUESSES, "--caption_column")
        folder = args.video_folder or os.path.dirname(os.path.abspath(args.metadata_file))
        suffix = ".mp4" if chronomagic else ""
        records = [(os.path.join(folder, f"{row[video_column]}{suffix}"), row[caption_column] or "") for row in rows]
        logger.info(f"{'ChronoMagic' if chronomagic else 'Generic'} metadata: {len(records)} clips from {args.metadata_file}")
    else:
        from datasets import load_dataset

        try:
            dataset = load_dataset(args.dataset_name, args.dataset_config_name, split=args.dataset_split_name,
                                   cache_dir=args.cache_dir)
        except (FileNotFoundError, ValueError, ConnectionError) as error:
            raise SSPOInputError(f"Could not load --dataset_name {args.dataset_name}: {error}") from error
        columns = dataset.column_names
        video_column = pick_column(columns, args.video_column, VIDEO_COLUMN_GUESSES, "--video_column")
        caption_column = pick_column(columns, args.caption_column, CAPTION_COLUMN_GUESSES, "--caption_column")
        records = []
        for video, caption in zip(dataset[video_column], dataset[caption_column]):
            if isinstance(video, dict):  # datasets' {"bytes", "path"} encoding
                video = video.get("bytes") or video.get("path")
            if isinstance(video, str) and args.video_folder and not os.path.isabs(video):
                video = os.path.join(args.video_folder, video)
            records.append((video, caption or ""))
    if args.max_train_samples is not None:
        records = records[: args.max_train_samples]
    if not records:
        raise SSPOInputError("The training data is empty; check --metadata_file / --dataset_name.")
    return records


def sample_frame_indices(video_length, num_frames, stride, rng):
    """AnimateDiff's rule: a clip of (num_frames-1)*stride+1 frames from a random start, with
    the stride shortened for shorter videos; num_frames indices spread evenly over it."""
    clip_length = min(video_length, (num_frames - 1) * stride + 1)
    start = int(rng.integers(0, video_length - clip_length + 1))
    return np.linspace(start, start + clip_length - 1, num_frames, dtype=int)


def decode_video_frames(source, num_frames, stride, rng):
    """Decode only the sampled frames with PyAV. Returns uint8 (f, h, w, 3)."""
    import av

    with av.open(io.BytesIO(source) if isinstance(source, bytes) else source) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if len(frames) < num_frames:
        raise ValueError(f"it has {len(frames)} frames, fewer than --num_frames {num_frames} (lower --num_frames if "
                         "most clips are this short).")
    return np.stack([frames[i] for i in sample_frame_indices(len(frames), num_frames, stride, rng)])


class VideoClipDataset(BadSamplePolicyDataset):
    """Winning clips x^w as (f, 3, H, W) in [-1, 1] plus caption token ids, decoded in the
    dataloader workers. Bad clips follow --on_bad_sample; the clip start, crop and flip are
    reproducible per (seed, epoch, clip)."""

    def __init__(self, records, args, tokenizer):
        super().__init__(len(records), args.on_bad_sample, args.seed or 0)
        self.records, self.tokenizer = records, tokenizer
        self.num_frames, self.stride = args.num_frames, args.sample_stride
        crop = transforms.RandomCrop if args.random_crop else transforms.CenterCrop
        flip = [transforms.RandomHorizontalFlip()] if args.random_flip else []
        self.transform = transforms.Compose([
            transforms.Resize(args.resolution, antialias=True), crop(args.resolution), *flip,
            transforms.Normalize([0.5], [0.5]),
        ])

    def load(self, index):
        source, caption = self.records[index]
        rng = np.random.default_rng(int(torch.randint(2**31, (1,))))
        frames = decode_video_frames(source, self.num_frames, self.stride, rng)
        pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0  # f c h w, one crop/flip per clip
        return {"pixel_values": self.transform(pixels), "input_ids": tokenize(self.tokenizer, [caption])[0]}

    def describe(self, index):
        source = self.records[index][0]
        return f"video {source}" if isinstance(source, str) else f"video #{index} (bytes)"


def collate_fn(examples):
    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "input_ids": torch.stack([e["input_ids"] for e in examples]),
            "num_skipped": sum(e["num_skipped"] for e in examples)}


@torch.no_grad()
def encode_video(vae, pixel_values, weight_dtype, generator):
    """x^w (b, f, 3, H, W) -> z_w (b, c, f, h, w): encode frames as (b*f) c H W, reshape, scale."""
    batch_size, num_frames = pixel_values.shape[:2]
    frames = pixel_values.flatten(0, 1).to(vae.device, dtype=weight_dtype)
    latents = vae.encode(frames).latent_dist.sample(generator) * vae.config.scaling_factor
    return latents.unflatten(0, (batch_size, num_frames)).permute(0, 2, 1, 3, 4)


# ---------------------------------------------------------------------------
# Models: what trains, how it is saved and restored
# ---------------------------------------------------------------------------


def build_motion_unet(args, unet2d):
    try:
        motion_adapter = MotionAdapter.from_pretrained(args.motion_adapter_name_or_path)
    except (OSError, ValueError) as error:
        raise SSPOInputError(f"Could not load --motion_adapter_name_or_path {args.motion_adapter_name_or_path}: "
                             f"{str(error).splitlines()[0]}") from error
    try:
        return UNetMotionModel.from_unet2d(unet2d, motion_adapter)
    except ValueError as error:
        raise SSPOInputError(f"The motion adapter does not fit the base UNet ({error}); use an adapter made for "
                             "this base (same blocks and layers per block).") from error


def set_trainable(args, unet):
    """Freeze everything, then make the --train_target trainable (LoRA adapters or motion modules)."""
    unet.requires_grad_(False)
    if args.train_target == "motion_modules":
        unet.freeze_unet2d_params()  # leaves only motion_modules trainable
    else:
        targets = MOTION_ATTENTION if args.train_target == "motion_lora" else ALL_ATTENTION
        unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.lora_alpha, init_lora_weights="gaussian",
                                    target_modules=targets))
    cast_training_params(unet, dtype=torch.float32)
    return [(n, p) for n, p in unet.named_parameters() if p.requires_grad]


def save_motion_modules(unet, directory):
    unet.save_motion_modules(directory, safe_serialization=True)


def load_motion_modules(unet, directory):
    unet.load_motion_modules(MotionAdapter.from_pretrained(directory))


def save_trained_weights(args, unet):
    """LoRA runs: pytorch_lora_weights.safetensors (AnimateDiffPipeline.load_lora_weights).
    motion_modules runs: a MotionAdapter folder in output_dir (MotionAdapter.from_pretrained).
    Both are written durably: to a temporary folder, fsynced, then moved in."""
    if args.train_target != "motion_modules":
        return save_lora_atomically(AnimateDiffPipeline, args.output_dir, unet)
    save_files_durably(args.output_dir, lambda tmp_dir: save_motion_modules(unet, tmp_dir), prefix=".tmp-motion-adapter-")
    return args.output_dir


def log_validation(args, accelerator, unet, vae, text_encoder, tokenizer, scheduler, weight_dtype, step, phase="validation"):
    """Generate ``--num_validation_videos`` per prompt; save GIF and MP4 under
    ``output_dir/validation`` and log them. Returns the videos (lists of PIL frames)."""
    logger.info(f"Running {phase}: {args.num_validation_videos} video(s) for each of {len(args.validation_prompts)} prompt(s).")
    pipeline = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   motion_adapter=None, scheduler=DDIMScheduler.from_config(scheduler.config))
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(args.seed if args.seed is not None else 0)
    autocast = torch.autocast(accelerator.device.type, dtype=weight_dtype, enabled=weight_dtype != torch.float32)
    videos = []
    with autocast:
        for prompt in args.validation_prompts:
            videos += pipeline(prompt, num_frames=args.num_frames, height=args.resolution, width=args.resolution,
                               num_inference_steps=args.validation_inference_steps, generator=generator,
                               num_videos_per_prompt=args.num_validation_videos).frames
    folder = os.path.join(args.output_dir, "validation")
    os.makedirs(folder, exist_ok=True)
    for i, video in enumerate(videos):
        for extension in ("gif", "mp4"):
            save_video(video, os.path.join(folder, f"{phase}_step{step}_{i}.{extension}"), fps=args.validation_fps)
    log_videos_to_trackers(accelerator, videos, args.validation_prompts, phase, step, fps=args.validation_fps)
    return videos


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def main(args):
    accelerator, generators = create_accelerator(args, "sspo-animatediff")
    logger.info(accelerator.state, main_process_only=False)

    tokenizer, text_encoder, vae, unet2d, noise_scheduler = load_base_components(
        args, beta_schedule=args.beta_schedule, clip_sample=False)
    unet = build_motion_unet(args, unet2d)
    weight_dtype = weight_dtype_of(accelerator)
    for model in (vae, text_encoder, unet):
        model.requires_grad_(False)
        model.to(accelerator.device, dtype=weight_dtype)
    trainable = set_trainable(args, unet)
    if args.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    trained_parameters = [p for _, p in trainable]

    # RCR pool over whatever trains; snapshot 0 is the initial model.
    reference_pool = ReferencePool(trainable, max_snapshots=args.max_snapshots, seed=args.seed or 0,
                                   storage_device=accelerator.device if args.snapshots_on_device else "cpu")
    self_sampler = SSPOSelfSamplingPipeline.from_training_components(
        vae, text_encoder, tokenizer, unet, self_sample_scheduler(args, noise_scheduler))
    # Built before accelerator.prepare, which wraps the trained UNet's forward in autocast.
    merged_copy = (create_merged_copy(args.self_sample_merged_copy, unet, reference_pool.names, weight_dtype)
                   if args.loss_type == "sspo" else None)
    negative_prompt_embeds = encode_prompt_ids(text_encoder, tokenize(tokenizer, [""]))

    optimizer = create_optimizer(args, trained_parameters, accelerator.num_processes)
    with accelerator.main_process_first():
        records = load_video_records(args)
    train_dataloader = torch.utils.data.DataLoader(
        VideoClipDataset(records, args, tokenizer), shuffle=True, batch_size=args.train_batch_size, collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers, generator=generators.dataloader)
    unet, optimizer, train_dataloader, lr_scheduler, num_update_steps_per_epoch = prepare_for_training(
        args, accelerator, unet, optimizer, train_dataloader)
    if args.train_target == "motion_modules":
        register_checkpoint_hooks(accelerator, save_motion_modules, load_motion_modules)
    else:
        register_lora_checkpoint_hooks(accelerator, AnimateDiffPipeline)
    run_config = run_config_of(args, ("rank", "lora_alpha", "loss_type", "train_target", "num_frames",
                                      "pretrained_model_name_or_path", "motion_adapter_name_or_path"))
    if accelerator.is_main_process:
        accelerator.init_trackers("sspo-animatediff", config=tracker_config(args))
    global_step, first_epoch, resume_batches = resume_training_state(
        args, accelerator, generators, reference_pool, run_config, num_update_steps_per_epoch)

    log_run_header(args, accelerator, reference_pool)
    progress_bar = tqdm(range(args.max_train_steps), initial=global_step, desc="Steps",
                        disable=not accelerator.is_local_main_process)
    unwrapped_unet = accelerator.unwrap_model(unet)
    num_skipped = 0
    nonfinite_guard = NonFiniteGuard(args.max_nonfinite_steps)

    for epoch in range(first_epoch, args.num_train_epochs):
        unet.train()
        start_epoch(train_dataloader, epoch)  # shuffle order and clip sampling depend only on (seed, epoch)
        skip = resume_batches if epoch == first_epoch else 0
        for step_batches in optimizer_step_batches(accelerator, train_dataloader, skip):
            num_skipped += sum(int(batch["num_skipped"]) for batch in step_batches)
            with torch.no_grad():
                step_prompt_embeds = [encode_prompt_ids(text_encoder, batch["input_ids"]) for batch in step_batches]
            reference_index = None
            if args.loss_type == "sspo":  # RCR once per optimizer step; x^s (videos) for all its micro-batches
                reference_index = reference_pool.sample(args.reference_strategy, generators.rcr)
                with rcr_sampling_unet(reference_pool, reference_index, self_sampler.unet, merged_copy) as sampling_unet:
                    step_latents_s = self_sample_step(
                        self_sampler, step_prompt_embeds, negative_prompt_embeds, args.resolution, args.resolution,
                        args.self_sample_steps, args.self_sample_guidance_scale, generators.sampling,
                        args.self_sample_batch_size, num_frames=args.num_frames, unet=sampling_unet)
            step_metrics = []
            for i, (batch, prompt_embeds) in enumerate(zip(step_batches, step_prompt_embeds)):
                with accumulate_micro_batch(accelerator, unet, is_last=i == len(step_batches) - 1):
                    prompt_embeds = drop_captions(prompt_embeds, negative_prompt_embeds, args.proportion_empty_prompts,
                                                  generators.noise)  # x^s above used the real captions
                    with torch.no_grad():
                        latents_w = encode_video(vae, batch["pixel_values"], weight_dtype, generators.noise)  # z_w: b c f h w
                    # UNetMotionModel wants one text embedding per frame (diffusers >= 0.31).
                    frame_embeds = prompt_embeds.repeat_interleave(args.num_frames, dim=0)
                    noise, timesteps = draw_noise_and_timesteps(noise_scheduler, latents_w, generators.noise)

                    if args.loss_type == "sft":
                        model_pred = unet(noise_scheduler.add_noise(latents_w, noise, timesteps), timesteps, frame_embeds).sample
                        errors = {"model_err_w": per_sample_error(model_pred, training_target(noise_scheduler, latents_w, noise, timesteps))}
                        loss, info = errors["model_err_w"].mean(), {}
                    else:
                        pair_frame_embeds = torch.cat([frame_embeds, frame_embeds])
                        noisy, target, pair_t = noisy_pair(noise_scheduler, latents_w, step_latents_s[i], noise, timesteps)
                        with reference_pool.swapped_in(reference_index), torch.no_grad():  # before the policy forward
                            ref_err_w, ref_err_s = per_sample_error(unwrapped_unet(noisy, pair_t, pair_frame_embeds).sample, target).chunk(2)
                        model_err_w, model_err_s = per_sample_error(unet(noisy, pair_t, pair_frame_embeds).sample, target).chunk(2)
                        loss, info = sspo_loss(model_err_w, model_err_s, ref_err_w, ref_err_s, args.beta_dpo, args.ssr)
                        errors = {"model_err_w": model_err_w, "model_err_s": model_err_s, "ref_err_w": ref_err_w, "ref_err_s": ref_err_s}

                    accelerator.backward(loss)
                    step_metrics.append(micro_batch_metrics(loss, info, errors))

            grad_norm = accelerator.clip_grad_norm_(trained_parameters, args.max_grad_norm)
            global_step += 1
            log_optimizer_step(accelerator, progress_bar, step_metrics, global_step, lr_scheduler, grad_norm,
                               reference_pool, reference_index, nonfinite_guard, num_skipped)
            step_is_finite = apply_optimizer_step(optimizer, lr_scheduler, nonfinite_guard)  # NaN/inf: skipped
            snapshot_and_checkpoint(args, accelerator, global_step, reference_pool, generators, run_config,
                                    nonfinite_guard, step_is_finite)
            if args.validation_prompts and global_step % args.validation_steps == 0 and accelerator.is_main_process:
                log_validation(args, accelerator, unwrapped_unet, vae, text_encoder, tokenizer, noise_scheduler,
                               weight_dtype, global_step)
            if global_step >= args.max_train_steps:
                break
        if global_step >= args.max_train_steps:
            break

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        logger.info(f"Saved {args.train_target} weights to {save_trained_weights(args, unwrapped_unet)}")
        finish_run(args, accelerator, unwrapped_unet, vae, text_encoder, tokenizer, noise_scheduler, weight_dtype,
                   global_step, reference_pool)
    accelerator.end_training()


def finish_run(args, accelerator, unet, vae, text_encoder, tokenizer, scheduler, weight_dtype, step, reference_pool):
    """Final videos with the trained weights and with the initial ones (same seeds), the model
    card with a GIF preview, and the Hub upload."""
    videos = []
    if args.validation_prompts:
        videos = log_validation(args, accelerator, unet, vae, text_encoder, tokenizer, scheduler, weight_dtype, step,
                                "final_trained")
        with reference_pool.swapped_in(0):  # snapshot 0 is the initial model, for every --train_target
            log_validation(args, accelerator, unet, vae, text_encoder, tokenizer, scheduler, weight_dtype, step, "final_base")
    repo_id = create_hub_repo(args)
    source = repo_id or args.output_dir
    load_line = (f'pipe.load_lora_weights("{source}")' if args.train_target != "motion_modules" else "")
    adapter = source if args.train_target == "motion_modules" else args.motion_adapter_name_or_path
    usage = ("import torch\nfrom diffusers import AnimateDiffPipeline, MotionAdapter\nfrom diffusers.utils import export_to_gif\n\n"
             f'adapter = MotionAdapter.from_pretrained("{adapter}", torch_dtype=torch.float16)\n'
             f'pipe = AnimateDiffPipeline.from_pretrained("{args.pretrained_model_name_or_path}", motion_adapter=adapter, '
             'torch_dtype=torch.float16).to("cuda")\n' + (load_line + "\n" if load_line else "") +
             'export_to_gif(pipe("a time-lapse of a flower blooming", num_frames=16).frames[0], "sample.gif")')
    previews = [lambda path, video=video: save_video(video, path, fps=args.validation_fps) for video in videos]
    settings = {key: getattr(args, key) for key in SSPO_CARD_SETTINGS}
    settings.update(train_target=args.train_target, num_frames=args.num_frames, sample_stride=args.sample_stride,
                    motion_adapter=args.motion_adapter_name_or_path)
    save_model_card(args.output_dir, args.pretrained_model_name_or_path, args.dataset_name or args.metadata_file, settings,
                    previews, repo_id=repo_id, pipeline_name="AnimateDiffPipeline", media_extension="gif",
                    validation_prompts=args.validation_prompts or (), extra_tags=("animatediff",), usage_code=usage)
    if repo_id is not None:
        upload_output_dir(args, repo_id, commit_message=f"SSPO AnimateDiff ({args.train_target})")


if __name__ == "__main__":
    run_with_clear_errors(main, parse_args)
