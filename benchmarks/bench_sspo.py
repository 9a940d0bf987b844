#!/usr/bin/env python
# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""Where the time and memory of an SSPO step go, against SFT and Diffusion-DPO on the same model and data.

One configuration after another (each in a child process, so peak memory is its own):
  sft, dpo, sspo_probe (SSPO with the generation replaced by random latents, to isolate everything
  else), sspo with --self_sample_steps 10 and 20.
Per configuration: median/min/max optimizer-step time after warm-up, the split into self-sampling,
snapshot swap, reference forward, policy forward+backward and the rest, peak memory (CUDA
max_memory_allocated, or the child's peak RSS on CPU) and samples/s. Also: the self-sampling pipeline
against the stock StableDiffusionPipeline(output_type="latent") called with prompt strings, and the
overhead ratio (step time / time of the bare UNet passes the step must do).

    python benchmarks/bench_sspo.py                       # tiny default, CPU
    python benchmarks/bench_sspo.py --smoke               # CI: 2 steps, asserts nothing about speed
    python benchmarks/bench_sspo.py --pretrained_model_name_or_path PATH --resolution 512 --device cuda

Not implemented yet (see the README's Performance section): the random-init SD1.5 architecture,
batched self-sampling across gradient accumulation, FLOP counts and MFU, the phase plot, the GPU
smoke script.
"""

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager

import torch


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sspo_tiny  # noqa: E402
import sspo_utils  # noqa: E402


CONFIGS = {
    "sft": dict(loss_type="sft", self_sample_steps=0),
    "dpo": dict(loss_type="dpo", self_sample_steps=0),
    "sspo_probe": dict(loss_type="sspo", self_sample_steps=0),
    "sspo_10": dict(loss_type="sspo", self_sample_steps=10),
    "sspo_20": dict(loss_type="sspo", self_sample_steps=20),
}
PHASES = ("self_sampling", "swap", "reference_forward", "policy_forward_backward", "other")


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="SSPO step benchmark.")
    parser.add_argument("--pretrained_model_name_or_path", default=None, help="Default: the tiny model, built locally.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, default=None, help="Default: 64 for the tiny model, else 512.")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="Timed optimizer steps per configuration.")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--output_dir", default="bench_results")
    parser.add_argument("--smoke", action="store_true", help="2 steps, 1 warm-up, sspo_10 with 2 sampling steps.")
    args = parser.parse_args(input_args)
    if args.smoke:
        args.steps, args.warmup = 2, 1
    return args


class PhaseTimer:
    """Wall time per phase; synchronizes CUDA at phase boundaries so time lands where it is spent."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.seconds = dict.fromkeys(PHASES, 0.0)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name):
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[name] += time.perf_counter() - start


class SwapTimingPool(sspo_utils.ReferencePool):
    """The RCR pool, with the in-place copies in and out of a swap timed separately."""

    timer = None

    @contextmanager
    def swapped_in(self, index):
        with self.timer.phase("swap"):
            context = super().swapped_in(index)
            context.__enter__()
        try:
            yield self
        finally:
            with self.timer.phase("swap"):
                context.__exit__(None, None, None)


def load_components(args, device):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(args.pretrained_model_name_or_path, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def synthetic_batch(args, device):
    from torchvision.transforms.functional import to_tensor

    examples = list(sspo_tiny.synthetic_examples(2 * args.batch_size, seed=0, size=args.resolution))
    pixels = torch.stack([to_tensor(image) for _, image in examples]) * 2 - 1
    captions = [caption for caption, _ in examples[: args.batch_size]]
    return captions, pixels[: args.batch_size].to(device), pixels[args.batch_size:].to(device)


def run_config(args, name, queue):
    """One configuration in a child process: returns step times, phase split and peak memory."""
    import resource

    from peft import LoraConfig

    torch.manual_seed(0)
    device = torch.device(args.device)
    config = dict(CONFIGS[name])
    if args.smoke and config["self_sample_steps"]:
        config["self_sample_steps"] = 2
    pipe = load_components(args, device)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    for model in (unet, vae, text_encoder):
        model.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    trainable = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    parameters = [p for _, p in trainable]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5)
    timer = PhaseTimer(device)
    pool = SwapTimingPool(trainable)
    pool.timer = timer
    pool.add(step=1)  # a non-trivial pool: the draw matters, the cost does not
    noise_scheduler = __import__("diffusers").DDPMScheduler.from_config(pipe.scheduler.config)
    sampler = sspo_utils.SSPOSelfSamplingPipeline.from_training_components(
        vae, text_encoder, tokenizer, unet, __import__("diffusers").DDIMScheduler.from_config(pipe.scheduler.config))
    captions, pixels_w, pixels_l = synthetic_batch(args, device)
    input_ids = sspo_utils.tokenize(tokenizer, captions)
    negative = sspo_utils.encode_prompt_ids(text_encoder, sspo_utils.tokenize(tokenizer, [""]))
    generators = sspo_utils.TrainingGenerators(0)
    step_times = []
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            timer.seconds = dict.fromkeys(PHASES, 0.0)
        timer.sync()
        start = time.perf_counter()
        with timer.phase("other"):
            with torch.no_grad():
                latents_w = vae.encode(pixels_w).latent_dist.sample(generators.noise) * vae.config.scaling_factor
                prompt_embeds = sspo_utils.encode_prompt_ids(text_encoder, input_ids)
            noise, timesteps = sspo_utils.draw_noise_and_timesteps(noise_scheduler, latents_w, generators.noise)
            reference_index = pool.sample("uniform", generators.rcr)
        if config["loss_type"] == "sft":
            with timer.phase("policy_forward_backward"):
                noisy = noise_scheduler.add_noise(latents_w, noise, timesteps)
                loss = sspo_utils.per_sample_error(unet(noisy, timesteps, prompt_embeds).sample, noise).mean()
                loss.backward()
        else:
            with pool.swapped_in(reference_index):
                with timer.phase("self_sampling" if config["self_sample_steps"] else "other"):
                    if config["loss_type"] == "dpo":
                        with torch.no_grad():
                            latents_l = vae.encode(pixels_l).latent_dist.sample(generators.noise) * vae.config.scaling_factor
                    elif config["self_sample_steps"]:
                        latents_l = sampler.sample_latents(prompt_embeds, negative, args.resolution, args.resolution,
                                                           config["self_sample_steps"], 7.5, generators.sampling)
                    else:  # probe: no generation
                        latents_l = torch.randn(latents_w.shape, generator=generators.sampling).to(latents_w)
                with timer.phase("reference_forward"):
                    noisy, target, pair_t = sspo_utils.noisy_pair(noise_scheduler, latents_w, latents_l, noise, timesteps)
                    pair_embeds = torch.cat([prompt_embeds, prompt_embeds])
                    with torch.no_grad():
                        ref_w, ref_l = sspo_utils.per_sample_error(unet(noisy, pair_t, pair_embeds).sample, target).chunk(2)
            with timer.phase("policy_forward_backward"):
                model_w, model_l = sspo_utils.per_sample_error(unet(noisy, pair_t, pair_embeds).sample, target).chunk(2)
                if config["loss_type"] == "sspo":
                    loss, _ = sspo_utils.sspo_loss(model_w, model_l, ref_w, ref_l, 5000.0)
                else:
                    loss, _ = sspo_utils.dpo_loss(model_w, model_l, ref_w, ref_l, 5000.0)
                loss.backward()
        with timer.phase("other"):
            optimizer.step()
            optimizer.zero_grad()
        timer.sync()
        if step >= args.warmup:
            step_times.append(time.perf_counter() - start)
    bare = bare_unet_seconds(args, unet, sampler, prompt_embeds, negative, latents_w, config, timer)
    if device.type == "cuda":
        peak_bytes = torch.cuda.max_memory_allocated(device)
    else:
        peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    queue.put({
        "config": name, **config, "step_seconds_median": statistics.median(step_times),
        "step_seconds_min": min(step_times), "step_seconds_max": max(step_times),
        "phase_seconds_per_step": {k: v / args.steps for k, v in timer.seconds.items()},
        "peak_memory_bytes": peak_bytes, "samples_per_second": args.batch_size / statistics.median(step_times),
        "bare_unet_seconds_per_step": bare, "swap_bytes": pool.nbytes_per_snapshot(),
    })


def bare_unet_seconds(args, unet, sampler, prompt_embeds, negative, latents_w, config, timer):
    """Time of the UNet passes the step must do, as bare calls of the same shapes (no data,
    no swap, no loss): the physical floor of the step on this machine."""
    repeats = max(args.steps // 2, 1)
    batch = latents_w.shape[0]
    pair = torch.cat([latents_w, latents_w])
    pair_t = torch.full((2 * batch,), 500, device=latents_w.device)
    pair_embeds = torch.cat([prompt_embeds, prompt_embeds])
    single_t = pair_t[:batch]

    def one_step():
        if config["loss_type"] == "sft":
            unet(latents_w, single_t, prompt_embeds).sample.float().mean().backward()
            return
        if config["loss_type"] == "sspo" and config["self_sample_steps"]:
            cfg_latents = torch.cat([latents_w, latents_w])
            cfg_embeds = torch.cat([negative.expand(batch, -1, -1), prompt_embeds])
            with torch.inference_mode():
                for _ in range(config["self_sample_steps"]):
                    unet(cfg_latents, single_t.repeat(2), cfg_embeds)
        with torch.no_grad():
            unet(pair, pair_t, pair_embeds)
        unet(pair, pair_t, pair_embeds).sample.float().mean().backward()

    one_step()
    timer.sync()
    start = time.perf_counter()
    for _ in range(repeats):
        one_step()
    timer.sync()
    for p in unet.parameters():
        p.grad = None
    return (time.perf_counter() - start) / repeats


def sampler_vs_stock(args):
    """Self-sampling pipeline (precomputed embeddings) against the stock pipeline called with
    prompt strings, as a user would: same steps, CFG, batch and seed. Returns the time ratio."""
    device = torch.device(args.device)
    pipe = load_components(args, device)
    steps = 2 if args.smoke else 20
    captions, _, _ = synthetic_batch(args, device)
    sampler = sspo_utils.SSPOSelfSamplingPipeline.from_training_components(
        pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, type(pipe.scheduler).from_config(pipe.scheduler.config))
    prompt_embeds, negative = pipe.encode_prompt(captions, device, 1, True)
    timer = PhaseTimer(device)
    results = {"stock": [], "self_sampling": []}
    for repeat in range(1 + (2 if args.smoke else 5)):
        for name in ("stock", "self_sampling"):
            generator = torch.Generator().manual_seed(0)
            timer.sync()
            start = time.perf_counter()
            if name == "stock":
                pipe(captions, num_inference_steps=steps, guidance_scale=7.5, output_type="latent", generator=generator,
                     height=args.resolution, width=args.resolution)
            else:
                sampler.sample_latents(prompt_embeds, negative, args.resolution, args.resolution, steps, 7.5, generator)
            timer.sync()
            if repeat:  # the first round is warm-up
                results[name].append(time.perf_counter() - start)
    stock, ours = statistics.median(results["stock"]), statistics.median(results["self_sampling"])
    return {"steps": steps, "stock_seconds": stock, "self_sampling_seconds": ours, "ratio": ours / stock}


def summarize(args, rows, sampler_result):
    by_name = {row["config"]: row for row in rows}
    targets = {"1_self_sampling_over_stock": (sampler_result["ratio"], 1.00)}
    if "dpo" in by_name and "sspo_probe" in by_name:
        targets["2_sspo_without_sampling_over_dpo"] = (
            by_name["sspo_probe"]["step_seconds_median"] / by_name["dpo"]["step_seconds_median"], 1.05)
        targets["4_peak_memory_sspo_over_dpo"] = (
            max(r["peak_memory_bytes"] for n, r in by_name.items() if n.startswith("sspo"))
            / by_name["dpo"]["peak_memory_bytes"], 1.05)
    sspo_runs = [r for n, r in by_name.items() if n.startswith("sspo_") and r["self_sample_steps"]]
    if sspo_runs:
        slowest = max(sspo_runs, key=lambda r: r["self_sample_steps"])
        targets["3_overhead_ratio_sspo"] = (slowest["step_seconds_median"] / slowest["bare_unet_seconds_per_step"], 1.10)
        targets["5_swap_share_of_step"] = (slowest["phase_seconds_per_step"]["swap"] / slowest["step_seconds_median"], 0.01)
    return {name: {"measured": value, "target": target, "met": value <= target} for name, (value, target) in targets.items()}


def markdown(report):
    lines = [f"Machine: {report['machine']['device_name']}, {report['machine']['cpu_count']} CPU cores, torch "
             f"{report['machine']['torch']}, {report['machine']['date']}. Model: {report['model']}, "
             f"{report['resolution']} px, batch {report['batch_size']}, LoRA rank {report['rank']}, "
             f"{report['steps']} timed steps.", "",
             "| config | step s (median) | min | max | self-sampling | swap | ref fwd | policy fwd+bwd | other | "
             "peak memory MiB | samples/s | step / bare UNet |", "|" + " --- |" * 12]
    for row in report["configs"]:
        phases = row["phase_seconds_per_step"]
        lines.append(f"| {row['config']} | {row['step_seconds_median']:.3f} | {row['step_seconds_min']:.3f} | "
                     f"{row['step_seconds_max']:.3f} | " + " | ".join(f"{phases[p]:.3f}" for p in PHASES) +
                     f" | {row['peak_memory_bytes'] / 2**20:.0f} | {row['samples_per_second']:.2f} | "
                     f"{row['step_seconds_median'] / row['bare_unet_seconds_per_step']:.2f} |")
    sampler = report["self_sampling_vs_stock"]
    lines += ["", f"Self-sampling pipeline vs stock pipeline ({sampler['steps']} steps, CFG 7.5): "
              f"{sampler['self_sampling_seconds']:.3f} s vs {sampler['stock_seconds']:.3f} s, ratio {sampler['ratio']:.2f}.",
              "", "| target | measured | goal | met |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {t['measured']:.3f} | <= {t['target']} | {'yes' if t['met'] else 'no'} |"
              for name, t in report["targets"].items()]
    return "\n".join(lines) + "\n"


def main(args):
    os.makedirs(args.output_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.pretrained_model_name_or_path is None:
            args.pretrained_model_name_or_path = sspo_tiny.build_tiny_pipeline(os.path.join(tmp, "tiny"))
            model_name, args.resolution = "tiny SD1.5-shaped (random weights)", args.resolution or 64
        else:
            model_name, args.resolution = args.pretrained_model_name_or_path, args.resolution or 512
        context = multiprocessing.get_context("spawn")
        rows = []
        for name in args.configs:
            queue = context.Queue()
            child = context.Process(target=run_config, args=(args, name, queue))
            child.start()
            rows.append(queue.get())
            child.join()
            print(f"{name}: {rows[-1]['step_seconds_median']:.3f} s/step", flush=True)
        sampler_result = sampler_vs_stock(args)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else (platform.processor() or "cpu")
    report = {
        "machine": {"device": args.device, "device_name": device_name, "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "date": datetime.date.today().isoformat()},
        "model": model_name, "resolution": args.resolution, "batch_size": args.batch_size, "rank": args.rank,
        "steps": args.steps, "warmup": args.warmup, "smoke": args.smoke,
        "configs": rows, "self_sampling_vs_stock": sampler_result, "targets": summarize(args, rows, sampler_result),
    }
    with open(os.path.join(args.output_dir, "bench_sspo.json"), "w") as f:
        json.dump(report, f, indent=2)
    table = markdown(report)
    with open(os.path.join(args.output_dir, "bench_sspo.md"), "w") as f:
        f.write(table)
    print(table)
    return report


if __name__ == "__main__":
    main(parse_args())
