"""End-to-end runs of train_sspo_sd15.py on the tiny offline model (accelerate launch, CPU)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import sspo_tiny
import sspo_utils


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "train_sspo_sd15.py")
PROMPT = "a red circle on a blue background"


def run_script(args, launcher="accelerate", timeout=600):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    if launcher == "accelerate":
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--mixed_precision", "no",
                   "--num_machines", "1", "--dynamo_backend", "no", SCRIPT, *args]
    else:
        command = [sys.executable, SCRIPT, *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO_ROOT)


def base_args(model_dir, output_dir, *extra):
    return ["--pretrained_model_name_or_path", model_dir, "--output_dir", str(output_dir), "--resolution", "64",
            "--train_batch_size", "2", "--self_sample_steps", "3", "--learning_rate", "1e-3", "--seed", "0",
            "--report_to", "tensorboard", *extra]


def assert_ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\nSTDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-5000:]}"


@pytest.fixture(scope="module")
def sspo_run(tiny_model_dir, tiny_imagefolder_dir, tmp_path_factory):
    """4 optimizer steps of SSPO with accumulation 2, a snapshot every step, a checkpoint every
    step (keep 2) and validation images."""
    output_dir = tmp_path_factory.mktemp("sspo_run")
    result = run_script(base_args(
        tiny_model_dir, output_dir, "--train_data_dir", tiny_imagefolder_dir, "--gradient_accumulation_steps", "2",
        "--max_train_steps", "4", "--snapshot_steps", "1", "--checkpointing_steps", "1", "--checkpoints_total_limit", "2",
        "--validation_prompts", PROMPT, "--validation_steps", "2", "--num_validation_images", "1",
        "--validation_inference_steps", "3"))
    assert_ok(result)
    return output_dir, result


def test_sspo_run_writes_lora_card_images_and_rotates_checkpoints(sspo_run):
    output_dir, result = sspo_run
    assert (output_dir / "pytorch_lora_weights.safetensors").is_file()
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    assert not list(output_dir.glob(".tmp-*"))
    card = (output_dir / "README.md").read_text()
    for expected in ("- sspo", "- lora", "- diffusers", "base_model: ", "`ssr` | `self_sample`", "image_0.png"):
        assert expected in card
    assert (output_dir / "image_0.png").is_file()
    validation = sorted(p.name for p in (output_dir / "validation").iterdir())
    assert "validation_step2_0.png" in validation and "final_lora_step4_0.png" in validation
    assert "final_base_step4_0.png" in validation
    # The pool holds the initial model plus one snapshot per optimizer step so far.
    pool = sspo_utils.ReferencePool.read_state(output_dir / "checkpoint-4" / "reference_pool.safetensors")
    assert pool["steps"] == [0, 1, 2, 3, 4]
    assert json.loads((output_dir / "checkpoint-4" / "sspo_run_config.json").read_text())["rank"] == 8
    assert list((output_dir / "logs").rglob("events.out.tfevents.*"))


def test_tensorboard_logs_have_sspo_metrics(sspo_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir, _ = sspo_run
    event_dir = next((output_dir / "logs").rglob("events.out.tfevents.*")).parent
    accumulator = EventAccumulator(str(event_dir))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    for tag in ("loss", "ssr_sft_fraction", "implicit_acc", "model_err_w", "model_err_s", "ref_err_w", "ref_err_s",
                "snapshot_age", "pool_size", "lr", "grad_norm"):
        assert tag in tags, f"{tag} not logged; got {sorted(tags)}"
    pool_sizes = [event.value for event in accumulator.Scalars("pool_size")]
    assert pool_sizes == [1, 2, 3, 4]  # logged before the step's snapshot is added
    sft_fraction = [event.value for event in accumulator.Scalars("ssr_sft_fraction")]
    assert all(0.0 <= value <= 1.0 for value in sft_fraction)


def test_saved_lora_loads_and_changes_pipeline_output(sspo_run, tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    output_dir, _ = sspo_run
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def generate():
        return pipe(PROMPT, num_inference_steps=3, output_type="latent", generator=torch.Generator().manual_seed(0)).images

    base = generate()
    pipe.load_lora_weights(str(output_dir))
    with_lora = generate()
    assert not torch.equal(base, with_lora)
    saved = load_file(output_dir / "pytorch_lora_weights.safetensors")
    assert any("lora" in key for key in saved)


def test_resume_from_latest_continues(sspo_run, tiny_model_dir, tiny_imagefolder_dir, tmp_path):
    import shutil

    output_dir, _ = sspo_run
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(output_dir, resumed_dir)
    # A half-written checkpoint from a killed run must be ignored by "latest".
    (resumed_dir / ".tmp-checkpoint-5").mkdir()
    before = load_file(resumed_dir / "pytorch_lora_weights.safetensors")
    result = run_script(base_args(
        tiny_model_dir, resumed_dir, "--train_data_dir", tiny_imagefolder_dir, "--gradient_accumulation_steps", "2",
        "--max_train_steps", "6", "--snapshot_steps", "1", "--checkpointing_steps", "1", "--checkpoints_total_limit", "2",
        "--resume_from_checkpoint", "latest"))
    assert_ok(result)
    log = result.stdout + result.stderr
    assert "Resuming from" in log and "checkpoint-4" in log
    assert sorted(p.name for p in resumed_dir.glob("checkpoint-*")) == ["checkpoint-5", "checkpoint-6"]
    pool = sspo_utils.ReferencePool.read_state(resumed_dir / "checkpoint-6" / "reference_pool.safetensors")
    assert pool["steps"] == [0, 1, 2, 3, 4, 5, 6]
    after = load_file(resumed_dir / "pytorch_lora_weights.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # No second adapter was created on resume: the saved LoRA keys are the same single set.
    assert not any("default_1" in key for key in after)


def test_sft_baseline_runs(tiny_model_dir, tiny_imagefolder_dir, tmp_path):
    result = run_script(base_args(tiny_model_dir, tmp_path, "--train_data_dir", tiny_imagefolder_dir,
                                  "--loss_type", "sft", "--max_train_steps", "2", "--report_to", "none"))
    assert_ok(result)
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()
    assert (tmp_path / "README.md").read_text().count("`sft`") >= 1


@pytest.fixture(scope="module")
def pickapic_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pickapic")
    sspo_tiny.write_pickapic_parquet(str(path), [1, 0, 0.5, 1, 0, 1, 0.5, 0])
    return str(path)


def test_dpo_baseline_on_pickapic_pairs(tiny_model_dir, pickapic_dir, tmp_path):
    result = run_script(base_args(tiny_model_dir, tmp_path, "--dataset_name", pickapic_dir,
                                  "--loss_type", "dpo", "--max_train_steps", "2", "--report_to", "none"))
    assert_ok(result)
    assert "kept 6 of 8 rows (2 ties or unlabeled rows dropped)" in result.stdout + result.stderr
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()


def test_sspo_on_pickapic_winners_with_ablation_flags(tiny_model_dir, pickapic_dir, tmp_path):
    result = run_script(base_args(tiny_model_dir, tmp_path, "--dataset_name", pickapic_dir, "--max_train_steps", "2",
                                  "--ssr", "flip", "--reference_strategy", "latest", "--snapshot_steps", "1",
                                  "--max_snapshots", "2", "--report_to", "none", "--use_8bit_adam"))
    assert_ok(result)
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()


# --- bad input: one clear line, non-zero exit, no LoRA written --------------------------------


def assert_clear_failure(result, output_dir, *needles):
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: "), result.stderr[-3000:]
    for needle in needles:
        assert needle in last_line, last_line
    assert not os.path.exists(os.path.join(output_dir, "pytorch_lora_weights.safetensors"))


def test_missing_caption_column_is_a_clear_error(tiny_model_dir, tiny_imagefolder_dir, tmp_path):
    result = run_script(base_args(tiny_model_dir, tmp_path, "--train_data_dir", tiny_imagefolder_dir,
                                  "--caption_column", "description", "--max_train_steps", "1"), launcher="python")
    assert_clear_failure(result, tmp_path, "--caption_column", "'description'", "columns are")


def test_corrupt_image_is_a_clear_error(tiny_model_dir, tmp_path):
    data_dir = tmp_path / "data"
    sspo_tiny.build_tiny_imagefolder(str(data_dir), num_examples=4)
    (data_dir / "00002.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    output_dir = tmp_path / "out"
    result = run_script(base_args(tiny_model_dir, output_dir, "--train_data_dir", str(data_dir),
                                  "--train_batch_size", "4", "--max_train_steps", "1", "--report_to", "none"),
                        launcher="python")
    assert_clear_failure(result, output_dir, "Could not decode the image", "00002.png")


def test_corrupt_jpeg_bytes_in_pickapic_is_a_clear_error(tiny_model_dir, tmp_path):
    data_dir = tmp_path / "pap"
    sspo_tiny.write_pickapic_parquet(str(data_dir), [1, 0], corrupt_rows=(1,))
    output_dir = tmp_path / "out"
    result = run_script(base_args(tiny_model_dir, output_dir, "--dataset_name", str(data_dir), "--max_train_steps", "1",
                                  "--report_to", "none", "--dataloader_num_workers", "1"), launcher="python")
    assert_clear_failure(result, output_dir, "Could not decode the image")


def test_all_ties_is_an_empty_dataset_error(tiny_model_dir, tmp_path):
    data_dir = tmp_path / "ties"
    sspo_tiny.write_pickapic_parquet(str(data_dir), [0.5, 0.5, 0.5])
    output_dir = tmp_path / "out"
    result = run_script(base_args(tiny_model_dir, output_dir, "--dataset_name", str(data_dir), "--max_train_steps", "1"),
                        launcher="python")
    assert_clear_failure(result, output_dir, "dataset is empty")


def test_nonexistent_model_is_a_clear_error(tiny_imagefolder_dir, tmp_path):
    result = run_script(base_args(str(tmp_path / "no_such_model"), tmp_path / "out", "--train_data_dir",
                                  tiny_imagefolder_dir, "--max_train_steps", "1"), launcher="python")
    assert_clear_failure(result, tmp_path / "out", "no such folder")


def test_resume_with_other_rank_is_a_clear_error(sspo_run, tiny_model_dir, tiny_imagefolder_dir, tmp_path):
    import shutil

    output_dir, _ = sspo_run
    other = tmp_path / "other"
    shutil.copytree(output_dir / "checkpoint-4", other / "checkpoint-4")
    result = run_script(base_args(tiny_model_dir, other, "--train_data_dir", tiny_imagefolder_dir, "--rank", "4",
                                  "--max_train_steps", "6", "--resume_from_checkpoint", "latest"), launcher="python")
    assert_clear_failure(result, other, "rank=8", "rank=4")


def test_caption_dropout_changes_what_sft_learns(tiny_model_dir, tiny_imagefolder_dir, tmp_path):
    """--proportion_empty_prompts trains some rows on the empty caption: same seed, different LoRA."""
    weights = []
    for proportion in ("0", "0.5"):
        output_dir = tmp_path / f"dropout_{proportion}"
        assert_ok(run_script(base_args(tiny_model_dir, output_dir, "--train_data_dir", tiny_imagefolder_dir,
                                       "--loss_type", "sft", "--train_batch_size", "4", "--max_train_steps", "2",
                                       "--proportion_empty_prompts", proportion, "--report_to", "none")))
        weights.append(load_file(str(output_dir / "pytorch_lora_weights.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
