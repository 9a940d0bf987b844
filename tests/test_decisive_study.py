"""The decisive study (experiments/decisive_study.py): its plan follows the issue's priorities, its runs
are valid trainer commands on the regime's data, the small regime's subset is fixed, the candidate
switches decide as PLAN.md defines them, and rule C chooses as written."""

import json
import os

import numpy as np
import pytest

from experiments import decisive_study as study
from experiments import ssr_agreement, study_runs, study_stats


def test_plan_puts_the_small_main_methods_first_and_every_seed_before_the_next():
    args = study.parse_args(["--output_dir", "unused"])
    jobs = study.plan(args)
    first = jobs[:4 * args.seeds]
    assert {regime for regime, _ in first} == {"small"}
    assert {run.method for _, run in first} == set(study.MAIN_METHODS)
    assert [run.seed for _, run in first] == [s for s in range(args.seeds) for _ in study.MAIN_METHODS]
    phases = [run.part for _, run in jobs]
    # the issue's priorities: small main methods, the new switch (both regimes), the full regime, the ablations
    assert phases.index("small_main") < phases.index("small_switch") < phases.index("full_switch") < phases.index("full_main")
    assert phases[-1] == "small_ablations"
    names = [(regime, run.name) for regime, run in jobs]
    assert len(names) == len(set(names))
    # every method the trainers' flags name is trained, except the v1 flip, which only the 100-step study ran
    assert {run.method for _, run in jobs} == set(study_runs.METHOD_FLAGS) - {"sspo_flip"}


def write_final_train_scores(out, rewards):
    """A small regime's final-train scores.jsonl: {model: reward} on two captions."""
    path = out / "small" / "eval" / "final-train"
    path.mkdir(parents=True)
    rows = [{"model": model, "prompt_index": i, "image_index": 0, "prompt_id": f"{i:05d}", "path": "x",
             "scores": {"shapes_reward": value}} for model, value in rewards.items() for i in range(2)]
    (path / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("dpo_at_check, fires", [(0.511, True), (0.509, False)])
def test_rule_b_redoes_a_methods_small_runs_at_the_check_beta_only_when_it_wins_by_more_than_001(
        tmp_path, dpo_at_check, fires):
    args = study.parse_args(["--output_dir", str(tmp_path)])
    assert all(run.beta in (None, args.beta) for _, run in study.plan(args) if run.part == "small_main")  # unscored
    write_final_train_scores(tmp_path, {"base": 0.4, "dpo_b500_seed0-step1600": 0.5,
                                        "dpo_b2000_seed0-step1600": dpo_at_check,
                                        "sspo_b500_seed0-step1600": 0.6, "sspo_b2000_seed0-step1600": 0.7})
    jobs = study.plan(args)
    names = [(regime, run.name) for regime, run in jobs]
    assert len(names) == len(set(names))  # the redo's seed 0 is the β check's run, planned once
    small = {(run.method, run.seed): run for regime, run in jobs if run.part == "small_main"}
    assert small[("sspo", 3)].beta == args.beta_check  # SSPO: +0.1 on training captions
    assert small[("dpo", 3)].beta == (args.beta_check if fires else args.beta)
    assert small[("sft", 3)].beta is None
    assert all(run.beta == args.beta for regime, run in jobs if regime == "full" and run.method != "sft")
    assert [r.name for r in study.replaced_by_rule_b(args).get("dpo", [])] == (
        [f"dpo_b500_seed{s}" for s in range(args.seeds)] if fires else [])


def test_a_verdict_read_before_every_planned_seed_landed_says_it_is_provisional():
    from experiments import decisive_report

    def entry(seeds):
        return {"seeds": list(range(seeds))}

    results = {"settings": {"seeds": 5, "ablation_seeds": 3},
               "small": {"final": {"heldout": {"sspo": entry(5), "sft": entry(5), "sspo_ssr_off": entry(3)}}},
               "full": {"final": {"heldout": {"sspo": entry(2), "sft": entry(1)}}}}
    assert decisive_report.provisional(results, [("small", ("sspo", "sft"))]) == ""
    assert decisive_report.provisional(results, [("small", ("sspo", "sspo_ssr_off"))]) == ""
    assert decisive_report.provisional(results, [(r, ("sspo", "sft")) for r in ("small", "full")]) == \
        " (provisional: full 1 of 5 seeds)"
    assert decisive_report.provisional(results, [("full", ("sspo", "dpo"))]) == " (provisional: full 0 of 5 seeds)"


def test_rule_f_reads_the_seed_sd_ratios_the_report_writes():
    """Rule F's rows read the ratios under the names the report stores them by: SSPO's seeds vary less than
    SSR off's here, and as much as SPIN-like's."""
    from experiments import decisive_report

    rng = np.random.default_rng(0)
    base = rng.random((90, 8))
    steady = np.stack([base.mean(1) + 0.01 * k for k in range(5)])  # per-seed gains 0.00..0.04
    shaky = np.stack([base.mean(1) + 0.2 * k for k in range(3)])
    matrices = {"sspo": steady, "sspo_ssr_off": shaky, "spin": steady, "base": base}
    results = {"settings": {"seeds": 5, "ablation_seeds": 3}, "small": {"final": {"heldout": {
        "sspo": {"seeds": list(range(5))}, "sspo_ssr_off": {"seeds": list(range(3))}, "spin": {"seeds": list(range(5))}}}}}
    for other in ("sspo_ssr_off", "spin"):
        results["small"][decisive_report.sd_ratio_key(other)] = decisive_report.sd_ratio(
            matrices["sspo"], matrices[other], matrices["base"])
    rows = {row[0]: row[1] for row in decisive_report.verdicts(results, None)}
    assert rows["F. SSR stabilises training (seed SD, SSPO / SSR off), small regime"] == "supported"
    assert rows["F. SSR stabilises training (seed SD, SSPO / SPIN-like), small regime"] == "undecided"


def test_every_run_is_a_valid_trainer_command_on_its_regime(tmp_path):
    import train_sspo_sd15

    args = study.parse_args(["--output_dir", str(tmp_path)])
    for regime, run in study.plan(args):
        rargs = study.regime_args(args, regime)
        parsed = train_sspo_sd15.parse_args(study_runs.train_command(rargs, run)[2:])
        assert parsed.dataset_name == study.REGIMES[regime]["data"]
        assert parsed.max_train_steps == study.REGIMES[regime]["steps"]
        assert study.REGIMES[regime]["steps"] in study.REGIMES[regime]["score_steps"]
        assert all(step % parsed.checkpointing_steps == 0 for step in study.REGIMES[regime]["score_steps"])
        if run.method != "sft":
            assert parsed.beta_dpo == (args.beta_check if run.part == "small_beta" else args.beta)


def test_the_small_regime_subset_is_the_shipped_one_and_independent_of_training_seeds():
    """The subset is chosen by SUBSET_SEED from the shipped data: re-deriving it gives the same rows."""
    import random

    import datasets

    meta = json.load(open(os.path.join(study.REPO_ROOT, study.REGIMES["small"]["data"], "preferences.json")))
    assert meta["subset_seed"] == study.SUBSET_SEED
    rows = datasets.load_dataset(os.path.join(study.REPO_ROOT, study.REGIMES["full"]["data"]), split="train")
    decided = [i for i, label in enumerate(rows["label_0"]) if label in (0, 1)]
    assert sorted(random.Random(study.SUBSET_SEED).sample(decided, meta["winners"])) == meta["rows_of_source"]
    subset = datasets.load_dataset(os.path.join(study.REPO_ROOT, study.REGIMES["small"]["data"]), split="train")
    assert subset["caption"] == [rows[i]["caption"] for i in meta["rows_of_source"]]
    assert all(label in (0, 1) for label in subset["label_0"])
    with open(os.path.join(study.REPO_ROOT, study.REGIMES["small"]["train_prompts"])) as f:
        assert f.read().split("\n")[:-1] == subset["caption"]


def test_prepare_data_refuses_to_redraw_the_subset():
    with pytest.raises(SystemExit, match="chosen once"):
        study.prepare_data()


def record(model_w, ref_w, model_s=1.0, ref_s=1.0, init_w=1.0, reward_ref=0.5, reward_policy=0.4):
    return {"model_err_w": model_w, "ref_err_w": ref_w, "model_err_s": model_s, "ref_err_s": ref_s,
            "init_err_w": init_w, "reward_reference": reward_ref, "reward_policy": reward_policy}


def test_candidate_switches_decide_as_plan_defines():
    decide = {name: fn for name, (fn, _) in ssr_agreement.CANDIDATES.items()}
    # the paper's SSR reads the first draw only; avg reads the mean of all draws
    r = record([0.6, 0.1, 0.1, 0.1], [0.5, 0.5, 0.5, 0.5])
    assert decide["ssr (paper)"](r) and not decide["avg"](r)
    # margin: the mean must exceed its standard error
    noisy = record([0.52, 0.30, 0.70, 0.50], [0.5, 0.5, 0.5, 0.5])  # mean +0.005, large spread
    steady = record([0.52, 0.53, 0.51, 0.52], [0.5, 0.5, 0.5, 0.5])
    assert decide["avg"](noisy) and not decide["margin"](noisy) and decide["margin"](steady)
    assert decide["self_sample"](record([0.5] * 4, [0.5] * 4, model_s=0.2, ref_s=0.3))
    assert not decide["self_sample"](record([0.5] * 4, [0.5] * 4, model_s=0.4, ref_s=0.3))
    assert decide["winner_preserving"](record([0.5] * 4, [0.9] * 4, init_w=0.4))
    assert not decide["winner_preserving"](record([0.5] * 4, [0.1] * 4, init_w=0.6))


def test_candidate_agreement_counts_ties_as_half_and_rule_c_prefers_the_cheapest_within_001():
    # reference sample better in the first two records (SFT right), worse in the third (DPO right), a tie last
    records = [record([0.6] * 4, [0.5] * 4, reward_ref=0.9, reward_policy=0.1),
               record([0.6] * 4, [0.5] * 4, reward_ref=0.9, reward_policy=0.1),
               record([0.4] * 4, [0.5] * 4, reward_ref=0.1, reward_policy=0.9),
               record([0.4] * 4, [0.5] * 4, reward_ref=0.5, reward_policy=0.5)]
    scored = ssr_agreement.score_candidates(records)
    assert scored["ssr (paper)"]["agreement"]["value"] == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert scored["always DPO"]["agreement"]["value"] == pytest.approx((0 + 0 + 1 + 0.5) / 4)
    fake = {name: {"agreement": {"value": v}, "extra_unet_forwards": cost} for name, v, cost in
            (("ssr (paper)", 0.9, 0), ("avg", 0.70, 6), ("margin", 0.695, 6), ("self_sample", 0.62, 0),
             ("winner_preserving", 0.691, 1))}
    assert ssr_agreement.choose_switch(fake) == "winner_preserving"
    fake["winner_preserving"]["agreement"]["value"] = 0.5
    assert ssr_agreement.choose_switch(fake) == "avg"


def test_the_trainers_self_sample_mode_decides_as_the_offline_candidate():
    """The chosen switch ships as ``--ssr self_sample``: its SFT decisions equal rule C's candidate's."""
    import torch

    from sspo_utils import sspo_loss

    rng = np.random.default_rng(0)
    records = [record(list(rng.uniform(0, 1, 4)), list(rng.uniform(0, 1, 4)), model_s=float(rng.uniform(0, 1)),
                      ref_s=float(rng.uniform(0, 1))) for _ in range(64)]
    records.append(record([0.5] * 4, [0.5] * 4, model_s=0.3, ref_s=0.3))  # a tie on x^s
    decide, _ = ssr_agreement.CANDIDATES["self_sample"]
    column = lambda key: torch.tensor([r[key] if np.isscalar(r[key]) else r[key][0] for r in records])  # noqa: E731
    _, info = sspo_loss(column("model_err_w"), column("model_err_s"), column("ref_err_w"), column("ref_err_s"),
                        1.0, "self_sample")
    assert (info["ssr_indicator"] == 0).tolist() == [bool(decide(r)) for r in records]
    assert 0 < float(info["ssr_sft_fraction"]) < 1


def test_scores_of_earlier_calls_are_kept_and_a_drifting_base_is_refused(tmp_path):
    def row(model, i, value):
        return {"model": model, "prompt_index": i, "image_index": 0, "prompt_id": f"{i:05d}", "path": "x",
                "scores": {"shapes_reward": value}}

    path = tmp_path / "scores.jsonl"
    earlier = [row("base", 0, 0.5), row("old_run", 0, 0.7), row("new_run", 0, 0.1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in [row("base", 0, 0.5), row("new_run", 0, 0.6)]))
    study.keep_earlier_scores(str(path), earlier)
    merged = study.read_jsonl(str(path))
    assert sorted((r["model"], r["scores"]["shapes_reward"]) for r in merged) == [
        ("base", 0.5), ("new_run", 0.6), ("old_run", 0.7)]  # a rescored model takes its new rows
    path.write_text(json.dumps(row("base", 0, 0.51)) + "\n")
    with pytest.raises(RuntimeError, match="not reproducible"):
        study.keep_earlier_scores(str(path), earlier)


def test_a_base_redrawn_with_a_few_pixels_off_merges_but_a_moved_base_mean_does_not(tmp_path):
    def row(model, i, value):
        return {"model": model, "prompt_index": i, "image_index": 0, "scores": {"shapes_reward": value}}

    path = tmp_path / "scores.jsonl"
    earlier = [row("base", i, 0.5) for i in range(720)] + [row("old_run", 0, 0.7)]
    redrawn = [row("base", i, 0.5 + (2.6e-4 if i == 7 else 0.0)) for i in range(720)]  # as on a fresh machine
    path.write_text("".join(json.dumps(r) + "\n" for r in redrawn))
    study.keep_earlier_scores(str(path), earlier)
    assert {r["model"] for r in study.read_jsonl(str(path))} == {"base", "old_run"}
    shifted = [row("base", i, 0.5 + 2e-4) for i in range(720)]  # every image moved the same way
    path.write_text("".join(json.dumps(r) + "\n" for r in shifted))
    with pytest.raises(RuntimeError, match="mean shapes_reward moved by \\+2.00e-04"):
        study.keep_earlier_scores(str(path), earlier)


def test_a_failed_merge_loses_no_earlier_scores_and_the_next_call_recovers_them(tmp_path, monkeypatch):
    def row(model, value):
        return {"model": model, "prompt_index": 0, "image_index": 0, "scores": {"shapes_reward": value}}

    args = study.parse_args(["--output_dir", str(tmp_path)])
    scores_path = tmp_path / "full" / "eval" / "final-heldout" / "scores.jsonl"
    scores_path.parent.mkdir(parents=True)
    scores_path.write_text("".join(json.dumps(r) + "\n" for r in [row("base", 0.5), row("old_run", 0.7)]))
    base_off = {"final-heldout": True}  # the first call's base is off in that folder: its merge there fails

    def evaluate(rargs, runs, split, prompts, images, name, versions):  # writes its own models only, as evaluate_sspo.py
        path = os.path.join(rargs.output_dir, "eval", name, "scores.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        rows = [row("base", 0.9 if base_off.get(name) else 0.5)] + [row(m, 0.6) for m in versions]
        open(path, "w").write("".join(json.dumps(r) + "\n" for r in rows))

    monkeypatch.setattr("experiments.study_runs.evaluate", evaluate)
    run = study.make_run("sspo", 2, 500.0, "full_main")
    with pytest.raises(RuntimeError, match="not reproducible"):
        study.score(args, "full", [run])
    assert "old_run" in {r["model"] for r in study.read_jsonl(str(scores_path) + study.EARLIER_SUFFIX)}
    base_off.clear()
    study.score(args, "full", [run])
    models = {r["model"] for r in study.read_jsonl(str(scores_path))}
    assert {"base", "old_run", study.version_name(run.name, 800)} <= models
    assert not os.path.exists(str(scores_path) + study.EARLIER_SUFFIX)


def test_a_run_whose_checkpoints_were_lost_before_scoring_is_trained_again_and_a_scored_one_is_not(tmp_path, monkeypatch):
    args = study.parse_args(["--output_dir", str(tmp_path)])
    trained, scored = [], []
    monkeypatch.setattr(study, "train", lambda rargs, run: trained.append(run.name))
    monkeypatch.setattr(study, "score", lambda args, regime, runs: scored.extend(r.name for r in runs))
    monkeypatch.setattr(study, "training_log_summary", lambda args, regime, run: {})
    lost, landed, intact = (study.make_run("sspo", seed, 500.0, "full_main") for seed in (0, 1, 2))
    for run in (lost, landed, intact):
        out = study.run_dir(study.regime_args(args, "full"), run)
        os.makedirs(out)
        open(os.path.join(out, "timing.json"), "w").write("{}")  # trained, as git keeps it
    open(study.scored_marker(args, "full", landed), "w").write("{}")
    open(os.path.join(study.run_dir(study.regime_args(args, "full"), intact), study.LORA_WEIGHT_NAME), "w").close()
    for run in (lost, landed, intact):
        study.do_job(args, "full", run)
    assert trained == [lost.name]  # the landed run keeps its scores; the intact one is scored as it is
    assert scored == [lost.name, intact.name]


def test_captions_fixed_interval_is_narrower_when_captions_vary_more_than_seeds():
    rng = np.random.default_rng(0)
    caption_effect = rng.normal(0, 0.1, 90)
    method = 0.02 + caption_effect + rng.normal(0, 0.005, (5, 90))
    base = np.zeros((1, 90))
    wide = study_stats.bootstrap(study_stats.mean_difference, [method, base])
    narrow = study_stats.bootstrap(study_stats.mean_difference, [method, base], resample_prompts=False)
    assert narrow["ci_high"] - narrow["ci_low"] < (wide["ci_high"] - wide["ci_low"]) / 3
    assert narrow["ci_low"] <= narrow["value"] <= narrow["ci_high"]


@pytest.mark.slow
def test_quick_decisive_study_runs_every_phase_and_writes_its_report(tmp_path):
    """Every phase for a few steps, rule C's offline test and the report; the numbers mean nothing."""
    import subprocess
    import sys

    out = tmp_path / "quick"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    for extra in ([], ["--choose_switch"]):
        result = subprocess.run([sys.executable, os.path.join("experiments", "decisive_study.py"), "--quick",
                                 "--output_dir", str(out), *extra], cwd=study.REPO_ROOT, capture_output=True,
                                text=True, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert {"small", "full", "verdicts"} <= set(results)
    assert set(results["small"]["final"]["heldout"]) >= {"sspo", "dpo", "sft", "spin"}
    report = (out / "report.md").read_text()
    assert "numbers mean nothing" in report and "Verdicts" in report and "candidate switch" in report
    readme_tables = (out / "readme_tables.md").read_text()
    assert "| small, " in readme_tables and "| G. SSPO beats SFT |" in readme_tables
    timing = json.loads((out / "small" / "runs" / "sspo_b500_seed0" / "timing.json").read_text())
    assert timing["command"][:2] == ["python", "train_sspo_sd15.py"]


def test_training_log_summary_reads_the_trainers_tensorboard_scalars_by_half(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    args = study.parse_args(["--output_dir", str(tmp_path)])
    run = study.make_run("sspo", 0, args.beta, "small_main")
    writer = SummaryWriter(os.path.join(study_runs.run_dir(study.regime_args(args, "small"), run), "logs", "sspo"))
    for step in range(1, 5):
        writer.add_scalar("ssr_sft_fraction", 1.0 if step <= 2 else 0.0, step)
        writer.add_scalar("snapshot_age", float(step), step)
    writer.close()
    summary = study.training_log_summary(args, "small", run)
    assert summary["ssr_sft_fraction"] == {"first_half": 1.0, "second_half": 0.0}
    assert summary["snapshot_age"] == {"first_half": 1.5, "second_half": 3.5}


def test_the_readme_shows_the_decisive_study_tables_as_the_report_wrote_them():
    """README.md's "Does it work?" tables are readme_tables.md of the committed report, verbatim."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md")) as f:
        readme = f.read()
    block = readme.split("<!-- decisive-tables -->\n", 1)[1].split("\n<!-- /decisive-tables -->", 1)[0]
    with open(os.path.join(root, "experiments", "results", "2026-12-04-decisive-study", "readme_tables.md")) as f:
        assert block == f.read().strip()


def test_readme_tables_have_one_row_per_landed_method_and_regime_and_the_verdicts():
    from experiments import decisive_report

    stat = {"value": 0.05, "ci_low": 0.01, "ci_high": 0.09}
    entry = {"gain": {"value": -0.04, "ci_low": -0.08, "ci_high": -0.003}, "seeds": [0, 1, 2], "sd": 0.011,
             "worst": -0.048}
    results = {"small": {"final": {"heldout": {"sspo": entry, "sft": dict(entry, sd=None)}},
                         "curves": {"heldout": {"sspo": {"100": stat}}}}, "full": {}}
    text = decisive_report.readme_tables(results, study.REGIMES, [["G. SSPO beats SFT", "undecided", "-"]])
    lines = text.splitlines()
    assert lines[2] == "| small, 1,600 steps | SSPO (RCR + SSR) | 3 | +0.050 [+0.010, +0.090] | -0.040 [-0.080, -0.003] | 0.011 | -0.048 |"
    assert lines[3].startswith("| small, 1,600 steps | SFT on winners | 3 | - |") and lines[3].endswith("| - | -0.048 |")
    assert not any(line.startswith("| full") for line in lines)
    assert "| G. SSPO beats SFT | undecided | - |" in lines
