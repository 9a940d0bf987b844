"""results.md: the README quickstarts with training seeds 0 (the README's run), 1 and 2, on held-out captions
(evaluation identical: the same prompts and generation seeds), plus the same recipe's seeds on 96 training captions (../quickstart-recipe-probe/probe.sh DATA DIR --seed N)."""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.dirname(os.path.dirname(HERE))
RUNS = [  # label, report.json, metric
    ("image, held out, seed 0 (README)", os.path.join(RESULTS, "quickstart-2026-11-29-pairs-cfg2"), "shapes_reward"),
    ("image, held out, seed 1", os.path.join(HERE, "quickstart-seed1"), "shapes_reward"),
    ("image, held out, seed 2", os.path.join(HERE, "quickstart-seed2"), "shapes_reward"),
    ("image, 96 training captions, seed 0", os.path.join(RESULTS, "2026-11-29", "quickstart-recipe-probe",
                                                          "sspo_cfg2_eval5"), "shapes_reward"),
    ("image, 96 training captions, seed 1", os.path.join(HERE, "train96-seed1"), "shapes_reward"),
    ("image, 96 training captions, seed 2", os.path.join(HERE, "train96-seed2"), "shapes_reward"),
    ("video, held out, seed 0 (README)", os.path.join(RESULTS, "video-quickstart-2026-11-29-pairs-cfg2"),
     "shapes_video_reward"),
    ("video, held out, seed 0 (README, rerun)", os.path.join(HERE, "quickstart-video-seed0"), "shapes_video_reward"),
    ("video, held out, seed 1", os.path.join(HERE, "quickstart-video-seed1"), "shapes_video_reward"),
    ("video, held out, seed 2", os.path.join(HERE, "quickstart-video-seed2"), "shapes_video_reward"),
]
lines = ["| run | base | LoRA (95% CI) | LoRA - base (paired 95% CI, where the report has it) | paired win rate |",
         "|---|---|---|---|---|"]
for label, folder, metric in RUNS:
    path = os.path.join(folder, "report.json")
    if not os.path.exists(path):
        lines.append(f"| {label} | not run | | | |")
        continue
    results = json.load(open(path))["results"]
    (name,) = [n for n in results if n != "base"]
    base, lora = results["base"][metric], results[name][metric]
    win = lora["win_rate_vs_base"]
    difference = f"{lora['mean'] - base['mean']:+.3f}"
    if "difference_vs_base" in lora:  # reports written before evaluate_sspo.py gave it have the means only
        d = lora["difference_vs_base"]
        difference = f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
    lines.append(f"| {label} | {base['mean']:.3f} | {lora['mean']:.3f} [{lora['ci_low']:.3f}, {lora['ci_high']:.3f}] | "
                 f"{difference} | {100 * win['win_rate']:.1f}% [{100 * win['ci_low']:.1f}, "
                 f"{100 * win['ci_high']:.1f}] |")
lines += ["", "The video rows are the first video world (captions without size and position words). The rebuilt "
               "world's video seeds: [../video-world-v2/results.md](../video-world-v2/results.md)."]
open(os.path.join(HERE, "results.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
