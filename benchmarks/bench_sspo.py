#!/usr/bin/env python
# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""Where the time and memory of an SSPO step go, against SFT and Diffusion-DPO on the same model and data.

One process, one configuration after another, on the same model (loaded once) and the same data:
  sft, dpo, sspo_probe (SSPO with the generation replaced by random latents, to isolate everything
  else), sspo with --self_sample_steps 10 and 20.
Per configuration: median/min/max optimizer-step time after warm-up, the split into self-sampling,
snapshot swap, reference forward, policy forward+backward and the rest (per-phase medians), peak memory (CUDA
max_memory_allocated/max_memory_reserved, or peak RSS on CPU, reset before each configuration),
samples/s, FLOPs per phase (torch.utils.flop_counter, counted in the first warm-up step), achieved
FLOP/s and MFU against a matrix-product peak measured in the same run (bf16 on GPU, fp32 on CPU).
Also:
  * the self-sampling pipeline against the stock StableDiffusionPipeline(output_type="latent") called
    with prompt strings;
  * the overhead ratio (step time / time of the bare UNet passes the step must do);
  * self-sampling across gradient accumulation: batch 1 x 8 micro-batches generated per micro-batch
    (sspo_utils.self_sample_step(..., chunk_size=1)) against one batched call (chunk_size=None, or
    --self_sample_batch_size), samples/s, MFU and the max latent difference between the two.
Writes bench_sspo.json, bench_sspo.md and phases.png (step time split by phase; needs matplotlib,
see benchmarks/requirements-bench.txt) to --output_dir.

    python benchmarks/bench_sspo.py                       # tiny default, CPU
    python benchmarks/bench_sspo.py --smoke               # CI: 2 steps, asserts nothing about speed
    python benchmarks/bench_sspo.py --pretrained_model_name_or_path PATH --resolution 512 --device cuda
    python benchmarks/bench_sspo.py --random_init_from_config sd15 --dtype bf16 --gradient_checkpointing \
        --batch_size 1 --device cuda                      # SD1.5 architecture, random weights, no download
    bash benchmarks/gpu_smoke.sh                          # the GPU run (see that script)

--isolate runs each configuration in its own child process instead (own model copy, own peak memory).

--video times train_sspo_animatediff.py's step instead: a UNetMotionModel (2D UNet + MotionAdapter), video
latents (b, c, f, h, w), text embeddings repeated per frame, self-sampling through
sspo_utils.self_sample_step(..., num_frames=...), the trainer's --train_target (motion_lora, lora or
motion_modules; the trainer's own set_trainable picks what trains and what the RCR pool snapshots). dpo is
skipped (the AnimateDiff trainer has no DPO); the stock comparison uses AnimateDiffPipeline; the snapshot swap is
also timed for every train target (--swap_train_targets), with the snapshot size.

    python benchmarks/bench_sspo.py --video               # tiny model + tiny MotionAdapter, 8 frames, CPU
    python benchmarks/bench_sspo.py --video --random_init_from_config sd15 --dtype bf16 --gradient_checkpointing \
        --batch_size 1 --device cuda                      # SD1.5 + animatediff-motion-adapter-v1-5-2 architectures
"""

import argparse
import copy
import gc
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sspo_tiny  # noqa: E402
import sspo_utils  # noqa: E402
# The AnimateDiff trainer's own model building, trainable-parameter choice and video encoding (no side
# effects at import), so that --video times exactly what it trains.
from train_sspo_animatediff import build_motion_unet, encode_video, set_trainable  # noqa: E402


logger = logging.getLogger("bench_sspo")

CONFIGS = {
    "sft": dict(loss_type="sft", self_sample_steps=0),
    "dpo": dict(loss_type="dpo", self_sample_steps=0),
    "sspo_probe": dict(loss_type="sspo", self_sample_steps=0),
    "sspo_10": dict(loss_type="sspo", self_sample_steps=10),
    "sspo_20": dict(loss_type="sspo", self_sample_steps=20),
}
PHASES = ("self_sampling", "swap", "reference_forward", "policy_forward_backward", "other")
MFU_PHASES = ("self_sampling", "reference_forward", "policy_forward_backward")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GUIDANCE_SCALE = 7.5

# SD1.5 (runwayml/stable-diffusion-v1-5) architectures, written out so that no download is needed.
_SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
_SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2, act_fn="silu",
    norm_num_groups=32, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
_CLIP_L14_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
# The training (DDPM) schedule of SD1.5; the sampler is DDIM built from it, as in the trainers.
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1)
# MotionAdapter architecture of guoyww/animatediff-motion-adapter-v1-5-2 (AnimateDiff v2: a motion module in the
# mid block too, 32-frame position encoding): 453,209,280 parameters.
_ANIMATEDIFF_V152_ADAPTER = dict(
    block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2, motion_mid_block_layers_per_block=1,
    motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True,
)
RANDOM_INIT_CONFIGS = {
    "sd15": dict(unet=_SD15_UNET, vae=_SD15_VAE, text=_CLIP_L14_TEXT, motion_adapter=_ANIMATEDIFF_V152_ADAPTER),
    # Same blocks, layers, heads and 77-token context; every width /10 (UNet, cross-attention) or /4 (VAE),
    # /8 (text). For CPU tests of the SD1.5 code path (gpu_smoke.sh --device cpu), not for timings.
    "sd15_reduced": dict(
        unet=dict(_SD15_UNET, block_out_channels=(32, 64, 128, 128), cross_attention_dim=96),
        vae=dict(_SD15_VAE, block_out_channels=(32, 64, 128, 128)),
        text=dict(_CLIP_L14_TEXT, hidden_size=96, intermediate_size=384, projection_dim=96),
        motion_adapter=dict(_ANIMATEDIFF_V152_ADAPTER, block_out_channels=(32, 64, 128, 128)),
    ),
}
TRAIN_TARGETS = ("motion_lora", "lora", "motion_modules")  # train_sspo_animatediff.py --train_target
ANIMATEDIFF_BETA_SCHEDULE = "linear"  # train_sspo_animatediff.py --beta_schedule default
VIDEO_SKIPPED_CONFIGS = {
    "dpo": "image-only: train_sspo_animatediff.py trains with --loss_type sspo or sft (there are no loser clips)"}


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="SSPO step benchmark.")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--pretrained_model_name_or_path", default=None, help="Default: the tiny model, built locally.")
    model.add_argument("--random_init_from_config", choices=list(RANDOM_INIT_CONFIGS), default=None,
                       help="sd15: the SD1.5 UNet, VAE and CLIP ViT-L/14 text encoder architectures with random weights "
                            "(built on the meta device, materialized on --device; no download). sd15_reduced: the same "
                            "architecture with narrow widths, for CPU tests.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                        help="Frozen weights and activations (autocast), as --mixed_precision in the trainers; "
                             "LoRA weights stay fp32.")
    parser.add_argument("--resolution", type=int, default=None, help="Default: 64 for the tiny model, else 512.")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1,
                        help="Micro-batches per optimizer step, as in the trainers: the self-samples of all of them are "
                             "generated in one batched call, then each micro-batch runs its reference and policy passes. "
                             "The real-scale configuration is --batch_size 4 --gradient_accumulation_steps 8.")
    parser.add_argument("--self_sample_merged_copy", choices=sspo_utils.MERGED_COPY_CHOICES, default="auto",
                        help="As in the trainers: self-sample from a copy of the frozen UNet in --dtype with the RCR "
                             "snapshot merged in, without autocast (auto: on for CUDA when it fits, off on CPU).")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="Timed optimizer steps per configuration.")
    parser.add_argument("--warmup", type=int, default=2, help="At least 1: the first warm-up step counts FLOPs.")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS),
                        help="Training configurations to time (none: only the sampling measurements).")
    parser.add_argument("--skip", nargs="*", default=[], choices=("stock", "batched", "per_micro_batch", "swap"),
                        help="Leave out the self-sampler vs stock comparison, the batched self-sampling one, its "
                             "per-micro-batch baseline (target 6) and/or (--video) the swap timing of the other train "
                             "targets.")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes' AdamW8bit, as in the trainers.")
    parser.add_argument("--enable_xformers_memory_efficient_attention", action="store_true",
                        help="CUDA only. FLOPs are then counted with PyTorch SDPA (same arithmetic).")
    parser.add_argument("--channels_last", action="store_true", help="UNet weights in channels_last memory format.")
    parser.add_argument("--compile_unet", action="store_true",
                        help="torch.compile the UNet for the batched self-sampling measurement (slow to compile on CPU).")
    parser.add_argument("--compile_mode", choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
                        default="default", help="torch.compile mode with --compile_unet; reduce-overhead replays "
                                                "CUDA graphs of the fixed-shape sampling loop.")
    parser.add_argument("--self_sample_steps", type=int, default=20,
                        help="Denoising steps of the sampling measurements (stock comparison, batched sampling).")
    parser.add_argument("--self_sample_batch_size", type=int, default=None,
                        help="Chunk size of the batched self-sampling variant (default: all micro-batches at once).")
    parser.add_argument("--sampling_micro_batches", type=int, default=8,
                        help="Gradient accumulation steps of the batched self-sampling measurement.")
    parser.add_argument("--sampling_micro_batch_size", type=int, default=1)
    parser.add_argument("--sampling_without_lora", action="store_true",
                        help="Batched self-sampling with the LoRA layers disabled: the speed that sampling from the "
                             "RCR snapshot merged into the frozen weights would reach (a target-7 fix, measured "
                             "before it is built). Not with --train_target motion_modules, which has no LoRA.")
    parser.add_argument("--sampling_without_autocast", action="store_true",
                        help="Batched self-sampling outside autocast: the frozen weights are already in --dtype, so "
                             "only the LoRA layers (if any) still cast.")
    parser.add_argument("--profile_self_sampling", action="store_true",
                        help="After timing, run the batched self-sampling once more under torch.profiler and write "
                             "its top kernels to profile_self_sampling.txt in --output_dir.")
    parser.add_argument("--num_threads", type=int, default=None,
                        help="torch CPU threads (default: torch's). On a shared CPU, 1 avoids threads waiting on "
                             "each other.")
    parser.add_argument("--isolate", action="store_true",
                        help="Each configuration in a child process with its own model copy.")
    video = parser.add_argument_group("video (AnimateDiff, train_sspo_animatediff.py)")
    video.add_argument("--video", action="store_true",
                       help="Time the AnimateDiff text-to-video step (UNetMotionModel = 2D UNet + MotionAdapter).")
    video.add_argument("--num_frames", type=int, default=None, help="Default: 8 for the tiny model, else 16.")
    video.add_argument("--motion_adapter_name_or_path", default=None,
                       help="A MotionAdapter (hub id or folder). Default: the tiny MotionAdapter "
                            "(sspo_tiny.build_tiny_motion_adapter) for the tiny model; with --random_init_from_config, "
                            "the animatediff-motion-adapter-v1-5-2 architecture with random weights (no download).")
    video.add_argument("--train_target", choices=TRAIN_TARGETS, default="motion_lora",
                       help="What trains and what the RCR pool snapshots, as in train_sspo_animatediff.py.")
    video.add_argument("--swap_train_targets", nargs="*", choices=TRAIN_TARGETS, default=list(TRAIN_TARGETS),
                       help="Train targets whose snapshot swap is timed (target 5): the slowest SSPO configuration "
                            "run again with each one that is not --train_target.")
    parser.add_argument("--output_dir", default="bench_results")
    parser.add_argument("--smoke", action="store_true",
                        help="2 steps, 1 warm-up, 2 sampling steps everywhere, small matmul peak: for CI.")
    args = parser.parse_args(input_args)
    if args.smoke:
        args.steps, args.warmup, args.self_sample_steps = 2, 1, 2
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1 (the first warm-up step counts FLOPs)")
    if args.self_sample_batch_size is not None and args.self_sample_batch_size < 1:
        parser.error("--self_sample_batch_size must be at least 1")
    if args.sampling_without_lora and args.video and args.train_target == "motion_modules":
        parser.error("--sampling_without_lora needs a LoRA: --train_target motion_modules has none")
    if args.gradient_accumulation_steps < 1:
        parser.error("--gradient_accumulation_steps must be at least 1")
    if args.video and args.gradient_accumulation_steps > 1:
        parser.error("--gradient_accumulation_steps is timed for images only (train_sspo_sd15.py's step)")
    if args.sampling_without_lora and args.self_sample_merged_copy == "on":
        parser.error("--sampling_without_lora measures the LoRA-layer sampler: not with --self_sample_merged_copy on")
    if args.sampling_micro_batches < 1 or args.sampling_micro_batch_size < 1:
        parser.error("--sampling_micro_batches and --sampling_micro_batch_size must be at least 1")
    if not args.video:
        given = [flag for flag, value in (("--num_frames", args.num_frames),
                                          ("--motion_adapter_name_or_path", args.motion_adapter_name_or_path))
                 if value is not None]
        if given:
            parser.error(f"{' and '.join(given)} need --video")
    else:
        if args.num_frames is not None and args.num_frames < 1:
            parser.error("--num_frames must be at least 1")
        if args.pretrained_model_name_or_path and not args.motion_adapter_name_or_path:
            parser.error("--video with --pretrained_model_name_or_path needs --motion_adapter_name_or_path "
                         "(e.g. guoyww/animatediff-motion-adapter-v1-5-2)")
    return args


# ---------------------------------------------------------------------------
# Timing, memory, FLOPs
# ---------------------------------------------------------------------------


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flop_formulas():
    """FlopCounterMode counts PyTorch's CUDA attention kernels but not the CPU flash-attention op
    that SDPA runs on CPU; give it the same formula so CPU counts include attention."""
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = (
            lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v))
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
            lambda grad, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad, q, k, v))
    return mapping


def flop_counter():
    return FlopCounterMode(display=False, custom_mapping=flop_formulas())


class PhaseTimer:
    """Wall time per phase; synchronizes CUDA at phase boundaries so time lands where it is spent.
    While ``flops`` is a dict, each phase also counts its FLOPs into it."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.flops = None

    def sync(self):
        sync(self.device)

    @contextmanager
    def phase(self, name):
        counter = flop_counter() if self.flops is not None else nullcontext()
        self.sync()
        start = time.perf_counter()
        try:
            with counter:
                yield
        finally:
            self.sync()
            self.seconds[name] += time.perf_counter() - start
            if self.flops is not None:
                self.flops[name] += counter.get_total_flops()


class SwapTimingPool(sspo_utils.ReferencePool):
    """The RCR pool, with the in-place copies in and out of a swap timed separately."""

    timer = None
    swaps = 0

    @contextmanager
    def swapped_in(self, index):
        self.swaps += 1
        with self.timer.phase("swap"):
            context = super().swapped_in(index)
            context.__enter__()
        try:
            yield self
        finally:
            with self.timer.phase("swap"):
                context.__exit__(None, None, None)


def release_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the peak RSS (VmHWM) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory(device):
    """(allocated, reserved) peak bytes on CUDA; (peak RSS, None) on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, None
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, None  # Linux reports KiB


def matmul_peak(device, smoke=False):
    """The machine's matrix-product throughput, the denominator of MFU: bf16 on GPU, fp32 on CPU.
    Best of several square products (the peak, not the typical)."""
    if device.type == "cuda":
        dtype, n, repeats = torch.bfloat16, 8192, 20
    else:
        dtype, n, repeats = torch.float32, (512 if smoke else 2048), (3 if smoke else 8)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        times.append(time.perf_counter() - start)
    flops = 2 * n ** 3
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "repeats": repeats,
            "tflops": flops / min(times) / 1e12, "tflops_median": flops / statistics.median(times) / 1e12}


# ---------------------------------------------------------------------------
# Model and data
# ---------------------------------------------------------------------------


def autocast(device, dtype):
    """What accelerate's mixed precision does to the trainers' UNet calls."""
    if dtype not in (torch.bfloat16, torch.float16):  # fp32 (or fp64 in probe_batch_difference.py): none
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def random_init_modules(name):
    """UNet, VAE, text encoder (on the meta device: no memory, no init time) and tokenizer of a
    RANDOM_INIT_CONFIGS architecture."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    spec = RANDOM_INIT_CONFIGS[name]
    # The real CLIP vocabulary is not available offline: the tiny byte-level one covers any caption,
    # and its ids are far below the 49408 rows of the embedding.
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer(*sspo_tiny.write_tokenizer_files(tmp), model_max_length=77)
    if len(tokenizer) > spec["text"]["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tokenizer)} ids, more than the text encoder's {spec['text']['vocab_size']}")
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text_config = CLIPTextConfig(**spec["text"], bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
                                 eos_token_id=eos, pad_token_id=eos)
    with init_empty_weights():  # buffers (CLIP's position_ids) stay real
        unet = UNet2DConditionModel(**spec["unet"])
        vae = AutoencoderKL(**spec["vae"])
        text_encoder = CLIPTextModel(text_config)
    return unet, vae, text_encoder, tokenizer


@torch.no_grad()
def materialize(model, device, dtype):
    """Allocate a meta-device model on ``device`` and give it PyTorch's default random init there
    (fast on a GPU, where building 860M parameters on CPU first would not be)."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers() if not b.is_meta}
    model.to_empty(device=device)
    initialized = set()
    for module in model.modules():
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
            initialized.update(id(p) for p in module.parameters(recurse=False))
    for p in model.parameters():
        if id(p) not in initialized:  # parameters no standard layer owns
            p.normal_(0.0, 0.02)
    for name, value in buffers.items():  # to_empty left them uninitialized
        model.get_buffer(name).copy_(value)
    # nn.Module.to: diffusers' own .to() warns about fp32-only modules that a from-config model has none of
    return torch.nn.Module.to(model, dtype=dtype)


def random_init_pipeline(name, device, dtype, seed=0):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    unet, vae, text_encoder, tokenizer = random_init_modules(name)
    torch.manual_seed(seed)
    for model in (unet, vae, text_encoder):
        materialize(model, device, dtype)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def load_pipeline(args, device, dtype):
    from diffusers import StableDiffusionPipeline

    if args.random_init_from_config:
        pipe = random_init_pipeline(args.random_init_from_config, device, dtype)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(args.pretrained_model_name_or_path, safety_checker=None,
                                                       requires_safety_checker=False)
        # as the trainers do: load, then cast the frozen weights (no cast, and no diffusers warning, for fp32)
        pipe = pipe.to(device) if dtype == torch.float32 else pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_init_motion_adapter(name):
    """The MotionAdapter of a RANDOM_INIT_CONFIGS architecture, on the meta device."""
    from accelerate import init_empty_weights
    from diffusers import MotionAdapter

    with init_empty_weights():
        return MotionAdapter(**RANDOM_INIT_CONFIGS[name]["motion_adapter"])


def video_pipeline(vae, text_encoder, tokenizer, unet, scheduler_config):
    """AnimateDiffPipeline around a UNetMotionModel, as the AnimateDiff trainer's validation builds it, on the
    trainer's schedule (its --beta_schedule default, clip_sample off) with DDIM, its default self-sampler."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler

    scheduler = DDIMScheduler.from_config(scheduler_config, beta_schedule=ANIMATEDIFF_BETA_SCHEDULE, clip_sample=False)
    return AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                               motion_adapter=None, scheduler=scheduler)


def load_video_pipeline(args, device, dtype):
    from accelerate import init_empty_weights
    from diffusers import StableDiffusionPipeline, UNetMotionModel

    if args.random_init_from_config and not args.motion_adapter_name_or_path:
        # The whole UNetMotionModel on the meta device, materialized once on `device`: no 2D UNet copy first.
        unet2d, vae, text_encoder, tokenizer = random_init_modules(args.random_init_from_config)
        adapter = random_init_motion_adapter(args.random_init_from_config)
        with init_empty_weights():
            unet = UNetMotionModel.from_unet2d(unet2d, adapter, load_weights=False)
        torch.manual_seed(0)
        for model in (unet, vae, text_encoder):
            materialize(model, device, dtype)
        pipe = video_pipeline(vae, text_encoder, tokenizer, unet, SD15_SCHEDULER)
    else:
        if args.random_init_from_config:
            base = random_init_pipeline(args.random_init_from_config, device, dtype)
        else:
            base = StableDiffusionPipeline.from_pretrained(args.pretrained_model_name_or_path, safety_checker=None,
                                                           requires_safety_checker=False)
        unet = build_motion_unet(args, base.unet)  # the trainer's: MotionAdapter.from_pretrained + from_unet2d
        for model in (base.vae, base.text_encoder, unet):  # as the trainer: load, then cast the frozen weights
            model.to(device) if dtype == torch.float32 else model.to(device, dtype=dtype)  # fp32: no diffusers warning
        pipe = video_pipeline(base.vae, base.text_encoder, base.tokenizer, unet, base.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def trainer_optimizer_args(args):
    """The trainers' optimizer flags with their default values, so the benchmark's optimizer is
    built exactly as sspo_utils.create_optimizer builds theirs."""
    parser = sspo_utils.add_shared_arguments(argparse.ArgumentParser(), ("sspo", "sft", "dpo"), "unused")
    trainer_args = parser.parse_args(["--pretrained_model_name_or_path", "unused"])
    trainer_args.use_8bit_adam = args.use_8bit_adam
    return trainer_args


def load_shared(args):
    """Model, LoRA adapter, sampler and data that every configuration uses, prepared as
    train_sspo_sd15.py prepares them."""
    from diffusers import DDIMScheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig
    from torchvision.transforms.functional import to_tensor

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    pipe = load_video_pipeline(args, device, dtype) if args.video else load_pipeline(args, device, dtype)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    for model in (unet, vae, text_encoder):
        model.requires_grad_(False)
    if args.video:  # the AnimateDiff trainer's own choice (lora_alpha defaults to --rank there)
        trainable = set_trainable(SimpleNamespace(train_target=args.train_target, rank=args.rank, lora_alpha=args.rank),
                                  unet)
    else:
        unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        cast_training_params(unet, dtype=torch.float32)
    if args.enable_xformers_memory_efficient_attention:
        sspo_utils.check_xformers_available()
        unet.enable_xformers_memory_efficient_attention()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if args.channels_last:
        unet.to(memory_format=torch.channels_last)
    unet.train()
    if not args.video:
        trainable = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    sampler = sspo_utils.SSPOSelfSamplingPipeline.from_training_components(
        vae, text_encoder, tokenizer, unet, DDIMScheduler.from_config(pipe.scheduler.config))

    if args.video:  # winning clips only (no dpo): (b, f, 3, H, W) in [-1, 1], as the trainer's VideoClipDataset
        examples = list(sspo_tiny.synthetic_video_examples(args.batch_size, args.num_frames, args.resolution, seed=0))
        pixels = (torch.stack([torch.stack([to_tensor(frame) for frame in frames]) for _, frames in examples])
                  * 2 - 1).to(device, dtype)
    else:
        examples = list(sspo_tiny.synthetic_examples(2 * args.batch_size, seed=0, size=args.resolution))
        pixels = (torch.stack([to_tensor(image) for _, image in examples]) * 2 - 1).to(device, dtype)
    captions = [caption for caption, _ in examples[: args.batch_size]]
    with autocast(device, dtype):
        negative = sspo_utils.encode_prompt_ids(text_encoder, sspo_utils.tokenize(tokenizer, [""]))
    choice = "off" if args.sampling_without_lora else args.self_sample_merged_copy
    merged = sspo_utils.create_merged_copy(choice, unet, [n for n, _ in trainable], dtype)
    return SimpleNamespace(
        pipe=pipe, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, sampler=sampler, merged=merged,
        device=device, dtype=dtype, trainable=trainable, parameters=[p for _, p in trainable],
        initial_lora=[p.detach().clone() for _, p in trainable], captions=captions,
        input_ids=sspo_utils.tokenize(tokenizer, captions), pixels_w=pixels[: args.batch_size],
        pixels_l=None if args.video else pixels[args.batch_size:], negative=negative,
        attention_processor=type(next(iter(unet.attn_processors.values()))).__name__,
        video=args.video, num_frames=args.num_frames if args.video else None,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
    )


@contextmanager
def sdpa_for_counting(args, unet):
    """FlopCounterMode has no formula for xformers' kernels: count with PyTorch SDPA (the same
    arithmetic), then put xformers back."""
    if not args.enable_xformers_memory_efficient_attention:
        yield
        return
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    try:
        yield
    finally:
        unet.enable_xformers_memory_efficient_attention()


# ---------------------------------------------------------------------------
# Training configurations
# ---------------------------------------------------------------------------


def run_config(args, name, shared):
    """Warm-up and timed optimizer steps of one configuration; returns its row."""
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    device, unet = shared.device, shared.unet
    config = dict(CONFIGS[name])
    if args.smoke and config["self_sample_steps"]:
        config["self_sample_steps"] = 2
    with torch.no_grad():  # every configuration starts from the same fresh adapter
        for p, initial in zip(shared.parameters, shared.initial_lora):
            p.copy_(initial)
            p.grad = None
    trainer_args = trainer_optimizer_args(args)
    optimizer = sspo_utils.create_optimizer(trainer_args, shared.parameters, 1)
    timer = PhaseTimer(device)
    pool = SwapTimingPool(shared.trainable)
    pool.timer = timer
    pool.add(step=1)  # a non-trivial pool: the draw matters, the cost does not
    noise_scheduler = DDPMScheduler.from_config(shared.pipe.scheduler.config)
    generators = sspo_utils.TrainingGenerators(0)
    step_times, step_phases, flops = [], [], dict.fromkeys(PHASES, 0)
    release_memory(device)
    reset_peak_memory(device)
    for step in range(args.warmup + args.steps):
        counting = step == 0  # FLOPs in the first warm-up step (the counter's overhead is never timed)
        timer.flops = flops if counting else None
        timer.seconds = dict.fromkeys(PHASES, 0.0)
        with sdpa_for_counting(args, unet) if counting else nullcontext():
            timer.sync()
            start = time.perf_counter()
            (one_video_step if shared.video else one_step)(config, shared, timer, pool, noise_scheduler, generators,
                                                           optimizer, trainer_args.max_grad_norm)
            timer.sync()
        if step >= args.warmup:
            step_times.append(time.perf_counter() - start)
            step_phases.append(timer.seconds)
    peak_bytes, peak_reserved = peak_memory(device)
    bare = bare_unet_seconds(args, shared, config)
    median = statistics.median(step_times)
    row = {
        "config": name, **config, "step_seconds_median": median,
        "step_seconds_min": min(step_times), "step_seconds_max": max(step_times),
        # medians, like the step time: one stalled step on a shared machine must not move the split
        "phase_seconds_per_step": {k: statistics.median(p[k] for p in step_phases) for k in PHASES},
        "phase_seconds_mean": {k: statistics.fmean(p[k] for p in step_phases) for k in PHASES},
        "peak_memory_bytes": peak_bytes, "peak_reserved_bytes": peak_reserved,
        "samples_per_second": args.batch_size * args.gradient_accumulation_steps / median,
        "bare_unet_seconds_per_step": bare,
        "trainable_parameters": sum(p.numel() for p in shared.parameters),
        "swap_bytes": pool.nbytes_per_snapshot(), "swap_mib": pool.nbytes_per_snapshot() / 2**20,
        # as the trainers: around self-sampling (not with the merged copy), and around each reference pass
        "swaps_per_step": pool.swaps / (args.warmup + args.steps),
        "flops_per_step": flops,
    }
    if shared.video:
        row["train_target"] = args.train_target
    del optimizer, pool
    release_memory(device)
    return row


@contextmanager
def sampling_unet(shared, timer, pool, index):
    """The trainers' rcr_sampling_unet, with the merge of the merged copy timed as the swap it replaces;
    also yields the autocast the sampling call runs under (none for the merged copy)."""
    if shared.merged is None:
        with sspo_utils.rcr_sampling_unet(pool, index, shared.unet) as unet:  # SwapTimingPool times the swap
            yield unet, autocast(shared.device, shared.dtype)
        return
    with timer.phase("swap"):
        unet = shared.merged.merge(pool.snapshots[index])
    yield unet, nullcontext()


def one_step(config, shared, timer, pool, noise_scheduler, generators, optimizer, max_grad_norm):
    """One optimizer step of train_sspo_sd15.py, phase by phase: --gradient_accumulation_steps micro-batches
    of the same data, their self-samples generated together first, as the trainer does."""
    device, dtype, unet, vae = shared.device, shared.dtype, shared.unet, shared.vae
    amp = autocast(device, dtype)
    micro_batches = shared.gradient_accumulation_steps
    with timer.phase("other"):
        with torch.no_grad(), amp:
            prompt_embeds = sspo_utils.encode_prompt_ids(shared.text_encoder, shared.input_ids)
        reference_index = pool.sample("uniform", generators.rcr)
    if config["loss_type"] == "sspo" and config["self_sample_steps"]:
        with sampling_unet(shared, timer, pool, reference_index) as (sampler_unet, sampler_amp):
            with timer.phase("self_sampling"), sampler_amp:
                step_latents_s = sspo_utils.self_sample_step(
                    shared.sampler, [prompt_embeds] * micro_batches, shared.negative, shared.resolution,
                    shared.resolution, config["self_sample_steps"], GUIDANCE_SCALE, generators.sampling, None,
                    unet=sampler_unet)
    for i in range(micro_batches):
        with timer.phase("other"):
            with torch.no_grad(), amp:
                latents_w = vae.encode(shared.pixels_w).latent_dist.sample(generators.noise) * vae.config.scaling_factor
                if config["loss_type"] == "dpo":
                    latents_l = vae.encode(shared.pixels_l).latent_dist.sample(generators.noise) * vae.config.scaling_factor
            noise, timesteps = sspo_utils.draw_noise_and_timesteps(noise_scheduler, latents_w, generators.noise)
            if config["loss_type"] == "sspo":
                latents_l = (step_latents_s[i] if config["self_sample_steps"] else  # probe: no generation
                             torch.randn(latents_w.shape, generator=generators.sampling).to(latents_w))
        if config["loss_type"] == "sft":
            with timer.phase("policy_forward_backward"):
                noisy = noise_scheduler.add_noise(latents_w, noise, timesteps)
                with amp:
                    loss = sspo_utils.per_sample_error(unet(noisy, timesteps, prompt_embeds).sample, noise).mean()
                (loss / micro_batches).backward()
            continue
        with timer.phase("reference_forward"):
            noisy, target, pair_t = sspo_utils.noisy_pair(noise_scheduler, latents_w, latents_l, noise, timesteps)
            pair_embeds = torch.cat([prompt_embeds, prompt_embeds])
        with pool.swapped_in(reference_index):  # before the policy forward, as in the trainer
            with timer.phase("reference_forward"), torch.no_grad(), amp:
                ref_w, ref_l = sspo_utils.per_sample_error(unet(noisy, pair_t, pair_embeds).sample, target).chunk(2)
        with timer.phase("policy_forward_backward"):
            with amp:
                model_w, model_l = sspo_utils.per_sample_error(unet(noisy, pair_t, pair_embeds).sample, target).chunk(2)
            if config["loss_type"] == "sspo":
                loss, _ = sspo_utils.sspo_loss(model_w, model_l, ref_w, ref_l, 5000.0)
            else:
                loss, _ = sspo_utils.dpo_loss(model_w, model_l, ref_w, ref_l, 5000.0)
            (loss / micro_batches).backward()
    with timer.phase("other"):
        torch.nn.utils.clip_grad_norm_(shared.parameters, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()


def one_video_step(config, shared, timer, pool, noise_scheduler, generators, optimizer, max_grad_norm):
    """One optimizer step of train_sspo_animatediff.py (one micro-batch), phase by phase: video latents
    (b, c, f, h, w), text embeddings repeated per frame, the self-sample through self_sample_step with
    num_frames under one swap, and the reference pass under a second swap, as the trainer does."""
    device, dtype, unet, num_frames = shared.device, shared.dtype, shared.unet, shared.num_frames
    amp = autocast(device, dtype)
    with timer.phase("other"):
        with torch.no_grad(), amp:
            prompt_embeds = sspo_utils.encode_prompt_ids(shared.text_encoder, shared.input_ids)
        reference_index = pool.sample("uniform", generators.rcr)
    if config["loss_type"] == "sspo":
        with sampling_unet(shared, timer, pool, reference_index) as (sampler_unet, sampler_amp):
            with timer.phase("self_sampling" if config["self_sample_steps"] else "other"):
                if config["self_sample_steps"]:
                    with sampler_amp:
                        latents_s = sspo_utils.self_sample_step(
                            shared.sampler, [prompt_embeds], shared.negative, shared.resolution, shared.resolution,
                            config["self_sample_steps"], GUIDANCE_SCALE, generators.sampling, None,
                            num_frames=num_frames, unet=sampler_unet)[0]
                else:  # probe: no generation
                    latents_s = torch.randn(shared.sampler.latent_shape(prompt_embeds.shape[0], shared.resolution,
                                                                        shared.resolution, num_frames),
                                            generator=generators.sampling).to(device, prompt_embeds.dtype)
    with timer.phase("other"):
        with amp:
            latents_w = encode_video(shared.vae, shared.pixels_w, dtype, generators.noise)  # z_w: b c f h w
        frame_embeds = prompt_embeds.repeat_interleave(num_frames, dim=0)
        noise, timesteps = sspo_utils.draw_noise_and_timesteps(noise_scheduler, latents_w, generators.noise)
    if config["loss_type"] == "sft":
        with timer.phase("policy_forward_backward"):
            with amp:
                pred = unet(noise_scheduler.add_noise(latents_w, noise, timesteps), timesteps, frame_embeds).sample
                loss = sspo_utils.per_sample_error(
                    pred, sspo_utils.training_target(noise_scheduler, latents_w, noise, timesteps)).mean()
            loss.backward()
    else:
        with timer.phase("reference_forward"):
            pair_frame_embeds = torch.cat([frame_embeds, frame_embeds])
            noisy, target, pair_t = sspo_utils.noisy_pair(noise_scheduler, latents_w, latents_s, noise, timesteps)
        with pool.swapped_in(reference_index):  # before the policy forward, as in the trainer
            with timer.phase("reference_forward"), torch.no_grad(), amp:
                ref_w, ref_s = sspo_utils.per_sample_error(unet(noisy, pair_t, pair_frame_embeds).sample, target).chunk(2)
        with timer.phase("policy_forward_backward"):
            with amp:
                model_w, model_s = sspo_utils.per_sample_error(
                    unet(noisy, pair_t, pair_frame_embeds).sample, target).chunk(2)
            loss, _ = sspo_utils.sspo_loss(model_w, model_s, ref_w, ref_s, 5000.0)
            loss.backward()
    with timer.phase("other"):
        torch.nn.utils.clip_grad_norm_(shared.parameters, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()


def bare_unet_seconds(args, shared, config):
    """Time of the UNet passes the step must do, as bare calls of the same shapes (no data,
    no swap, no loss): the physical floor of the step on this machine."""
    unet, device = shared.unet, shared.device
    amp = autocast(device, shared.dtype)
    repeats = max(args.steps // 2, 1)
    with torch.no_grad(), amp:
        if shared.video:
            latents_w = encode_video(shared.vae, shared.pixels_w, shared.dtype, torch.Generator().manual_seed(0))
        else:
            latents_w = shared.vae.encode(shared.pixels_w).latent_dist.mode() * shared.vae.config.scaling_factor
        text_embeds = sspo_utils.encode_prompt_ids(shared.text_encoder, shared.input_ids)
    batch = latents_w.shape[0]
    per_frame = (lambda e: e.repeat_interleave(shared.num_frames, dim=0)) if shared.video else (lambda e: e)
    prompt_embeds = per_frame(text_embeds)
    pair = torch.cat([latents_w, latents_w])
    pair_t = torch.full((2 * batch,), 500, device=device)
    pair_embeds = torch.cat([prompt_embeds, prompt_embeds])
    single_t = pair_t[:batch]

    micro_batches = shared.gradient_accumulation_steps
    sampling_unet = unet if shared.merged is None else shared.merged.unet
    sampling_amp = amp if shared.merged is None else nullcontext()

    def one_step():
        if config["loss_type"] == "sspo" and config["self_sample_steps"]:  # one batched call for all micro-batches
            cfg_latents = torch.cat([latents_w, latents_w] * micro_batches)
            cfg_embeds = per_frame(torch.cat([shared.negative.expand(batch * micro_batches, -1, -1),
                                              text_embeds.repeat(micro_batches, 1, 1)]))
            with torch.inference_mode(), sampling_amp:
                for _ in range(config["self_sample_steps"]):
                    sampling_unet(cfg_latents, single_t.repeat(2 * micro_batches), cfg_embeds)
        for _ in range(micro_batches):
            if config["loss_type"] == "sft":
                with amp:
                    out = unet(latents_w, single_t, prompt_embeds).sample
                out.float().mean().backward()
                continue
            with torch.no_grad(), amp:
                unet(pair, pair_t, pair_embeds)
            with amp:
                out = unet(pair, pair_t, pair_embeds).sample
            out.float().mean().backward()

    one_step()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        one_step()
    sync(device)
    for p in unet.parameters():
        p.grad = None
    return (time.perf_counter() - start) / repeats


def _isolated_config(args, name, queue):
    shared = load_shared(args)
    shared.resolution = args.resolution
    queue.put(run_config(args, name, shared))


def run_isolated(args, name):
    """run_config in a child process with its own model copy (and its own peak memory)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_isolated_config, args=(args, name, queue))
    child.start()
    row = queue.get()
    child.join()
    return row


def swap_share_per_train_target(args, rows):
    """Target 5 for each AnimateDiff train target: the SSPO configuration that target 5 uses (most
    sampling steps) run again with every other --train_target (own model, same data and seeds),
    for the snapshot swap's seconds per step, its share of the step and the snapshot size. The
    main run's row serves its own --train_target."""
    sspo_rows = [row for row in rows if row["loss_type"] == "sspo" and row["self_sample_steps"]]
    if not sspo_rows or not args.swap_train_targets:
        return None
    reference = max(sspo_rows, key=lambda row: row["self_sample_steps"])
    result = {}
    for target in args.swap_train_targets:
        if target == args.train_target:
            row, source = reference, "main run"
        else:
            target_args = copy.copy(args)
            target_args.train_target = target
            if args.isolate:
                row = run_isolated(target_args, reference["config"])
            else:
                shared = load_shared(target_args)
                shared.resolution = args.resolution
                row = run_config(target_args, reference["config"], shared)
                del shared
                release_memory(torch.device(args.device))
            source = "separate run"
            print(f"{reference['config']} ({target}): {row['step_seconds_median']:.3f} s/step", flush=True)
        swap = row["phase_seconds_per_step"]["swap"]
        result[target] = {
            "config": reference["config"], "measured_in": source, "trainable_parameters": row["trainable_parameters"],
            "snapshot_bytes": row["swap_bytes"], "snapshot_mib": row["swap_mib"], "swaps_per_step": row["swaps_per_step"],
            "swap_seconds_per_step": swap, "step_seconds_median": row["step_seconds_median"],
            "share": swap / row["step_seconds_median"], "phase_seconds_per_step": row["phase_seconds_per_step"],
            "peak_memory_bytes": row["peak_memory_bytes"], "peak_reserved_bytes": row["peak_reserved_bytes"]}
    return result


# ---------------------------------------------------------------------------
# Sampling measurements
# ---------------------------------------------------------------------------


def sampler_vs_stock(args, shared):
    """Self-sampling pipeline (precomputed embeddings) against the stock pipeline called with
    prompt strings, as a user would: same steps, CFG, batch and seed. Returns the time ratio."""
    pipe, device = shared.pipe, shared.device
    steps = args.self_sample_steps
    sampler = sspo_utils.SSPOSelfSamplingPipeline.from_training_components(
        pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, type(pipe.scheduler).from_config(pipe.scheduler.config))
    with autocast(device, shared.dtype):
        prompt_embeds, negative = pipe.encode_prompt(shared.captions, device, 1, True)
    results, latents = {"stock": [], "self_sampling": []}, {}
    for repeat in range(1 + (2 if args.smoke else 5)):
        for name in ("stock", "self_sampling"):
            generator = torch.Generator().manual_seed(0)
            sync(device)
            start = time.perf_counter()
            with autocast(device, shared.dtype):
                if name == "stock" and shared.video:  # AnimateDiffPipeline: prompt strings, same frames
                    out = pipe(shared.captions, num_frames=shared.num_frames, num_inference_steps=steps,
                               guidance_scale=GUIDANCE_SCALE, output_type="latent", generator=generator,
                               height=args.resolution, width=args.resolution).frames
                elif name == "stock":
                    out = pipe(shared.captions, num_inference_steps=steps, guidance_scale=GUIDANCE_SCALE,
                               output_type="latent", generator=generator, height=args.resolution,
                               width=args.resolution).images
                elif shared.video:  # what train_sspo_animatediff.py calls
                    out = sspo_utils.self_sample_step(sampler, [prompt_embeds], negative, args.resolution,
                                                      args.resolution, steps, GUIDANCE_SCALE, generator,
                                                      num_frames=shared.num_frames)[0]
                else:
                    out = sampler.sample_latents(prompt_embeds, negative, args.resolution, args.resolution, steps,
                                                 GUIDANCE_SCALE, generator)
            sync(device)
            if repeat:  # the first round is warm-up
                results[name].append(time.perf_counter() - start)
            else:
                latents[name] = out.float()
    stock, ours = statistics.median(results["stock"]), statistics.median(results["self_sampling"])
    # same seed and embeddings: the two must agree (up to float reordering), or the ratio compares different work
    return {"steps": steps, "num_frames": shared.num_frames, "stock_pipeline": type(pipe).__name__,
            "latent_shape": list(latents["stock"].shape), "stock_seconds": stock, "self_sampling_seconds": ours,
            "ratio": ours / stock,
            "max_abs_latent_diff": float((latents["stock"] - latents["self_sampling"]).abs().max())}


def sampling_micro_batch_embeds(args, shared):
    """Prompt embeddings of the --sampling_micro_batches micro-batches of the sampling measurements."""
    micro, size = args.sampling_micro_batches, args.sampling_micro_batch_size
    captions = [caption for caption, _ in sspo_tiny.synthetic_examples(micro * size, seed=1, size=8)]
    with autocast(shared.device, shared.dtype):
        return [sspo_utils.encode_prompt_ids(shared.text_encoder, sspo_utils.tokenize(
            shared.tokenizer, captions[i * size:(i + 1) * size])) for i in range(micro)]


def self_samples(args, shared, embeds, chunk_size, unet=None):
    """The self-samples of one optimizer step through sspo_utils.self_sample_step: per micro-batch
    (chunk_size=1 with batch 1) or batched (None). With ``unet`` (the merged copy) no autocast, else
    the trainers' autocast unless --sampling_without_autocast. Seed 0 every time."""
    no_autocast = unet is not None or args.sampling_without_autocast
    with nullcontext() if no_autocast else autocast(shared.device, shared.dtype):
        return sspo_utils.self_sample_step(shared.sampler, embeds, shared.negative, args.resolution, args.resolution,
                                           args.self_sample_steps, GUIDANCE_SCALE, torch.Generator().manual_seed(0),
                                           chunk_size=chunk_size, num_frames=shared.num_frames, unet=unet)


def batched_self_sampling(args, shared):
    """Target 6: the self-samples of all micro-batches of one optimizer step generated per
    micro-batch (chunk_size=1) or in one batched call, through sspo_utils.self_sample_step, the
    trainers' own function. Same seeds; reports samples/s, FLOPs, peak memory and the largest
    latent difference between the two. With the merged copy, it samples from the live LoRA merged
    into the copy, without autocast."""
    device = shared.device
    micro, size = args.sampling_micro_batches, args.sampling_micro_batch_size
    embeds = sampling_micro_batch_embeds(args, shared)
    variants = {"per_micro_batch": size, "batched": args.self_sample_batch_size}
    if "per_micro_batch" in args.skip:  # e.g. when only the batched call's speed-ups are measured
        del variants["per_micro_batch"]
    unet = shared.unet
    if shared.merged is not None:
        unet = shared.merged.merge([p.detach() for p in shared.parameters])

    def generate(chunk_size):
        return self_samples(args, shared, embeds, chunk_size, None if shared.merged is None else unet)

    if args.sampling_without_lora:
        unet.disable_adapters()  # enabled again below: nothing after this function samples
    counter = flop_counter()
    with sdpa_for_counting(args, unet), counter:  # counted before any compilation
        generate(variants["batched"])
    flops = counter.get_total_flops()
    if args.compile_unet:
        unet.compile(mode=args.compile_mode)  # in place: the sampler keeps calling the same module

    seconds = {name: [] for name in variants}
    latents, peaks = {}, {}
    repeats = 1 if args.smoke else 3
    for repeat in range(1 + repeats):  # round 0 is warm-up (and compilation)
        for name, chunk_size in variants.items():
            release_memory(device)
            reset_peak_memory(device)
            sync(device)
            start = time.perf_counter()
            out = generate(chunk_size)
            sync(device)
            if repeat:
                seconds[name].append(time.perf_counter() - start)
            else:
                latents[name] = [x.float() for x in out]
                peaks[name] = peak_memory(device)[0] if device.type == "cuda" else None
    samples = micro * size
    result = {"micro_batches": micro, "micro_batch_size": size, "num_frames": shared.num_frames,
              "steps": args.self_sample_steps,
              "guidance_scale": GUIDANCE_SCALE, "self_sample_batch_size": args.self_sample_batch_size,
              "compile_unet": args.compile_unet, "compile_mode": args.compile_mode if args.compile_unet else None,
              "without_lora": args.sampling_without_lora,
              "without_autocast": args.sampling_without_autocast or shared.merged is not None,
              "merged_copy": shared.merged is not None, "flops": flops, "variants": {}}
    for name, chunk_size in variants.items():
        median = statistics.median(seconds[name])
        result["variants"][name] = {
            "chunk_size": chunk_size or samples, "calls": -(-samples // (chunk_size or samples)),
            "seconds": median, "samples_per_second": samples / median, "tflops": flops / median / 1e12,
            "peak_memory_bytes": peaks[name]}
    for name, v in result["variants"].items():  # printed now: a run stopped later (e.g. while profiling) keeps these
        print(f"self-sampling {name}: {v['seconds']:.3f} s per optimizer step, {v['samples_per_second']:.2f} samples/s, "
              f"{v['tflops']:.3g} TFLOP/s", flush=True)
    result["batched_over_per_micro_batch"] = result["max_abs_latent_diff"] = None
    if "per_micro_batch" in variants:
        result["batched_over_per_micro_batch"] = (result["variants"]["batched"]["samples_per_second"]
                                                  / result["variants"]["per_micro_batch"]["samples_per_second"])
        result["max_abs_latent_diff"] = max(float((a - b).abs().max())
                                            for a, b in zip(latents["per_micro_batch"], latents["batched"]))
    if args.profile_self_sampling:
        path = os.path.join(args.output_dir, "profile_self_sampling.txt")
        result["profile"] = profile_top_kernels(lambda: generate(variants["batched"]), device, path)
    if args.sampling_without_lora:
        unet.enable_adapters()
    return result


def profile_top_kernels(fn, device, path, rows=30):
    """Run fn once under torch.profiler; write the operators and kernels that took the most device
    time (CPU time on CPU) to path, and return their names and shares of the total."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sync(device)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        sync(device)
    averages = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = averages.table(sort_by=key, row_limit=rows)
    with open(path, "w") as f:
        f.write(f"# torch.profiler, one batched self-sampling call, sorted by {key}\n\n{table}\n")
    # on CUDA, shares over the kernels alone: an operator's self device time repeats its kernels' time
    events = [event for event in averages
              if device.type != "cuda" or event.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(getattr(event, key) for event in events) or 1.0
    top = sorted(events, key=lambda event: getattr(event, key), reverse=True)[:10]
    # casts and layout copies (the first target-7 bottleneck): the operator's self time is its kernels' time
    copies = [event for event in averages if event.key == "aten::copy_"]
    return {"path": os.path.basename(path), "sorted_by": key, "total_us": total,
            "aten_copy_share": sum(getattr(event, key) for event in copies) / total,
            "aten_copy_calls": sum(event.count for event in copies),
            "top": [{"name": event.key, "us": getattr(event, key), "share": getattr(event, key) / total}
                    for event in top]}


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def add_mfu(rows, batched, peak):
    """Achieved FLOP/s and MFU per phase, from the counted FLOPs and the timed phase seconds."""
    peak_flops = peak["tflops"] * 1e12
    for row in rows:
        row["tflops"], row["mfu"] = {}, {}
        for phase in MFU_PHASES:
            seconds, flops = row["phase_seconds_per_step"][phase], row["flops_per_step"][phase]
            if seconds > 0 and flops > 0:
                row["tflops"][phase] = flops / seconds / 1e12
                row["mfu"][phase] = row["tflops"][phase] * 1e12 / peak_flops
        total = sum(row["flops_per_step"].values())
        row["tflops"]["step"] = total / row["step_seconds_median"] / 1e12
        row["mfu"]["step"] = row["tflops"]["step"] * 1e12 / peak_flops
    if batched:
        for variant in batched["variants"].values():
            variant["mfu"] = variant["tflops"] * 1e12 / peak_flops


def summarize(rows, sampler_result, batched, video=False, swap_targets=None):
    """Targets of the performance issue. 'max' targets are met at or below, 'min' at or above.
    6 and 7 are defined for a GPU at SD1.5 size; elsewhere they are for information. For video,
    2 and 4 compare against DPO, which the AnimateDiff trainer does not have: listed as n/a
    (measured and met None); 5 is given per train target when swap_targets was measured."""
    by_name = {row["config"]: row for row in rows}
    targets, scopes = {}, {}
    if sampler_result:
        targets["1_self_sampling_over_stock"] = (sampler_result["ratio"], "max", 1.00)
    if video:
        for name in ("2_sspo_without_sampling_over_dpo", "4_peak_memory_sspo_over_dpo"):
            targets[name] = (None, "max", 1.05)
            scopes[name] = "n/a for video (no DPO in train_sspo_animatediff.py)"
    elif "dpo" in by_name and "sspo_probe" in by_name:
        targets["2_sspo_without_sampling_over_dpo"] = (
            by_name["sspo_probe"]["step_seconds_median"] / by_name["dpo"]["step_seconds_median"], "max", 1.05)
        targets["4_peak_memory_sspo_over_dpo"] = (
            max(r["peak_memory_bytes"] for n, r in by_name.items() if n.startswith("sspo"))
            / by_name["dpo"]["peak_memory_bytes"], "max", 1.05)
    sspo_runs = [r for n, r in by_name.items() if n.startswith("sspo_") and r["self_sample_steps"]]
    if sspo_runs:
        slowest = max(sspo_runs, key=lambda r: r["self_sample_steps"])
        targets["3_overhead_ratio_sspo"] = (slowest["step_seconds_median"] / slowest["bare_unet_seconds_per_step"],
                                            "max", 1.10)
        if swap_targets:
            for target, swap in swap_targets.items():
                targets[f"5_swap_share_of_step_{target}"] = (swap["share"], "max", 0.01)
        else:
            targets["5_swap_share_of_step"] = (
                slowest["phase_seconds_per_step"]["swap"] / slowest["step_seconds_median"], "max", 0.01)
        if "dpo" in by_name:  # where users train: batch 4 x accumulation 8, 20 sampling steps
            targets["8_sspo_over_dpo_step"] = (slowest["step_seconds_median"] / by_name["dpo"]["step_seconds_median"],
                                               "max", 4.0)
            scopes["8_sspo_over_dpo_step"] = "GPU, SD1.5 size, batch 4 x accumulation 8, 20 sampling steps"
    if batched:
        if batched["batched_over_per_micro_batch"] is not None:
            targets["6_batched_over_per_micro_batch_sampling"] = (batched["batched_over_per_micro_batch"], "min", 1.5)
        targets["7_self_sampling_mfu_batched"] = (batched["variants"]["batched"]["mfu"], "min", 0.30)
    size = "GPU, AnimateDiff at SD1.5 size" if video else "GPU, SD1.5 size"
    return {name: {"measured": value, "kind": kind, "target": target,
                   "met": None if value is None else (value <= target if kind == "max" else value >= target),
                   "scope": scopes.get(name, size if name[0] in "67" else "any")}
            for name, (value, kind, target) in targets.items()}


def _f(value, spec=".3f"):
    return "-" if value is None else format(value, spec)


def markdown(report):
    machine, s, video = report["machine"], report["settings"], report["video"]
    if video:
        trained = (f"train target {video['train_target']}"
                   + (f" (LoRA rank {report['rank']})" if video["train_target"] != "motion_modules" else "")
                   + f", {video['trainable_parameters']:,} trainable parameters, RCR snapshot "
                     f"{video['snapshot_mib']:.2f} MiB")
        model = (f"TEXT-TO-VIDEO (AnimateDiff, UNetMotionModel), {report['model']}, motion adapter "
                 f"{video['motion_adapter']}, {video['num_frames']} frames per video, {report['resolution']} px, "
                 f"batch {report['batch_size']} videos, {trained}")
    else:
        model = (f"{report['model']}, {report['resolution']} px, batch {report['batch_size']} x gradient accumulation "
                 f"{report.get('gradient_accumulation_steps', 1)}, LoRA rank {report['rank']}")
    unit = "videos/s" if video else "samples/s"
    lines = [f"Machine: {machine['device_name']} ({machine['device']}), {machine['cpu_count']} CPU cores, torch "
             f"{machine['torch']}, {machine['date']}. Model: {model}, {report['steps']} timed steps, "
             f"{s['dtype']}, attention {s['attention_processor']}, gradient checkpointing "
             f"{'on' if s['gradient_checkpointing'] else 'off'}, optimizer {s['optimizer']}"
             f"{', channels_last' if s['channels_last'] else ''}, self-sampling "
             f"{'from the merged copy' if s.get('merged_copy') else 'through the LoRA layers'}.", ""]
    skipped = report.get("skipped_configs") or {}
    if report["configs"] or skipped:
        lines += ["| config | step s (median) | min | max | self-sampling | swap | ref fwd | policy fwd+bwd | other | "
                  f"peak memory MiB | peak reserved MiB | {unit} | step / bare UNet |", "|" + " --- |" * 13]
        for row in report["configs"]:
            phases = row["phase_seconds_per_step"]
            reserved = row["peak_reserved_bytes"] / 2**20 if row["peak_reserved_bytes"] else None
            lines.append(f"| {row['config']} | {row['step_seconds_median']:.3f} | {row['step_seconds_min']:.3f} | "
                         f"{row['step_seconds_max']:.3f} | " + " | ".join(f"{phases[p]:.3f}" for p in PHASES) +
                         f" | {row['peak_memory_bytes'] / 2**20:.0f} | {_f(reserved, '.0f')} | "
                         f"{row['samples_per_second']:.2f} | "
                         f"{row['step_seconds_median'] / row['bare_unet_seconds_per_step']:.2f} |")
        lines += [f"| {name} | skipped |" + " - |" * 11 for name in skipped]
        lines += [""] + [f"{name}: skipped, {reason}." for name, reason in skipped.items()]
        lines += ["Phase columns are per-phase medians over the timed steps (their sum can differ from the median step)."]
        if video:
            lines.append("The swap column adds both swaps of an SSPO step (around self-sampling and around the reference "
                         "pass, as train_sspo_animatediff.py does).")
        if report["machine"]["device"] == "cpu":
            lines.append("Peak memory on CPU is the process's peak RSS since the configuration started (model included).")
        lines.append("")
    peak = report["matmul_peak"]
    label = "CPU MFU" if report["machine"]["device"] == "cpu" else "MFU"
    lines += [f"FLOPs (torch.utils.flop_counter, one step) and {label} against the measured {peak['dtype']} matmul "
              f"peak of {peak['tflops']:.3g} TFLOP/s ({peak['n']}x{peak['n']}x{peak['n']}, best of {peak['repeats']}). "
              "With gradient checkpointing the counts include the recomputed forward.", ""]
    if report["configs"]:
        lines += ["| config | GFLOP/step self-sampling | ref fwd | policy fwd+bwd | other | total | "
                  "TFLOP/s self-sampling | ref fwd | policy fwd+bwd | step | "
                  f"{label} self-sampling | ref fwd | policy fwd+bwd | step |", "|" + " --- |" * 15]
        for row in report["configs"]:
            fl = row["flops_per_step"]
            gflop = [fl["self_sampling"], fl["reference_forward"], fl["policy_forward_backward"],
                     fl["other"] + fl["swap"], sum(fl.values())]
            keys = MFU_PHASES + ("step",)
            lines.append(f"| {row['config']} | " + " | ".join(f"{g / 1e9:.3g}" for g in gflop) + " | "
                         + " | ".join(_f(row["tflops"].get(k), ".3g") for k in keys) + " | "
                         + " | ".join(_f(row["mfu"][k] * 100, ".2f") + "%" if k in row["mfu"] else "-" for k in keys)
                         + " |")
        lines.append("")
    sampler = report["self_sampling_vs_stock"]
    if sampler:
        what = (f"sspo_utils.self_sample_step vs stock {sampler['stock_pipeline']}(output_type=\"latent\") with "
                f"prompt strings, {sampler['num_frames']} frames, " if video else "")
        lines += [f"Self-sampling pipeline vs stock pipeline ({what}{sampler['steps']} steps, CFG {GUIDANCE_SCALE}): "
                  f"{sampler['self_sampling_seconds']:.3f} s vs {sampler['stock_seconds']:.3f} s, "
                  f"ratio {sampler['ratio']:.2f}; max |latent difference| {sampler['max_abs_latent_diff']:.3g}.", ""]
    batched = report["batched_self_sampling"]
    if batched:
        frames = f" of {batched['num_frames']}-frame videos" if video else ""
        lines += [f"Self-sampling across gradient accumulation (batch {batched['micro_batch_size']} x "
                  f"{batched['micro_batches']} micro-batches{frames}, {batched['steps']} steps, CFG {GUIDANCE_SCALE}, "
                  f"sspo_utils.self_sample_step{', torch.compile' if batched['compile_unet'] else ''}"
                  f"{', LoRA layers off' if batched['without_lora'] else ''}"
                  f"{', merged copy' if batched.get('merged_copy') else ''}"
                  f"{', no autocast' if batched['without_autocast'] else ''}; "
                  f"{batched['flops'] / 1e9:.4g} GFLOP per optimizer step):", "",
                  f"| variant | chunk | calls | seconds | {unit} | TFLOP/s | {label} | peak memory MiB |",
                  "|" + " --- |" * 8]
        for name, v in batched["variants"].items():
            peak_mib = v["peak_memory_bytes"] / 2**20 if v["peak_memory_bytes"] else None
            lines.append(f"| {name} | {v['chunk_size']} | {v['calls']} | {v['seconds']:.3f} | "
                         f"{v['samples_per_second']:.2f} | {v['tflops']:.3g} | {v['mfu'] * 100:.2f}% | "
                         f"{_f(peak_mib, '.0f')} |")
        if batched["batched_over_per_micro_batch"] is not None:
            lines += ["", f"Batched / per micro-batch: {batched['batched_over_per_micro_batch']:.2f}x; "
                          f"max |latent difference| {batched['max_abs_latent_diff']:.3g}.", ""]
        profile = batched.get("profile")
        if profile:
            lines += [f"Profile of one batched call: aten::copy_ (casts and layout copies) is "
                      f"{profile['aten_copy_share'] * 100:.1f}% of the {profile['sorted_by']} "
                      f"({profile['aten_copy_calls']} calls); top operators in {profile['path']}.", ""]
    swaps = report.get("swap_share_per_train_target")
    if swaps:
        first = next(iter(swaps.values()))
        lines += [f"Snapshot swap per train target ({first['config']}, {first['swaps_per_step']} swaps per step; "
                  "snapshots on CPU, the trainer's default; each target other than the run's own in a separate run "
                  "of that configuration):", "",
                  "| train target | trainable parameters | snapshot MiB | swap s/step | step s (median) | swap share "
                  "| measured in |", "|" + " --- |" * 7]
        lines += [f"| {target} | {v['trainable_parameters']:,} | {v['snapshot_mib']:.2f} | "
                  f"{v['swap_seconds_per_step']:.4f} | {v['step_seconds_median']:.3f} | {v['share'] * 100:.2f}% | "
                  f"{v['measured_in']} |" for target, v in swaps.items()]
        lines.append("")
    lines += ["| target | measured | goal | met | scope |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {_f(t['measured']) if t['measured'] is not None else 'n/a'} | "
              f"{'<=' if t['kind'] == 'max' else '>='} {t['target']} | "
              f"{'n/a' if t['met'] is None else 'yes' if t['met'] else 'no'} | {t['scope']} |"
              for name, t in report["targets"].items()]
    return "\n".join(lines) + "\n"


def plot_phases(report, path):
    """Stacked bars: seconds per optimizer step by phase, one bar per configuration."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no %s (pip install -r benchmarks/requirements-bench.txt)", path)
        return None
    rows = report["configs"]
    if not rows:
        return None
    names = [row["config"] for row in rows]
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.55 * len(rows)))
    left = [0.0] * len(rows)
    for phase in PHASES:
        widths = [row["phase_seconds_per_step"][phase] for row in rows]
        ax.barh(names, widths, left=left, label=phase.replace("_", " "))
        left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set_xlabel("seconds per optimizer step (median of each phase over the timed steps)")
    machine, settings = report["machine"], report["settings"]
    video = report["video"]
    what = (f"VIDEO (AnimateDiff): {report['model']}, {video['num_frames']} frames, {report['resolution']} px, "
            f"batch {report['batch_size']} videos, {video['train_target']}" if video else
            f"{report['model']}, {report['resolution']} px, batch {report['batch_size']}")
    ax.set_title(f"{what}, {settings['dtype']}\n"
                 f"{machine['device_name']} ({machine['device']}), {machine['date']}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a bar
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(args):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.makedirs(args.output_dir, exist_ok=True)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = not args.random_init_from_config and args.pretrained_model_name_or_path is None
        if args.random_init_from_config:
            model_name = f"{args.random_init_from_config} architecture (random weights)"
            # the AnimateDiff trainer's --resolution default is 256
            full_size = 256 if args.video else 512
            args.resolution = args.resolution or (full_size if args.random_init_from_config == "sd15" else 64)
        elif tiny:
            args.pretrained_model_name_or_path = sspo_tiny.build_tiny_pipeline(os.path.join(tmp, "tiny"))
            model_name, args.resolution = "tiny SD1.5-shaped (random weights)", args.resolution or 64
        else:
            model_name, args.resolution = args.pretrained_model_name_or_path, args.resolution or (256 if args.video else 512)
        skipped, adapter_name = {}, None
        if args.video:
            args.num_frames = args.num_frames or (8 if tiny else 16)
            if args.motion_adapter_name_or_path:
                adapter_name = args.motion_adapter_name_or_path
            elif tiny:
                args.motion_adapter_name_or_path = sspo_tiny.build_tiny_motion_adapter(os.path.join(tmp, "motion_adapter"))
                adapter_name = "tiny MotionAdapter (sspo_tiny.build_tiny_motion_adapter, random weights)"
            else:
                adapter_name = (f"guoyww/animatediff-motion-adapter-v1-5-2 architecture"
                                f"{' (reduced widths)' if args.random_init_from_config == 'sd15_reduced' else ''} "
                                "(random weights)")
            skipped = {name: reason for name, reason in VIDEO_SKIPPED_CONFIGS.items() if name in args.configs}
        configs = [name for name in args.configs if name not in skipped]
        shared = load_shared(args)
        shared.resolution = args.resolution
        rows = []
        for name in configs:
            rows.append(run_isolated(args, name) if args.isolate else run_config(args, name, shared))
            print(f"{name}: {rows[-1]['step_seconds_median']:.3f} s/step", flush=True)
        sampler_result = None if "stock" in args.skip else sampler_vs_stock(args, shared)
        batched = None if "batched" in args.skip else batched_self_sampling(args, shared)  # last: may compile the UNet
        trainable = sum(p.numel() for p in shared.parameters)
        snapshot_bytes = sum(p.numel() * p.element_size() for p in shared.parameters)  # ReferencePool's own count
        lora = not args.video or args.train_target != "motion_modules"
        settings = {"dtype": args.dtype, "gradient_checkpointing": args.gradient_checkpointing,
                    "optimizer": sspo_utils.optimizer_class(args.use_8bit_adam).__name__,
                    "use_8bit_adam": args.use_8bit_adam, "attention_processor": shared.attention_processor,
                    "xformers": args.enable_xformers_memory_efficient_attention, "channels_last": args.channels_last,
                    "compile_unet": args.compile_unet,
                    "compile_mode": args.compile_mode if args.compile_unet else None, "isolate": args.isolate,
                    "self_sample_steps": args.self_sample_steps, "merged_copy": shared.merged is not None,
                    "merged_copy_bytes": shared.merged.nbytes if shared.merged is not None else None,
                    "lora_parameters": trainable if lora else None, "trainable_parameters": trainable,
                    "unet_parameters": sum(p.numel() for p in shared.unet.parameters()),
                    "unet_class": type(shared.unet).__name__}
        del shared
        release_memory(device)
        # after the main model is gone: each other train target builds its own
        swap_targets = (swap_share_per_train_target(args, rows) if args.video and "swap" not in args.skip else None)
    peak = matmul_peak(device, args.smoke)
    add_mfu(rows, batched, peak)
    video = None
    if args.video:
        video = {"num_frames": args.num_frames, "motion_adapter": adapter_name, "train_target": args.train_target,
                 "trainable_parameters": trainable, "snapshot_bytes": snapshot_bytes,
                 "snapshot_mib": snapshot_bytes / 2**20, "beta_schedule": ANIMATEDIFF_BETA_SCHEDULE,
                 "latent_layout": "b c f h w", "samples_are": "videos"}
    report = {
        "machine": sspo_utils.machine_info(device), "task": "video" if args.video else "image", "model": model_name,
        "resolution": args.resolution, "batch_size": args.batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps, "rank": args.rank, "steps": args.steps,
        "warmup": args.warmup, "smoke": args.smoke, "video": video, "settings": settings, "matmul_peak": peak,
        "configs": rows, "skipped_configs": skipped, "self_sampling_vs_stock": sampler_result,
        "batched_self_sampling": batched, "swap_share_per_train_target": swap_targets,
        "targets": summarize(rows, sampler_result, batched, args.video, swap_targets),
    }
    report["phase_plot"] = plot_phases(report, os.path.join(args.output_dir, "phases.png"))
    with open(os.path.join(args.output_dir, "bench_sspo.json"), "w") as f:
        json.dump(report, f, indent=2)
    table = markdown(report)
    with open(os.path.join(args.output_dir, "bench_sspo.md"), "w") as f:
        f.write(table)
    print(table)
    return report


if __name__ == "__main__":
    main(parse_args())
