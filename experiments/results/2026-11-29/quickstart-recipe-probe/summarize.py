"""Build results.md from the runs' report.json files (96 training captions x 4 images, same seeds for base and LoRA)."""
import json
import os

RUNS = [  # folder, data, objective and changed flags (everything else is the README's quickstart recipe)
    ("sft_renders", "perfect renders", "SFT, lr 5e-4"),
    ("sft_renders_lr3e3", "perfect renders", "SFT, lr 3e-3"),
    ("sspo_renders", "perfect renders", "SSPO, lr 5e-4, beta 2000"),
    ("sspo_ship_lr3e3", "base pairs at CFG 5 (previously shipped)", "SSPO, lr 3e-3"),
    ("sspo_cfg2_eval5", "base pairs at CFG 2", "SSPO, lr 5e-4, beta 2000 (the quickstart recipe)"),
    ("r1_cfg2_lr1e3", "base pairs at CFG 2", "SSPO, lr 1e-3"),
    ("r2_cfg2_b5000", "base pairs at CFG 2", "SSPO, beta 5000"),
    ("r3_cfg2_lr1e3_b5000", "base pairs at CFG 2", "SSPO, lr 1e-3, beta 5000"),
    ("sspo_cfg2_eval2", "base pairs at CFG 2", "SSPO, self-samples at CFG 2; evaluated at CFG 2"),
]
here = os.path.dirname(os.path.abspath(__file__))
lines = ["| run | data (winners) | objective | eval CFG | base | LoRA | paired win rate |", "|---|---|---|---|---|---|---|"]
for folder, data, objective in RUNS:
    report = json.load(open(os.path.join(here, folder, "report.json")))
    base, lora = report["results"]["base"]["shapes_reward"], report["results"]["sspo"]["shapes_reward"]
    win = lora["win_rate_vs_base"]
    lines.append(f"| {folder} | {data} | {objective} | {report['settings']['guidance_scale']:g} | {base['mean']:.3f} | "
                 f"{lora['mean']:.3f} [{lora['ci_low']:.3f}, {lora['ci_high']:.3f}] | "
                 f"{100 * win['win_rate']:.1f}% [{100 * win['ci_low']:.1f}, {100 * win['ci_high']:.1f}] |")
for cfg in (5, 3, 2):
    summary = json.load(open(os.path.join(here, "preference-data", f"cfg{cfg}.json")))
    lines.append(f"\nPairs at CFG {cfg}: {summary['ties']} of {summary['captions']} ties, all samples "
                 f"{summary['mean_reward_all']:.3f}, winners {summary['mean_reward_winners']:.3f}.")
open(os.path.join(here, "results.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
