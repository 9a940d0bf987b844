"""The study runner (experiments/shapes_alignment.py): the runs it launches are valid commands of the
project's own trainers, settings shared between parts make one run, and its statistics are right."""

import numpy as np
import pytest

from experiments import shapes_alignment as study
from experiments import study_runs, study_stats


def test_every_launched_command_parses_with_the_real_trainers(tmp_path):
    import train_sspo_animatediff
    import train_sspo_sd15

    (tmp_path / "ChronoMagic_train.csv").write_text("videoid,name,is_transmit\n")
    (tmp_path / "videos").mkdir()
    args = study.parse_args(["--output_dir", str(tmp_path), "--video_data", str(tmp_path)])
    betas = {"dpo": {"beta": 500.0}, "sspo": {"beta": 2000.0}}
    parts = study.study_runs(args, betas)
    runs = study.unique(study.beta_runs(args) + [run for runs in parts.values() for run in runs])
    for run in runs:
        command = study_runs.train_command(args, run)
        trainer = train_sspo_animatediff if run.video else train_sspo_sd15
        parsed = trainer.parse_args(command[2:])
        assert parsed.seed == run.seed and parsed.max_train_steps == (args.video_steps if run.video else args.max_train_steps)
        assert parsed.learning_rate == args.learning_rate and parsed.train_batch_size == args.train_batch_size
        if run.video:
            assert parsed.train_target == args.video_train_target == "lora"  # the README video quickstart's
        if run.method != "sft":
            assert parsed.beta_dpo == run.beta
        if run.method == "spin":
            assert (parsed.reference_strategy, parsed.ssr) == ("latest", "off")
        if run.method == "sspo":
            assert (parsed.reference_strategy, parsed.ssr) == ("uniform", "sft")


def test_same_settings_in_two_parts_are_one_run(tmp_path):
    args = study.parse_args(["--output_dir", str(tmp_path), "--snapshot_sweep", "7", "20", "60",
                             "--sampling_sweep", "4", "10", "20"])
    parts = study.study_runs(args, {"dpo": {"beta": 500.0}, "sspo": {"beta": 2000.0}})
    main_sspo = [r.name for r in parts["main"] if r.method == "sspo" and r.seed == 0]
    assert main_sspo[0] in [r.name for r in parts["snapshots"]]
    assert main_sspo[0] in [r.name for r in parts["sampling"]]
    assert len(parts["main"]) == 3 * 4 and len({r.name for r in parts["main"]}) == 12
    sweep = study.beta_runs(args)
    assert "sspo_b2000_seed0" in [r.name for r in sweep] and "dpo_b500_seed0" in [r.name for r in sweep]


def test_ssr_test_reads_the_main_sspo_runs_or_else_the_default_sspo_run_of_another_part(tmp_path):
    betas = {"dpo": {"beta": 2000.0}, "sspo": {"beta": 2000.0}}
    args = study.parse_args(["--output_dir", str(tmp_path), "--beta_sweep", "2000"])
    parts = study.study_runs(args, betas)
    image_runs = study.unique(study.beta_runs(args) + [r for n, rs in parts.items() if n != "video" for r in rs])
    chosen = study.ssr_test_runs(args, parts, image_runs, betas)
    assert sorted(r.name for r in chosen) == [f"sspo_b2000_seed{s}" for s in range(3)]
    args = study.parse_args(["--output_dir", str(tmp_path), "--beta_sweep", "2000", "--parts", "ablations", "snapshots"])
    parts = study.study_runs(args, betas)
    image_runs = study.unique(study.beta_runs(args) + [r for rs in parts.values() for r in rs])
    # not the ablations (other losses) nor the snapshot sweep's other settings: only the default run
    assert [r.name for r in study.ssr_test_runs(args, parts, image_runs, betas)] == ["sspo_b2000_seed0"]
    args = study.parse_args(["--output_dir", str(tmp_path), "--beta_sweep", "2000", "--parts", "ablations"])
    parts = study.study_runs(args, betas)
    assert study.ssr_test_runs(args, parts, [r for rs in parts.values() for r in rs], betas) == []


def test_probability_of_improvement_and_win_rate():
    low, high = np.zeros((3, 5)), np.ones((3, 5))
    assert study_stats.probability_of_improvement(high, low) == 1.0
    assert study_stats.probability_of_improvement(low, high) == 0.0
    assert study_stats.probability_of_improvement(low, low) == 0.5
    method = np.array([[1.0, 0.0, 0.5, 0.2]])
    base = np.array([[0.5, 0.5, 0.5, 0.5]])
    assert study_stats.win_rate(method, base) == pytest.approx((1 + 0 + 0.5 + 0) / 4)


def test_bootstrap_interval_covers_the_value_and_narrows_with_data():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.5, 0.1, (2, 8)), rng.normal(0.5, 0.1, (4, 64))
    a, b = study_stats.bootstrap(study_stats.mean_reward, [small]), study_stats.bootstrap(study_stats.mean_reward, [large])
    for stat in (a, b):
        assert stat["ci_low"] <= stat["value"] <= stat["ci_high"]
    assert b["ci_high"] - b["ci_low"] < a["ci_high"] - a["ci_low"]


def test_quick_shrinks_every_part_but_keeps_them_all(tmp_path):
    args = study.parse_args(["--output_dir", str(tmp_path), "--quick"])
    assert args.seeds == 1 and args.max_train_steps < 10 and args.num_prompts == 2
    parts = study.study_runs(args, {"dpo": {"beta": 500.0}, "sspo": {"beta": 2000.0}})
    assert set(parts) == {"main", "ablations", "snapshots", "sampling", "video"}
    methods = {run.method for runs in parts.values() for run in runs}
    # the new switch came after this study; the decisive study trains it (tests/test_decisive_study.py)
    assert methods == set(study_runs.METHOD_FLAGS) - {"sspo_switch"}
    # the sweeps reuse the main SSPO run (no extra process starts), but their tables are still written
    main_sspo = {run.name for run in parts["main"] if run.method == "sspo"}
    assert {run.name for run in parts["snapshots"] + parts["sampling"]} == main_sspo


@pytest.mark.slow
def test_quick_study_runs_end_to_end_and_writes_its_report(tmp_path):
    """What CI runs: every part for a few steps, then the report. It checks that the study runs and
    writes every output, not what the numbers say."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "quick"
    result = subprocess.run([sys.executable, os.path.join(study_runs.REPO_ROOT, "experiments", "shapes_alignment.py"),
                             "--quick", "--output_dir", str(out)], cwd=study_runs.REPO_ROOT, capture_output=True, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert {"heldout", "train", "ssr_agreement", "beta_choice"} <= set(results)
    report = (out / "report.md").read_text()
    assert "numbers mean nothing" in report
    for heading in ("Main comparison", "Ablations", "Snapshot", "Self-sampling", "Video", "SSR"):
        assert heading.lower() in report.lower(), heading
    assert (out / "grid_heldout.png").stat().st_size > 0
    assert sorted(p.name for p in out.glob("*.png"))


def test_a_video_only_study_trains_and_scores_no_image_run(tmp_path, capsys):
    study.main(study.parse_args(["--output_dir", str(tmp_path), "--parts", "video", "--dry_run"]))
    printed = capsys.readouterr().out
    assert "train_sspo_animatediff.py" in printed and "shapes-heldout-video-prompts" in printed
    assert "train_sspo_sd15.py" not in printed and "image-prompts" not in printed


def test_readme_quickstarts_changes_only_the_trainers_seed_and_names_a_block_without_one():
    from experiments import readme_quickstarts

    as_written = readme_quickstarts.readme_command("quickstart", 0)
    seed_2 = readme_quickstarts.readme_command("quickstart", 2)
    assert "--seed 0" in as_written and "--seed 2" in seed_2 and "--seed 0" not in seed_2
    assert as_written.replace("--seed 0", "--seed 2", 1) == seed_2  # nothing else moves, evaluation included
    with pytest.raises(SystemExit, match="no bash block"):
        readme_quickstarts.readme_command("no-such-block", 0)
