#!/usr/bin/env python
# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""Peak memory and step time of train_sspo_sdxl.py itself, offline, on the SDXL architecture with
random weights (stabilityai/stable-diffusion-xl-base-1.0's UNet, VAE and both text encoders, built
from their configs: no download).

    python benchmarks/bench_sspo_sdxl.py --device cuda --output_dir /tmp/bench_sdxl
        # 1024 px, bf16, LoRA rank 8, 8-bit Adam, gradient checkpointing, SSPO with 20 self-sampling steps
    python benchmarks/bench_sspo_sdxl.py --device cpu --size tiny --output_dir /tmp/bench_sdxl
        # the tiny SDXL architecture (sspo_tiny), 64 px, fp32, 2 sampling steps: tests this script, measures nothing

It saves the random-weight pipeline and a few random-noise images at --resolution to a scratch
folder, then calls the trainer's main() in this process with those flags and reads, from outside,
the time of each optimizer step and the peak memory PyTorch's allocator held (VRAM on a GPU, RSS on
CPU). The goal on a GPU is an SSPO step in 24 GiB or less, to fit a consumer card. Writes
bench_sspo_sdxl.json and bench_sspo_sdxl.md to --output_dir.
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import sspo_tiny  # noqa: E402
import train_sspo_sdxl  # noqa: E402
from sspo_utils import machine_info  # noqa: E402


GIB = 2**30
GOAL_BYTES = 24 * GIB

# stabilityai/stable-diffusion-xl-base-1.0: unet/, vae/, text_encoder/ (CLIP ViT-L/14), text_encoder_2 (OpenCLIP bigG).
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
                 cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, norm_num_groups=32)
SDXL_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
                sample_size=1024, scaling_factor=0.13025, force_upcast=True)
SDXL_TEXT_ENCODERS = (dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           hidden_act="quick_gelu", projection_dim=768),
                      dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                           hidden_act="gelu", projection_dim=1280))
SDXL_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                      timestep_spacing="leading")


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Peak memory and step time of train_sspo_sdxl.py (random weights).")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--size", choices=("full", "tiny"), default="full",
                        help="full: the SDXL base architecture; tiny: sspo_tiny's SDXL architecture (CPU test).")
    parser.add_argument("--resolution", type=int, default=None, help="Default: 1024 (full), 64 (tiny).")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None, help="Default: bf16 on cuda, fp32 on cpu.")
    parser.add_argument("--self_sample_steps", type=int, default=None, help="Default: 20 (full), 2 (tiny).")
    parser.add_argument("--steps", type=int, default=3, help="Optimizer steps; the first is warm-up.")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--no_8bit_adam", action="store_true", help="AdamW instead of bitsandbytes' 8-bit AdamW.")
    parser.add_argument("--work_dir", default=None, help="Scratch folder for the model and data (default: a temporary one).")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(input_args)
    args.resolution = args.resolution or (1024 if args.size == "full" else 64)
    args.self_sample_steps = args.self_sample_steps or (20 if args.size == "full" else 2)
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    return args


def random_sdxl_modules():
    """UNet, VAE, both text encoders (on the meta device: no memory, no init time) and the tokenizer
    of the SDXL base architecture."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    # The real CLIP vocabularies are not available offline; the byte-level one covers any caption.
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer(*sspo_tiny.write_tokenizer_files(tmp), model_max_length=77)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
               eos_token_id=eos, pad_token_id=eos)
    with init_empty_weights():  # buffers (CLIP's position_ids) stay real
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(**SDXL_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_ENCODERS[0], **ids))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_ENCODERS[1], **ids))
    return unet, vae, text_encoder, text_encoder_2, tokenizer


def save_random_sdxl(path, device, dtype):
    """The SDXL base architecture with random weights, initialised on ``device`` and saved at ``path``."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from bench_sspo import materialize

    unet, vae, text_encoder, text_encoder_2, tokenizer = random_sdxl_modules()
    torch.manual_seed(0)
    for model in (unet, vae, text_encoder, text_encoder_2):
        materialize(model, device, dtype)
    pipeline = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                                         tokenizer_2=tokenizer, unet=unet, scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER))
    pipeline.save_pretrained(path)
    del pipeline, unet, vae, text_encoder, text_encoder_2
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return path


def write_images(path, num_images, resolution):
    """Random-noise images at --resolution with captions: what the data pipeline reads, not what it learns."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(os.path.join(path, "metadata.jsonl"), "w") as metadata:
        for i in range(num_images):
            Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(os.path.join(path, f"{i}.png"))
            metadata.write(json.dumps({"file_name": f"{i}.png", "text": f"a photo of object number {i}"}) + "\n")
    return path


def peak_memory(device):
    if device.type == "cuda":
        return {"peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(device)}
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def trainer_args(args, model_dir, data_dir, run_dir):
    flags = ["--pretrained_model_name_or_path", model_dir, "--train_data_dir", data_dir, "--output_dir", run_dir,
             "--resolution", str(args.resolution), "--train_batch_size", "1", "--rank", str(args.rank),
             "--max_train_steps", str(args.steps), "--self_sample_steps", str(args.self_sample_steps),
             "--self_sample_guidance_scale", "5", "--gradient_checkpointing", "--checkpointing_steps", "1000000",
             "--snapshot_steps", "1", "--learning_rate", "1e-5", "--seed", "0", "--report_to", "none",
             "--mixed_precision", {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[args.dtype]]
    return flags + ([] if args.no_8bit_adam else ["--use_8bit_adam"])


def main(args):
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    os.makedirs(args.output_dir, exist_ok=True)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="bench_sdxl_")
    model_dir = os.path.join(work_dir, "model")
    start = time.perf_counter()
    if args.size == "full":
        save_random_sdxl(model_dir, device, dtype)
    else:
        sspo_tiny.build_tiny_sdxl_pipeline(model_dir)
    build_seconds = time.perf_counter() - start
    data_dir = write_images(os.path.join(work_dir, "data"), num_images=args.steps + 1, resolution=args.resolution)

    # Time each optimizer step from outside: wrap the function the loop calls once per step.
    step_ends = []
    apply_optimizer_step = train_sspo_sdxl.apply_optimizer_step

    def timed_optimizer_step(*step_args, **step_kwargs):
        finite = apply_optimizer_step(*step_args, **step_kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_ends.append(time.perf_counter())
        return finite

    train_sspo_sdxl.apply_optimizer_step = timed_optimizer_step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_start = time.perf_counter()
    train_sspo_sdxl.main(train_sspo_sdxl.parse_args(trainer_args(args, model_dir, data_dir, os.path.join(work_dir, "run"))))
    step_seconds = np.diff([train_start] + step_ends).tolist()
    memory = peak_memory(device)
    held = memory.get("peak_reserved_bytes", memory.get("peak_rss_bytes"))
    report = {
        "machine": machine_info(device),
        "model": "SDXL base architecture (random weights)" if args.size == "full" else "tiny SDXL architecture (sspo_tiny)",
        "settings": {key: getattr(args, key) for key in ("size", "resolution", "dtype", "self_sample_steps", "steps", "rank")},
        "use_8bit_adam": not args.no_8bit_adam, "gradient_checkpointing": True, "loss_type": "sspo", "batch_size": 1,
        "build_seconds": build_seconds, "step_seconds": step_seconds,
        "step_seconds_after_warmup": float(np.median(step_seconds[1:])) if len(step_seconds) > 1 else None,
        **memory,
        "goal": {"bytes": GOAL_BYTES, "fits": bool(held <= GOAL_BYTES)} if device.type == "cuda" else None,
    }
    with open(os.path.join(args.output_dir, "bench_sspo_sdxl.json"), "w") as f:
        json.dump(report, f, indent=2)
    memory_text = (f"peak reserved {memory['peak_reserved_bytes'] / GIB:.2f} GiB (allocated "
                   f"{memory['peak_allocated_bytes'] / GIB:.2f} GiB): "
                   f"{'fits' if report['goal']['fits'] else 'does NOT fit'} in 24 GiB"
                   if device.type == "cuda" else f"peak RSS {memory['peak_rss_bytes'] / GIB:.2f} GiB (CPU run, not VRAM)")
    text = (f"# train_sspo_sdxl.py, one SSPO step: {report['machine']['device_name']}, {report['machine']['date']}\n\n"
            f"{report['model']}, {args.resolution} px, batch 1, {args.dtype}, LoRA rank {args.rank}, "
            f"{'8-bit Adam' if not args.no_8bit_adam else 'AdamW'}, gradient checkpointing, {args.self_sample_steps} "
            f"self-sampling steps (CFG 5).\n\n- step seconds: {', '.join(f'{s:.2f}' for s in step_seconds)} "
            f"(the first includes warm-up)\n- {memory_text}\n")
    with open(os.path.join(args.output_dir, "bench_sspo_sdxl.md"), "w") as f:
        f.write(text)
    print(text)
    return report


if __name__ == "__main__":
    main(parse_args())
