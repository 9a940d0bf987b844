"""Checkpoints that survive a power loss and a damaged disk: fsync before every rename and
before rotation, a SHA-256 manifest written last, a resume that verifies and falls back, and
``python sspo_utils.py verify``.

The unit tests use a stand-in accelerator. The damage tests use the checkpoints of one short
real run per script, trained once per module (2 steps, a checkpoint after each): its checkpoints
are copied (a run "killed" before writing its final weights), a file of checkpoint-2 is damaged,
and the resumed run must end exactly where that straight run of the same total steps ended."""

import hashlib
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

import sspo_utils
from sspo_utils import SSPOInputError
from test_checkpoint_and_card import FakeAccelerator  # a stand-in with just what saving needs


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 2  # the run is "killed" right after its last checkpoint, before the final weights
DAMAGES = ("truncated", "emptied", "deleted", "bit_flipped")
MISMATCH = {"truncated": r"bytes, the manifest says \d+", "emptied": "0 bytes, the manifest says",
            "deleted": ": missing", "bit_flipped": "SHA-256 digest differs"}
COMMON_FILES = ["optimizer.bin", "random_states_0.pkl", "reference_pool.safetensors", "scheduler.bin",
                "sspo_generators_rank0.safetensors", "sspo_manifest.json", "sspo_run_config.json"]
SD_FILES = sorted(COMMON_FILES + ["pytorch_lora_weights.safetensors"])
MOTION_FILES = sorted(COMMON_FILES + ["config.json", "diffusion_pytorch_model.safetensors"])


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def damage(path, kind):
    """Damage one checkpoint file as a power loss or a failing disk would."""
    if kind == "deleted":
        os.remove(path)
    elif kind == "emptied":
        open(path, "wb").close()
    elif kind == "truncated":
        os.truncate(path, os.path.getsize(path) // 2)
    else:  # one bit, in the tensor data of a safetensors file (after its JSON header), else mid-file
        data = bytearray(open(path, "rb").read())
        start = 8 + int.from_bytes(data[:8], "little") if str(path).endswith(".safetensors") else 0
        data[start + (len(data) - start) // 2] ^= 0x01
        open(path, "wb").write(data)


def tree_digests(directory):
    """{relative path: SHA-256} of every file under ``directory``."""
    digests = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            digests[os.path.relpath(path, directory)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return digests


def run_script(script, args):
    """``python <script>`` (not accelerate launch, which would hide the exit status)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, script), *args], capture_output=True, text=True,
                          env=env, timeout=900, cwd=REPO_ROOT)


def describe(result):
    return f"exit {result.returncode}\nSTDERR (tail):\n{result.stderr[-4000:]}"


def killed_after_last_checkpoint(run, destination):
    """The straight run's output dir as it was when its last checkpoint had just been written."""
    for step in range(1, TOTAL_STEPS + 1):
        shutil.copytree(run.output_dir / f"checkpoint-{step}", destination / f"checkpoint-{step}")
    return destination


def resume(run, output_dir, resume_from="latest"):
    return run_script(run.script, [*run.args, "--output_dir", str(output_dir), "--max_train_steps", str(TOTAL_STEPS),
                                   "--resume_from_checkpoint", resume_from])


def assert_same_as_straight_run(run, resumed_dir):
    """Bit for bit: the final weights, every file of the last checkpoint (weights, optimizer, LR
    schedule, RNGs, generators) through its manifest digest, and the RCR pool's tensors."""
    for name in run.final_files:
        straight, resumed = load_file(run.output_dir / name), load_file(resumed_dir / name)
        assert straight.keys() == resumed.keys()
        assert all(torch.equal(straight[key], resumed[key]) for key in straight), name
    last = f"checkpoint-{TOTAL_STEPS}"
    straight = json.loads((run.output_dir / last / sspo_utils.MANIFEST_NAME).read_text())["files"]
    resumed = json.loads((resumed_dir / last / sspo_utils.MANIFEST_NAME).read_text())["files"]
    # safetensors writes header metadata in a per-process hash order, so the pool is compared by content.
    pool = sspo_utils.POOL_FILE_NAME
    assert {k: v for k, v in straight.items() if k != pool} == {k: v for k, v in resumed.items() if k != pool}
    pool_straight = sspo_utils.ReferencePool.read_state(run.output_dir / last / pool)
    pool_resumed = sspo_utils.ReferencePool.read_state(resumed_dir / last / pool)
    assert pool_straight["steps"] == pool_resumed["steps"] == list(range(TOTAL_STEPS + 1))
    assert pool_straight["num_offered"] == pool_resumed["num_offered"]
    assert torch.equal(pool_straight["reservoir_generator"], pool_resumed["reservoir_generator"])
    for snapshot_a, snapshot_b in zip(pool_straight["snapshots"], pool_resumed["snapshots"]):
        assert all(torch.equal(a, b) for a, b in zip(snapshot_a, snapshot_b))


def check_damage_is_caught(run, file_name, kind, tmp_path):
    """``latest`` skips the damaged checkpoint-2 with one warning naming the file; the explicit
    path is one error line naming the file, the mismatch and checkpoint-1 to use instead."""
    output_dir = killed_after_last_checkpoint(run, tmp_path / "run")
    damage(output_dir / "checkpoint-2" / file_name, kind)
    warnings = []
    assert sspo_utils.resolve_resume_checkpoint("latest", str(output_dir), warn=warnings.append) == str(
        output_dir / "checkpoint-1")
    assert len(warnings) == 1 and "checkpoint-2" in warnings[0] and file_name in warnings[0], warnings
    with pytest.raises(SSPOInputError) as error:
        sspo_utils.resolve_resume_checkpoint(str(output_dir / "checkpoint-2"), str(output_dir))
    message = str(error.value)
    assert "\n" not in message and file_name in message and str(output_dir / "checkpoint-1") in message, message
    mismatch = MISMATCH[kind] if file_name != sspo_utils.MANIFEST_NAME else r"missing|unreadable|digest"
    assert re.search(mismatch, message), message


def check_latest_falls_back(run, file_name, kind, tmp_path):
    """End to end: ``latest`` skips the damaged checkpoint-2 with one warning, resumes from
    checkpoint-1, and ends bit for bit where the straight run ended."""
    output_dir = killed_after_last_checkpoint(run, tmp_path / "run")
    damage(output_dir / "checkpoint-2" / file_name, kind)
    result = resume(run, output_dir)
    assert result.returncode == 0, describe(result)
    skipped = [line for line in result.stderr.splitlines() if "Skipping damaged checkpoint" in line]
    assert len(skipped) == 1 and "checkpoint-2" in skipped[0] and file_name in skipped[0], skipped
    assert f"Resuming from {output_dir / 'checkpoint-1'}" in result.stdout + result.stderr
    assert_same_as_straight_run(run, output_dir)


def check_explicit_path_fails(run, file_name, kind, tmp_path):
    """End to end: the damaged checkpoint-2 named explicitly is one ``error:`` line naming the
    file, the mismatch and checkpoint-1; exit status 2; nothing written."""
    output_dir = killed_after_last_checkpoint(run, tmp_path / "run")
    damage(output_dir / "checkpoint-2" / file_name, kind)
    before = tree_digests(output_dir)
    result = resume(run, output_dir, str(output_dir / "checkpoint-2"))
    assert result.returncode == 2, describe(result)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and sum(line.startswith("error: ") for line in lines) == 1
    assert lines[-1].startswith("error: ") and f"{file_name}: " in lines[-1], lines[-1]
    assert re.search(MISMATCH[kind], lines[-1]) and str(output_dir / "checkpoint-1") in lines[-1], lines[-1]
    assert tree_digests(output_dir) == before, "a failed resume must write nothing"


# ---------------------------------------------------------------------------
# Durable writes (stand-in accelerator; os.fsync, os.replace, shutil.rmtree recorded)
# ---------------------------------------------------------------------------


def save_fake_checkpoint(output_dir, step, total_limit=None):
    pool = sspo_utils.ReferencePool([("w", torch.nn.Parameter(torch.full((3,), float(step))))])
    return sspo_utils.save_checkpoint_atomically(FakeAccelerator(), str(output_dir), step, {"rank": 4},
                                                 sspo_utils.TrainingGenerators(0), pool, total_limit=total_limit)


@pytest.fixture
def events(monkeypatch):
    """Every fsync (the path behind the descriptor), rename and tree deletion, in order."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to name fsynced descriptors")
    recorded = []
    real_fsync, real_replace, real_rmtree = os.fsync, os.replace, shutil.rmtree

    def fsync(fd):
        recorded.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst, **kwargs):
        recorded.append(("replace", os.path.realpath(src), os.path.realpath(dst)))
        real_replace(src, dst, **kwargs)

    def rmtree(path, *args, **kwargs):
        recorded.append(("rmtree", os.path.realpath(path)))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    return recorded


def test_checkpoint_files_and_folders_are_fsynced_before_the_rename_and_the_rotation(tmp_path, events):
    save_fake_checkpoint(tmp_path, 1, total_limit=1)
    del events[:]
    final_dir = save_fake_checkpoint(tmp_path, 2, total_limit=1)
    output_dir, tmp_dir = os.path.realpath(tmp_path), os.path.realpath(tmp_path / ".tmp-checkpoint-2")
    rename = events.index(("replace", tmp_dir, os.path.join(output_dir, "checkpoint-2")))
    before = events[:rename]
    for name in sorted(os.listdir(final_dir)):
        assert ("fsync", os.path.join(tmp_dir, name)) in before, f"{name} not fsynced before the rename"
    assert ("fsync", tmp_dir) in before
    assert before.index(("fsync", os.path.join(tmp_dir, sspo_utils.MANIFEST_NAME))) > max(
        before.index(("fsync", os.path.join(tmp_dir, name))) for name in os.listdir(final_dir)
        if name != sspo_utils.MANIFEST_NAME), "the manifest must be written last"
    parent_synced = events.index(("fsync", output_dir), rename)
    assert events.index(("rmtree", os.path.join(output_dir, "checkpoint-1"))) > parent_synced, (
        "--checkpoints_total_limit deleted the old checkpoint before the new one was durable")
    assert sspo_utils.checkpoint_problems(final_dir) == []


def test_limit_1_keeps_an_intact_checkpoint_through_a_crash_at_any_point(tmp_path, monkeypatch):
    """With --checkpoints_total_limit 1, stop the write of checkpoint-2 at each fsync, rename and
    deletion in turn: an intact checkpoint is always left to resume from."""
    calls = {"count": 0, "crash_at": None}

    def crashing(real):
        def wrapper(*args, **kwargs):
            calls["count"] += 1
            if calls["count"] == calls["crash_at"]:
                raise KeyboardInterrupt("killed")
            return real(*args, **kwargs)
        return wrapper

    for name, module in (("fsync", os), ("replace", os), ("rmtree", shutil)):
        monkeypatch.setattr(module, name, crashing(getattr(module, name)))
    crash_at, outcomes = 1, set()
    while True:
        output_dir = tmp_path / f"crash_at_{crash_at}"
        calls.update(count=0, crash_at=None)
        save_fake_checkpoint(output_dir, 1, total_limit=1)
        calls.update(count=0, crash_at=crash_at)
        try:
            save_fake_checkpoint(output_dir, 2, total_limit=1)
            finished = True
        except KeyboardInterrupt:
            finished = False
        calls["crash_at"] = None
        intact = sspo_utils.newest_intact_checkpoint(str(output_dir))
        assert intact is not None, f"no intact checkpoint after a crash at call {crash_at}: {os.listdir(output_dir)}"
        outcomes.add(os.path.basename(intact))
        if finished:
            break
        crash_at += 1
    assert crash_at > 5 and outcomes == {"checkpoint-1", "checkpoint-2"}
    assert sorted(p for p in os.listdir(output_dir) if p.startswith("checkpoint-")) == ["checkpoint-2"]


def test_rotation_never_deletes_the_new_checkpoint(tmp_path):
    """A damaged checkpoint-5 made the run resume from checkpoint-1; the new checkpoint-2 must
    survive --checkpoints_total_limit 1 (it sorts before checkpoint-5)."""
    save_fake_checkpoint(tmp_path, 1)
    save_fake_checkpoint(tmp_path, 5)
    damage(tmp_path / "checkpoint-5" / "optimizer.bin", "truncated")
    assert sspo_utils.resolve_resume_checkpoint("latest", str(tmp_path), warn=None).endswith("checkpoint-1")
    save_fake_checkpoint(tmp_path, 2, total_limit=1)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"]


def assert_moved_in_durably(events, output_dir, names):
    """Each file was fsynced in a .tmp- folder, renamed into ``output_dir``, then the folder fsynced."""
    output_dir = os.path.realpath(output_dir)
    renames = {os.path.basename(e[2]): i for i, e in enumerate(events)
               if e[0] == "replace" and os.path.dirname(e[2]) == output_dir}
    for name in names:
        source = events[renames[name]][1]
        assert "/.tmp-" in source and ("fsync", source) in events[:renames[name]], name
    assert ("fsync", output_dir) in events[max(renames.values()):]


def test_final_lora_motion_adapter_and_model_card_are_fsynced(tiny_model_dir, tiny_motion_adapter_dir, tmp_path, events):
    from diffusers import MotionAdapter, StableDiffusionPipeline, UNet2DConditionModel, UNetMotionModel
    from peft import LoraConfig
    from PIL import Image

    import train_sspo_animatediff

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_v"]))
    sspo_utils.save_lora_atomically(StableDiffusionPipeline, str(tmp_path / "sd"), unet)
    assert_moved_in_durably(events, tmp_path / "sd", [sspo_utils.LORA_WEIGHT_NAME])

    sspo_utils.save_model_card(str(tmp_path / "sd"), "org/base", None, {"loss_type": "sspo"},
                               [Image.new("RGB", (8, 8))], validation_prompts=["a cat"])
    assert_moved_in_durably(events, tmp_path / "sd", ["README.md", "image_0.png"])

    del events[:]
    motion_unet = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet"),
                                              MotionAdapter.from_pretrained(tiny_motion_adapter_dir))
    args = types.SimpleNamespace(train_target="motion_modules", output_dir=str(tmp_path / "ad"))
    os.makedirs(args.output_dir)
    train_sspo_animatediff.save_trained_weights(args, motion_unet)
    assert_moved_in_durably(events, tmp_path / "ad", ["config.json", "diffusion_pytorch_model.safetensors"])
    assert not [name for name in os.listdir(tmp_path / "ad") if name.startswith(".tmp-")]


def test_old_format_checkpoint_resumes_with_a_warning(tmp_path):
    """Written before manifests: no manifest, a run config that names none. Resumes, unverified."""
    path = save_fake_checkpoint(tmp_path, 1)
    os.remove(os.path.join(path, sspo_utils.MANIFEST_NAME))
    config_path = os.path.join(path, sspo_utils.RUN_CONFIG_NAME)
    config = json.load(open(config_path))
    del config["checkpoint_manifest"]
    json.dump(config, open(config_path, "w"))
    for resume_from in ("latest", path):
        warnings = []
        assert sspo_utils.resolve_resume_checkpoint(resume_from, str(tmp_path), warn=warnings.append) == path
        assert len(warnings) == 1 and "cannot be verified" in warnings[0]
    # The same checkpoint with the run config naming a manifest that is gone: damaged, not old.
    config["checkpoint_manifest"] = sspo_utils.MANIFEST_NAME
    json.dump(config, open(config_path, "w"))
    assert sspo_utils.checkpoint_problems(path) == [f"{sspo_utils.MANIFEST_NAME}: missing"]


def test_every_checkpoint_damaged_is_an_error_naming_the_verify_command(tmp_path):
    for step in (1, 2):
        save_fake_checkpoint(tmp_path, step)
        damage(tmp_path / f"checkpoint-{step}" / "optimizer.bin", "emptied")
    warnings = []
    with pytest.raises(SSPOInputError, match=r"Every checkpoint in .* is damaged.*sspo_utils.py verify"):
        sspo_utils.resolve_resume_checkpoint("latest", str(tmp_path), warn=warnings.append)
    assert len(warnings) == 2 and all("optimizer.bin: 0 bytes" in warning for warning in warnings)
    with pytest.raises(SSPOInputError, match="No other checkpoint there is intact"):
        sspo_utils.resolve_resume_checkpoint(str(tmp_path / "checkpoint-2"), str(tmp_path))


# ---------------------------------------------------------------------------
# Damage on real checkpoints: SD1.5 LoRA
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd_run(tiny_model_dir, tiny_imagefolder_dir, tmp_path_factory):
    """A straight SD1.5 LoRA run of TOTAL_STEPS steps with a checkpoint after every step."""
    args = ["--pretrained_model_name_or_path", tiny_model_dir, "--train_data_dir", tiny_imagefolder_dir,
            "--resolution", "64", "--train_batch_size", "1", "--snapshot_steps", "1", "--checkpointing_steps", "1",
            "--self_sample_steps", "2", "--learning_rate", "1e-3", "--lr_scheduler", "constant", "--seed", "0",
            "--report_to", "none"]
    output_dir = tmp_path_factory.mktemp("durable_sd") / "straight"
    result = run_script("train_sspo_sd15.py", [*args, "--output_dir", str(output_dir), "--max_train_steps", str(TOTAL_STEPS)])
    assert result.returncode == 0, describe(result)
    assert sorted(os.listdir(output_dir / "checkpoint-2")) == SD_FILES
    return types.SimpleNamespace(script="train_sspo_sd15.py", args=args, output_dir=output_dir,
                                 final_files=[sspo_utils.LORA_WEIGHT_NAME])


@pytest.mark.parametrize("kind", DAMAGES)
@pytest.mark.parametrize("file_name", SD_FILES)
def test_sd_every_damaged_file_is_caught(sd_run, file_name, kind, tmp_path):
    check_damage_is_caught(sd_run, file_name, kind, tmp_path)


@pytest.mark.parametrize("file_name, kind", [
    ("reference_pool.safetensors", "bit_flipped"),  # the silent corruption of the bug report
    pytest.param("optimizer.bin", "truncated", marks=pytest.mark.slow),
    pytest.param("pytorch_lora_weights.safetensors", "emptied", marks=pytest.mark.slow),
    pytest.param("sspo_generators_rank0.safetensors", "deleted", marks=pytest.mark.slow),
])
def test_sd_latest_falls_back_and_ends_as_the_straight_run(sd_run, file_name, kind, tmp_path):
    check_latest_falls_back(sd_run, file_name, kind, tmp_path)


def test_sd_damaged_explicit_checkpoint_is_one_error_line(sd_run, tmp_path):
    check_explicit_path_fails(sd_run, "optimizer.bin", "truncated", tmp_path)


@pytest.mark.slow
def test_sd_every_checkpoint_damaged_is_an_error_not_a_fresh_start(sd_run, tmp_path):
    output_dir = killed_after_last_checkpoint(sd_run, tmp_path / "run")
    damage(output_dir / "checkpoint-1" / "reference_pool.safetensors", "bit_flipped")
    damage(output_dir / "checkpoint-2" / "sspo_manifest.json", "truncated")
    result = resume(sd_run, output_dir)
    assert result.returncode == 2, describe(result)
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: Every checkpoint in") and "damaged" in last_line, last_line
    assert sum("Skipping damaged checkpoint" in line for line in result.stderr.splitlines()) == 2
    assert sorted(os.listdir(output_dir)) == ["checkpoint-1", "checkpoint-2"]


def test_verify_command_reports_each_checkpoint(sd_run, tmp_path, monkeypatch, capsys):
    output_dir = killed_after_last_checkpoint(sd_run, tmp_path / "run")
    damage(output_dir / "checkpoint-2" / "reference_pool.safetensors", "bit_flipped")
    (output_dir / ".tmp-checkpoint-3").mkdir()
    # `python sspo_utils.py verify DIR`, run in this process (a subprocess would spend its time importing torch).
    monkeypatch.setattr(sys, "argv", ["sspo_utils.py", "verify", str(output_dir)])
    with pytest.raises(SystemExit) as exit_status:
        runpy.run_path(os.path.join(REPO_ROOT, "sspo_utils.py"), run_name="__main__")
    assert exit_status.value.code == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{output_dir / 'checkpoint-1'}: intact (8 files")
    assert lines[1] == f"{output_dir / 'checkpoint-2'}: damaged: reference_pool.safetensors: SHA-256 digest differs from the manifest"
    assert ".tmp-checkpoint-3: left by an interrupted write" in lines[2]
    assert lines[3] == f"--resume_from_checkpoint latest resumes from {output_dir / 'checkpoint-1'}."
    assert sspo_utils.verify_run(str(output_dir / "checkpoint-1"), print_fn=lambda line: None) == 0


@pytest.mark.slow
def test_sd_old_format_checkpoint_still_resumes_exactly(sd_run, tmp_path):
    output_dir = killed_after_last_checkpoint(sd_run, tmp_path / "run")
    shutil.rmtree(output_dir / "checkpoint-2")
    # checkpoint-1 as written before manifests: no manifest, and a run config that names none.
    os.remove(output_dir / "checkpoint-1" / sspo_utils.MANIFEST_NAME)
    config = json.loads((output_dir / "checkpoint-1" / sspo_utils.RUN_CONFIG_NAME).read_text())
    del config["checkpoint_manifest"]
    (output_dir / "checkpoint-1" / sspo_utils.RUN_CONFIG_NAME).write_text(json.dumps(config))
    result = resume(sd_run, output_dir)
    assert result.returncode == 0, describe(result)
    assert "cannot be verified" in result.stderr
    assert f"Resuming from {output_dir / 'checkpoint-1'}" in result.stdout + result.stderr
    assert_same_as_straight_run(sd_run, output_dir)


# ---------------------------------------------------------------------------
# Damage on real checkpoints: AnimateDiff, full motion modules (other files than a LoRA)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def motion_run(tiny_model_dir, tiny_motion_adapter_dir, tmp_path_factory):
    """A straight AnimateDiff --train_target motion_modules run of TOTAL_STEPS steps, a checkpoint every step."""
    import sspo_tiny

    root = tmp_path_factory.mktemp("durable_ad")
    metadata = sspo_tiny.build_tiny_video_dataset(str(root / "clips"), num_videos=4, num_frames=8)
    args = ["--pretrained_model_name_or_path", tiny_model_dir, "--motion_adapter_name_or_path", tiny_motion_adapter_dir,
            "--video_folder", str(root / "clips" / "videos"), "--metadata_file", metadata, "--resolution", "64",
            "--num_frames", "4", "--sample_stride", "2", "--train_batch_size", "1", "--train_target", "motion_modules",
            "--snapshot_steps", "1", "--checkpointing_steps", "1", "--self_sample_steps", "2", "--learning_rate", "1e-4",
            "--lr_scheduler", "constant", "--seed", "0", "--report_to", "none"]
    output_dir = root / "straight"
    result = run_script("train_sspo_animatediff.py",
                        [*args, "--output_dir", str(output_dir), "--max_train_steps", str(TOTAL_STEPS)])
    assert result.returncode == 0, describe(result)
    assert sorted(os.listdir(output_dir / "checkpoint-2")) == MOTION_FILES
    return types.SimpleNamespace(script="train_sspo_animatediff.py", args=args, output_dir=output_dir,
                                 final_files=["diffusion_pytorch_model.safetensors"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", DAMAGES)
@pytest.mark.parametrize("file_name", MOTION_FILES)
def test_motion_modules_every_damaged_file_is_caught(motion_run, file_name, kind, tmp_path):
    check_damage_is_caught(motion_run, file_name, kind, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("file_name, kind", [("diffusion_pytorch_model.safetensors", "bit_flipped"),
                                             ("reference_pool.safetensors", "truncated")])
def test_motion_modules_latest_falls_back_and_ends_as_the_straight_run(motion_run, file_name, kind, tmp_path):
    check_latest_falls_back(motion_run, file_name, kind, tmp_path)


@pytest.mark.slow
def test_motion_modules_damaged_explicit_checkpoint_is_one_error_line(motion_run, tmp_path):
    check_explicit_path_fails(motion_run, "diffusion_pytorch_model.safetensors", "deleted", tmp_path)
