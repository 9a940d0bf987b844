"""Build results.md from the runs' report.json files. Image runs (probe.sh): 96 training captions x 4 images;
video runs (vprobe.sh): 32 training video captions x 2 clips; the same seeds for base and LoRA."""
import json
import os

IMAGE_RUNS = [  # folder, winners, objective and the flags changed from the README's quickstart recipe
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
VIDEO_RUNS = [  # the README's video quickstart recipe (lr 5e-4, beta 2000), flags changed as noted
    ("v_cfg5", "base clips at CFG 5 (previously shipped)", "SSPO, lr 5e-4"),
    ("v_cfg2", "base clips at CFG 2", "SSPO, lr 5e-4"),
    ("v_cfg2_lr1e3", "base clips at CFG 2", "SSPO, lr 1e-3"),
    ("v_cfg2_b5000", "base clips at CFG 2", "SSPO, beta 5000"),
    ("v_cfg2_lr2e3", "base clips at CFG 2", "SSPO, lr 2e-3"),
]
PREFERENCE_DATA = [("cfg5", "Image pairs at CFG 5"), ("cfg3", "Image pairs at CFG 3"), ("cfg2", "Image pairs at CFG 2"),
                   ("video_cfg5", "Video pairs at CFG 5"), ("video_cfg2", "Video pairs at CFG 2")]
HEADER = ["| run | winners | objective | eval CFG | base | LoRA (95% CI) | paired win rate |", "|---|---|---|---|---|---|---|"]
here = os.path.dirname(os.path.abspath(__file__))


def table_row(folder, winners, objective, metric):
    report = json.load(open(os.path.join(here, folder, "report.json")))
    base, lora = report["results"]["base"][metric], report["results"]["sspo"][metric]
    win = lora["win_rate_vs_base"]
    return (f"| {folder} | {winners} | {objective} | {report['settings']['guidance_scale']:g} | {base['mean']:.3f} | "
            f"{lora['mean']:.3f} [{lora['ci_low']:.3f}, {lora['ci_high']:.3f}] | "
            f"{100 * win['win_rate']:.1f}% [{100 * win['ci_low']:.1f}, {100 * win['ci_high']:.1f}] |")


lines = ["Image, 96 training captions:", "", *HEADER, *(table_row(*run, "shapes_reward") for run in IMAGE_RUNS),
         "", "Video, 32 training video captions:", "", *HEADER,
         *(table_row(*run, "shapes_video_reward") for run in VIDEO_RUNS if os.path.isdir(os.path.join(here, run[0]))),
         ""]
for name, label in PREFERENCE_DATA:
    summary = json.load(open(os.path.join(here, "preference-data", f"{name}.json")))
    lines.append(f"- {label}: {summary['ties']} of {summary['captions']} ties, all samples "
                 f"{summary['mean_reward_all']:.3f}, winners {summary['mean_reward_winners']:.3f}.")
open(os.path.join(here, "results.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
