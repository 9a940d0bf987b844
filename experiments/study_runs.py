# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""The shapes-world studies' runs: the methods as trainer flags, one launched training run per
``Run`` (resumed from its newest checkpoint), and its LoRA versions scored by ``evaluate_sspo.py``.
Shared by the study drivers (``shapes_alignment.py``, ``decisive_study.py``) and their reports."""

import dataclasses
import glob
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MAIN_METHODS = ("sft", "dpo", "sspo", "spin")
METHOD_FLAGS = {
    "sft": ["--loss_type", "sft"],
    "dpo": ["--loss_type", "dpo"],
    "sspo": ["--loss_type", "sspo", "--reference_strategy", "uniform", "--ssr", "sft"],
    "spin": ["--loss_type", "sspo", "--reference_strategy", "latest", "--ssr", "off"],
    "sspo_initial_ref": ["--loss_type", "sspo", "--reference_strategy", "initial", "--ssr", "sft"],
    "sspo_ssr_off": ["--loss_type", "sspo", "--reference_strategy", "uniform", "--ssr", "off"],
    "sspo_flip": ["--loss_type", "sspo", "--reference_strategy", "uniform", "--ssr", "flip"],
    # The decisive study's new switch, chosen offline by its PLAN.md's rule C (ssr_candidates.json).
    "sspo_switch": ["--loss_type", "sspo", "--reference_strategy", "uniform", "--ssr", "self_sample"],
}
METHOD_LABELS = {"base": "base (no training)", "sft": "SFT on winners", "dpo": "Diffusion-DPO on pairs",
                 "sspo": "SSPO (RCR + SSR)", "spin": "SPIN-like (latest ref, no SSR)",
                 "sspo_initial_ref": "SSPO, reference = initial", "sspo_ssr_off": "SSPO, SSR off",
                 "sspo_flip": "SSPO, v1 flip", "sspo_switch": "SSPO, new switch (self_sample)"}


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



def relative_to_repo(command: List[str]) -> List[str]:
    """A command as recorded in timing.json: paths inside the checkout relative to its root, and the
    interpreter as ``python``, so that the record reruns from any clone."""
    recorded = []
    for part in command:
        if part == sys.executable:
            part = "python"
        elif os.path.isabs(part) and os.path.commonpath([part, REPO_ROOT]) == REPO_ROOT:
            part = os.path.relpath(part, REPO_ROOT)
        recorded.append(part)
    return recorded


def run_dir(args, run: Run) -> str:
    return os.path.join(args.output_dir, "runs", run.name)


def train_command(args, run: Run) -> List[str]:
    common = ["--seed", str(run.seed), "--output_dir", run_dir(args, run), "--rank", str(args.rank),
              "--learning_rate", str(args.learning_rate), "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
              "--train_batch_size", str(args.train_batch_size), "--resolution", "32",
              "--self_sample_guidance_scale", str(args.guidance_scale),
              "--checkpointing_steps", str(args.checkpointing_steps), "--report_to", "tensorboard"]
    if run.video:
        return [sys.executable, "train_sspo_animatediff.py",
                "--pretrained_model_name_or_path", args.video_base_model,
                "--motion_adapter_name_or_path", args.motion_adapter,
                "--video_folder", os.path.join(args.video_data, "videos"),
                "--metadata_file", os.path.join(args.video_data, "ChronoMagic_train.csv"),
                "--beta_schedule", "scaled_linear", "--num_frames", "8", "--sample_stride", "1",
                "--train_target", args.video_train_target,
                "--max_train_steps", str(args.video_steps), *common, *run.flags(args)]
    return [sys.executable, "train_sspo_sd15.py",
            "--pretrained_model_name_or_path", args.base_model, "--dataset_name", args.preference_data,
            "--dataset_split_name", "train", "--max_train_steps", str(args.max_train_steps), *common, *run.flags(args)]


def is_trained(args, run: Run) -> bool:
    return os.path.isfile(os.path.join(run_dir(args, run), "timing.json"))


def latest_checkpoint_step(out: str) -> int:
    steps = [int(p.rsplit("-", 1)[1]) for p in glob.glob(os.path.join(out, "checkpoint-*"))]
    return max(steps, default=0)


def train(args, run: Run):
    """One training run, resumed from its newest checkpoint when a previous study was stopped.
    Records the wall-clock time at which each checkpoint was complete (its folder's mtime), and the
    CPU seconds of the trainer process (``os.wait4``), which other load on the machine does not
    inflate, with the steps this invocation trained."""
    out = run_dir(args, run)
    command = train_command(args, run)
    resumed_from = latest_checkpoint_step(out)
    if resumed_from:
        command += ["--resume_from_checkpoint", "latest"]
    if args.dry_run:
        print(" ".join(command))
        return
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONHASHSEED="0")
    began = time.time()
    with open(os.path.join(out, "train.log"), "a") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"run {run.name} failed (exit {process.returncode}); see {out}/train.log")
    checkpoints = {int(p.rsplit("-", 1)[1]): os.path.getmtime(p) - began for p in glob.glob(os.path.join(out, "checkpoint-*"))}
    with open(os.path.join(out, "timing.json"), "w") as f:
        json.dump({"command": relative_to_repo(command), "seconds": time.time() - began, "threads": 1,
                   "resumed": bool(resumed_from), "resumed_from_step": resumed_from,
                   "cpu_seconds": usage.ru_utime + usage.ru_stime,
                   "checkpoint_seconds": dict(sorted(checkpoints.items()))}, f, indent=2)


def train_all(args, runs: List[Run]):
    pending = [run for run in runs if not is_trained(args, run)]
    print(f"{len(runs) - len(pending)} of {len(runs)} runs already trained; training {len(pending)}.", flush=True)
    def train_and_report(run):
        train(args, run)
        print(f"{'would train' if args.dry_run else 'trained'} {run.name}", flush=True)

    with ThreadPoolExecutor(max_workers=1 if args.dry_run else args.jobs) as pool:
        list(pool.map(train_and_report, pending))  # list() re-raises a failed run's error


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


def evaluate(args, runs: List[Run], split: str, video: bool = False, prompts: str = None, images: int = None,
             name: str = None, versions: Dict[str, str] = None):
    """Generate and score every version of every run on a prompt file. Generation resumes, so a
    re-run only draws the images of new runs; the base is drawn once. By default: every version of
    ``runs``, on ``data/shapes-{split}-{kind}-prompts.txt``, into ``eval/{split}-{kind}``."""
    kind = "video" if video else "image"
    if versions is None:
        versions = {}
        for run in runs:
            versions.update(lora_versions(args, run))
    name = name or f"{split}-{kind}"
    out = os.path.join(args.output_dir, "eval", name)
    base_model = args.video_base_model if video else args.base_model
    prompts = prompts or os.path.join("data", f"shapes-{split}-{kind}-prompts.txt")
    command = [sys.executable, "evaluate_sspo.py", "--pretrained_model_name_or_path",
               base_model, "--prompts", prompts, "--metrics", "shapes_video_reward" if video else "shapes_reward",
               "--images_per_prompt", str(images or args.images_per_prompt), "--num_inference_steps", str(args.eval_steps),
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
    with open(os.path.join(args.output_dir, f"eval-{name}.log"), "a") as log:
        result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"evaluation {name} failed; see {args.output_dir}/eval-{name}.log")
    return out


def evaluate_splits(args, runs: List[Run], video: bool = False):
    """The training and held-out captions, one evaluation process each, side by side."""
    with ThreadPoolExecutor(max_workers=1 if args.dry_run else 2) as pool:
        list(pool.map(lambda split: evaluate(args, runs, split, video), ("train", "heldout")))


def final_models(args, runs: List[Run]) -> List[str]:
    return [version_name(run.name, args.video_steps if run.video else args.max_train_steps) for run in runs]


def has_image_parts(args) -> bool:
    """Whether the study trains any image run (a video-only study does not)."""
    return bool(set(args.parts) - {"video"})
