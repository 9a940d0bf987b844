"""Exact resume (both scripts), tensorboard steps across resume, and the non-finite step guard."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import sspo_tiny
from sspo_utils import ReferencePool


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, args, nonfinite_steps=None, launcher="accelerate"):
    """The script under accelerate launch (or plain python); with ``nonfinite_steps`` ("3,4") through
    tests/instrumented_run.py, which makes the loss of those optimizer steps NaN."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    prefix = ([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--mixed_precision", "no",
               "--num_machines", "1", "--dynamo_backend", "no"] if launcher == "accelerate" else [sys.executable])
    if nonfinite_steps:
        prefix += [os.path.join(REPO_ROOT, "tests", "instrumented_run.py"), "--nonfinite_steps", nonfinite_steps]
    command = [*prefix, os.path.join(REPO_ROOT, script), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=REPO_ROOT)


def assert_ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-5000:]}"


def scalars(output_dir, tag):
    """{step: value} of a tensorboard scalar over every event file of a run (resumed runs add files)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for event_file in sorted((output_dir / "logs").rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                assert event.step not in values, f"step {event.step} of {tag} logged twice"
                values[event.step] = event.value
    return values


def assert_same_end_state(straight, resumed, total_steps):
    lora_straight = load_file(straight / "pytorch_lora_weights.safetensors")
    lora_resumed = load_file(resumed / "pytorch_lora_weights.safetensors")
    assert lora_straight.keys() == lora_resumed.keys()
    for key in lora_straight:
        assert torch.equal(lora_straight[key], lora_resumed[key]), key
    pool_straight = ReferencePool.read_state(straight / f"checkpoint-{total_steps}" / "reference_pool.safetensors")
    pool_resumed = ReferencePool.read_state(resumed / f"checkpoint-{total_steps}" / "reference_pool.safetensors")
    assert pool_straight["steps"] == pool_resumed["steps"] and len(pool_straight["steps"]) > 2
    for snap_a, snap_b in zip(pool_straight["snapshots"], pool_resumed["snapshots"]):
        assert all(torch.equal(a, b) for a, b in zip(snap_a, snap_b))
    for tag in ("loss", "model_err_w", "ref_err_s", "snapshot_age"):
        logged_straight, logged_resumed = scalars(straight, tag), scalars(resumed, tag)
        assert sorted(logged_resumed) == list(range(1, total_steps + 1)), "tensorboard steps must continue after resume"
        for step in range(total_steps // 2 + 1, total_steps + 1):
            assert logged_straight[step] == logged_resumed[step], (tag, step)


def resume_check(tmp_path, script, common):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert_ok(run(script, [*common, "--output_dir", str(straight), "--max_train_steps", "6"]))
    # "Stopped" at step 3: the same run with 3 steps (a constant LR, so the schedule is the same) ...
    assert_ok(run(script, [*common, "--output_dir", str(resumed), "--max_train_steps", "3"]))
    shutil.rmtree(resumed / "checkpoint-3" / ".." / "validation", ignore_errors=True)
    # ... then resumed from its checkpoint for the rest.
    result = run(script, [*common, "--output_dir", str(resumed), "--max_train_steps", "6", "--resume_from_checkpoint", "latest"])
    assert_ok(result)
    assert "Resuming from" in result.stdout + result.stderr
    assert_same_end_state(straight, resumed, 6)


@pytest.mark.slow
def test_sd15_resume_is_exact(tiny_model_dir, tiny_imagefolder_dir, tmp_path):
    common = ["--pretrained_model_name_or_path", tiny_model_dir, "--train_data_dir", tiny_imagefolder_dir,
              "--resolution", "64", "--train_batch_size", "2", "--gradient_accumulation_steps", "2",
              "--snapshot_steps", "1", "--checkpointing_steps", "3", "--self_sample_steps", "2", "--learning_rate", "1e-3",
              "--lr_scheduler", "constant", "--seed", "0", "--random_flip", "--random_crop"]
    # 16 images, batch 2, accumulation 2: 4 optimizer steps per epoch, so 6 steps cross an epoch boundary.
    resume_check(tmp_path, "train_sspo_sd15.py", common)


@pytest.mark.slow
def test_animatediff_resume_is_exact(tiny_model_dir, tiny_motion_adapter_dir, tmp_path):
    metadata = sspo_tiny.build_tiny_video_dataset(str(tmp_path / "clips"), num_videos=6, num_frames=12)
    common = ["--pretrained_model_name_or_path", tiny_model_dir, "--motion_adapter_name_or_path", tiny_motion_adapter_dir,
              "--video_folder", str(tmp_path / "clips" / "videos"), "--metadata_file", metadata, "--resolution", "64",
              "--num_frames", "4", "--sample_stride", "2", "--train_batch_size", "1", "--gradient_accumulation_steps", "2",
              "--snapshot_steps", "1", "--checkpointing_steps", "3", "--self_sample_steps", "2", "--learning_rate", "1e-3",
              "--lr_scheduler", "constant", "--seed", "0", "--random_flip"]
    resume_check(tmp_path, "train_sspo_animatediff.py", common)


def test_nonfinite_steps_are_skipped_then_the_run_stops_with_a_checkpoint(tiny_model_dir, tiny_imagefolder_dir, tmp_path):
    common = ["--pretrained_model_name_or_path", tiny_model_dir, "--train_data_dir", tiny_imagefolder_dir,
              "--resolution", "64", "--train_batch_size", "2", "--snapshot_steps", "1", "--checkpointing_steps", "100",
              "--self_sample_steps", "2", "--learning_rate", "1e-3", "--seed", "0", "--max_nonfinite_steps", "3"]
    # Step 2 is poisoned once: skipped, no update, no snapshot; training goes on.
    one_bad = tmp_path / "one_bad"
    result = run("train_sspo_sd15.py", [*common, "--output_dir", str(one_bad), "--max_train_steps", "4",
                                        "--checkpointing_steps", "4"], nonfinite_steps="2")
    assert_ok(result)
    assert "Step 2: non-finite loss" in result.stderr
    pool = ReferencePool.read_state(one_bad / "checkpoint-4" / "reference_pool.safetensors")
    assert pool["steps"] == [0, 1, 3, 4]  # no snapshot after the skipped step
    assert scalars(one_bad, "nonfinite_steps") == {2: 1.0, 3: 1.0, 4: 1.0}
    # Steps 3, 4, 5 poisoned with --max_nonfinite_steps 3: the run stops at step 5 with a checkpoint
    # whose weights are those after step 2, the last good update.
    stopped = tmp_path / "stopped"
    result = run("train_sspo_sd15.py", [*common, "--output_dir", str(stopped), "--max_train_steps", "8",
                                        "--checkpointing_steps", "2"], nonfinite_steps="3,4,5",
                 launcher="python")  # accelerate launch would turn the status into 1 and add its own traceback
    assert result.returncode == 3
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: 3 optimizer steps in a row had a non-finite loss") and "checkpoint-5" in last_line
    assert not (stopped / "pytorch_lora_weights.safetensors").exists()
    after_step_2 = load_file(stopped / "checkpoint-2" / "pytorch_lora_weights.safetensors")
    at_stop = load_file(stopped / "checkpoint-5" / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(after_step_2[k], at_stop[k]) for k in after_step_2)
    assert all(torch.isfinite(t).all() for t in at_stop.values())


@pytest.mark.slow
def test_sd15_resume_is_exact_with_the_merged_copy_sampler(tiny_model_dir, tiny_imagefolder_dir, tmp_path):
    """--self_sample_merged_copy on (the default on a GPU): the copy is rebuilt and merged again after the resume."""
    common = ["--pretrained_model_name_or_path", tiny_model_dir, "--train_data_dir", tiny_imagefolder_dir,
              "--resolution", "64", "--train_batch_size", "2", "--gradient_accumulation_steps", "2",
              "--snapshot_steps", "1", "--checkpointing_steps", "3", "--self_sample_steps", "2", "--learning_rate", "1e-3",
              "--lr_scheduler", "constant", "--seed", "0", "--self_sample_merged_copy", "on"]
    resume_check(tmp_path, "train_sspo_sd15.py", common)
