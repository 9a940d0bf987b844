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
import dataclasses
import datetime
import glob
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from experiments.relative_paths import relative_to_repo  # noqa: E402

PARTS = ("beta", "main", "ablations", "snapshots", "sampling", "ssr", "video")
MAIN_METHODS = ("sft", "dpo", "sspo", "spin")
METHOD_FLAGS = {
    "sft": ["--loss_type", "sft"],
    "dpo": ["--loss_type", "dpo"],
    "sspo": ["--loss_type", "sspo", "--reference_strategy", "uniform", "--ssr", "sft"],
    "spin": ["--loss_type", "sspo", "--reference_strategy", "latest", "--ssr", "off"],
    "sspo_initial_ref": ["--loss_type", "sspo", "--reference_strategy", "initial", "--ssr", "sft"],
    "sspo_ssr_off": ["--loss_type", "sspo", "--reference_strategy", "uniform", "--ssr", "off"],
    "sspo_flip": ["--loss_type", "sspo", "--reference_strategy", "uniform", "--ssr", "flip"],
}
METHOD_LABELS = {"base": "base (no training)", "sft": "SFT on winners", "dpo": "Diffusion-DPO on pairs",
                 "sspo": "SSPO (RCR + SSR)", "spin": "SPIN-like (latest ref, no SSR)",
                 "sspo_initial_ref": "SSPO, reference = initial", "sspo_ssr_off": "SSPO, SSR off",
                 "sspo_flip": "SSPO, v1 flip"}


@dataclasses.dataclass
class Run:
    name: str  # folder name under runs/, unique
    method: str  # key of METHOD_FLAGS
    seed: int
    part: str
    beta: float = None
    snapshot_steps: int = None
    self_sample_steps: int = None
    video: bool = False

    def flags(self, args) -> List[str]:
        """The method's flags; every other setting is shared by all runs (train_command)."""
        flags = list(METHOD_FLAGS[self.method])
        if self.method != "sft":
            flags += ["--beta_dpo", str(self.beta)]
        flags += ["--snapshot_steps", str(self.snapshot_steps or args.snapshot_steps),
                  "--self_sample_steps", str(self.self_sample_steps or args.self_sample_steps)]
        return flags


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
# Launching runs
# ---------------------------------------------------------------------------

def run_dir(args, run: Run) -> str:
    return os.path.join(args.output_dir, "runs", run.name)


def train_command(args, run: Run) -> List[str]:
    common = ["--seed", str(run.seed), "--output_dir", run_dir(args, run), "--rank", str(args.rank),
              "--learning_rate", str(args.learning_rate), "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
              "--train_batch_size", str(args.train_batch_size), "--resolution", "32",
              "--self_sample_guidance_scale", str(args.guidance_scale),
              "--checkpointing_steps", str(args.checkpointing_steps), "--report_to", "tensorboard"]
    if run.video:
        return [sys.executable, os.path.join(REPO_ROOT, "train_sspo_animatediff.py"),
                "--pretrained_model_name_or_path", args.video_base_model,
                "--motion_adapter_name_or_path", args.motion_adapter,
                "--video_folder", os.path.join(args.video_data, "videos"),
                "--metadata_file", os.path.join(args.video_data, "ChronoMagic_train.csv"),
                "--beta_schedule", "scaled_linear", "--num_frames", "8", "--sample_stride", "1",
                "--train_target", args.video_train_target,
                "--max_train_steps", str(args.video_steps), *common, *run.flags(args)]
    return [sys.executable, os.path.join(REPO_ROOT, "train_sspo_sd15.py"),
            "--pretrained_model_name_or_path", args.base_model, "--dataset_name", args.preference_data,
            "--dataset_split_name", "train", "--max_train_steps", str(args.max_train_steps), *common, *run.flags(args)]


def is_trained(args, run: Run) -> bool:
    return os.path.isfile(os.path.join(run_dir(args, run), "timing.json"))


def train(args, run: Run):
    """One training run, resumed from its newest checkpoint when a previous study was stopped.
    Records the wall-clock time at which each checkpoint was complete (its folder's mtime)."""
    out = run_dir(args, run)
    command = train_command(args, run)
    if glob.glob(os.path.join(out, "checkpoint-*")):
        command += ["--resume_from_checkpoint", "latest"]
    if args.dry_run:
        print(" ".join(command))
        return
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONHASHSEED="0")
    began = time.time()
    with open(os.path.join(out, "train.log"), "a") as log:
        result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"run {run.name} failed (exit {result.returncode}); see {out}/train.log")
    checkpoints = {int(p.rsplit("-", 1)[1]): os.path.getmtime(p) - began for p in glob.glob(os.path.join(out, "checkpoint-*"))}
    with open(os.path.join(out, "timing.json"), "w") as f:
        json.dump({"command": relative_to_repo(command, REPO_ROOT), "seconds": time.time() - began, "threads": 1,
                   "resumed": "latest" in command, "checkpoint_seconds": dict(sorted(checkpoints.items()))}, f, indent=2)


def train_all(args, runs: List[Run]):
    pending = [run for run in runs if not is_trained(args, run)]
    print(f"{len(runs) - len(pending)} of {len(runs)} runs already trained; training {len(pending)}.", flush=True)
    def train_and_report(run):
        train(args, run)
        print(f"{'would train' if args.dry_run else 'trained'} {run.name}", flush=True)

    with ThreadPoolExecutor(max_workers=1 if args.dry_run else args.jobs) as pool:
        list(pool.map(train_and_report, pending))  # list() re-raises a failed run's error


# ---------------------------------------------------------------------------
# Scoring (evaluate_sspo.py with the ground-truth reward)
# ---------------------------------------------------------------------------

def version_name(run_name: str, step: int) -> str:
    """The evaluation's model name of a run's LoRA at a step (a plain folder name)."""
    return f"{run_name}-step{step}"


def parse_version(name: str):
    run_name, _, step = name.rpartition("-step")
    return run_name, int(step)


def lora_versions(args, run: Run) -> Dict[str, str]:
    """{model name: LoRA folder}: every checkpoint of the run, and its final LoRA."""
    out = run_dir(args, run)
    checkpoints = [] if args.no_curves else glob.glob(os.path.join(out, "checkpoint-*"))
    versions = {version_name(run.name, int(p.rsplit("-", 1)[1])): p for p in checkpoints}
    steps = args.video_steps if run.video else args.max_train_steps
    versions[version_name(run.name, steps)] = out  # the final LoRA (also the last checkpoint's weights)
    return dict(sorted(versions.items(), key=lambda kv: parse_version(kv[0])))


def evaluate(args, runs: List[Run], split: str, video: bool = False):
    """Generate and score every version of every run on a prompt file. Generation resumes, so a
    re-run only draws the images of new runs; the base is drawn once."""
    kind = "video" if video else "image"
    versions = {}
    for run in runs:
        versions.update(lora_versions(args, run))
    out = os.path.join(args.output_dir, "eval", f"{split}-{kind}")
    base_model = args.video_base_model if video else args.base_model
    command = [sys.executable, os.path.join(REPO_ROOT, "evaluate_sspo.py"), "--pretrained_model_name_or_path",
               base_model, "--prompts", os.path.join(REPO_ROOT, "data", f"shapes-{split}-{kind}-prompts.txt"),
               "--metrics", "shapes_video_reward" if video else "shapes_reward",
               "--images_per_prompt", str(args.images_per_prompt), "--num_inference_steps", str(args.eval_steps),
               "--guidance_scale", str(args.guidance_scale), "--seed", "0", "--output_dir", out, "--grid_prompts", "0",
               "--generation_batch_size", "64"]
    if args.num_prompts:
        command += ["--num_prompts", str(args.num_prompts)]
    if video:
        command += ["--task", "video", "--motion_adapter_name_or_path", args.motion_adapter, "--num_frames", "8"]
    if versions:
        command += ["--lora_path", *versions.values(), "--model_names", *versions.keys()]
    if args.dry_run:
        print(" ".join(command))
        return out
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    with open(os.path.join(args.output_dir, f"eval-{split}-{kind}.log"), "a") as log:
        result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"evaluation of {split} ({kind}) failed; see {args.output_dir}/eval-{split}-{kind}.log")
    return out


def evaluate_splits(args, runs: List[Run], video: bool = False):
    """The training and held-out captions, one evaluation process each, side by side."""
    with ThreadPoolExecutor(max_workers=1 if args.dry_run else 2) as pool:
        list(pool.map(lambda split: evaluate(args, runs, split, video), ("train", "heldout")))


def read_scores(eval_dir: str) -> Dict[str, Dict[tuple, float]]:
    """{model: {(prompt_index, image_index): reward}} from evaluate_sspo.py's scores.jsonl."""
    scores = {}
    with open(os.path.join(eval_dir, "scores.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            value = next(iter(row["scores"].values()))
            scores.setdefault(row["model"], {})[(row["prompt_index"], row["image_index"])] = value
    return scores


# ---------------------------------------------------------------------------
# Statistics: bootstrap over seeds and prompts (rliable's stratified idea, one task set)
# ---------------------------------------------------------------------------

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


def bootstrap(statistic, matrices: List[np.ndarray], seed: int = 0):
    """Point value and 95% CI of ``statistic(*matrices)``, resampling seeds (rows, each matrix on its
    own) and prompts (columns, shared, so that pairs stay paired) with replacement."""
    rng = np.random.default_rng(seed)
    num_prompts = matrices[0].shape[1]
    values = []
    for _ in range(BOOTSTRAP_SAMPLES):
        prompts = rng.integers(0, num_prompts, num_prompts)
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


def final_models(args, runs: List[Run]) -> List[str]:
    return [version_name(run.name, args.video_steps if run.video else args.max_train_steps) for run in runs]


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


def has_image_parts(args) -> bool:
    """Whether the study trains any image run (a video-only study does not)."""
    return bool(set(args.parts) - {"video"})


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
        from experiments.ssr_agreement import measure_ssr_agreement

        measure_ssr_agreement(args, ssr_test_runs(args, parts, image_runs, betas),
                              os.path.join(args.output_dir, "ssr_agreement.json"), args.ssr_winners)
    from experiments.study_report import write_report

    write_report(args, betas, parts, sweep, time.time() - started)


if __name__ == "__main__":
    main(parse_args())
