# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""Statistics of the shapes-world studies: scores as (seeds, prompts) matrices, and bootstrap CIs over
seeds and prompts (rliable's stratified idea, one task set)."""

import json
import os
from typing import Dict, List

import numpy as np


def read_scores(eval_dir: str) -> Dict[str, Dict[tuple, float]]:
    """{model: {(prompt_index, image_index): reward}} from evaluate_sspo.py's scores.jsonl."""
    scores = {}
    with open(os.path.join(eval_dir, "scores.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            value = next(iter(row["scores"].values()))
            scores.setdefault(row["model"], {})[(row["prompt_index"], row["image_index"])] = value
    return scores



BOOTSTRAP_SAMPLES = 2000


def prompt_matrix(scores: Dict[str, Dict[tuple, float]], models: List[str]) -> np.ndarray:
    """(seeds, prompts) matrix of per-prompt mean rewards, one row per model (= one seed's run)."""
    rows = []
    for model in models:
        per_prompt = {}
        for (prompt, _), value in scores[model].items():
            per_prompt.setdefault(prompt, []).append(value)
        rows.append([np.mean(per_prompt[p]) for p in sorted(per_prompt)])
    return np.array(rows)


def bootstrap(statistic, matrices: List[np.ndarray], seed: int = 0, resample_prompts: bool = True):
    """Point value and 95% CI of ``statistic(*matrices)``, resampling seeds (rows, each matrix on its
    own) and prompts (columns, shared, so that pairs stay paired) with replacement. With
    ``resample_prompts=False`` the prompts are the population (rliable's stratified bootstrap: runs
    resampled within each task), so the interval speaks of these prompts only."""
    rng = np.random.default_rng(seed)
    num_prompts = matrices[0].shape[1]
    values = []
    for _ in range(BOOTSTRAP_SAMPLES):
        prompts = rng.integers(0, num_prompts, num_prompts) if resample_prompts else np.arange(num_prompts)
        values.append(statistic(*[m[rng.integers(0, len(m), len(m))][:, prompts] for m in matrices]))
    low, high = np.quantile(values, [0.025, 0.975])
    return {"value": float(statistic(*matrices)), "ci_low": float(low), "ci_high": float(high)}


def mean_reward(matrix):
    return matrix.mean()


def mean_difference(method, base):
    """Paired gain over the base: prompts are resampled together, so prompt difficulty cancels."""
    return method.mean() - base.mean()


def win_rate(method, base):
    """Paired win rate against the base: per prompt and seed, the same sampling seeds; ties 0.5."""
    base_row = base[0]
    return np.mean(np.where(method > base_row, 1.0, np.where(method == base_row, 0.5, 0.0)))


def probability_of_improvement(x, y):
    """P(X > Y): for each prompt, the share of (run of X, run of Y) pairs where X's reward is higher
    (ties 0.5), averaged over prompts (rliable's definition, prompts as tasks)."""
    greater = (x[:, None, :] > y[None, :, :]).mean(axis=(0, 1))
    ties = (x[:, None, :] == y[None, :, :]).mean(axis=(0, 1))
    return np.mean(greater + 0.5 * ties)
