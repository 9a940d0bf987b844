# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""SSR's assumption, measured. SSR switches a sample to SFT when the RCR reference denoises the
winner x^w better than the policy (e_ref^w < e_θ^w), on the premise that the reference's own sample
x^s is then good too. Here, at saved checkpoints of SSPO runs, for training winners:

  1. draw a reference from the checkpoint's RCR pool (uniformly, as RCR does), and one (x_t, t, ε);
  2. compute SSR's indicator exactly as the trainer does (``sspo_utils.sspo_loss``);
  3. sample from the reference and from the policy, same caption and seed, as the self-sampler does;
  4. score both with the ground-truth reward, and count how often "SFT" goes with
     reward(reference sample) > reward(policy sample), and "DPO" with the opposite.
"""

import glob
import io
import json
import os
import random
from typing import Dict, List

import numpy as np
import torch
from PIL import Image


def _load_run(base_model: str, rank: int):
    from peft import LoraConfig

    from sspo_utils import SSPOSelfSamplingPipeline, load_base_components

    class _Args:  # load_base_components reads these three
        pretrained_model_name_or_path, revision, variant = base_model, None, None

    tokenizer, text_encoder, vae, unet, noise_scheduler = load_base_components(_Args)
    for model in (vae, text_encoder, unet):
        model.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    from diffusers import DDIMScheduler

    sampler = SSPOSelfSamplingPipeline.from_training_components(
        vae, text_encoder, tokenizer, unet, DDIMScheduler.from_config(noise_scheduler.config))
    return tokenizer, text_encoder, vae, unet, noise_scheduler, sampler


DRAWS = 4  # (t, ε) draws per winner for the averaged candidates; the first is the trainer's own


@torch.no_grad()
def agreement_at_checkpoint(checkpoint: str, components, winners, args, seed: int) -> List[Dict]:
    """One record per winner: the reference drawn, the per-sample errors every candidate switch reads,
    and the true rewards of the reference's sample x^s and of the policy's sample (same caption, seed)."""
    from diffusers import StableDiffusionPipeline

    import shapes_world
    from sspo_utils import (POOL_FILE_NAME, ReferencePool, encode_prompt_ids, load_lora_into_existing_adapter,
                            per_sample_error, sspo_loss, tokenize, training_target)

    tokenizer, text_encoder, vae, unet, noise_scheduler, sampler = components
    load_lora_into_existing_adapter(StableDiffusionPipeline, unet, checkpoint)
    # The pool holds the adapter tensors; requires_grad marks them, as in the trainer.
    for name, param in unet.named_parameters():
        param.requires_grad_("lora_" in name)
    pool = ReferencePool([(n, p) for n, p in unet.named_parameters() if p.requires_grad])
    pool.load(os.path.join(checkpoint, POOL_FILE_NAME))
    generator = torch.Generator().manual_seed(seed)
    negative = encode_prompt_ids(text_encoder, tokenize(tokenizer, [""]))

    def to_image(latents):
        pixels = vae.decode(latents / vae.config.scaling_factor).sample
        array = ((pixels[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return Image.fromarray(array)

    records = []
    for caption, image in winners:
        embeds = encode_prompt_ids(text_encoder, tokenize(tokenizer, [caption]))
        pixels = shapes_world.to_tensor([image])
        latents = vae.encode(pixels).latent_dist.sample(generator) * vae.config.scaling_factor
        draws = []
        for _ in range(DRAWS):
            noise = torch.randn(latents.shape, generator=generator)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (1,), generator=generator)
            draws.append((noise, t))
        index = pool.sample("uniform", generator)
        sample_seed = int(torch.randint(0, 2**31, (1,), generator=generator))
        sampling = dict(prompt_embeds=embeds, negative_prompt_embeds=negative, height=32, width=32,
                        num_inference_steps=args.self_sample_steps, guidance_scale=args.guidance_scale)

        def errors_on(x0, noise, t):
            noisy = noise_scheduler.add_noise(x0, noise, t)
            target = training_target(noise_scheduler, x0, noise, t)
            with pool.swapped_in(index):
                ref = float(per_sample_error(unet(noisy, t, embeds).sample, target)[0])
            return float(per_sample_error(unet(noisy, t, embeds).sample, target)[0]), ref

        model_w, ref_w = zip(*[errors_on(latents, noise, t) for noise, t in draws])
        with pool.swapped_in(index):
            self_sample = sampler.sample_latents(generator=torch.Generator().manual_seed(sample_seed), **sampling)
        policy_sample = sampler.sample_latents(generator=torch.Generator().manual_seed(sample_seed), **sampling)
        model_s, ref_s = errors_on(self_sample, *draws[0])  # t and ε shared with the winner, as in the trainer
        noisy_w = noise_scheduler.add_noise(latents, *draws[0])
        with pool.swapped_in(0):  # snapshot 0 is the initial model
            init_w = float(per_sample_error(unet(noisy_w, draws[0][1], embeds).sample,
                                            training_target(noise_scheduler, latents, *draws[0]))[0])
        _, info = sspo_loss(torch.tensor(model_w[:1]), torch.tensor([model_s]), torch.tensor(ref_w[:1]),
                            torch.tensor([ref_s]), 1.0, "sft")
        records.append({"caption": caption, "reference_step": pool.steps[index],
                        "ssr_sft": bool(info["ssr_indicator"][0] <= 0),
                        "model_err_w": list(model_w), "ref_err_w": list(ref_w), "model_err_s": model_s,
                        "ref_err_s": ref_s, "init_err_w": init_w,
                        "reward_winner": shapes_world.reward(image, caption),
                        "reward_reference": shapes_world.reward(to_image(self_sample), caption),
                        "reward_policy": shapes_world.reward(to_image(policy_sample), caption)})
    return records


# Candidate switches (PLAN.md, rule C): SFT decisions from a record's errors, and their cost in extra
# UNet forwards per sample (no grad) over the paper's SSR.
def _mean_difference(record):
    return np.mean(np.array(record["model_err_w"]) - np.array(record["ref_err_w"]))


def _standard_error(record):
    d = np.array(record["model_err_w"]) - np.array(record["ref_err_w"])
    return d.std(ddof=1) / np.sqrt(len(d))


CANDIDATES = {
    "ssr (paper)": (lambda r: r["model_err_w"][0] > r["ref_err_w"][0], 0),
    "avg": (lambda r: _mean_difference(r) > 0, 2 * (DRAWS - 1)),
    "margin": (lambda r: _mean_difference(r) > _standard_error(r), 2 * (DRAWS - 1)),
    "self_sample": (lambda r: r["model_err_s"] < r["ref_err_s"], 0),
    "winner_preserving": (lambda r: r["model_err_w"][0] > r["init_err_w"], 1),
}


def score_candidates(records: List[Dict], seed: int = 0) -> Dict:
    """Each candidate's agreement with the sign of reward(x^s) - reward(policy sample), ties 0.5, with
    a 95% bootstrap CI over records, its SFT share and its cost; plus always-DPO and always-SFT."""
    diff = np.array([r["reward_reference"] - r["reward_policy"] for r in records])
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, len(records), (2000, len(records)))

    def agreement(sft):
        values = np.where(diff == 0, 0.5, (sft == (diff > 0)).astype(float))
        means = values[resamples].mean(1)
        return {"value": float(values.mean()), "ci_low": float(np.quantile(means, 0.025)),
                "ci_high": float(np.quantile(means, 0.975))}

    scored = {}
    for name, (decide, cost) in CANDIDATES.items():
        sft = np.array([bool(decide(r)) for r in records])
        scored[name] = {"agreement": agreement(sft), "sft_share": float(sft.mean()), "extra_unet_forwards": cost}
    for name, constant in (("always DPO", False), ("always SFT", True)):
        scored[name] = {"agreement": agreement(np.full(len(records), constant)), "sft_share": float(constant),
                        "extra_unet_forwards": 0}
    return scored


def choose_switch(scored: Dict) -> str:
    """PLAN.md, rule C: the new candidate with the highest agreement; within 0.01 of it, the cheapest."""
    new = {k: v for k, v in scored.items() if k in CANDIDATES and k != "ssr (paper)"}
    best = max(v["agreement"]["value"] for v in new.values())
    close = [k for k, v in new.items() if v["agreement"]["value"] >= best - 0.01]
    return min(close, key=lambda k: (new[k]["extra_unet_forwards"], -new[k]["agreement"]["value"]))


def summarize(records: List[Dict], seed: int = 0) -> Dict:
    """Agreement of SSR's decision with the sign of reward(reference sample) - reward(policy sample);
    equal rewards count 0.5. Baselines: always-DPO and always-SFT. 95% bootstrap CIs over samples."""
    sft = np.array([r["ssr_sft"] for r in records])
    diff = np.array([r["reward_reference"] - r["reward_policy"] for r in records])
    def agree(decisions):
        return np.where(diff == 0, 0.5, (decisions == (diff > 0)).astype(float))
    rng = np.random.default_rng(seed)
    def ci(values):
        means = values[rng.integers(0, len(values), (2000, len(values)))].mean(1)
        return {"value": float(values.mean()), "ci_low": float(np.quantile(means, 0.025)),
                "ci_high": float(np.quantile(means, 0.975))}
    # "Does the self-sample already win?": x^s (the reference's sample) against the dataset's x^w.
    beats = np.array([r["reward_reference"] > r["reward_winner"] for r in records if "reward_winner" in r], dtype=float)
    return {"n": len(records), "ssr_sft_share": float(sft.mean()),
            "reference_sample_better_share": float((diff > 0).mean()),
            "self_sample_beats_winner": ci(beats) if len(beats) else None,
            "agreement": ci(agree(sft)), "always_dpo_agreement": ci(agree(np.zeros_like(sft))),
            "always_sft_agreement": ci(agree(np.ones_like(sft))),
            "agreement_when_sft": ci(agree(sft)[sft]) if sft.any() else None,
            "agreement_when_dpo": ci(agree(sft)[~sft]) if (~sft).any() else None}


def measure_ssr_agreement(args, runs, output_path: str, winners_per_checkpoint: int = 48) -> Dict:
    """Over every checkpoint of the given SSPO runs; resumes per checkpoint from ``output_path``."""
    import datasets

    from experiments.study_runs import run_dir

    torch.set_num_threads(1)  # one thread, like every run of the studies
    done = json.load(open(output_path)) if os.path.isfile(output_path) else {"records": {}}
    rows = datasets.load_dataset(args.preference_data, split="train")
    decided = [row for row in rows if row["label_0"] in (0, 1)]
    components = _load_run(args.base_model, args.rank)
    for run in runs:
        for checkpoint in sorted(glob.glob(os.path.join(run_dir(args, run), "checkpoint-*")),
                                 key=lambda p: int(p.rsplit("-", 1)[1])):
            key = f"{run.name}/{os.path.basename(checkpoint)}"
            if key in done["records"]:
                continue
            sample = random.Random(f"{key}").sample(decided, winners_per_checkpoint)
            winners = [(r["caption"], Image.open(io.BytesIO(r["jpg_0"] if r["label_0"] == 1 else r["jpg_1"])).convert("RGB"))
                       for r in sample]
            done["records"][key] = agreement_at_checkpoint(checkpoint, components, winners, args, seed=run.seed)
            with open(output_path, "w") as f:
                json.dump(done, f)
            print(f"SSR agreement: {key} done", flush=True)
    everything = [r for records in done["records"].values() for r in records]
    by_step = {}
    for key, records in done["records"].items():
        by_step.setdefault(key.rsplit("-", 1)[1], []).extend(records)
    done["overall"] = summarize(everything)
    done["by_checkpoint_step"] = {step: summarize(records) for step, records in sorted(by_step.items(), key=lambda kv: int(kv[0]))}
    o = done["overall"]
    fmt = lambda s: f"{s['value']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]"
    lines = [f"{o['n']} training winners at {len(done['records'])} checkpoints of {len(runs)} SSPO runs. SSR chose SFT "
             f"for {o['ssr_sft_share']:.0%} of them; the reference's sample had the higher true reward for "
             f"{o['reference_sample_better_share']:.0%}.", "",
             "| decision rule | agreement with the sign of the true reward difference |", "|---|---|",
             f"| SSR (the trainer's indicator) | {fmt(o['agreement'])} |",
             f"| always DPO (SSR off) | {fmt(o['always_dpo_agreement'])} |",
             f"| always SFT | {fmt(o['always_sft_agreement'])} |"]
    if o["agreement_when_sft"]:
        lines.append(f"| SSR, when it chose SFT | {fmt(o['agreement_when_sft'])} |")
    if o["agreement_when_dpo"]:
        lines.append(f"| SSR, when it chose DPO | {fmt(o['agreement_when_dpo'])} |")
    if o["self_sample_beats_winner"]:
        lines += ["", f"The self-sample x^s (the reference's sample) had a higher true reward than the dataset's winner "
                      f"x^w in {fmt(o['self_sample_beats_winner'])} of the cases."]
    if everything and "model_err_s" in everything[0]:  # the records carry what the candidate switches read
        done["candidates"] = score_candidates(everything)
        done["chosen_switch"] = choose_switch(done["candidates"])
        lines += ["", "| candidate switch (PLAN.md, rule C) | agreement | SFT share | extra UNet forwards per sample |",
                  "|---|---|---|---|"]
        lines += [f"| {name} | {fmt(c['agreement'])} | {c['sft_share']:.2f} | {c['extra_unet_forwards']} |"
                  for name, c in done["candidates"].items()]
        lines += ["", f"Chosen by rule C: **{done['chosen_switch']}**."]
    done["summary_markdown"] = "\n".join(lines)
    with open(output_path, "w") as f:
        json.dump(done, f, indent=2)
    return done
