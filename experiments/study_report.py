# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""The report of the shapes-world study: every number as JSON, a markdown report, PNG plots and an
image grid, all from the raw outputs under ``<output_dir>/runs`` and ``<output_dir>/eval``."""

import glob
import json
import os
from typing import Dict, List

import numpy as np

from experiments.reward_grid import reward_grid
from experiments.study_runs import (MAIN_METHODS, METHOD_LABELS, Run, final_models, has_image_parts, parse_version,
                                    run_dir, version_name)
from experiments.study_stats import (bootstrap, mean_difference, mean_reward, probability_of_improvement, prompt_matrix,
                                     read_scores, win_rate)


def method_of(runs: List[Run], method: str) -> List[Run]:
    return [run for run in runs if run.method == method]


def summarize(args, scores, runs: List[Run], base: np.ndarray, reference: np.ndarray = None) -> Dict:
    """Mean reward and paired win rate against the base (95% CIs over seeds and prompts) of the
    final models of ``runs`` (one method, any number of seeds); P(reference > method) if given."""
    matrix = prompt_matrix(scores, final_models(args, runs))
    entry = {"seeds": [run.seed for run in runs], "mean": bootstrap(mean_reward, [matrix]),
             "gain_vs_base": bootstrap(mean_difference, [matrix, base]),
             "win_rate_vs_base": bootstrap(win_rate, [matrix, base])}
    if reference is not None:
        entry["p_sspo_better"] = bootstrap(probability_of_improvement, [reference, matrix])
    return entry


def curve(args, scores, runs: List[Run], paired: bool = False) -> Dict:
    """Mean reward (and CI over seeds and prompts) at every checkpoint step, step 0 being the base;
    with ``paired``, the gain over the base on the same prompts and seeds instead."""
    names = {run.name for run in runs}
    steps = sorted({parse_version(m)[1] for m in scores if m != "base" and parse_version(m)[0] in names})
    base = prompt_matrix(scores, ["base"])
    statistic = (lambda m: bootstrap(mean_difference, [m, base])) if paired else (lambda m: bootstrap(mean_reward, [m]))
    points = {0: statistic(base)}
    for step in steps:
        models = [version_name(run.name, step) for run in runs if version_name(run.name, step) in scores]
        if len(models) == len(runs):
            points[step] = statistic(prompt_matrix(scores, models))
    return points


def checkpoint_seconds(args, runs: List[Run]) -> Dict[int, float]:
    """Mean wall-clock seconds (over seeds) at which each checkpoint of a method was written."""
    seconds = {}
    for run in runs:
        with open(os.path.join(run_dir(args, run), "timing.json")) as f:
            for step, value in json.load(f)["checkpoint_seconds"].items():
                seconds.setdefault(int(step), []).append(value)
    return {step: float(np.mean(values)) for step, values in sorted(seconds.items())}


def logged_scalar(args, run: Run, tag: str) -> Dict[int, float]:
    """A scalar the trainer logged to TensorBoard, by optimizer step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for path in glob.glob(os.path.join(run_dir(args, run), "logs", "**", "events.*"), recursive=True):
        accumulator = EventAccumulator(path, size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values.update({event.step: event.value for event in accumulator.Scalars(tag)})
    return dict(sorted(values.items()))


def fmt(stat: Dict, digits=3) -> str:
    return f"{stat['value']:.{digits}f} [{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"


def plot_curves(path, title, xlabel, series: Dict[str, Dict], x_of=None, ylabel="ground-truth reward",
                symlog_below=None, zero_line=False):
    """Each series' points with their CI band; ``symlog_below``: a log x axis, linear below that value
    (log-spaced checkpoints with step 0); ``zero_line``: a line at y = 0 (no gain)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for label, points in series.items():
        steps = sorted(points)
        xs = [x_of[label].get(s, 0.0) if x_of else s for s in steps]
        axis.plot(xs, [points[s]["value"] for s in steps], marker="o", label=label)
        axis.fill_between(xs, [points[s]["ci_low"] for s in steps], [points[s]["ci_high"] for s in steps], alpha=0.15)
    if symlog_below:
        axis.set_xscale("symlog", linthresh=symlog_below)
    if zero_line:
        axis.axhline(0, color="grey", linewidth=0.8)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_ssr(path, fractions: Dict[str, Dict[int, float]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for label, values in fractions.items():
        steps = sorted(values)
        window = min(10, len(steps))  # moving average: each step's fraction is over one batch
        if not window:
            continue
        smooth = np.convolve([values[s] for s in steps], np.ones(window) / window, mode="valid")
        axis.plot(steps[window - 1:], smooth, label=label)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("ssr_sft_fraction (10-step mean)")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def machine() -> Dict:
    """sspo_utils.machine_info, plus how the study used the machine."""
    from sspo_utils import machine_info

    return {**machine_info("cpu"), "threads_per_run": 1, "note": "runs two at a time, one CPU thread each"}


def signed(stat) -> str:
    return f"{stat['value']:+.3f} [{stat['ci_low']:+.3f}, {stat['ci_high']:+.3f}]"


def table(rows: List[List[str]], header: List[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def write_report(args, betas, parts, sweep, seconds):
    out = args.output_dir
    results = {"machine": machine(), "settings": {k: v for k, v in vars(args).items()}, "beta_choice": betas,
               "study_seconds_this_invocation": seconds}
    md = [f"# Does SSPO work? The shapes-world study ({os.path.basename(os.path.normpath(out))})", "",
          "Every number below is the shapes world's ground-truth reward (in [0, 1], computed from pixels), "
          f"on {args.images_per_prompt} images per prompt drawn with the same seeds for every model "
          f"(DDIM {args.eval_steps} steps, CFG {args.guidance_scale:g}). Intervals are 95% bootstrap CIs over seeds "
          "and prompts. Win rate: the share of (prompt, seed) pairs where the method's mean reward beats the base's "
          "on the same sampling seeds (ties 0.5). P(SSPO better): the probability that an SSPO run beats a run of "
          "the other method on a prompt (rliable's probability of improvement, prompts as tasks).", "",
          f"Training: {args.max_train_steps if has_image_parts(args) else args.video_steps} optimizer steps, "
          f"batch {args.train_batch_size}, LoRA rank {args.rank}, "
          f"AdamW at {args.learning_rate:g} (constant), self-sampling {args.self_sample_steps} DDIM steps at CFG "
          f"{args.guidance_scale:g}, snapshots every {args.snapshot_steps} steps, the same for every method. "
          f"Machine: {results['machine']['cpu_model']} ({results['machine']['cpu_count']} cores), torch {results['machine']['torch']}, two runs "
          "at a time with one thread each.", ""]
    if getattr(args, "quick", False):
        md[1:1] = ["", "**A `--quick` run: a few steps of every part, to check that the study runs. Its numbers mean "
                       "nothing.**"]
    if len(args.beta_sweep) == 1:
        md += ["## β", "", f"Not swept: every method uses `--beta_sweep {args.beta_sweep[0]:g}`.", ""]
    else:
        md += ["## β, chosen on the training captions", "",
               table([[m.upper(), f"{betas[m]['beta']:g}", ", ".join(f"β={b:g}: {r:.3f}" for b, r in
                                                                sorted(betas[m]["train_reward_by_beta"].items()))]
                      for m in ("dpo", "sspo")], ["method", "chosen β", "training-caption reward of each β (seed 0)"]), ""]

    grids = {}
    for split in ("heldout", "train") if has_image_parts(args) else ():
        scores = read_scores(os.path.join(out, "eval", f"{split}-image"))
        base = prompt_matrix(scores, ["base"])
        results[split] = {"base": {"mean": bootstrap(mean_reward, [base])}}
        main = parts.get("main", [])
        sspo = prompt_matrix(scores, final_models(args, method_of(main, "sspo"))) if main else None
        rows = [[METHOD_LABELS["base"], "-", fmt(results[split]["base"]["mean"]), "-", "-", "-"]]
        for method in MAIN_METHODS:
            runs = method_of(main, method)
            if not runs:
                continue
            entry = summarize(args, scores, runs, base, sspo if method != "sspo" else None)
            results[split][method] = entry
            rows.append([METHOD_LABELS[method], str(len(runs)), fmt(entry["mean"]), signed(entry["gain_vs_base"]),
                         fmt(entry["win_rate_vs_base"], 2),
                         fmt(entry["p_sspo_better"], 2) if "p_sspo_better" in entry else "-"])
        title = "held-out captions (never in any training set)" if split == "heldout" else "training captions"
        md += [f"## {'Main comparison' if main else 'Base'}, {title}", "",
               table(rows, ["method", "seeds", "reward", "gain vs base (paired)", "win rate vs base", "P(SSPO better)"]), ""]
        for part, label in (("ablations", "SSPO ablations (seed 0)"), ("snapshots", "Snapshot frequency (SSPO, seed 0)"),
                            ("sampling", "Self-sampling steps (SSPO, seed 0)")):
            if not parts.get(part):
                continue
            part_rows = []
            for run in parts[part]:
                entry = summarize(args, scores, [run], base)
                results[split].setdefault(part, {})[run.name] = entry
                setting = {"ablations": METHOD_LABELS.get(run.method, run.method),
                           "snapshots": f"--snapshot_steps {run.snapshot_steps}",
                           "sampling": f"--self_sample_steps {run.self_sample_steps}"}[part]
                part_rows.append([setting, fmt(entry["mean"]), signed(entry["gain_vs_base"]),
                                  fmt(entry["win_rate_vs_base"], 2)])
            md += [f"### {label}, {title}", "",
                   table(part_rows, ["setting", "reward", "gain vs base (paired)", "win rate vs base"]), ""]
        beta_rows = []
        for run in sweep:
            entry = summarize(args, scores, [run], base)
            results[split].setdefault("beta_sweep", {})[run.name] = entry
            beta_rows.append([run.method.upper(), f"{run.beta:g}", fmt(entry["mean"])])
        md += [f"### β sweep (seed 0), {title}", "", table(beta_rows, ["method", "β", "reward"]), ""]
        if main:
            series = {METHOD_LABELS[m]: curve(args, scores, method_of(main, m)) for m in MAIN_METHODS if method_of(main, m)}
            results[split]["curves"] = {k: {str(s): v for s, v in c.items()} for k, c in series.items()}
            plot_curves(os.path.join(out, f"reward_vs_step_{split}.png"), f"Reward vs step, {title}", "optimizer step", series)
            gains = {METHOD_LABELS[m]: curve(args, scores, method_of(main, m), paired=True)
                     for m in MAIN_METHODS if method_of(main, m)}
            results[split]["gain_curves"] = {k: {str(s): v for s, v in c.items()} for k, c in gains.items()}
            plot_curves(os.path.join(out, f"gain_vs_step_{split}.png"), "Gain over the base vs step, " + ("held-out captions" if split == "heldout" else "training captions"),
                        "optimizer step", gains, ylabel="reward − base reward (paired)")
            if split == "heldout":
                wall = {METHOD_LABELS[m]: {0: 0.0, **checkpoint_seconds(args, method_of(main, m))}
                        for m in MAIN_METHODS if method_of(main, m)}
                results["checkpoint_seconds"] = wall
                plot_curves(os.path.join(out, "reward_vs_wallclock_heldout.png"), "Reward vs wall-clock, held-out captions",
                            "seconds of training (one CPU thread)", series, x_of=wall)
                grids = {"base": "base", **{METHOD_LABELS[m]: final_models(args, method_of(main, m))[0]
                                            for m in MAIN_METHODS if method_of(main, m)}}
                if os.path.isfile(os.path.join(out, "eval", "heldout-image", "base", "00000_00.png")):
                    reward_grid(os.path.join(out, "eval", "heldout-image"), grids, os.path.join(out, "grid_heldout.png"),
                                num_prompts=6)
                else:  # a clean clone: evaluation images are not committed, the grid PNG is
                    print("evaluation images not found: grid_heldout.png left as it is", flush=True)
    if parts.get("main"):  # the curves are drawn from the main runs only
        md += ["## Curves", "", "The gain over the base is paired (same prompts and sampling seeds), so its interval "
               "leaves out how hard each prompt is; the plain reward's interval does not.", "",
               "![gain vs step, held-out](gain_vs_step_heldout.png)", "",
               "![gain vs step, training captions](gain_vs_step_train.png)", "",
               "![reward vs step, held-out](reward_vs_step_heldout.png)", "",
               "![reward vs step, training captions](reward_vs_step_train.png)", "",
               "![reward vs wall-clock](reward_vs_wallclock_heldout.png)", ""]

    sspo_main = method_of(parts.get("main", []), "sspo")
    if sspo_main:
        fractions = {run.name: logged_scalar(args, run, "ssr_sft_fraction") for run in sspo_main}
        previous = os.path.join(out, "results.json")
        if not any(fractions.values()) and os.path.isfile(previous):  # a clean clone: TensorBoard logs are not committed
            with open(previous) as f:
                logged = json.load(f).get("ssr_sft_fraction", {})
            fractions = {name: {int(step): v for step, v in logged.get(name, {}).items()} for name in fractions}
        results["ssr_sft_fraction"] = {name: {str(s): v for s, v in values.items()} for name, values in fractions.items()}
        plot_ssr(os.path.join(out, "ssr_sft_fraction.png"), fractions)
        means = [np.mean(list(v.values())) for v in fractions.values() if v]
        md += ["## SSR: how often it switches to SFT", "", "![ssr_sft_fraction](ssr_sft_fraction.png)", "",
               f"Mean `ssr_sft_fraction` over all steps: {', '.join(f'{m:.2f}' for m in means)} (one per seed).", ""]
    agreement_path = os.path.join(out, "ssr_agreement.json")
    if os.path.isfile(agreement_path):
        with open(agreement_path) as f:
            agreement = json.load(f)
        results["ssr_agreement"] = agreement
        md += ["## SSR's assumption, tested", "", agreement["summary_markdown"], ""]

    if parts.get("video"):
        scores_by_split = {split: read_scores(os.path.join(out, "eval", f"{split}-video")) for split in ("heldout", "train")}
        rows = []
        for split, scores in scores_by_split.items():
            base = prompt_matrix(scores, ["base"])
            results[f"video_{split}"] = {"base": {"mean": bootstrap(mean_reward, [base])}}
            row = [split, fmt(results[f"video_{split}"]["base"]["mean"])]
            for method in ("sft", "sspo"):
                entry = summarize(args, scores, method_of(parts["video"], method), base)
                results[f"video_{split}"][method] = entry
                row += [fmt(entry["mean"]), signed(entry["gain_vs_base"]), fmt(entry["win_rate_vs_base"], 2)]
            rows.append(row)
        md += ["## Video (AnimateDiff, moving shapes)", "",
               f"{args.video_steps} optimizer steps, {args.seeds} seeds, 8 frames at 32 px, "
               f"`--train_target {args.video_train_target}`.", "",
               table(rows, ["captions", "base", "SFT", "SFT gain (paired)", "SFT win rate", "SSPO", "SSPO gain (paired)",
                            "SSPO win rate"]), ""]
    if grids:
        md += ["## Grid (held-out captions, the same seeds; reward under each image)", "", "![grid](grid_heldout.png)", ""]
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md))
    print(f"report: {os.path.join(out, 'report.md')}")
    return results
