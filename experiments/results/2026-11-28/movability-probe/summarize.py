"""rewards.json (per-image rewards, 4 images per caption, DDIM 20, seeds 0..n-1, the same for every model)
-> results.json: per run, the mean reward and, against the base on the same prompts and guidance scale,
the paired gain with a 95% bootstrap CI over captions and the paired win rate (evaluate_sspo's).

    python summarize.py"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", ".."))
from evaluate_sspo import bootstrap_ci, paired_win_rate  # noqa: E402


def main():
    runs = json.load(open(os.path.join(HERE, "rewards.json")))
    bases = {(r["base_model"], r["prompts"], r["guidance_scale"]): np.reshape(r["rewards"], (-1, 4))
             for name, r in runs.items() if name.startswith("base")}
    results = {}
    for name, run in runs.items():
        rewards = np.reshape(run["rewards"], (-1, 4))
        entry = {"run": run["run"], "base_model": run["base_model"], "prompts": run["prompts"], "guidance_scale": run["guidance_scale"],
                 "captions": rewards.shape[0], "reward": round(float(rewards.mean()), 4)}
        if not name.startswith("base"):
            base = bases[(run["base_model"], run["prompts"], run["guidance_scale"])]
            gain = (rewards - base).mean(1)
            win = paired_win_rate(rewards.mean(1), base.mean(1))
            entry.update(base_reward=round(float(base.mean()), 4), gain=round(float(gain.mean()), 4),
                         gain_ci=[round(v, 4) for v in bootstrap_ci(gain)],
                         win_rate=[round(win[k], 3) for k in ("win_rate", "ci_low", "ci_high")])
        results[name] = entry
    json.dump(results, open(os.path.join(HERE, "results.json"), "w"), indent=1)
    for name, entry in results.items():
        print(f"{name:34s} {entry['reward']:.4f}  gain {entry.get('gain', ''):>7}  {entry.get('gain_ci', '')}")


if __name__ == "__main__":
    main()
