# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""The decisive study's report: curves with CI bands, final tables, pairwise differences with
rliable's probability of improvement, stability, equal compute and the verdict table of PLAN.md's
rules, all from the raw outputs under ``<output_dir>/<regime>/{runs,eval}``. Runs that have not
landed yet are left out, and every table says how many seeds it holds."""

import json
import os
from typing import Dict, List

import numpy as np

from experiments.study_runs import METHOD_LABELS as LABELS, Run, version_name
from experiments.study_stats import (bootstrap, mean_difference, probability_of_improvement, prompt_matrix,
                                     read_scores, win_rate)

ORDER = ("sft", "dpo", "sspo", "spin", "sspo_switch", "sspo_initial_ref", "sspo_ssr_off")
# The last two pairs are descriptive (PLAN.md, fifth addendum): the reference draw without SSR (RCR against
# latest), and the new switch against no switch under RCR.
PAIRS = (("sspo", "dpo"), ("sspo", "spin"), ("sspo", "sft"), ("sspo_switch", "sspo"), ("sspo", "sspo_initial_ref"),
         ("sspo", "sspo_ssr_off"), ("sspo_ssr_off", "spin"), ("sspo_switch", "sspo_ssr_off"))
NON_INFERIORITY_MARGIN = 0.01  # PLAN.md, rule H
ABLATIONS = ("sspo_initial_ref", "sspo_ssr_off")  # planned with --ablation_seeds, the rest with --seeds


def signed(stat, digits=3) -> str:
    return f"{stat['value']:+.{digits}f} [{stat['ci_low']:+.{digits}f}, {stat['ci_high']:+.{digits}f}]"


def plain(stat, digits=3) -> str:
    """A proportion or ratio: no sign."""
    return f"{stat['value']:.{digits}f} [{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"


def table(rows: List[List[str]], header: List[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def load_scores(out: str, regime: str) -> Dict[str, Dict]:
    scores = {}
    for name in ("curve-heldout", "curve-train", "final-heldout", "final-train"):
        path = os.path.join(out, regime, "eval", name)
        if os.path.isfile(os.path.join(path, "scores.jsonl")):
            scores[name] = read_scores(path)
    return scores


def landed(out: str, regime: str, runs: List[Run]) -> Dict[str, List[Run]]:
    """{method: runs that are trained and scored}, the main/ablation/switch runs at the study's β."""
    by_method = {}
    for run in runs:
        if os.path.isfile(os.path.join(out, regime, "runs", run.name, "scored.json")):
            by_method.setdefault(run.method, []).append(run)
    return by_method


def matrix(scores, runs: List[Run], step: int):
    models = [version_name(run.name, step) for run in runs]
    if not runs or any(m not in scores for m in models):
        return None
    return prompt_matrix(scores, models)


def gain_entry(method_matrix, base) -> Dict:
    return {"gain": bootstrap(mean_difference, [method_matrix, base]),
            "gain_captions_fixed": bootstrap(mean_difference, [method_matrix, base], resample_prompts=False),
            "win_rate": bootstrap(win_rate, [method_matrix, base])}


def seed_spread(method_matrix, base, seed: int = 0) -> Dict:
    """Per-seed final gains, their standard deviation and the worst seed."""
    gains = method_matrix.mean(1) - base.mean()
    return {"per_seed": [float(g) for g in gains], "sd": float(gains.std(ddof=1)) if len(gains) > 1 else None,
            "worst": float(gains.min())}


def sd_ratio_key(other: str) -> str:
    """Where rule F's ratio SD(SSPO) / SD(other) is kept in a regime's results; written and read by this name."""
    return f"sd_ratio_sspo_vs_{other}"


def sd_ratio(a, b, base, seed: int = 0) -> Dict:
    """SD(a's per-seed gains) / SD(b's), with a bootstrap CI resampling each method's seeds."""
    ga, gb = a.mean(1) - base.mean(), b.mean(1) - base.mean()
    if len(ga) < 2 or len(gb) < 2 or gb.std(ddof=1) == 0:
        return None
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(2000):
        ra, rb = ga[rng.integers(0, len(ga), len(ga))], gb[rng.integers(0, len(gb), len(gb))]
        if rb.std(ddof=1) > 0:
            ratios.append(ra.std(ddof=1) / rb.std(ddof=1))
    low, high = np.quantile(ratios, [0.025, 0.975])
    return {"value": float(ga.std(ddof=1) / gb.std(ddof=1)), "ci_low": float(low), "ci_high": float(high)}


def training_cpu_seconds(out, regime, runs: List[Run], steps: int) -> List[float]:
    """CPU seconds of each whole run: the trainer's CPU time over the steps its last invocation
    trained, scaled to all ``steps`` (a resumed run's earlier invocations were not measured)."""
    seconds = []
    for run in runs:
        with open(os.path.join(out, regime, "runs", run.name, "timing.json")) as f:
            timing = json.load(f)
        trained = steps - timing.get("resumed_from_step", 0)
        seconds.append(timing["cpu_seconds"] * steps / trained if "cpu_seconds" in timing and trained > 0
                       else float("nan"))
    return seconds


def plot(path, title, series: Dict[str, Dict[int, Dict]], ylabel):
    from experiments.study_report import plot_curves

    plot_curves(path, title, "optimizer step", series, ylabel=ylabel, symlog_below=50, zero_line=True)


def regime_report(args, out: str, regime: str, spec: Dict, runs: List[Run], results: Dict,
                  beta_pairs: Dict[str, List[Run]], replaced: Dict[str, List[Run]]) -> List[str]:
    scores = load_scores(out, regime)
    methods = landed(out, regime, [r for r in runs if r.part != "small_beta"])
    res = results.setdefault(regime, {})
    md = [f"## {regime.capitalize()} regime: {spec['data']}, {spec['steps']} steps", ""]
    if "final-heldout" not in scores or not methods:
        return md + ["No run has landed yet.", ""]
    steps = spec["steps"]
    ordered = [m for m in ORDER if m in methods]
    # Final step, 8 images per caption
    final = {}
    rows = []
    for split in ("heldout", "train"):
        s = scores[f"final-{split}"]
        base = prompt_matrix(s, ["base"])
        final[split] = {"base": base}
        for m in ordered:
            mat = matrix(s, methods[m], steps)
            if mat is None:
                continue
            final[split][m] = mat
            entry = {**gain_entry(mat, base), "seeds": [r.seed for r in methods[m]], **seed_spread(mat, base)}
            res.setdefault("final", {}).setdefault(split, {})[m] = entry
    for m in ordered:
        h = res["final"]["heldout"].get(m)
        t = res["final"].get("train", {}).get(m)
        if not h:
            continue
        seconds = training_cpu_seconds(out, regime, methods[m], steps)
        res.setdefault("compute", {})[m] = {"train_cpu_seconds_mean": float(np.mean(seconds)),
                                            "heldout_gain_per_cpu_hour": h["gain"]["value"] / (np.mean(seconds) / 3600)}
        rows.append([LABELS[m], str(len(h["seeds"])), signed(h["gain"]), signed(h["gain_captions_fixed"]),
                     f"{h['win_rate']['value']:.2f}", signed(t["gain"]) if t else "-",
                     f"{t['gain']['value'] - h['gain']['value']:+.3f}" if t else "-",
                     f"{h['sd']:.3f}" if h["sd"] is not None else "-", f"{h['worst']:+.3f}",
                     f"{np.mean(seconds):.0f}", f"{res['compute'][m]['heldout_gain_per_cpu_hour']:+.3f}"])
    base_reward = final["heldout"]["base"].mean()
    md += [f"Final step ({steps}), {args.final_images} images per caption; base reward {base_reward:.3f} on the 90 "
           "held-out captions. Gains are paired differences from the base; first interval: captions and seeds "
           "resampled; second: captions fixed (seeds resampled within each caption).", "",
           table(rows, ["method", "seeds", "held-out gain", "held-out gain, captions fixed", "win rate",
                        "training-caption gain", "train − held-out", "seed SD", "worst seed",
                        "training CPU-s", "held-out gain per CPU-hour"]), ""]
    # Pairwise differences, final and along the curve
    pair_rows = []
    for a, b in PAIRS:
        if a in final["heldout"] and b in final["heldout"]:
            fa, fb = final["heldout"][a], final["heldout"][b]
            diff = {"difference": bootstrap(mean_difference, [fa, fb]),
                    "difference_captions_fixed": bootstrap(mean_difference, [fa, fb], resample_prompts=False),
                    "p_improvement": bootstrap(probability_of_improvement, [fa, fb])}
            res.setdefault("pairs_final", {})[f"{a} - {b}"] = diff
            pair_rows.append([f"{LABELS[a]} − {LABELS[b]}", signed(diff["difference"]),
                              signed(diff["difference_captions_fixed"]), signed(diff["p_improvement"], 2)])
    if pair_rows:
        md += ["### Pairwise differences at the final step (held-out)", "",
               table(pair_rows, ["pair", "difference", "difference, captions fixed", "P(first better)"]), ""]
    # Curves, 2 images per caption
    curves, gaps = {}, {}
    for split in ("heldout", "train"):
        s = scores.get(f"curve-{split}")
        if s is None:
            continue
        base = prompt_matrix(s, ["base"])
        for m in ordered:
            points = {0: {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}}
            for step in spec["score_steps"]:
                mat = matrix(s, methods[m], step)
                if mat is not None:
                    points[step] = bootstrap(mean_difference, [mat, base])
            curves.setdefault(split, {})[m] = points
    for m in ordered:
        h, t = curves.get("heldout", {}).get(m, {}), curves.get("train", {}).get(m, {})
        gaps[m] = {step: t[step]["value"] - h[step]["value"] for step in h if step in t and step}
    res["curves"] = {split: {m: {str(k): v for k, v in c.items()} for m, c in by.items()} for split, by in curves.items()}
    res["train_minus_heldout"] = {m: {str(k): v for k, v in g.items()} for m, g in gaps.items()}
    curve_rows = []
    for step in spec["score_steps"]:
        row = [str(step)]
        for m in ordered:
            point = curves.get("heldout", {}).get(m, {}).get(step)
            row.append(signed(point) if point else "-")
        curve_rows.append(row)
    md += [f"### Held-out gain along training ({args.curve_images} images per caption)", "",
           table(curve_rows, ["step"] + [LABELS[m] for m in ordered]), ""]
    gap_rows = [[str(step)] + [f"{gaps[m][step]:+.3f}" if step in gaps.get(m, {}) else "-" for m in ordered]
                for step in spec["score_steps"]]
    md += ["### Training-caption gain minus held-out gain (overfitting shows here first)", "",
           table(gap_rows, ["step"] + [LABELS[m] for m in ordered]), ""]
    pair_curve = []
    for a, b in PAIRS:
        row = [f"{LABELS[a]} − {LABELS[b]}"]
        for step in spec["score_steps"]:
            s = scores.get("curve-heldout")
            ma = matrix(s, methods.get(a, []), step) if s else None
            mb = matrix(s, methods.get(b, []), step) if s else None
            row.append(signed(bootstrap(mean_difference, [ma, mb])) if ma is not None and mb is not None else "-")
        if any(c != "-" for c in row[1:]):
            pair_curve.append(row)
    if pair_curve:
        md += [f"### Pairwise held-out differences at each scored step ({args.curve_images} images per caption)", "",
               table(pair_curve, ["pair"] + [str(s) for s in spec["score_steps"]]), ""]
    for split in curves:
        name = f"{regime}_gain_vs_step_{split}.png"
        plot(os.path.join(out, name), f"{regime} regime: gain over the base, {split} captions",
             {LABELS[m]: c for m, c in curves[split].items()}, "reward − base reward (paired)")
        md += [f"![{name}]({name})", ""]
    # experiments/eval_grid.py draws both, its commands in that file's docstring
    for grid, which in ((f"{regime}_grid_heldout.png", "every main method's and the new switch's"),
                        (f"{regime}_grid_heldout_ablations.png", "the base's and the ablations'")):
        if os.path.isfile(os.path.join(out, grid)):
            md += [f"Every 8th held-out caption, first image, {which} seed 1 at the last step "
                   f"(`experiments/eval_grid.py`):", "", f"![{grid}]({grid})", ""]
    md += training_logs(out, regime, methods, ordered, res)
    if regime == "small":
        md += beta_check(args, out, scores, steps, beta_pairs, replaced, res)
    res["_matrices"] = {"final_heldout": final["heldout"]}
    return md


def training_logs(out, regime, methods: Dict[str, List[Run]], ordered: List[str], res: Dict) -> List[str]:
    """Why a variant differs: the share of samples that kept no DPO term (SSR's SFT) and the age of the
    drawn RCR reference, from each run's scored.json, averaged over seeds."""
    rows = []
    for m in ordered:
        logs = []
        for run in methods[m]:
            with open(os.path.join(out, regime, "runs", run.name, "scored.json")) as f:
                logs.append(json.load(f).get("training_log", {}))
        cells = []
        for tag in ("ssr_sft_fraction", "snapshot_age"):
            halves = [log[tag] for log in logs if tag in log]
            cells += [f"{np.mean([h[part] for h in halves]):.2f}" if halves else "-" for part in ("first_half", "second_half")]
        res.setdefault("training_logs", {})[m] = cells
        if any(c != "-" for c in cells):
            rows.append([LABELS[m]] + cells)
    if not rows:
        return []
    return ["### What the trainer logged (mean over seeds)", "",
            table(rows, ["method", "SFT share (no DPO term), 1st half", "2nd half", "reference age in steps, 1st half",
                         "2nd half"]), ""]


def beta_check_outcome(out: str, steps: int, pairs: Dict[str, List[Run]]) -> Dict[str, Dict]:
    """PLAN.md, rule B, for each method whose pair (seed 0 at β, at β_check) is scored: the final
    training-caption reward of each, and whether β_check beats β by more than 0.01 (then the method's
    small-regime runs are redone at β_check). Held-out captions play no part."""
    path = os.path.join(out, "small", "eval", "final-train")
    if not os.path.isfile(os.path.join(path, "scores.jsonl")):
        return {}
    scores, outcome = read_scores(path), {}
    for method, pair in pairs.items():
        mats = [matrix(scores, [run], steps) for run in pair]
        if all(m is not None for m in mats):
            difference = float(mats[1].mean() - mats[0].mean())
            outcome[method] = {"train_reward": [float(m.mean()) for m in mats], "difference": difference,
                               "redo_at_beta_check": difference > 0.01}
    return outcome


def beta_check(args, out, scores, steps: int, pairs: Dict[str, List[Run]], replaced: Dict[str, List[Run]],
               res: Dict) -> List[str]:
    """Rule B's table, and the held-out gain of the runs it replaced (kept in runs/, out of every verdict)."""
    outcome = beta_check_outcome(out, steps, pairs)
    if not outcome:
        return []
    res["beta_check"] = outcome
    rows = [[method.upper(), f"{o['train_reward'][0]:.3f}", f"{o['train_reward'][1]:.3f}", f"{o['difference']:+.3f}",
             f"yes: rerun at β {args.beta_check:g}" if o["redo_at_beta_check"] else "no"] for method, o in outcome.items()]
    md = ["### β check (rule B): final training-caption reward, seed 0", "",
          table(rows, ["method", f"β {args.beta:g}", f"β {args.beta_check:g}", "difference", "rule B fires"]), ""]
    base = prompt_matrix(scores["final-heldout"], ["base"])
    for method, runs in replaced.items():
        runs = landed(out, "small", runs).get(method, [])
        mat = matrix(scores["final-heldout"], runs, steps)
        if mat is not None:
            gain = bootstrap(mean_difference, [mat, base])
            res.setdefault("replaced_by_rule_b", {})[method] = {"seeds": [r.seed for r in runs], "gain": gain}
            md += [f"Rule B redid {LABELS[method]} at β {args.beta_check:g}: every table and verdict above uses those "
                   f"runs. Its {len(runs)} runs at β {args.beta:g} stay in `runs/` "
                   f"({', '.join(r.name for r in runs)}); their final held-out gain was {signed(gain)}.", ""]
    return md


def verdicts(results: Dict, ssr: Dict) -> List[List[str]]:
    """PLAN.md's rules E-H and A, applied to what has landed. A verdict read before every planned seed of
    its methods has landed says so: "(provisional: full 1 of 5 seeds)"."""
    def pair(regime, name):
        return results.get(regime, {}).get("pairs_final", {}).get(name, {}).get("difference")

    def three_way(stat, supported, refuted):
        if stat is None:
            return "not measured yet"
        return "supported" if supported(stat) else "refuted" if refuted(stat) else "undecided"

    rows, scopes = [], []  # scopes: the (regime, methods) each row's verdict reads
    for label, comparator in (("latest (SPIN-like)", "spin"), ("initial", "sspo_initial_ref")):
        d = pair("small", f"sspo - {comparator}")
        rows.append([f"A. RCR mitigates overfitting (against {label}), small regime",
                     three_way(d, lambda s: s["ci_low"] > 0, lambda s: s["ci_high"] < 0), signed(d) if d else "-"])
        scopes.append([("small", ("sspo", comparator))])
    if ssr:
        paper, always = ssr["ssr (paper)"]["agreement"], ssr["always DPO"]["agreement"]
        verdict = ("supported" if paper["ci_low"] > max(0.5, always["value"]) else
                   "refuted" if paper["ci_high"] < 0.5 or paper["ci_high"] < always["value"] else "undecided")
        rows.append(["E. SSR switches correctly (offline agreement with the true reward)", verdict,
                     f"{plain(paper, 2)} vs always-DPO {always['value']:.2f}"])
    else:
        rows.append(["E. SSR switches correctly", "not measured yet", "-"])
    scopes.append([])
    ratio = results.get("small", {}).get(sd_ratio_key("sspo_ssr_off"))
    rows.append(["F. SSR stabilises training (seed SD, SSPO / SSR off), small regime",
                 three_way(ratio, lambda s: s["ci_high"] < 1, lambda s: s["ci_low"] > 1), plain(ratio, 2) if ratio else "-"])
    scopes.append([("small", ("sspo", "sspo_ssr_off"))])
    for regime in ("small", "full"):  # PLAN.md, rule F: also against SPIN-like, in both regimes
        ratio = results.get(regime, {}).get(sd_ratio_key("spin"))
        if ratio:
            rows.append([f"F. SSR stabilises training (seed SD, SSPO / SPIN-like), {regime} regime",
                         three_way(ratio, lambda s: s["ci_high"] < 1, lambda s: s["ci_low"] > 1), plain(ratio, 2)])
            scopes.append([(regime, ("sspo", "spin"))])
    sft = [pair(r, "sspo - sft") for r in ("small", "full")]
    rows.append(["G. SSPO beats SFT", "not measured yet" if all(d is None for d in sft) else
                 "refuted" if any(d and d["ci_high"] < 0 for d in sft) else
                 "supported" if all(d and d["ci_low"] > 0 for d in sft) else
                 "undecided (" + ", ".join(r for r, d in zip(("small", "full"), sft) if d and d["ci_low"] > 0) + " supported)"
                 if any(d and d["ci_low"] > 0 for d in sft) else "undecided",
                 "; ".join(f"{r}: {signed(d)}" for r, d in zip(("small", "full"), sft) if d)])
    scopes.append([(r, ("sspo", "sft")) for r in ("small", "full")])
    dpo = [pair(r, "sspo - dpo") for r in ("small", "full")]
    rows.append([f"H. SSPO matches or beats DPO without losers (margin {NON_INFERIORITY_MARGIN})",
                 "not measured yet" if all(d is None for d in dpo) else
                 "refuted" if any(d and d["ci_high"] < 0 for d in dpo) else
                 "supported" if all(d and d["ci_low"] > -NON_INFERIORITY_MARGIN for d in dpo) else "undecided",
                 "; ".join(f"{r}: {signed(d)}" for r, d in zip(("small", "full"), dpo) if d)])
    scopes.append([(r, ("sspo", "dpo")) for r in ("small", "full")])
    new = [pair(r, "sspo_switch - sspo") for r in ("small", "full")]
    rows.append(["D. The new switch beats the paper's SSR (becomes the default)",
                 "not measured yet" if all(d is None for d in new) else
                 "supported" if any(d and d["ci_low"] > 0 for d in new) and not any(d and d["ci_high"] < 0 for d in new)
                 else "refuted" if any(d and d["ci_high"] < 0 for d in new) else "undecided",
                 "; ".join(f"{r}: {signed(d)}" for r, d in zip(("small", "full"), new) if d)])
    scopes.append([(r, ("sspo", "sspo_switch")) for r in ("small", "full")])
    for row, scope in zip(rows, scopes):
        if row[1] != "not measured yet":
            row[1] += provisional(results, scope)
    return rows


def provisional(results: Dict, scope: List[tuple]) -> str:
    """" (provisional: …)" when a regime in ``scope`` holds fewer seeds of its methods than planned."""
    settings = results.get("settings", {})
    short = []
    for regime, methods in scope:
        planned = min(settings.get("ablation_seeds", 3) if m in ABLATIONS else settings.get("seeds", 5) for m in methods)
        have = min(len(results.get(regime, {}).get("final", {}).get("heldout", {}).get(m, {}).get("seeds", []))
                   for m in methods)
        if have < planned:
            short.append(f"{regime} {have} of {planned} seeds")
    return f" (provisional: {', '.join(short)})" if short else ""


def readme_tables(results: Dict, regimes: Dict[str, Dict], verdict_rows: List[List[str]]) -> str:
    """The README's "Does it work?" tables, verbatim: one row per method and regime that has landed, with
    its held-out gain at the quickstart's 100 steps and at the last step, its seed SD and worst seed; then
    the verdicts. tests/test_decisive_study.py checks that the README holds them as written here."""
    rows = []
    for regime, spec in regimes.items():
        res = results.get(regime, {})
        for m, entry in res.get("final", {}).get("heldout", {}).items():
            early = res.get("curves", {}).get("heldout", {}).get(m, {}).get("100")
            rows.append([f"{regime}, {spec['steps']:,} steps", LABELS[m], str(len(entry["seeds"])),
                         signed(early) if early else "-", signed(entry["gain"]),
                         f"{entry['sd']:.3f}" if entry["sd"] is not None else "-", f"{entry['worst']:+.3f}"])
    md = [table(rows, ["regime", "method", "seeds", "held-out gain, 100 steps", "held-out gain, last step",
                       "seed SD", "worst seed"]), ""] if rows else []
    md += [table(verdict_rows, ["claim", "verdict", "the numbers that decide it"]), ""]
    return "\n".join(md)


def write_report(args, jobs: List[tuple], regimes: Dict[str, Dict], beta_pairs: Dict[str, List[Run]],
                 replaced: Dict[str, List[Run]]):
    out = args.output_dir
    results = {"settings": {k: v for k, v in vars(args).items()}}
    md = ["# The decisive study: do RCR and SSR help?", "",
          "Plan, power estimate and decision rules, written before the runs: [PLAN.md](PLAN.md). Every number is the "
          "shapes world's exact reward. Runs land over several sessions; each table says how many seeds it holds. "
          "Why the methods differ: [docs/evaluation.md](../../../docs/evaluation.md#the-decisive-study-why-the-methods-differ-small-regime).", ""]
    if args.quick:
        md[1:1] = ["", "**A `--quick` run: a few steps of every phase, to check that the study runs. Its numbers mean "
                       "nothing.**"]
    for regime, spec in regimes.items():
        runs = [run for r, run in jobs if r == regime]
        md += regime_report(args, out, regime, spec, runs, results, beta_pairs, replaced)
        matrices = results.get(regime, {}).pop("_matrices", {}).get("final_heldout", {})
        for other in ("sspo_ssr_off", "spin"):
            if "sspo" in matrices and other in matrices:
                results[regime][sd_ratio_key(other)] = sd_ratio(matrices["sspo"], matrices[other], matrices["base"])
    ssr_path = os.path.join(out, "ssr_candidates.json")
    ssr = None
    if os.path.isfile(ssr_path):
        with open(ssr_path) as f:
            agreement = json.load(f)
        ssr = agreement.get("candidates")
        md += ["## SSR's switch and the candidates, offline on training captions (rule C)", "",
               agreement["summary_markdown"], ""]
    md += ["## Verdicts (PLAN.md's rules)", "",
           table(verdicts(results, ssr), ["claim", "verdict", "the numbers that decide it"]), ""]
    results["verdicts"] = verdicts(results, ssr)
    with open(os.path.join(out, "readme_tables.md"), "w") as f:
        f.write(readme_tables(results, regimes, results["verdicts"]))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"report: {os.path.join(out, 'report.md')}", flush=True)
    return results
