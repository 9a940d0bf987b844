"""Two real CPU ranks (gloo DDP) per training script (SD1.5, AnimateDiff, SDXL): the ranks must end
with identical trained weights and identical RCR pools, and only rank 0 may write the shared outputs.

``accelerate launch --cpu --num_processes 2`` silently runs ONE process, so the ranks are
started with ``--multi_gpu`` and ``ACCELERATE_USE_CPU=true`` instead. Each rank runs the script
through tests/instrumented_run.py, which makes it dump its live weights and its pool at the end."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

import sspo_tiny


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SD_SCRIPT = os.path.join(REPO_ROOT, "train_sspo_sd15.py")
ANIMATEDIFF_SCRIPT = os.path.join(REPO_ROOT, "train_sspo_animatediff.py")
INSTRUMENTED_RUN = os.path.join(REPO_ROOT, "tests", "instrumented_run.py")
SDXL_SCRIPT = os.path.join(REPO_ROOT, "train_sspo_sdxl.py")
SD_PROMPT = "a red circle on a blue background"
VIDEO_PROMPT = "a red circle moving right on a blue background"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_ranks(script, args, dump_dir, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1",
               ACCELERATE_USE_CPU="true",
               OMP_NUM_THREADS="1")  # 2 ranks on few cores: avoid thread oversubscription
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), INSTRUMENTED_RUN, "--dump_rank_state_dir", str(dump_dir),
               script, *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO_ROOT)


def common_args(output_dir):
    return ["--output_dir", str(output_dir), "--loss_type", "sspo", "--snapshot_steps", "1", "--max_train_steps", "3",
            "--checkpointing_steps", "2", "--train_batch_size", "2", "--resolution", "64", "--self_sample_steps", "2",
            "--validation_steps", "3", "--validation_inference_steps", "2", "--seed", "0", "--learning_rate", "1e-3"]


def read_rank_state(path):
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    return tensors, metadata


def check_two_ranks_agree(result, output_dir, dump_dir, expected_validation):
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"exit {result.returncode}\nSTDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-6000:]}"

    # Two ranks really ran.
    assert "Process index: 1" in log, log[-4000:]
    assert sorted(p.name for p in dump_dir.iterdir()) == ["rank0.safetensors", "rank1.safetensors"]
    rank0, meta0 = read_rank_state(dump_dir / "rank0.safetensors")
    rank1, meta1 = read_rank_state(dump_dir / "rank1.safetensors")
    assert meta0["num_processes"] == "2" and meta1["num_processes"] == "2"

    # Identical live weights, identical pools, same pool steps.
    assert json.loads(meta0["steps"]) == [0, 1, 2, 3]
    assert json.loads(meta1["steps"]) == [0, 1, 2, 3]
    assert rank0.keys() == rank1.keys()
    live_keys = sorted(k for k in rank0 if k.startswith("live."))
    assert live_keys, sorted(rank0)[:10]
    for i in range(4):
        assert {k for k in rank0 if k.startswith(f"snapshot.{i}.")}, f"snapshot {i} missing"
    assert not any(k.startswith("snapshot.4.") for k in rank0)
    differing = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    assert not differing, f"{len(differing)} tensors differ between ranks, e.g. {differing[:5]}"

    # Training happened: the live weights moved away from snapshot 0 (the initial model).
    moved = [k for k in live_keys if not torch.equal(rank0[k], rank0["snapshot.0." + k[len("live."):]])]
    assert moved, "live weights equal snapshot 0: no training happened"

    # Only rank 0 wrote the shared outputs.
    # (checkpoint folders hold their own copy of the LoRA; the top level holds exactly one of each)
    top_level = sorted(p.name for p in output_dir.iterdir())
    assert top_level.count("pytorch_lora_weights.safetensors") == 1 and top_level.count("README.md") == 1, top_level
    assert not [p for p in output_dir.iterdir() if "rank1" in p.name or p.name.startswith(".tmp-")], top_level
    assert sorted(p.name for p in (output_dir / "validation").iterdir()) == sorted(expected_validation)

    # Every rank saved its own generator state in the checkpoint.
    checkpoint = output_dir / "checkpoint-2"
    assert checkpoint.is_dir(), sorted(p.name for p in output_dir.iterdir())
    names = {p.name for p in checkpoint.iterdir()}
    assert {"sspo_generators_rank0.safetensors", "sspo_generators_rank1.safetensors"} <= names, sorted(names)


@pytest.mark.slow
def test_sd15_two_cpu_ranks_stay_in_sync(tiny_model_dir, tiny_imagefolder_dir, tmp_path):
    output_dir, dump_dir = tmp_path / "out", tmp_path / "dump"
    result = launch_two_ranks(SD_SCRIPT, [
        "--pretrained_model_name_or_path", tiny_model_dir, "--train_data_dir", tiny_imagefolder_dir,
        *common_args(output_dir), "--validation_prompts", SD_PROMPT, "--num_validation_images", "1"], dump_dir)
    check_two_ranks_agree(result, output_dir, dump_dir,
                          ["validation_step3_0.png", "final_lora_step3_0.png", "final_base_step3_0.png"])


@pytest.fixture(scope="module")
def chronomagic(tmp_path_factory):
    root = tmp_path_factory.mktemp("chronomagic_mp")
    metadata = sspo_tiny.build_tiny_video_dataset(str(root), num_videos=6, num_frames=12, layout="chronomagic")
    return str(root / "videos"), metadata


@pytest.mark.slow
def test_animatediff_two_cpu_ranks_stay_in_sync(tiny_model_dir, tiny_motion_adapter_dir, chronomagic, tmp_path):
    video_folder, metadata = chronomagic
    output_dir, dump_dir = tmp_path / "out", tmp_path / "dump"
    result = launch_two_ranks(ANIMATEDIFF_SCRIPT, [
        "--pretrained_model_name_or_path", tiny_model_dir, "--motion_adapter_name_or_path", tiny_motion_adapter_dir,
        "--video_folder", video_folder, "--metadata_file", metadata, "--num_frames", "4", "--sample_stride", "2",
        *common_args(output_dir), "--validation_prompts", VIDEO_PROMPT, "--num_validation_videos", "1"], dump_dir)
    check_two_ranks_agree(result, output_dir, dump_dir,
                          [f"{phase}_step3_0.{ext}" for phase in ("validation", "final_trained", "final_base")
                           for ext in ("gif", "mp4")])


@pytest.mark.slow
def test_sdxl_two_cpu_ranks_stay_in_sync(tiny_imagefolder_dir, tmp_path):
    model_dir = sspo_tiny.build_tiny_sdxl_pipeline(str(tmp_path / "sdxl_model"))
    output_dir, dump_dir = tmp_path / "out", tmp_path / "dump"
    result = launch_two_ranks(SDXL_SCRIPT, [
        "--pretrained_model_name_or_path", model_dir, "--train_data_dir", tiny_imagefolder_dir, "--random_crop",
        *common_args(output_dir), "--gradient_checkpointing", "--validation_prompts", SD_PROMPT,
        "--num_validation_images", "1"], dump_dir)
    check_two_ranks_agree(result, output_dir, dump_dir,
                          ["validation_step3_0.png", "final_lora_step3_0.png", "final_base_step3_0.png"])
