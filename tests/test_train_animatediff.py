"""train_sspo_animatediff.py: clip sampling and decoding, and end-to-end runs for each --train_target."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import sspo_tiny
import sspo_utils
import train_sspo_animatediff as train
from sspo_utils import SSPOInputError


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "train_sspo_animatediff.py")
PROMPT = "a red circle moving right on a blue background"


@pytest.fixture(scope="module", autouse=True)
def accelerate_state():
    from accelerate import PartialState

    return PartialState(cpu=True)


@pytest.fixture(scope="module")
def chronomagic(tmp_path_factory):
    """6 ChronoMagic-layout clips of 12 frames; returns (video folder, csv)."""
    root = tmp_path_factory.mktemp("chronomagic")
    metadata = sspo_tiny.build_tiny_video_dataset(str(root), num_videos=6, num_frames=12, layout="chronomagic")
    return str(root / "videos"), metadata


@pytest.fixture(scope="module")
def generic_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("generic")
    metadata = sspo_tiny.build_tiny_video_dataset(str(root), num_videos=4, num_frames=[12, 12, 12, 5], layout="generic")
    return str(root / "videos"), metadata


def parse(model_dir, adapter_dir, video_folder, metadata, *extra):
    return train.parse_args(["--pretrained_model_name_or_path", model_dir, "--motion_adapter_name_or_path", adapter_dir,
                             "--video_folder", video_folder, "--metadata_file", metadata, "--resolution", "64",
                             "--num_frames", "4", "--sample_stride", "2", "--seed", "0", *extra])


# --- data ---------------------------------------------------------------------------------


def test_frame_indices_follow_animatediff_rule():
    rng = np.random.default_rng(0)
    for _ in range(20):
        indices = train.sample_frame_indices(100, 16, 4, rng)
        assert len(indices) == 16 and np.all(np.diff(indices) == 4) and indices[-1] < 100
    # A video shorter than (16-1)*4+1 = 61 frames: the clip is the whole video, stride shortened.
    short = train.sample_frame_indices(31, 16, 4, rng)
    assert short[0] == 0 and short[-1] == 30 and np.all(np.diff(short) == 2)


def test_chronomagic_csv_is_detected_and_decoded(tiny_model_dir, tiny_motion_adapter_dir, chronomagic):
    from transformers import CLIPTokenizer

    video_folder, metadata = chronomagic
    args = parse(tiny_model_dir, tiny_motion_adapter_dir, video_folder, metadata)
    records = train.load_video_records(args)
    assert len(records) == 6
    path, caption = records[0]
    assert path.endswith(".mp4") and os.path.dirname(path) == video_folder and "moving" in caption
    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir, subfolder="tokenizer")
    item = train.VideoClipDataset(records, args, tokenizer)[0]
    assert item["pixel_values"].shape == (4, 3, 64, 64)
    assert item["pixel_values"].min() >= -1 and item["pixel_values"].max() <= 1
    assert item["num_skipped"] == 0
    # The shape moves: frames differ.
    assert not torch.equal(item["pixel_values"][0], item["pixel_values"][-1])


def test_decoded_frames_have_the_sampled_stride(chronomagic):
    video_folder, _ = chronomagic
    path = os.path.join(video_folder, sorted(os.listdir(video_folder))[0])
    all_frames = train.decode_video_frames(path, 12, 1, np.random.default_rng(0))
    strided = train.decode_video_frames(path, 4, 3, np.random.default_rng(0))
    assert all_frames.shape == (12, 64, 64, 3)
    # 4 frames with stride 3 span the whole 12-frame clip: frames 0, 3, 6, 9 or shifted by the random start.
    starts = [s for s in range(12) if all(np.array_equal(strided[k], all_frames[s + 3 * k]) for k in range(4) if s + 3 * k < 12)]
    assert starts, "strided frames are not every third decoded frame"


def test_generic_jsonl_and_short_clip_handling(tiny_model_dir, tiny_motion_adapter_dir, generic_videos):
    from transformers import CLIPTokenizer

    video_folder, metadata = generic_videos
    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir, subfolder="tokenizer")
    args = parse(tiny_model_dir, tiny_motion_adapter_dir, video_folder, metadata, "--num_frames", "8")
    records = train.load_video_records(args)
    assert [os.path.basename(p) for p, _ in records] == [f"clip_{i}.mp4" for i in range(4)]
    dataset = train.VideoClipDataset(records, args, tokenizer)
    assert dataset[0]["pixel_values"].shape == (8, 3, 64, 64)
    with pytest.raises(SSPOInputError, match="Bad sample video .*clip_3.mp4: it has 5 frames, fewer than --num_frames 8"):
        dataset[3]  # 5 frames < 8
    skipping = train.VideoClipDataset(records, parse(tiny_model_dir, tiny_motion_adapter_dir, video_folder, metadata,
                                                     "--num_frames", "8", "--on_bad_sample", "skip"), tokenizer)
    torch.manual_seed(0)
    item = skipping[3]
    assert item["num_skipped"] >= 1 and item["pixel_values"].shape == (8, 3, 64, 64)


def test_corrupt_mp4_is_named_or_skipped(tiny_model_dir, tiny_motion_adapter_dir, chronomagic, tmp_path):
    from transformers import CLIPTokenizer

    video_folder, metadata = chronomagic
    bad_folder = tmp_path / "videos"
    shutil.copytree(video_folder, bad_folder)
    first = sorted(os.listdir(bad_folder))[0]
    (bad_folder / first).write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir, subfolder="tokenizer")
    args = parse(tiny_model_dir, tiny_motion_adapter_dir, str(bad_folder), metadata)
    records = train.load_video_records(args)
    bad_index = [i for i, (p, _) in enumerate(records) if p.endswith(first)][0]
    with pytest.raises(SSPOInputError, match=f"Bad sample video .*{first}"):
        train.VideoClipDataset(records, args, tokenizer)[bad_index]
    args.on_bad_sample = "skip"
    torch.manual_seed(1)
    assert train.VideoClipDataset(records, args, tokenizer)[bad_index]["num_skipped"] >= 1


def test_missing_video_column_and_metadata_are_clear_errors(tiny_model_dir, tiny_motion_adapter_dir, tmp_path):
    (tmp_path / "meta.csv").write_text("clip,text\na.mp4,hello\n")
    args = parse(tiny_model_dir, tiny_motion_adapter_dir, str(tmp_path), str(tmp_path / "meta.csv"))
    with pytest.raises(SSPOInputError, match="--video_column"):
        train.load_video_records(args)
    with pytest.raises(SSPOInputError, match="no such file"):
        parse(tiny_model_dir, tiny_motion_adapter_dir, str(tmp_path), str(tmp_path / "missing.csv"))


def test_datasets_folder_with_video_bytes_column(tiny_model_dir, tiny_motion_adapter_dir, chronomagic, tmp_path):
    import datasets
    from transformers import CLIPTokenizer

    video_folder, metadata = chronomagic
    clips = sorted(os.listdir(video_folder))[:3]
    rows = {"video": [open(os.path.join(video_folder, c), "rb").read() for c in clips], "caption": ["a", "b", "c"]}
    os.makedirs(tmp_path / "data")
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    args = train.parse_args(["--pretrained_model_name_or_path", tiny_model_dir, "--motion_adapter_name_or_path",
                             tiny_motion_adapter_dir, "--dataset_name", str(tmp_path), "--resolution", "64",
                             "--num_frames", "4", "--sample_stride", "2"])
    records = train.load_video_records(args)
    assert [caption for _, caption in records] == ["a", "b", "c"] and isinstance(records[0][0], bytes)
    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir, subfolder="tokenizer")
    assert train.VideoClipDataset(records, args, tokenizer)[1]["pixel_values"].shape == (4, 3, 64, 64)


def test_encode_video_is_b_c_f_h_w(tiny_model_dir):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_model_dir, subfolder="vae")
    pixels = torch.rand(2, 3, 3, 64, 64) * 2 - 1
    latents = train.encode_video(vae, pixels, torch.float32, torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 3, 8, 8)
    # Frame 1 of clip 1 equals encoding that frame alone (mean of the posterior, scaled).
    single = vae.encode(pixels[1, 1:2]).latent_dist.mean * vae.config.scaling_factor
    mean_latents = vae.encode(pixels.flatten(0, 1)).latent_dist.mean.unflatten(0, (2, 3)).permute(0, 2, 1, 3, 4)
    assert torch.allclose(mean_latents[1, :, 1] * vae.config.scaling_factor, single[0], atol=1e-5)


# --- end to end (accelerate launch) --------------------------------------------------------


def run_script(args, launcher="accelerate"):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    prefix = ([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--mixed_precision", "no",
               "--num_machines", "1", "--dynamo_backend", "no"] if launcher == "accelerate" else [sys.executable])
    return subprocess.run([*prefix, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=900, cwd=REPO_ROOT)


def assert_ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-5000:]}"


def e2e_args(model_dir, adapter_dir, video_folder, metadata, output_dir, *extra):
    return ["--pretrained_model_name_or_path", model_dir, "--motion_adapter_name_or_path", adapter_dir,
            "--video_folder", video_folder, "--metadata_file", metadata, "--output_dir", str(output_dir),
            "--resolution", "64", "--num_frames", "4", "--sample_stride", "2", "--train_batch_size", "2",
            "--self_sample_steps", "2", "--learning_rate", "1e-3", "--seed", "0", "--snapshot_steps", "1",
            "--checkpointing_steps", "1", "--checkpoints_total_limit", "2", *extra]


@pytest.fixture(scope="module")
def motion_lora_run(tiny_model_dir, tiny_motion_adapter_dir, chronomagic, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("motion_lora")
    result = run_script(e2e_args(tiny_model_dir, tiny_motion_adapter_dir, *chronomagic, output_dir,
                                 "--max_train_steps", "3", "--validation_prompts", PROMPT, "--validation_steps", "3",
                                 "--validation_inference_steps", "2"))
    assert_ok(result)
    return output_dir


def animatediff_pipeline(model_dir, adapter_dir):
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    pipe = AnimateDiffPipeline.from_pretrained(model_dir, motion_adapter=MotionAdapter.from_pretrained(adapter_dir))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, beta_schedule="linear")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe):
    return pipe(PROMPT, num_frames=4, num_inference_steps=2, output_type="latent",
                generator=torch.Generator().manual_seed(0)).frames


def test_motion_lora_run_outputs(motion_lora_run, tiny_model_dir, tiny_motion_adapter_dir):
    output_dir = motion_lora_run
    lora = load_file(output_dir / "pytorch_lora_weights.safetensors")
    assert lora and all("motion_modules" in key for key in lora)  # motion attention only
    pool = sspo_utils.ReferencePool.read_state(output_dir / "checkpoint-3" / "reference_pool.safetensors")
    assert pool["steps"] == [0, 1, 2, 3]  # the pool grows by one snapshot per step
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    validation = sorted(p.name for p in (output_dir / "validation").iterdir())
    for name in ("validation_step3_0.gif", "validation_step3_0.mp4", "final_trained_step3_0.gif", "final_base_step3_0.gif"):
        assert name in validation
    card = (output_dir / "README.md").read_text()
    assert "- animatediff" in card and "image_0.gif" in card and "AnimateDiffPipeline" in card
    assert (output_dir / "image_0.gif").read_bytes()[:6] in (b"GIF87a", b"GIF89a")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((output_dir / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert "validation" in events.Tags()["images"]  # add_video stores an animated GIF summary
    assert {"loss", "ssr_sft_fraction", "pool_size", "snapshot_age"} <= set(events.Tags()["scalars"])

    pipe = animatediff_pipeline(tiny_model_dir, tiny_motion_adapter_dir)
    base = generate(pipe)
    pipe.load_lora_weights(str(output_dir))
    assert not torch.equal(base, generate(pipe))


def test_motion_lora_resume_from_latest(motion_lora_run, tiny_model_dir, tiny_motion_adapter_dir, chronomagic, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(motion_lora_run, resumed)
    result = run_script(e2e_args(tiny_model_dir, tiny_motion_adapter_dir, *chronomagic, resumed, "--max_train_steps", "4",
                                 "--resume_from_checkpoint", "latest"))
    assert_ok(result)
    assert "Resuming from" in result.stdout + result.stderr
    pool = sspo_utils.ReferencePool.read_state(resumed / "checkpoint-4" / "reference_pool.safetensors")
    assert pool["steps"] == [0, 1, 2, 3, 4]


def test_lora_target_with_sft_trains_spatial_and_motion(tiny_model_dir, tiny_motion_adapter_dir, chronomagic, tmp_path):
    result = run_script(e2e_args(tiny_model_dir, tiny_motion_adapter_dir, *chronomagic, tmp_path, "--max_train_steps", "2",
                                 "--train_target", "lora", "--loss_type", "sft", "--report_to", "none",
                                 "--dataloader_num_workers", "1", "--gradient_checkpointing", "--use_8bit_adam",
                                 "--proportion_empty_prompts", "0.5"))
    assert_ok(result)
    keys = list(load_file(tmp_path / "pytorch_lora_weights.safetensors"))
    assert any("motion_modules" in k for k in keys) and any("motion_modules" not in k for k in keys)


def test_motion_modules_target_saves_adapter_and_resumes(tiny_model_dir, tiny_motion_adapter_dir, generic_videos, tmp_path):
    from diffusers import MotionAdapter

    common = e2e_args(tiny_model_dir, tiny_motion_adapter_dir, *generic_videos, tmp_path, "--train_target", "motion_modules",
                      "--report_to", "none", "--on_bad_sample", "skip", "--learning_rate", "1e-4")
    assert_ok(run_script([*common, "--max_train_steps", "1"]))
    assert (tmp_path / "checkpoint-1" / "diffusion_pytorch_model.safetensors").is_file()
    result = run_script([*common, "--max_train_steps", "2", "--resume_from_checkpoint", "latest"], launcher="python")
    assert_ok(result)
    trained = MotionAdapter.from_pretrained(str(tmp_path))
    initial = MotionAdapter.from_pretrained(tiny_motion_adapter_dir)
    changed = [name for name, p in trained.state_dict().items() if not torch.equal(p, initial.state_dict()[name])]
    assert changed
    pool = sspo_utils.ReferencePool.read_state(tmp_path / "checkpoint-2" / "reference_pool.safetensors")
    assert pool["steps"] == [0, 1, 2] and len(pool["names"]) == len(list(initial.parameters()))  # every motion-module weight
    assert not (tmp_path / "pytorch_lora_weights.safetensors").exists()


def test_num_frames_longer_than_every_clip_is_a_clear_error(tiny_model_dir, tiny_motion_adapter_dir, chronomagic, tmp_path):
    result = run_script(e2e_args(tiny_model_dir, tiny_motion_adapter_dir, *chronomagic, tmp_path, "--max_train_steps", "1",
                                 "--num_frames", "40", "--report_to", "none"), launcher="python")
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: Bad sample video") and "fewer than --num_frames 40" in last_line
    assert not (tmp_path / "pytorch_lora_weights.safetensors").exists()


def test_incompatible_motion_adapter_is_a_clear_error(tiny_model_dir, chronomagic, tmp_path):
    from diffusers import MotionAdapter

    adapter_dir = tmp_path / "adapter"
    MotionAdapter(block_out_channels=(32, 64, 64), motion_layers_per_block=2, motion_num_attention_heads=4,
                  motion_norm_num_groups=32, motion_max_seq_length=32).save_pretrained(str(adapter_dir))
    result = run_script(e2e_args(tiny_model_dir, str(adapter_dir), *chronomagic, tmp_path / "out", "--max_train_steps", "1"),
                        launcher="python")
    assert result.returncode == 2 and "does not fit the base UNet" in result.stderr.strip().splitlines()[-1]


def test_the_video_trainer_keeps_the_papers_ssr_while_the_image_trainers_default_to_self_sample(generic_videos):
    import train_sspo_sd15
    import train_sspo_sdxl

    video = parse("unused", "unused", *generic_videos)
    image_flags = ["--pretrained_model_name_or_path", "unused", "--train_data_dir", "unused"]
    assert video.ssr == "sft"  # the decisive study measured images only
    assert train_sspo_sd15.parse_args(image_flags).ssr == train_sspo_sdxl.parse_args(image_flags).ssr == "self_sample"
