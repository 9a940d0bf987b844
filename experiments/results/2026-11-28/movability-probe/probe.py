"""The movability probe's two tools (fourth session, 2026-11-28). Kept beside its results.

    # the whole UNet + text encoder trained further, as in pretraining (batch 64, lr 1e-3, caption dropout 0.1,
    # 10% mismatched captions), on fresh renders of training captions, a share of them faded:
    python probe.py continue_pretraining --steps 100 --fade_rate 0 --output_dir /tmp/mode/c100
    # reward of a model (optionally + LoRA) on a prompt file, 4 images per caption, DDIM 20, seeds 0..n-1:
    python probe.py score --model models/shapes-sd15 --lora /tmp/p/sspo_b32 --prompts PROMPTS --guidance_scale 5 \
        --output rewards.npy

The LoRA runs themselves are plain train_sspo_sd15.py calls; README.md lists their flags."""
import argparse
import os
import random
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", ".."))
import shapes_world as sw  # noqa: E402


def continue_pretraining(args):
    from diffusers import DDPMScheduler

    pipeline = sw.load_pipeline(args.model)
    vae, unet, text_encoder, tokenizer = pipeline.vae, pipeline.unet, pipeline.text_encoder, pipeline.tokenizer
    rng = random.Random(1)
    train_specs, _ = sw.image_split()
    specs = [rng.choice(train_specs) for _ in range(8000)]
    images = [sw.render(spec, rng=rng) for spec in specs]
    images = [sw.fade(image, rng.uniform(0.5, 0.7)) if rng.random() < args.fade_rate else image for image in images]
    captions = [(sw.mismatch(spec, rng) if rng.random() < 0.1 else spec).caption for spec in specs]
    with torch.no_grad():
        latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in sw.to_tensor(images).split(500)])
    latents = latents * vae.config.scaling_factor
    input_ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    empty_ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    unet.train()
    text_encoder.train()
    for step in range(args.steps):
        index = torch.randint(0, len(specs), (64,), generator=generator)
        ids = input_ids[index].clone()
        ids[torch.rand(64, generator=generator) < 0.1] = empty_ids[0]
        loss = sw.denoising_step(unet, noise_scheduler, latents[index], lambda: text_encoder(ids)[0], optimizer,
                                 parameters, generator)
        if step % 50 == 0:
            print(f"step {step} loss {float(loss):.4f}", flush=True)
    unet.eval()
    text_encoder.eval()
    pipeline.save_pretrained(args.output_dir)


def score(args):
    pipeline = sw.load_pipeline(args.model)
    if args.lora:
        pipeline.load_lora_weights(args.lora)
    captions = [line.strip() for line in open(args.prompts) if line.strip()]
    repeated = [caption for caption in captions for _ in range(4)]
    images = sw.generate(pipeline, repeated, list(range(len(repeated))), guidance_scale=args.guidance_scale)
    rewards = np.array([sw.reward(image, caption) for image, caption in zip(images, repeated)])
    chroma = np.array([np.ptp(np.asarray(image).astype(np.float32), axis=2).mean() for image in images])
    np.save(args.output, rewards)
    print(f"reward {rewards.mean():.4f}; chroma quantiles (5, 25, 50, 75, 95%) "
          f"{np.quantile(chroma, [0.05, 0.25, 0.5, 0.75, 0.95]).round().tolist()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["continue_pretraining", "score"])
    parser.add_argument("--model", default="models/shapes-sd15")
    parser.add_argument("--lora", default=None)
    parser.add_argument("--prompts", default="data/shapes-train-image-prompts.txt")
    parser.add_argument("--guidance_scale", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--fade_rate", type=float, default=0.0)
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--output", default="rewards.npy")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    {"continue_pretraining": continue_pretraining, "score": score}[args.command](args)
