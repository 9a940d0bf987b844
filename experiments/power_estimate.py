# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""How precise will the decisive study be? A power estimate written before its runs.

From runs that already exist (the 100-step study's held-out scores, 3 seeds x 32 captions x 2 images,
and the quickstart's 3 seeds x 90 held-out captions x 4 images) this fits the variance components of a
paired gain over the base and of the difference between two methods:

    G[s, p] = mean_i r_method[s, p, i] - mean_i r_base[p, i] = mu + a_s + b_p + e_sp

a_s: the training seed; b_p: the caption (how much this caption gains); e_sp: seed x caption plus the
image noise of the method's images. A two-way ANOVA without replication gives the components, the
within-cell spread of the images splits e_sp and b_p into image noise and the rest. Then, for S seeds,
P captions and I images,

    Var(gain) = s_a^2 / S + (s_b^2 + s_img,base^2 / I) / P + (s_int^2 + s_img^2 / I) / (S P)

and the 95% half-width is 1.96 sqrt(Var). The smallest difference detected with 80% power at the 5%
level (two-sided) is 2.80 sqrt(Var). Checked against the bootstrap half-width at the observed size.

    python experiments/power_estimate.py --output_dir experiments/results/2026-12-04-decisive-study
"""

import argparse
import gzip
import json
import os
from typing import Dict, List

import numpy as np

STUDY_100 = "experiments/results/2026-11-29-study-decoder/eval/heldout-image/scores.jsonl"
QUICKSTART_90 = "experiments/results/2026-11-29/decoder-quickstart-beta500/heldout-all90/scores.jsonl.gz"
METHODS_100 = {"sft": "sft_seed{}-step100", "dpo": "dpo_b500_seed{}-step100", "sspo": "sspo_b500_seed{}-step100",
               "spin": "spin_b500_seed{}-step100"}


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Power estimate of the decisive shapes-world study.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=90)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--goal", type=float, default=0.01, help="Target 95%% CI half-width.")
    return parser.parse_args(input_args)


def read_images(path: str) -> Dict[str, Dict[int, Dict[int, float]]]:
    """{model: {prompt: {image: reward}}} from evaluate_sspo.py's scores.jsonl(.gz)."""
    opener = gzip.open if path.endswith(".gz") else open
    scores = {}
    with opener(path, "rt") as f:
        for line in f:
            row = json.loads(line)
            value = next(iter(row["scores"].values()))
            scores.setdefault(row["model"], {}).setdefault(row["prompt_index"], {})[row["image_index"]] = value
    return scores


def cube(scores, models: List[str]) -> np.ndarray:
    """(models, prompts, images) array of rewards."""
    return np.array([[[scores[m][p][i] for i in sorted(scores[m][p])] for p in sorted(scores[m])] for m in models])


def components(gains: np.ndarray) -> Dict[str, float]:
    """Random-effects ANOVA of a (seeds, prompts, images) array of paired differences. Image j of
    prompt p has the same sampling seed for every model, so its noise is shared by the training seeds
    (the "image" term) and only averages out over images, not over seeds."""
    S, P, I = gains.shape
    m = gains.mean()
    g_s, g_p = gains.mean((1, 2)), gains.mean((0, 2))
    g_sp, g_pi = gains.mean(2), gains.mean(0)
    ms = {
        "seed": P * I * ((g_s - m) ** 2).sum() / (S - 1),
        "prompt": S * I * ((g_p - m) ** 2).sum() / (P - 1),
        "image": S * ((g_pi - g_p[:, None]) ** 2).sum() / (P * (I - 1)),
        "seed_prompt": I * ((g_sp - g_s[:, None] - g_p[None, :] + m) ** 2).sum() / ((S - 1) * (P - 1)),
        "residual": ((gains - g_sp[:, :, None] - g_pi[None] + g_p[None, :, None]) ** 2).sum() / ((S - 1) * P * (I - 1)),
    }
    e = ms["residual"]
    sp = max(0.0, (ms["seed_prompt"] - e) / I)
    image = max(0.0, (ms["image"] - e) / S)
    return {"seed": max(0.0, (ms["seed"] - e - I * sp) / (P * I)),
            "prompt": max(0.0, (ms["prompt"] - e - I * sp - S * image) / (S * I)),
            "image": image, "seed_prompt": sp, "residual": float(e),
            "observed": {"seeds": S, "prompts": P, "images": I, "value": float(m)}}


def variance(c: Dict, seeds: int, prompts: int, images: int, captions_fixed: bool = False) -> float:
    """Variance of the mean difference. ``captions_fixed``: the captions are the population (rliable's
    stratified bootstrap: runs resampled within each task), so the caption term drops out."""
    return (c["seed"] / seeds + (0.0 if captions_fixed else c["prompt"] / prompts) + c["image"] / (prompts * images)
            + c["seed_prompt"] / (seeds * prompts) + c["residual"] / (seeds * prompts * images))


def bootstrap_half_width(method: np.ndarray, other: np.ndarray, samples: int = 2000, seed: int = 0) -> float:
    """Half-width of the study's own bootstrap (seeds resampled per matrix, prompts shared)."""
    rng = np.random.default_rng(seed)
    a, b = method.mean(-1), other.mean(-1)
    values = []
    for _ in range(samples):
        prompts = rng.integers(0, a.shape[1], a.shape[1])
        values.append(a[rng.integers(0, len(a), len(a))][:, prompts].mean()
                      - b[rng.integers(0, len(b), len(b))][:, prompts].mean())
    low, high = np.quantile(values, [0.025, 0.975])
    return float((high - low) / 2)


def seeds_needed(c: Dict, prompts: int, images: int, goal: float) -> int:
    for seeds in range(2, 201):
        if 1.96 * np.sqrt(variance(c, seeds, prompts, images)) <= goal:
            return seeds
    return None


def estimate(name, method, other, args) -> Dict:
    """``other``: the base's (1, prompts, images) rewards, shared by every seed, or a second method's."""
    c = components(method - other)
    o = c["observed"]
    projected = variance(c, args.seeds, args.prompts, args.images)
    return {"comparison": name, "components": c,
            "predicted_half_width_at_observed_size": 1.96 * float(np.sqrt(variance(c, o["seeds"], o["prompts"], o["images"]))),
            "bootstrap_half_width_at_observed_size": bootstrap_half_width(method, other),
            "projected_half_width": 1.96 * float(np.sqrt(projected)),
            "minimum_detectable_difference": 2.80 * float(np.sqrt(projected)),
            "seeds_for_goal": seeds_needed(c, args.prompts, args.images, args.goal),
            "half_width_with_infinite_seeds": 1.96 * float(np.sqrt(variance(c, 10**9, args.prompts, args.images))),
            "designs": {f"{s}x{args.prompts}x{i}": {
                "captions_resampled": 1.96 * float(np.sqrt(variance(c, s, args.prompts, i))),
                "captions_fixed": 1.96 * float(np.sqrt(variance(c, s, args.prompts, i, captions_fixed=True)))}
                for s in (5, 8, 10) for i in (4, 8)}}


def main(args):
    os.makedirs(args.output_dir, exist_ok=True)
    rows = []
    study = read_images(STUDY_100)
    base = cube(study, ["base"])
    methods = {m: cube(study, [pattern.format(s) for s in range(3)]) for m, pattern in METHODS_100.items()}
    for m in ("sspo", "dpo", "spin", "sft"):
        rows.append(estimate(f"{m} - base (100-step study, held-out 32 x 2)", methods[m], base, args))
    for m in ("dpo", "spin", "sft"):
        rows.append(estimate(f"sspo - {m} (100-step study, held-out 32 x 2)", methods["sspo"], methods[m], args))
    quick = read_images(QUICKSTART_90)
    rows.append(estimate("sspo - base (quickstart recipe, held-out 90 x 4)", cube(quick, [f"sspo_s{s}" for s in range(3)]),
                         cube(quick, ["base"]), args))
    result = {"sources": [STUDY_100, QUICKSTART_90],
              "target": {"seeds": args.seeds, "prompts": args.prompts, "images": args.images, "goal_half_width": args.goal},
              "estimates": rows}
    with open(os.path.join(args.output_dir, "power_estimate.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"| comparison | observed (S x P x I) | bootstrap half-width there | model's half-width there | "
             f"projected half-width at {args.seeds} x {args.prompts} x {args.images} | smallest detectable difference "
             f"(80% power) | seeds for ±{args.goal:g} | half-width with infinite seeds |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o = r["components"]["observed"]
        lines.append(f"| {r['comparison']} | {o['seeds']} x {o['prompts']} x {o['images']} (value {o['value']:+.3f}) | "
                     f"{r['bootstrap_half_width_at_observed_size']:.3f} | {r['predicted_half_width_at_observed_size']:.3f} | "
                     f"{r['projected_half_width']:.3f} | {r['minimum_detectable_difference']:.3f} | "
                     f"{r['seeds_for_goal'] or '> 200'} | {r['half_width_with_infinite_seeds']:.3f} |")
    designs = list(rows[0]["designs"])
    lines += ["", "95% half-widths of other designs (seeds x captions x images): captions resampled / captions fixed", "",
              "| comparison | " + " | ".join(designs) + " |", "|---|" + "---|" * len(designs)]
    for r in rows:
        lines.append(f"| {r['comparison']} | " + " | ".join(
            f"{d['captions_resampled']:.3f} / {d['captions_fixed']:.3f}" for d in r["designs"].values()) + " |")
    with open(os.path.join(args.output_dir, "power_estimate.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(parse_args())
