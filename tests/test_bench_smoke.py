"""benchmarks/bench_sspo.py in smoke mode, for images and for video (--video): it runs and writes its table, JSON
and plot (timings are not tested); the random-init SD1.5, AnimateDiff v1-5-2 and SDXL architectures;
benchmarks/gpu_smoke.sh on CPU (slow)."""

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO_ROOT, "benchmarks", "bench_sspo.py")
PHASES = {"self_sampling", "swap", "reference_forward", "policy_forward_backward", "other"}


def bench_module():
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    try:
        return importlib.import_module("bench_sspo")
    finally:
        sys.path.pop(0)


def has_matplotlib():
    return importlib.util.find_spec("matplotlib") is not None


@pytest.mark.slow  # 35-65 s on 2 cores: keeps the default suite under 15 minutes
def test_benchmark_smoke_writes_table_json_and_plot(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    # One thread: on a shared 2-core CPU two threads wait on each other and the run takes minutes.
    result = subprocess.run([sys.executable, BENCH, "--smoke", "--num_threads", "1",
                             "--configs", "dpo", "sspo_probe", "sspo_10", "--output_dir", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "bench_sspo.json").read_text())
    assert {"device", "device_name", "torch", "date", "cpu_model", "cpu_count"} <= set(report["machine"])
    assert report["task"] == "image" and report["video"] is None and report["skipped_configs"] == {}
    assert report["settings"]["optimizer"] == "AdamW" and report["settings"]["dtype"] == "fp32"
    assert report["matmul_peak"]["dtype"] == "float32" and report["matmul_peak"]["tflops"] > 0
    assert [row["config"] for row in report["configs"]] == ["dpo", "sspo_probe", "sspo_10"]
    for row in report["configs"]:
        assert row["step_seconds_median"] > 0 and row["peak_memory_bytes"] > 0
        assert set(row["phase_seconds_per_step"]) == PHASES and set(row["flops_per_step"]) == PHASES
        assert row["flops_per_step"]["reference_forward"] > 0 and row["flops_per_step"]["policy_forward_backward"] > 0
        # same batch as the reference pass; with frozen base weights the backward is about one more forward
        assert 1.8 < row["flops_per_step"]["policy_forward_backward"] / row["flops_per_step"]["reference_forward"] < 3.5
        assert {"reference_forward", "policy_forward_backward", "step"} <= set(row["mfu"])
    dpo, probe, sspo = report["configs"]
    assert sspo["phase_seconds_per_step"]["self_sampling"] > 0 and sspo["flops_per_step"]["self_sampling"] > 0
    assert "self_sampling" in sspo["mfu"]
    assert probe["phase_seconds_per_step"]["self_sampling"] == 0  # the probe skips generation
    assert probe["flops_per_step"]["self_sampling"] == 0

    batched = report["batched_self_sampling"]
    assert (batched["micro_batches"], batched["micro_batch_size"]) == (8, 1)
    assert batched["variants"]["per_micro_batch"]["calls"] == 8 and batched["variants"]["batched"]["calls"] == 1
    for variant in batched["variants"].values():
        assert variant["samples_per_second"] > 0 and variant["mfu"] > 0
    assert batched["batched_over_per_micro_batch"] > 0
    assert batched["max_abs_latent_diff"] < 1e-3  # same seeds, same latents up to float reordering

    assert {"1_self_sampling_over_stock", "2_sspo_without_sampling_over_dpo", "3_overhead_ratio_sspo",
            "6_batched_over_per_micro_batch_sampling", "7_self_sampling_mfu_batched"} <= set(report["targets"])
    table = (tmp_path / "bench_sspo.md").read_text()
    for text in ("| sspo_10 |", "Self-sampling pipeline vs stock pipeline", "CPU MFU", "| per_micro_batch |",
                 "| batched |", "Batched / per micro-batch", "| 7_self_sampling_mfu_batched |"):
        assert text in table
    if has_matplotlib():
        assert report["phase_plot"] and (tmp_path / "phases.png").stat().st_size > 0
    else:
        assert report["phase_plot"] is None and "matplotlib is not installed" in result.stderr


@pytest.mark.slow  # 35-65 s on 2 cores: keeps the default suite under 15 minutes
def test_video_benchmark_smoke_writes_table_json_and_plot(tmp_path):
    """--video: the AnimateDiff step on the tiny model + tiny MotionAdapter (8 frames); dpo is skipped with a
    note, targets 2 and 4 are n/a, the swap is reported per train target with its snapshot size."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    # fewer configurations, swap targets and sampling micro-batches than the defaults: well under a minute
    result = subprocess.run([sys.executable, BENCH, "--video", "--smoke", "--num_threads", "1",
                             "--configs", "dpo", "sft", "sspo_probe", "sspo_10",
                             "--swap_train_targets", "motion_lora", "motion_modules", "--sampling_micro_batches", "4",
                             "--output_dir", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "bench_sspo.json").read_text())
    assert report["task"] == "video"
    video = report["video"]
    assert video["num_frames"] == 8 and video["train_target"] == "motion_lora"
    assert "tiny MotionAdapter" in video["motion_adapter"] and video["latent_layout"] == "b c f h w"
    assert video["trainable_parameters"] > 0 and video["snapshot_mib"] == video["snapshot_bytes"] / 2**20 > 0
    assert report["settings"]["unet_class"] == "UNetMotionModel"
    assert list(report["skipped_configs"]) == ["dpo"]
    assert [row["config"] for row in report["configs"]] == ["sft", "sspo_probe", "sspo_10"]
    sft, probe, sspo = report["configs"]
    for row in report["configs"]:
        assert row["train_target"] == "motion_lora" and row["swap_mib"] == video["snapshot_mib"]
        assert set(row["phase_seconds_per_step"]) == PHASES and row["peak_memory_bytes"] > 0
        assert row["flops_per_step"]["policy_forward_backward"] > 0 and "step" in row["mfu"]
    assert (sft["swaps_per_step"], probe["swaps_per_step"], sspo["swaps_per_step"]) == (0, 2, 2)
    for row in (probe, sspo):
        assert 1.8 < row["flops_per_step"]["policy_forward_backward"] / row["flops_per_step"]["reference_forward"] < 3.5
    assert sspo["phase_seconds_per_step"]["self_sampling"] > 0 and sspo["flops_per_step"]["self_sampling"] > 0
    assert probe["flops_per_step"]["self_sampling"] == 0

    stock = report["self_sampling_vs_stock"]
    assert stock["stock_pipeline"] == "AnimateDiffPipeline" and stock["num_frames"] == 8
    assert stock["latent_shape"] == [2, 4, 8, 8, 8]  # b c f h w
    assert stock["ratio"] > 0 and stock["max_abs_latent_diff"] < 1e-3  # same seed: the same videos
    batched = report["batched_self_sampling"]
    assert batched["num_frames"] == 8 and (batched["micro_batches"], batched["micro_batch_size"]) == (4, 1)
    assert batched["variants"]["batched"]["calls"] == 1 and batched["max_abs_latent_diff"] < 1e-3

    swaps = report["swap_share_per_train_target"]
    assert list(swaps) == ["motion_lora", "motion_modules"]
    assert swaps["motion_lora"]["measured_in"] == "main run" and swaps["motion_modules"]["measured_in"] == "separate run"
    assert swaps["motion_modules"]["snapshot_mib"] > swaps["motion_lora"]["snapshot_mib"] > 0
    for swap in swaps.values():
        assert swap["config"] == "sspo_10" and swap["swaps_per_step"] == 2 and swap["swap_seconds_per_step"] > 0

    targets = report["targets"]
    for name in ("2_sspo_without_sampling_over_dpo", "4_peak_memory_sspo_over_dpo"):
        assert targets[name]["measured"] is None and targets[name]["met"] is None
        assert "n/a for video" in targets[name]["scope"]
    assert {"1_self_sampling_over_stock", "3_overhead_ratio_sspo", "5_swap_share_of_step_motion_lora",
            "5_swap_share_of_step_motion_modules", "6_batched_over_per_micro_batch_sampling",
            "7_self_sampling_mfu_batched"} <= set(targets)
    table = (tmp_path / "bench_sspo.md").read_text()
    for text in ("TEXT-TO-VIDEO (AnimateDiff", "8 frames per video", "| dpo | skipped |", "dpo: skipped, image-only",
                 "videos/s", "AnimateDiffPipeline", "8-frame videos", "snapshot MiB", "| motion_modules |",
                 "| 2_sspo_without_sampling_over_dpo | n/a |", "n/a for video"):
        assert text in table
    if has_matplotlib():
        assert report["phase_plot"] and (tmp_path / "phases.png").stat().st_size > 0


def test_video_flags_need_video():
    bench = bench_module()
    for flags in (["--num_frames", "8"], ["--motion_adapter_name_or_path", "x"]):
        with pytest.raises(SystemExit):
            bench.parse_args(flags)
    with pytest.raises(SystemExit):  # a local base has no default motion adapter
        bench.parse_args(["--video", "--pretrained_model_name_or_path", "some/model"])
    args = bench.parse_args(["--video"])
    assert args.train_target == "motion_lora" and args.num_frames is None


def test_random_init_motion_adapter_has_the_v1_5_2_architecture():
    """Built on the meta device: animatediff-motion-adapter-v1-5-2's layout (mid-block motion module, 32 frames)."""
    from accelerate import init_empty_weights
    from diffusers import UNetMotionModel

    bench = bench_module()
    adapter = bench.random_init_motion_adapter("sd15")
    assert sum(p.numel() for p in adapter.parameters()) == 453_209_280
    assert adapter.config.use_motion_mid_block and adapter.config.motion_max_seq_length == 32
    assert all(p.is_meta for p in adapter.parameters())
    unet2d = bench.random_init_modules("sd15")[0]
    with init_empty_weights():
        unet = UNetMotionModel.from_unet2d(unet2d, adapter, load_weights=False)
    motion = sum(p.numel() for n, p in unet.named_parameters() if "motion_modules" in n)
    assert motion == 453_209_280  # what --train_target motion_modules trains and each snapshot copies
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964 + 453_209_280


def test_random_init_reduced_video_pipeline_materializes_and_runs():
    bench = bench_module()
    args = bench.parse_args(["--video", "--random_init_from_config", "sd15_reduced", "--device", "cpu"])
    pipe = bench.load_video_pipeline(args, torch.device("cpu"), torch.float32)
    assert type(pipe).__name__ == "AnimateDiffPipeline" and type(pipe.unet).__name__ == "UNetMotionModel"
    assert not any(p.is_meta for p in pipe.unet.parameters())
    assert pipe.scheduler.config.beta_schedule == "linear"  # train_sspo_animatediff.py's --beta_schedule default
    with torch.no_grad():
        embeds = pipe.text_encoder(pipe.tokenizer(["a red circle"], padding="max_length", max_length=77,
                                                  return_tensors="pt").input_ids)[0]
        out = pipe.unet(torch.randn(1, 4, 2, 8, 8), 500, embeds.repeat_interleave(2, dim=0)).sample
    assert out.shape == (1, 4, 2, 8, 8) and torch.isfinite(out).all()


def test_random_init_sd15_has_the_real_architecture():
    """Built on the meta device: the SD1.5 parameter counts, no memory, no download."""
    bench = bench_module()
    unet, vae, text_encoder, tokenizer = bench.random_init_modules("sd15")
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert sum(p.numel() for p in text_encoder.parameters()) == 123_060_480
    assert all(p.is_meta for p in unet.parameters())
    assert tuple(unet.config.block_out_channels) == (320, 640, 1280, 1280) and unet.config.cross_attention_dim == 768
    ids = tokenizer(["a photo of an astronaut riding a horse"], padding="max_length", max_length=77).input_ids[0]
    assert len(ids) == 77 and max(ids) < text_encoder.config.vocab_size
    assert text_encoder.config.eos_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_random_init_sdxl_has_the_real_architecture():
    """bench_sspo_sdxl.py's SDXL base on the meta device: the published parameter counts."""
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    try:
        bench_sdxl = importlib.import_module("bench_sspo_sdxl")
    finally:
        sys.path.pop(0)
    unet, vae, text_encoder, text_encoder_2, tokenizer = bench_sdxl.random_sdxl_modules()
    counts = [sum(p.numel() for p in model.parameters()) for model in (unet, vae, text_encoder, text_encoder_2)]
    assert counts == [2_567_463_684, 83_653_863, 123_060_480, 694_659_840]
    assert all(p.is_meta for p in unet.parameters())
    # The UNet's added embedding takes six time ids and the second encoder's pooled projection.
    assert unet.config.projection_class_embeddings_input_dim == 6 * unet.config.addition_time_embed_dim + \
        text_encoder_2.config.projection_dim
    assert unet.config.cross_attention_dim == text_encoder.config.hidden_size + text_encoder_2.config.hidden_size


def test_random_init_reduced_materializes_and_runs():
    bench = bench_module()
    pipe = bench.random_init_pipeline("sd15_reduced", torch.device("cpu"), torch.float32)
    position_ids = next(b for n, b in pipe.text_encoder.named_buffers() if n.endswith("position_ids"))
    assert torch.equal(position_ids.flatten(), torch.arange(77))  # buffers survive to_empty
    assert not any(p.is_meta for p in pipe.unet.parameters())
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.scheduler.config.num_train_timesteps == 1000
    with torch.no_grad():
        embeds = pipe.text_encoder(pipe.tokenizer(["a red circle"], padding="max_length", max_length=77,
                                                  return_tensors="pt").input_ids)[0]
        out = pipe.unet(torch.randn(1, 4, 8, 8), 500, embeds).sample
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


def test_sampling_without_lora_disables_the_lora_layers_only_while_sampling(tmp_path, monkeypatch):
    """--sampling_without_lora / --sampling_without_autocast (target 7's fixes, measured before they are built):
    every LoRA layer is off during the batched self-sampling and on again after it; the report says so."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    bench = bench_module()
    seen = []
    real = bench.sspo_utils.self_sample_step

    def recording(self_sampler, *args, **kwargs):
        layers = [m for m in self_sampler.unet.modules() if isinstance(m, BaseTunerLayer)]
        seen.append((len(layers), sum(m.disable_adapters for m in layers), torch.is_autocast_enabled("cpu")))
        return real(self_sampler, *args, **kwargs)

    monkeypatch.setattr(bench.sspo_utils, "self_sample_step", recording)
    args = bench.parse_args(["--device", "cpu", "--random_init_from_config", "sd15_reduced", "--smoke", "--configs",
                             "--skip", "stock", "per_micro_batch", "swap", "--sampling_without_lora",
                             "--sampling_without_autocast", "--dtype", "bf16", "--output_dir", str(tmp_path)])
    args.resolution = 64  # main() sets it from the model
    shared = bench.load_shared(args)
    shared.resolution = args.resolution
    result = bench.batched_self_sampling(args, shared)
    assert seen and all(n > 0 and off == n and not cast for n, off, cast in seen)
    assert not any(m.disable_adapters for m in shared.unet.modules() if isinstance(m, BaseTunerLayer))
    assert result["without_lora"] and result["without_autocast"] and result["batched_over_per_micro_batch"] is None
    with pytest.raises(SystemExit):
        bench.parse_args(["--video", "--train_target", "motion_modules", "--sampling_without_lora"])


@pytest.mark.slow
def test_gpu_smoke_script_on_cpu(tmp_path):
    """benchmarks/gpu_smoke.sh --device cpu: the GPU script's variants on the reduced SD1.5 architecture."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHON=sys.executable, OMP_NUM_THREADS="1")
    summary_dir = tmp_path / "summary"
    result = subprocess.run(["bash", os.path.join(REPO_ROOT, "benchmarks", "gpu_smoke.sh"), "--device", "cpu",
                             "--output_dir", str(tmp_path / "out"), "--summary_dir", str(summary_dir)],
                            capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((summary_dir / "gpu_smoke_summary.json").read_text())
    variants = {v["variant"]: v for v in summary["variants"]}
    assert {"adamw_sdpa", "realscale_4x8", "sampling_merged", "adam8bit_sdpa", "animatediff_motion_lora"} <= set(variants)
    assert variants["adam8bit_sdpa"]["settings"]["optimizer"] == "AdamW8bit"
    assert all(v["settings"]["gradient_checkpointing"] for v in variants.values())
    sspo = next(row for row in variants["adam8bit_sdpa"]["configs"] if row["config"] == "sspo_20")
    assert sspo["peak_memory_bytes"] > 0 and sspo["phase_seconds_per_step"]["self_sampling"] > 0
    video = variants["animatediff_motion_lora"]
    assert video["video"]["num_frames"] == 4 and video["video"]["train_target"] == "motion_lora"
    video_sspo = next(row for row in video["configs"] if row["config"] == "sspo_20")
    assert video_sspo["phase_seconds_per_step"]["self_sampling"] > 0
    profile = variants["adamw_sdpa"]["batched_self_sampling"]["profile"]
    assert profile["top"] and 0 < sum(k["share"] for k in profile["top"]) <= 1 + 1e-6
    assert (tmp_path / "out" / "adamw_sdpa" / "profile_self_sampling.txt").read_text().count("aten::") >= 5
    real_scale = variants["realscale_4x8"]
    assert (real_scale["batch_size"], real_scale["gradient_accumulation_steps"]) == (2, 2)  # 4 x 8 on the GPU
    assert "8_sspo_over_dpo_step" in real_scale["targets"]
    merged = variants["sampling_merged"]["batched_self_sampling"]
    assert merged["merged_copy"] and merged["without_autocast"] and 0 <= merged["profile"]["aten_copy_share"] <= 1
    text = (summary_dir / "gpu_smoke_summary.md").read_text()
    assert "| adam8bit_sdpa | 64 px, batch 1 x 1 | sspo_20 |" in text and "sd15_reduced" in text
    assert "| animatediff_motion_lora | 64 px x 4 frames, batch 1 x 1 | sspo_20 |" in text and "Top kernels" in text
    assert "| realscale_4x8 | 64 px, batch 2 x 2 | sspo_20 |" in text and "SSPO (20 sampling steps) / DPO" in text
    assert "| sampling_merged | 2 |" in text and "| merged copy, no autocast |" in text
    assert "xformers" in result.stdout  # says whether xformers was used or why not
    sdxl = summary["sdxl"][0]  # train_sspo_sdxl.py's own step on the tiny SDXL architecture
    assert sdxl["use_8bit_adam"] and sdxl["gradient_checkpointing"] and len(sdxl["step_seconds"]) == 3
    assert sdxl["peak_rss_bytes"] > 0 and "SDXL (train_sspo_sdxl.py): tiny SDXL architecture" in text


@pytest.mark.slow  # about 45 s of CPU: two configurations of the reduced SD1.5 architecture
def test_accumulation_and_merged_copy_follow_the_trainer(tmp_path):
    """--gradient_accumulation_steps 2 with --self_sample_merged_copy on: the self-samples of both micro-batches
    come from one merge of the drawn snapshot (timed as the swap it replaces), each micro-batch swaps once for its
    reference pass, samples/s counts both micro-batches, and the SSPO / DPO ratio is reported."""
    bench = bench_module()
    args = bench.parse_args(["--device", "cpu", "--random_init_from_config", "sd15_reduced", "--smoke", "--batch_size",
                             "1", "--gradient_accumulation_steps", "2", "--self_sample_merged_copy", "on",
                             "--configs", "dpo", "sspo_10", "--output_dir", str(tmp_path)])
    args.resolution = 64  # main() sets it from the model
    shared = bench.load_shared(args)
    shared.resolution = args.resolution
    assert shared.merged is not None and shared.merged.dtype == torch.float32
    calls = []
    real = bench.sspo_utils.self_sample_step

    def recording(self_sampler, prompt_embeds, *rest, unet=None, **kwargs):
        calls.append((len(prompt_embeds), unet is shared.merged.unet, torch.is_autocast_enabled("cpu")))
        return real(self_sampler, prompt_embeds, *rest, unet=unet, **kwargs)

    bench.sspo_utils.self_sample_step = recording
    try:
        dpo, sspo = (bench.run_config(args, name, shared) for name in ("dpo", "sspo_10"))
    finally:
        bench.sspo_utils.self_sample_step = real
    assert calls and all(call == (2, True, False) for call in calls)  # both micro-batches, one call, no autocast
    assert dpo["swaps_per_step"] == sspo["swaps_per_step"] == 2  # the reference passes only
    assert sspo["phase_seconds_per_step"]["self_sampling"] > 0
    assert sspo["samples_per_second"] == pytest.approx(2 / sspo["step_seconds_median"])
    targets = bench.summarize([dpo, sspo], None, None)
    assert targets["8_sspo_over_dpo_step"]["measured"] == pytest.approx(
        sspo["step_seconds_median"] / dpo["step_seconds_median"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--video", "--gradient_accumulation_steps", "2"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--sampling_without_lora", "--self_sample_merged_copy", "on"])
