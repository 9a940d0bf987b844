"""Table of a probe folder's runs: base and LoRA mean shapes reward on the same prompts and seeds, the paired
difference with a 95% bootstrap CI over prompts (evaluate_sspo.bootstrap_ci), and evaluate_sspo.py's win rate.

    python experiments/results/2026-11-29/recipe-generalization-probe/summarize.py \
        experiments/results/2026-11-29/recipe-generalization-probe/seen-captions/runs
"""
import collections
import glob
import gzip
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 4)))
from evaluate_sspo import bootstrap_ci  # noqa: E402


def per_prompt_means(eval_dir):
    scores = collections.defaultdict(lambda: collections.defaultdict(list))
    path = os.path.join(eval_dir, "scores.jsonl")
    with (open(path) if os.path.exists(path) else gzip.open(path + ".gz", "rt")) as f:
        for line in f:
            row = json.loads(line)
            scores[row["model"]][row["prompt_index"]].append(row["scores"]["shapes_reward"])
    return {model: {i: np.mean(v) for i, v in by_prompt.items()} for model, by_prompt in scores.items()}


print("| run | flags | base | LoRA | LoRA - base [95% CI] | win rate [95% CI] |")
print("|---|---|---|---|---|---|")
for report_path in sorted(glob.glob(os.path.join(sys.argv[1], "*", "eval", "report.json"))):
    eval_dir = os.path.dirname(report_path)
    run = os.path.basename(os.path.dirname(eval_dir))
    results = json.load(open(report_path))["results"]
    means = per_prompt_means(eval_dir)
    diff = np.array([means["sspo"][i] - means["base"][i] for i in sorted(means["base"])])
    low, high = bootstrap_ci(diff)
    win = results["sspo"]["shapes_reward"]["win_rate_vs_base"]
    flags = open(os.path.join(eval_dir, "..", "time.txt")).read().split("flags:")[-1].strip()
    print(f"| {run} | `{flags}` | {results['base']['shapes_reward']['mean']:.3f} | "
          f"{results['sspo']['shapes_reward']['mean']:.3f} | {diff.mean():+.4f} "
          f"[{low:+.4f}, {high:+.4f}] | "
          f"{100 * win['win_rate']:.1f}% [{100 * win['ci_low']:.1f}, {100 * win['ci_high']:.1f}] |")
