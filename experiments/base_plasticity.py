# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""Can a short fine-tuning move the shapes-world base at all? A probe of the base, not of a method.

The study found no preference method that raised the reward. Before blaming the methods, this asks
whether *any* fine-tuning of the study's length can: it fine-tunes the whole UNet (more capacity than
any LoRA) with SD's plain epsilon objective, the text encoder frozen and 10% of captions dropped, on

  * ``winners``: the x^w of the shipped Pick-a-Pic-style pairs (the data SFT and SSPO train on);
  * ``renders``: the renderer's own, perfect images of the same captions (an upper bound: the best
    data a preference method could ever distil its winners into);

and scores the base and each fine-tuned UNet on the *training* evaluation captions at CFG 1, 3 and 5.
If even ``renders`` leaves the reward flat, the budget, not the preference signal, is the limit.

    python experiments/base_plasticity.py --output experiments/results/2026-11-28/base_plasticity.json
"""

import argparse
import io
import json
import os
import random
import sys
import time

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base_model", default=os.path.join(REPO_ROOT, "models", "shapes-sd15"))
    parser.add_argument("--preference_data", default=os.path.join(REPO_ROOT, "data", "shapes-pickapic"))
    parser.add_argument("--prompts", default=os.path.join(REPO_ROOT, "data", "shapes-train-image-prompts.txt"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--caption_dropout", type=float, default=0.1)
    parser.add_argument("--images_per_prompt", type=int, default=2)
    parser.add_argument("--guidance_scales", type=float, nargs="+", default=[1.0, 3.0, 5.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True)
    return parser.parse_args(input_args)


def training_images(args, source: str):
    """(captions, images) of the decided pairs: their winners, or renders of the same captions."""
    import datasets
    from PIL import Image

    import shapes_world

    rows = [r for r in datasets.load_dataset(args.preference_data, split="train") if r["label_0"] in (0, 1)]
    captions = [r["caption"] for r in rows]
    if source == "winners":
        images = [Image.open(io.BytesIO(r["jpg_0"] if r["label_0"] == 1 else r["jpg_1"])).convert("RGB") for r in rows]
    else:
        rng = random.Random(args.seed)
        images = [shapes_world.render(shapes_world.parse_caption(c), rng=rng) for c in captions]
    return captions, images


def score(pipeline, args) -> dict:
    """Mean ground-truth reward on the prompt file, per CFG scale, with fixed sampling seeds."""
    import shapes_world

    with open(args.prompts) as f:
        captions = [c for c in (line.strip() for line in f) if c]
    repeated = [c for c in captions for _ in range(args.images_per_prompt)]
    seeds = list(range(len(repeated)))
    return {f"cfg{scale:g}": float(np.mean([shapes_world.reward(image, caption) for image, caption in zip(
        shapes_world.generate(pipeline, repeated, seeds, guidance_scale=scale), repeated)]))
            for scale in args.guidance_scales}


def fine_tune(args, source: str) -> dict:
    """Full-UNet fine-tuning on one source; returns its scores and seconds."""
    from diffusers import DDPMScheduler

    import shapes_world
    from sspo_utils import encode_prompt_ids, tokenize

    pipeline = shapes_world.load_pipeline(args.base_model)
    unet, vae, text_encoder, tokenizer = pipeline.unet, pipeline.vae, pipeline.text_encoder, pipeline.tokenizer
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    captions, images = training_images(args, source)
    with torch.no_grad():
        pixels = shapes_world.to_tensor(images)
        latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(256)]) * vae.config.scaling_factor
        embeddings = torch.cat([encode_prompt_ids(text_encoder, tokenize(tokenizer, captions[i:i + 256]))
                                for i in range(0, len(captions), 256)])
        empty = encode_prompt_ids(text_encoder, tokenize(tokenizer, [""]))[0]
    generator = torch.Generator().manual_seed(args.seed)
    parameters = list(unet.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=1e-2)
    unet.train()
    began = time.perf_counter()
    for _ in range(args.steps):
        index = torch.randint(0, len(latents), (args.batch_size,), generator=generator)
        conditioning = embeddings[index].clone()
        conditioning[torch.rand(args.batch_size, generator=generator) < args.caption_dropout] = empty
        shapes_world.denoising_step(unet, noise_scheduler, latents[index], lambda: conditioning, optimizer, parameters,
                                     generator)
    seconds = time.perf_counter() - began
    unet.eval()
    return {"examples": len(captions), "train_seconds": round(seconds, 1), "reward": score(pipeline, args)}


def main(args):
    import shapes_world
    from sspo_utils import machine_info

    torch.set_num_threads(args.threads)
    result = {"settings": {k: v for k, v in vars(args).items() if k != "output"}, "machine": machine_info("cpu"),
              "base": {"reward": score(shapes_world.load_pipeline(args.base_model), args)}}
    print("base", result["base"], flush=True)
    for source in ("winners", "renders"):
        result[source] = fine_tune(args, source)
        print(source, result[source], flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main(parse_args())
