# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""Does SSPO work? The paper's comparisons, run in the shapes world with its exact reward.

Every run is one call of the project's own trainer (``train_sspo_sd15.py`` or
``train_sspo_animatediff.py``) and every score one call of ``evaluate_sspo.py --metrics
shapes_reward``; this file only launches them, resumes a half-finished study, and writes the
report. Each method gets the same base model, preference data, optimizer, learning-rate schedule,
batch and number of optimizer steps.

    python experiments/shapes_alignment.py --output_dir experiments/results/2026-11-28
    python experiments/shapes_alignment.py --output_dir ... --dry_run     # print the commands
    python experiments/shapes_alignment.py --output_dir ... --report_only # rebuild the report
    python experiments/shapes_alignment.py --output_dir /tmp/quick --quick  # every part, a few steps (CI)

Parts (``--parts``): beta (the β sweep that picks DPO's and SSPO's β on the training captions),
main (base, SFT, DPO, SSPO, SPIN-like; ``--seeds`` seeds), ablations (reference initial, SSR off,
v1 flip), snapshots (``--snapshot_steps`` sweep), sampling (``--self_sample_steps`` sweep),
ssr (SSR's indicator against the sign of the true reward difference), video (base, SFT, SSPO
with AnimateDiff).
"""

import argparse
import datetime
import json
import os
import sys
import time
from typing import Dict, List

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.ssr_agreement import measure_ssr_agreement
from experiments.study_report import write_report
from experiments.study_runs import (MAIN_METHODS, Run, evaluate, evaluate_splits, final_models, has_image_parts,
                                    train_all)
from experiments.study_stats import prompt_matrix, read_scores

PARTS = ("beta", "main", "ablations", "snapshots", "sampling", "ssr", "video")


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="The SSPO study in the shapes world.")
    parser.add_argument("--output_dir", default=os.path.join("experiments", "results", datetime.date.today().isoformat()))
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--base_model", default="models/shapes-sd15")
    parser.add_argument("--preference_data", default="data/shapes-pickapic")
    parser.add_argument("--video_base_model", default="models/shapes-sd15-video",
                        help="The image model the motion adapter was pretrained with (its cross-attention tuned).")
    parser.add_argument("--motion_adapter", default="models/shapes-motion-adapter")
    parser.add_argument("--video_data", default="data/shapes-chronomagic")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds of the main methods (and of the video part).")
    parser.add_argument("--max_train_steps", type=int, default=100)
    parser.add_argument("--train_batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--snapshot_steps", type=int, default=20)
    parser.add_argument("--snapshot_sweep", type=int, nargs="+", default=[7, 20, 60])
    parser.add_argument("--self_sample_steps", type=int, default=10)
    parser.add_argument("--sampling_sweep", type=int, nargs="+", default=[4, 10, 20])
    parser.add_argument("--guidance_scale", type=float, default=5.0, help="CFG of self-sampling and of evaluation.")
    parser.add_argument("--beta_sweep", type=float, nargs="+", default=[500.0, 2000.0, 8000.0])
    parser.add_argument("--checkpointing_steps", type=int, default=25, help="Checkpoints give the reward curves.")
    parser.add_argument("--video_steps", type=int, default=40)
    parser.add_argument("--video_train_target", default="lora", choices=("lora", "motion_lora"),
                        help="What the video runs train: lora (spatial and motion attention, as the README's video "
                             "quickstart) or motion_lora (motion modules only, as the study's first video part).")
    parser.add_argument("--images_per_prompt", type=int, default=2)
    parser.add_argument("--eval_steps", type=int, default=20, help="DDIM steps of evaluation images.")
    parser.add_argument("--jobs", type=int, default=2, help="Runs at a time, one CPU thread each.")
    parser.add_argument("--no_curves", action="store_true",
                        help="Score only each run's final LoRA, not its checkpoints (half the evaluation or less).")
    parser.add_argument("--num_prompts", type=int, default=None, help="Score only the first N prompts of each file.")
    parser.add_argument("--ssr_winners", type=int, default=48, help="Training winners per checkpoint in the SSR test.")
    parser.add_argument("--quick", action="store_true",
                        help="Every part and method for a few steps, one seed, 2 prompts: checks that the study runs "
                             "and writes its report; its numbers mean nothing.")
    parser.add_argument("--dry_run", action="store_true")
    parser.add_argument("--report_only", action="store_true")
    args = parser.parse_args(input_args)
    if args.quick:
        vars(args).update(QUICK_SETTINGS)
    return args


# --quick: the smallest study that still exercises every launch, resume, scoring and report path.
# The sweeps hold only the default value (they reuse the main SSPO run) and β is not swept, because
# every extra run costs a process start of about 15 s and the whole of --quick must fit in 3 minutes.
QUICK_SETTINGS = dict(seeds=1, max_train_steps=4, video_steps=2, train_batch_size=2, checkpointing_steps=2,
                      snapshot_steps=2, snapshot_sweep=[2], self_sample_steps=2, sampling_sweep=[2],
                      beta_sweep=[2000.0], images_per_prompt=1, eval_steps=2, num_prompts=2, ssr_winners=2)


# ---------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------

def make_run(args, method, seed, part, beta=None, snapshot_steps=None, self_sample_steps=None, video=False) -> Run:
    """A run named by its settings, so that the same settings in two parts are one run."""
    name = ("video_" if video else "") + method
    if method != "sft":
        name += f"_b{beta:g}"
    if snapshot_steps and snapshot_steps != args.snapshot_steps:
        name += f"_snap{snapshot_steps}"
    if self_sample_steps and self_sample_steps != args.self_sample_steps:
        name += f"_ss{self_sample_steps}"
    return Run(f"{name}_seed{seed}", method, seed, part, beta, snapshot_steps, self_sample_steps, video)


def beta_runs(args) -> List[Run]:
    return [make_run(args, method, 0, "beta", beta=beta) for method in ("dpo", "sspo") for beta in args.beta_sweep]


def choose_betas(args, runs: List[Run]) -> Dict:
    """Each method's β: the sweep value with the highest mean reward on the *training* captions."""
    scores = read_scores(os.path.join(args.output_dir, "eval", "train-image"))
    chosen = {}
    for method in ("dpo", "sspo"):
        candidates = {run.beta: float(prompt_matrix(scores, final_models(args, [run])).mean())
                      for run in runs if run.method == method}
        chosen[method] = {"beta": max(candidates, key=candidates.get), "train_reward_by_beta": candidates}
    return chosen


def study_runs(args, betas: Dict) -> Dict[str, List[Run]]:
    beta = {"dpo": betas["dpo"]["beta"], "sspo": betas["sspo"]["beta"]}
    for method in ("spin", "sspo_initial_ref", "sspo_ssr_off", "sspo_flip"):
        beta[method] = beta["sspo"]  # the same loss family: SSPO's chosen β
    parts = {}
    if "main" in args.parts:
        parts["main"] = [make_run(args, m, s, "main", beta.get(m)) for s in range(args.seeds) for m in MAIN_METHODS]
    if "ablations" in args.parts:
        parts["ablations"] = [make_run(args, m, 0, "ablations", beta[m])
                              for m in ("sspo_initial_ref", "sspo_ssr_off", "sspo_flip")]
    if "snapshots" in args.parts:
        parts["snapshots"] = [make_run(args, "sspo", 0, "snapshots", beta["sspo"], snapshot_steps=k)
                              for k in args.snapshot_sweep]
    if "sampling" in args.parts:
        parts["sampling"] = [make_run(args, "sspo", 0, "sampling", beta["sspo"], self_sample_steps=n)
                             for n in args.sampling_sweep]
    if "video" in args.parts:
        parts["video"] = [make_run(args, m, s, "video", beta["sspo"], video=True)
                          for s in range(args.seeds) for m in ("sft", "sspo")]
    return parts


def unique(runs: List[Run]) -> List[Run]:
    return list({run.name: run for run in runs}.values())


def ssr_test_runs(args, parts: Dict[str, List[Run]], image_runs: List[Run], betas: Dict) -> List[Run]:
    """The SSPO runs whose checkpoints the SSR test reads: the main part's (every seed), or, in a study
    run without it, the SSPO runs with the study's default settings that another part trains."""
    main = [run for run in parts.get("main", []) if run.method == "sspo"]
    if main:
        return main
    return unique([run for run in image_runs if run.method == "sspo"
                   and run.name == make_run(args, "sspo", run.seed, run.part, betas["sspo"]["beta"]).name])


def main(args):
    os.makedirs(args.output_dir, exist_ok=True)
    started = time.time()
    sweep = beta_runs(args) if has_image_parts(args) else []
    single_beta = len(args.beta_sweep) == 1  # nothing to choose: the sweep's runs join the main ones
    if not args.report_only and not single_beta and sweep:
        train_all(args, sweep)
        evaluate(args, sweep, "train")
    if args.dry_run or single_beta or not sweep:
        betas = {m: {"beta": args.beta_sweep[len(args.beta_sweep) // 2], "train_reward_by_beta": {}}
                 for m in ("dpo", "sspo")}
    else:
        betas = choose_betas(args, sweep)
        with open(os.path.join(args.output_dir, "beta_choice.json"), "w") as f:
            json.dump(betas, f, indent=2)
        print(f"chosen β on the training captions: DPO {betas['dpo']['beta']:g}, SSPO {betas['sspo']['beta']:g}", flush=True)
    parts = study_runs(args, betas)
    image_runs = unique(sweep + [run for name, runs in parts.items() if name != "video" for run in runs])
    video_runs = parts.get("video", [])
    if not args.report_only:
        if image_runs:
            train_all(args, image_runs)
            evaluate_splits(args, image_runs)
        if video_runs:
            train_all(args, video_runs)
            evaluate_splits(args, video_runs, video=True)
    if args.dry_run:
        return
    if "ssr" in args.parts and not args.report_only:
        measure_ssr_agreement(args, ssr_test_runs(args, parts, image_runs, betas),
                              os.path.join(args.output_dir, "ssr_agreement.json"), args.ssr_winners)
    write_report(args, betas, parts, sweep, time.time() - started)


if __name__ == "__main__":
    main(parse_args())
