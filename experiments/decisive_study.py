# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""The decisive study: do RCR and SSR help, where they should matter?

Two data regimes, every method trained long enough to overfit, scored on all 90 held-out captions and
on training captions at checkpoints on a log scale. Every run is one call of ``train_sspo_sd15.py``
and every score one call of ``evaluate_sspo.py --metrics shapes_reward`` (``study_runs.py``); this file
plans the runs in priority order, launches two at a time (one CPU thread each), prunes the
checkpoints that are not scored, and resumes after any stop. The plan and its decision rules are in
``experiments/results/2026-12-04-decisive-study/PLAN.md``, written before any run.

    python experiments/decisive_study.py --prepare_data          # once: the small regime's winners
    nohup python experiments/decisive_study.py > decisive.log 2>&1 &
    python experiments/decisive_study.py --report_only           # rebuild the report from what landed
    python experiments/decisive_study.py --choose_switch         # rule C, once SSPO seed 1 of the small regime landed
    python experiments/decisive_study.py --quick --output_dir /tmp/q   # every phase, a few steps (CI)
"""

import argparse
import copy
import glob
import json
import os
import random
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sspo_utils import LORA_WEIGHT_NAME
from experiments.study_runs import METHOD_FLAGS, REPO_ROOT, Run, is_trained, run_dir, train, version_name

# Priority order (issue 32): the main methods in the small regime first, then the new switch (both
# regimes), then the rest of the full regime, then the ablations. The β check sits after the main small
# runs because it decides whether they stand (PLAN.md, rule B).
PHASES = ("small_main", "small_beta", "small_switch", "full_switch", "full_main", "small_ablations")
MAIN_METHODS = ("sspo", "dpo", "sft", "spin")
SUBSET_SEED = 1204  # chooses the small regime's winners, once, independently of every training seed
REGIMES = {
    "small": {"data": "data/shapes-pickapic-small64", "steps": 1600, "score_steps": [50, 100, 200, 400, 800, 1600],
              "train_prompts": "data/shapes-small64-train-image-prompts.txt"},
    "full": {"data": "data/shapes-pickapic", "steps": 800, "score_steps": [50, 100, 200, 400, 800],
             "train_prompts": "data/shapes-train90-image-prompts.txt"},
}
HELDOUT_PROMPTS = "data/shapes-heldout-all-image-prompts.txt"


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="The decisive SSPO study in the shapes world (issue 32).")
    parser.add_argument("--output_dir", default=os.path.join("experiments", "results", "2026-12-04-decisive-study"))
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--seeds", type=int, default=5, help="Seeds of the main methods and of the new switch.")
    parser.add_argument("--ablation_seeds", type=int, default=3)
    parser.add_argument("--beta", type=float, default=500.0,
                        help="β of DPO and of the SSPO family: the 100-step study's choice on training captions.")
    parser.add_argument("--beta_check", type=float, default=2000.0, help="The second β of the small_beta phase.")
    parser.add_argument("--base_model", default="models/shapes-sd15")
    parser.add_argument("--train_batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--snapshot_steps", type=int, default=20)
    parser.add_argument("--self_sample_steps", type=int, default=10)
    parser.add_argument("--guidance_scale", type=float, default=5.0, help="CFG of self-sampling and of evaluation.")
    parser.add_argument("--checkpointing_steps", type=int, default=50, help="Resume granularity; unscored ones are pruned.")
    parser.add_argument("--eval_steps", type=int, default=20, help="DDIM steps of evaluation images.")
    parser.add_argument("--curve_images", type=int, default=2, help="Images per caption at every scored step.")
    parser.add_argument("--final_images", type=int, default=8, help="Images per caption at the final step (PLAN.md).")
    parser.add_argument("--num_prompts", type=int, default=None, help="Score only the first N prompts of each file.")
    parser.add_argument("--jobs", type=int, default=2, help="Runs at a time, one CPU thread each.")
    parser.add_argument("--prepare_data", action="store_true", help="Write the small regime's data and caption files.")
    parser.add_argument("--choose_switch", action="store_true",
                        help="Rule C: score the candidate switches offline on the small regime's SSPO seeds 0 and 1.")
    parser.add_argument("--ssr_winners", type=int, default=64, help="Training winners per checkpoint in rule C.")
    parser.add_argument("--switch_seeds", type=int, nargs="+", default=[1],
                        help="SSPO seeds (small regime) whose checkpoints rule C reads (PLAN.md, second addendum).")
    parser.add_argument("--quick", action="store_true", help="Every phase for a few steps; its numbers mean nothing.")
    parser.add_argument("--dry_run", action="store_true")
    parser.add_argument("--report_only", action="store_true")
    args = parser.parse_args(input_args)
    if args.quick:
        args.seeds = args.ablation_seeds = 1
        args.switch_seeds = [0]
        args.train_batch_size, args.checkpointing_steps, args.snapshot_steps, args.self_sample_steps = 2, 2, 2, 2
        args.eval_steps, args.curve_images, args.final_images, args.num_prompts, args.ssr_winners = 2, 1, 2, 2, 2
    return args


def regimes(args) -> Dict[str, Dict]:
    if not args.quick:
        return REGIMES
    quick = copy.deepcopy(REGIMES)
    for regime in quick.values():
        regime["steps"], regime["score_steps"] = 4, [2, 4]
    return quick


# ---------------------------------------------------------------------------
# The small regime's data: chosen once, by its own seed, before any run
# ---------------------------------------------------------------------------

def prepare_data(num_winners: int = 64, num_full_prompts: int = 90):
    """The small regime's preference data (``num_winners`` decided Pick-a-Pic rows of the shipped data,
    pairs kept, so DPO trains on the same winners) and the training-caption files of both regimes."""
    import datasets

    small = REGIMES["small"]
    if os.path.exists(os.path.join(REPO_ROOT, small["data"])):
        raise SystemExit(f"error: {small['data']} exists; the subset is chosen once and never redrawn")
    rows = datasets.load_dataset(os.path.join(REPO_ROOT, REGIMES["full"]["data"]), split="train")
    decided = [i for i, label in enumerate(rows["label_0"]) if label in (0, 1)]
    chosen = sorted(random.Random(SUBSET_SEED).sample(decided, num_winners))
    subset = rows.select(chosen)
    os.makedirs(os.path.join(REPO_ROOT, small["data"], "data"))
    subset.to_parquet(os.path.join(REPO_ROOT, small["data"], "data", "train-00000-of-00001.parquet"))
    with open(os.path.join(REPO_ROOT, small["data"], "preferences.json"), "w") as f:
        json.dump({"made_from": REGIMES["full"]["data"], "subset_seed": SUBSET_SEED, "winners": num_winners,
                   "rows_of_source": chosen}, f, indent=2)
    with open(os.path.join(REPO_ROOT, small["train_prompts"]), "w") as f:
        f.write("\n".join(subset["caption"]) + "\n")
    captions = sorted({rows[i]["caption"] for i in decided})
    with open(os.path.join(REPO_ROOT, REGIMES["full"]["train_prompts"]), "w") as f:
        f.write("\n".join(random.Random(SUBSET_SEED).sample(captions, num_full_prompts)) + "\n")
    print(f"wrote {small['data']} ({num_winners} winners), {small['train_prompts']}, {REGIMES['full']['train_prompts']}")


# ---------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------

def make_run(method: str, seed: int, beta: float, phase: str) -> Run:
    name = method if method == "sft" else f"{method}_b{beta:g}"
    return Run(f"{name}_seed{seed}", method, seed, phase, None if method == "sft" else beta)


def beta_check_runs(args) -> Dict[str, List[Run]]:
    """Rule B's pairs (PLAN.md): seed 0 of SSPO and DPO in the small regime, at β and at β_check."""
    return {m: [make_run(m, 0, args.beta, "small_main"), make_run(m, 0, args.beta_check, "small_beta")]
            for m in ("sspo", "dpo")}


def small_regime_betas(args) -> Dict[str, float]:
    """β of each method's small-regime runs: β_check for a method whose β check fired (rule B), else β.
    Until the β check is scored, every method trains at β, and ``main`` plans again once it is."""
    from experiments.decisive_report import beta_check_outcome

    outcome = beta_check_outcome(args.output_dir, regimes(args)["small"]["steps"], beta_check_runs(args))
    return {m: args.beta_check if o["redo_at_beta_check"] else args.beta for m, o in outcome.items()}


def plan(args) -> List[tuple]:
    """(regime, run) in priority order; within a phase seed by seed, so that every method has k seeds
    before any has k + 1. A run planned twice (rule B's redo at seed 0 is the β check's run) keeps its
    first place."""
    small_betas = small_regime_betas(args)
    jobs = []
    for phase in args.phases:
        regime, part = phase.split("_", 1)
        if part == "main":
            jobs += [(regime, make_run(m, s, small_betas.get(m, args.beta) if regime == "small" else args.beta, phase))
                     for s in range(args.seeds) for m in MAIN_METHODS]
        elif part == "beta":
            jobs += [(regime, at_check) for _, at_check in beta_check_runs(args).values()]
        elif part == "switch":
            if "sspo_switch" not in METHOD_FLAGS:
                print(f"{phase}: skipped, the new switch is not chosen yet (PLAN.md, rule C)", flush=True)
                continue
            jobs += [(regime, make_run("sspo_switch", s, args.beta, phase)) for s in range(args.seeds)]
        elif part == "ablations":
            jobs += [(regime, make_run(m, s, args.beta, phase)) for s in range(args.ablation_seeds)
                     for m in ("sspo_initial_ref", "sspo_ssr_off")]
    unique = {}
    for regime, run in jobs:
        unique.setdefault((regime, run.name), (regime, run))
    return list(unique.values())


def replaced_by_rule_b(args) -> Dict[str, List[Run]]:
    """The small-regime runs at β of each method that rule B redid at β_check (kept, and reported)."""
    return {m: [make_run(m, s, args.beta, "small_main") for s in range(args.seeds)]
            for m, beta in small_regime_betas(args).items() if beta != args.beta}


def regime_args(args, regime: str):
    """The settings ``study_runs.train_command`` reads, for one regime's folder."""
    r = regimes(args)[regime]
    return argparse.Namespace(
        output_dir=os.path.join(args.output_dir, regime), base_model=args.base_model, preference_data=r["data"],
        max_train_steps=r["steps"], train_batch_size=args.train_batch_size, learning_rate=args.learning_rate,
        rank=args.rank, snapshot_steps=args.snapshot_steps, self_sample_steps=args.self_sample_steps,
        guidance_scale=args.guidance_scale, checkpointing_steps=args.checkpointing_steps, eval_steps=args.eval_steps,
        num_prompts=args.num_prompts, images_per_prompt=args.curve_images, dry_run=args.dry_run)


# ---------------------------------------------------------------------------
# One job: train, prune, score
# ---------------------------------------------------------------------------

EVAL_LOCKS = {}  # one evaluation process per evaluation folder at a time


def prune_checkpoints(rargs, run: Run, keep: List[int]):
    """Delete the checkpoints that are not scored (they only served resuming); the scored ones keep
    their RCR pool for the offline SSR test."""
    for path in glob.glob(os.path.join(run_dir(rargs, run), "checkpoint-*")):
        if int(path.rsplit("-", 1)[1]) not in keep:
            shutil.rmtree(path)


def score(args, regime: str, runs: List[Run]):
    """The runs' curves (every scored step, ``--curve_images``) and final LoRAs (``--final_images``),
    on the held-out and the regime's training captions. Evaluation folders resume, so a scored
    version is never drawn twice."""
    from experiments.study_runs import evaluate

    rargs = regime_args(args, regime)
    r = regimes(args)[regime]
    curve, final = {}, {}
    for run in runs:
        out = run_dir(rargs, run)
        curve.update({version_name(run.name, step): out if step == r["steps"] else os.path.join(out, f"checkpoint-{step}")
                      for step in r["score_steps"]})
        final[version_name(run.name, r["steps"])] = out
    for split, prompts in (("heldout", HELDOUT_PROMPTS), ("train", r["train_prompts"])):
        for kind, versions, images in (("curve", curve, args.curve_images), ("final", final, args.final_images)):
            name = f"{kind}-{split}"
            with EVAL_LOCKS.setdefault((regime, name), threading.Lock()):
                scores_path = os.path.join(rargs.output_dir, "eval", name, "scores.jsonl")
                earlier = journal_earlier_scores(scores_path)
                evaluate(rargs, runs, split, prompts=prompts, images=images, name=name, versions=versions)
                keep_earlier_scores(scores_path, earlier)
                os.remove(scores_path + EARLIER_SUFFIX)


def read_jsonl(path: str) -> List[Dict]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


EARLIER_SUFFIX = ".earlier"  # rows of earlier calls, kept on disk until a call's merge has landed
BASE_MEAN_DRIFT_LIMIT = 1e-4  # well below the third decimal the gains are reported to


def write_jsonl(path: str, rows: List[Dict]):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(path + ".tmp", path)


def journal_earlier_scores(scores_path: str) -> List[Dict]:
    """The scores of earlier calls, written beside scores.jsonl before evaluate_sspo.py overwrites it, so
    a failure or a kill between the two never loses the rows of models whose LoRAs are gone. A journal
    left by a call that died before its merge is what counts then; that call's own rows are dropped
    (its runs have no scored marker, so they are scored again)."""
    journal = scores_path + EARLIER_SUFFIX
    if os.path.isfile(journal):
        return read_jsonl(journal)
    os.makedirs(os.path.dirname(scores_path), exist_ok=True)
    earlier = read_jsonl(scores_path)
    write_jsonl(journal, earlier)
    return earlier


def keep_earlier_scores(scores_path: str, earlier: List[Dict]):
    """evaluate_sspo.py writes scores.jsonl for the models of its call only; put back the rows of the models
    scored by earlier calls (their LoRAs may be pruned or lost by now, their scores are not).

    The base is drawn again with the same seeds in every call. Its images are not kept in git, and one
    redrawn on a fresh machine can differ in a few pixels (in the full regime, 1 image of 720 moved
    by 2.6e-4). Every gain is a mean of paired differences with the base, so what must hold is the
    base's mean: the merge is refused when it moved by more than ``BASE_MEAN_DRIFT_LIMIT``."""
    rows = read_jsonl(scores_path)
    key = lambda row: (row["model"], row["prompt_index"], row["image_index"])  # noqa: E731
    new = {key(row): row for row in rows}
    drifts = {}  # metric -> the base's new minus earlier score, per shared image
    for row in earlier:
        if row["model"] == "base" and key(row) in new:
            for metric, value in row["scores"].items():
                drifts.setdefault(metric, []).append(new[key(row)]["scores"][metric] - value)
    for metric, moved in drifts.items():
        if abs(sum(moved) / len(moved)) > BASE_MEAN_DRIFT_LIMIT:
            raise RuntimeError(f"{scores_path}: the base's mean {metric} moved by {sum(moved) / len(moved):+.2e} "
                               f"(one image by {max(moved, key=abs):+.2e}); the evaluation is not reproducible, so "
                               f"scores cannot be merged (the earlier rows are kept in {scores_path}{EARLIER_SUFFIX})")
    called = {row["model"] for row in rows}
    write_jsonl(scores_path, [row for row in earlier if row["model"] not in called] + rows)


def scored_marker(args, regime: str, run: Run) -> str:
    return os.path.join(run_dir(regime_args(args, regime), run), "scored.json")


def lost_before_scoring(args, regime: str, run: Run) -> bool:
    """Trained but neither scored nor on disk any more: checkpoints are not kept in git, so a machine
    reset between training and scoring loses them, and the run must be trained again from step 0."""
    out = run_dir(regime_args(args, regime), run)
    return (is_trained(regime_args(args, regime), run) and not os.path.isfile(scored_marker(args, regime, run))
            and not os.path.isfile(os.path.join(out, LORA_WEIGHT_NAME)))


def do_job(args, regime: str, run: Run, score_now: bool = True):
    """Train (or resume) one run, prune its unscored checkpoints, and score it unless ``score_now`` is
    off (``--quick`` scores each regime's runs together, to start fewer evaluation processes)."""
    rargs = regime_args(args, regime)
    if not is_trained(rargs, run) or lost_before_scoring(args, regime, run):
        train(rargs, run)
        print(f"{'would train' if args.dry_run else 'trained'} {regime}/{run.name}", flush=True)
    if args.dry_run:
        score(args, regime, [run])
        return
    prune_checkpoints(rargs, run, regimes(args)[regime]["score_steps"])
    if score_now and not os.path.isfile(scored_marker(args, regime, run)):
        score(args, regime, [run])
        mark_scored(args, regime, [run])
        print(f"scored {regime}/{run.name}", flush=True)


def training_log_summary(args, regime: str, run: Run) -> Dict:
    """What the trainer logged that explains a method (kept in git; the TensorBoard logs are not): the
    share of samples SSR sent to SFT (no DPO term) and how many steps old the drawn RCR reference was,
    averaged over each half of training."""
    from experiments.study_report import logged_scalar

    summary = {}
    for tag in ("ssr_sft_fraction", "snapshot_age"):
        values = logged_scalar(regime_args(args, regime), run, tag)
        if values:
            steps = sorted(values)
            half = len(steps) // 2
            summary[tag] = {"first_half": float(sum(values[s] for s in steps[:half]) / max(half, 1)),
                            "second_half": float(sum(values[s] for s in steps[half:]) / max(len(steps) - half, 1))}
    return summary


def mark_scored(args, regime: str, runs: List[Run]):
    for run in runs:
        with open(scored_marker(args, regime, run), "w") as f:
            json.dump({"score_steps": regimes(args)[regime]["score_steps"], "curve_images": args.curve_images,
                       "final_images": args.final_images, "training_log": training_log_summary(args, regime, run)},
                      f, indent=2)


def main(args):
    if args.prepare_data:
        prepare_data()
        return
    os.makedirs(args.output_dir, exist_ok=True)
    jobs = plan(args)
    if not args.report_only and not args.choose_switch:
        print(f"{len(jobs)} runs planned in phases {', '.join(args.phases)}", flush=True)
        done = set()
        while True:  # plans again after each pass: rule B's outcome can add runs once the β check is scored
            todo = [(regime, run) for regime, run in jobs if (regime, run.name) not in done]
            if not todo:
                break
            for regime in {regime for regime, _ in todo}:
                os.makedirs(regime_args(args, regime).output_dir, exist_ok=True)
            with ThreadPoolExecutor(max_workers=1 if args.dry_run else args.jobs) as pool:
                list(pool.map(lambda job: do_job(args, *job, score_now=not args.quick), todo))  # re-raises a failure
            done |= {(regime, run.name) for regime, run in todo}
            if args.quick and not args.dry_run:
                def score_regime(regime):
                    runs = [run for r, run in jobs if r == regime and not os.path.isfile(scored_marker(args, regime, run))]
                    if runs:
                        score(args, regime, runs)
                        mark_scored(args, regime, runs)

                with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                    list(pool.map(score_regime, regimes(args)))
            jobs = plan(args)
    if args.dry_run:
        return
    if args.choose_switch:
        from experiments.ssr_agreement import measure_ssr_agreement

        runs = [make_run("sspo", seed, args.beta, "small_main") for seed in args.switch_seeds]
        measure_ssr_agreement(regime_args(args, "small"), runs, os.path.join(args.output_dir, "ssr_candidates.json"),
                              args.ssr_winners)
    from experiments.decisive_report import write_report

    write_report(args, jobs, regimes(args), beta_check_runs(args), replaced_by_rule_b(args))


if __name__ == "__main__":
    main(parse_args())
