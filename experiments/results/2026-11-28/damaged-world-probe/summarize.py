"""Rescore the probe's evaluation images (kept outside git) with shapes_world.reward and write
probe_runs.json: per run, the mean reward on 32 training captions x 4 images (DDIM 20, CFG 5, the same
seeds for every model), the paired gain over the base with a 95% bootstrap CI over captions, the
paired win rate, and the share of washed-out images (mean chroma under 50). The CIs are
evaluate_sspo's (bootstrap over captions, seed 0).

    python summarize.py /tmp/wA data/shapes-train-image-prompts.txt probe_runs.json             # damaged base
    python summarize.py /tmp/wS data/shapes-train-image-prompts.txt shipped_base_small_beta.json  # shipped base"""
import glob
import json
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
import shapes_world  # noqa: E402
from evaluate_sspo import bootstrap_ci, paired_win_rate  # noqa: E402

RUNS = {  # run folder -> the flags that differ from: --train_batch_size 8 --rank 8 --lr_scheduler constant --seed 0
    "sspo": "sspo, beta 2000, self_sample_steps 10, lr 5e-4, 100 steps (the quickstart recipe)",
    "sspo_lr2e3": "sspo, beta 2000, self_sample_steps 10, lr 2e-3, 100 steps",
    "sspo_b8k": "sspo, beta 8000, self_sample_steps 4, lr 2e-3, 100 steps",
    "dpo_lr2e3": "dpo on the pairs, beta 2000, lr 2e-3, 100 steps",
    "sft_lr2e3": "sft on the winners, lr 2e-3, 100 steps",
    "sspo_400": "sspo, beta 2000, self_sample_steps 4, lr 1e-3, 400 steps",
    "sft_400": "sft on the winners, lr 1e-3, 400 steps",
    "sspo444_400": "sspo, as sspo_400, winners stored as JPEG 4:4:4 (no chroma subsampling)",
    "sft444_400": "sft, as sft_400, winners stored as JPEG 4:4:4",
    "sftrender_400": "sft on the renderer's perfect images of the 810 training captions, lr 1e-3, 400 steps",
    # on the shipped base and data
    "sspo_b100": "sspo, beta 100, self_sample_steps 10, lr 1e-3, 100 steps",
    "dpo_b100": "dpo on the pairs, beta 100, lr 1e-3, 100 steps",
}


def scores(folder, captions):
    paths = sorted(glob.glob(os.path.join(folder, "*.png")))
    rewards, faded = np.zeros((len(captions), 4)), np.zeros((len(captions), 4))
    for path in paths:
        prompt, image = map(int, os.path.basename(path)[:-4].split("_"))
        picture = Image.open(path).convert("RGB")
        array = np.asarray(picture).astype(np.float32)
        rewards[prompt, image] = shapes_world.reward(picture, captions[prompt])
        faded[prompt, image] = (array.max(-1) - array.min(-1)).mean() < 50
    return rewards, faded


def paired(base, run):
    """(gain, win rate) over the base, each [value, ci_low, ci_high], from per-caption means."""
    gain = (run - base).mean(1)
    win = paired_win_rate(run.mean(1), base.mean(1))
    return [float(gain.mean()), *bootstrap_ci(gain)], [win["win_rate"], win["ci_low"], win["ci_high"]]


def main(world_dir, prompts, output):
    captions = [line.strip() for line in open(prompts) if line.strip()]
    base, base_faded = scores(os.path.join(world_dir, "eval_train", "base"), captions)
    result = {"world": world_dir, "prompts": prompts, "images_per_prompt": 4, "num_inference_steps": 20, "guidance_scale": 5.0,
              "base": {"reward": float(base.mean()), "faded_share": float(base_faded.mean())}, "runs": {}}
    for name, flags in RUNS.items():
        folder = os.path.join(world_dir, "eval_train", name)
        if not os.path.isdir(folder):
            continue
        run, faded = scores(folder, captions)
        gain, win = paired(base, run)
        result["runs"][name] = {"flags": flags, "reward": float(run.mean()), "gain_vs_base": gain,
                                "win_rate_vs_base": win, "faded_share": float(faded.mean())}
    with open(output, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:4])
