"""train_sspo_sdxl.py on a tiny SDXL-architecture pipeline (two text encoders, a text_time UNet):
the self-sampler against the stock StableDiffusionXLPipeline, the micro-conditioning the data
pipeline records, end-to-end runs (SSPO, DPO on Pick-a-Pic pairs, SFT streaming), exact resume,
and the saved LoRA in the stock pipeline."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import sspo_tiny
import sspo_utils
import train_sspo_sdxl as train


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "train_sspo_sdxl.py")
PROMPTS = ["a red circle on a blue background", "a green square on a white background"]


def run_script(args, launcher="python", timeout=600, nonfinite_steps=None):
    """The script, or with ``nonfinite_steps`` ("1") through tests/instrumented_run.py, which makes the loss
    of those optimizer steps NaN from outside the training loop."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    prefix = ([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--mixed_precision", "no",
               "--num_machines", "1", "--dynamo_backend", "no"] if launcher == "accelerate" else [sys.executable])
    if nonfinite_steps:
        prefix += [os.path.join(REPO_ROOT, "tests", "instrumented_run.py"), "--nonfinite_steps", nonfinite_steps]
    return subprocess.run([*prefix, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO_ROOT)


def assert_ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\nSTDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-5000:]}"


@pytest.fixture(scope="module")
def sdxl_model_dir(tmp_path_factory):
    return sspo_tiny.build_tiny_sdxl_pipeline(str(tmp_path_factory.mktemp("tiny_sdxl") / "model"))


@pytest.fixture(scope="module")
def odd_size_imagefolder(tmp_path_factory):
    """8 shape images of several sizes and aspect ratios, so resizing and cropping really happen."""
    path = tmp_path_factory.mktemp("sdxl_data") / "data"
    sspo_tiny.build_tiny_imagefolder(str(path), num_examples=8)
    sizes = [(96, 64), (64, 80), (128, 128), (72, 72)]  # (width, height)
    for i, image_path in enumerate(sorted(path.glob("*.png"))):
        Image.open(image_path).resize(sizes[i % len(sizes)]).save(image_path)
    return str(path)


# ---------------------------------------------------------------------------
# The self-sampler equals the stock pipeline
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stock_pipe(sdxl_model_dir):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_sampler(pipe, scheduler_cls):
    return sspo_utils.SSPOSDXLSelfSamplingPipeline.from_training_components(
        vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2, tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2, unet=pipe.unet, scheduler=scheduler_cls.from_config(pipe.scheduler.config))


@pytest.mark.parametrize("guidance_scale, micro", [(5.0, None), (1.0, None), (5.0, ((96, 128), (16, 8)))])
def test_self_sampler_latents_equal_stock_sdxl_pipeline(stock_pipe, guidance_scale, micro):
    """Same prompts, scheduler (the pipeline's Euler), seed and micro-conditioning: the same z_s, to the bit."""
    original_size, crop = micro or ((64, 64), (0, 0))
    expected = stock_pipe(PROMPTS, num_inference_steps=8, guidance_scale=guidance_scale, output_type="latent",
                          original_size=original_size, crops_coords_top_left=crop, target_size=(64, 64),
                          generator=torch.Generator().manual_seed(0)).images
    sampler = make_sampler(stock_pipe, type(stock_pipe.scheduler))
    text_encoders = [stock_pipe.text_encoder, stock_pipe.text_encoder_2]
    tokenizers = [stock_pipe.tokenizer, stock_pipe.tokenizer_2]
    prompt_embeds, pooled = train.encode_prompt(text_encoders, [sspo_utils.tokenize(t, PROMPTS) for t in tokenizers])
    negative, negative_pooled = train.unconditional_embeds(text_encoders, tokenizers, force_zeros=True)
    time_ids = train.compute_time_ids(original_size, crop, (64, 64)).expand(2, -1)
    got = sampler.sample_latents(prompt_embeds, negative, 64, 64, 8, guidance_scale, torch.Generator().manual_seed(0),
                                 pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled,
                                 add_time_ids=time_ids)
    assert got.shape == expected.shape == (2, 4, 8, 8)
    assert torch.equal(got, expected)
    assert not torch.allclose(got[0], got[1])  # the prompts matter


def test_merged_copy_samples_like_the_lora_layers_and_leaves_the_trained_unet_alone(sdxl_model_dir, stock_pipe):
    """The SDXL trainer's merged-copy self-sampler (--self_sample_merged_copy on): in fp32 its latents equal the
    LoRA-layer sampler's up to reordering, and the trained UNet's weights are bit-identical before and after.
    Measured here (2026-12-04): max difference 2.8e-05 after 4 DDIM steps, latents clipped to [-1, 1] by the
    scheduler; the tolerance is 1e-4."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(os.path.join(sdxl_model_dir, "unet"))
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    trainable = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    pool = sspo_utils.ReferencePool(trainable)
    with torch.no_grad():
        for name, p in trainable:
            if ".lora_B." in name:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    pool.add(step=1)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    sampler = sspo_utils.SSPOSDXLSelfSamplingPipeline.from_training_components(
        vae=stock_pipe.vae, text_encoder=stock_pipe.text_encoder, text_encoder_2=stock_pipe.text_encoder_2,
        tokenizer=stock_pipe.tokenizer, tokenizer_2=stock_pipe.tokenizer_2, unet=unet,
        scheduler=DDIMScheduler.from_config(stock_pipe.scheduler.config))
    merged = sspo_utils.create_merged_copy("on", unet, pool.names, torch.float32)
    text_encoders = [stock_pipe.text_encoder, stock_pipe.text_encoder_2]
    tokenizers = [stock_pipe.tokenizer, stock_pipe.tokenizer_2]
    prompt_embeds, pooled = train.encode_prompt(text_encoders, [sspo_utils.tokenize(t, PROMPTS) for t in tokenizers])
    negative, negative_pooled = train.unconditional_embeds(text_encoders, tokenizers, force_zeros=True)
    conditioning = dict(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled,
                        add_time_ids=train.compute_time_ids((64, 64), (0, 0), (64, 64)).expand(2, -1))
    latents = {}
    for name, copy in (("lora_layers", None), ("merged", merged)):
        with sspo_utils.rcr_sampling_unet(pool, 1, sampler.unet, copy) as sampling_unet:
            latents[name] = sampler.sample_latents(prompt_embeds, negative, 64, 64, 4, 5.0,
                                                   torch.Generator().manual_seed(0), unet=sampling_unet, **conditioning)
    expected = latents["lora_layers"]
    assert (latents["merged"] - expected).abs().max() <= 1e-4
    with sspo_utils.rcr_sampling_unet(pool, 0, sampler.unet, merged) as sampling_unet:  # the snapshot matters
        initial = sampler.sample_latents(prompt_embeds, negative, 64, 64, 4, 5.0, torch.Generator().manual_seed(0),
                                         unet=sampling_unet, **conditioning)
    assert not torch.allclose(initial, expected, atol=1e-3)
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())


def test_micro_conditioning_changes_self_samples(stock_pipe):
    """add_time_ids reach the UNet: another original size or crop gives other latents."""
    sampler = make_sampler(stock_pipe, type(stock_pipe.scheduler))
    text_encoders = [stock_pipe.text_encoder, stock_pipe.text_encoder_2]
    tokenizers = [stock_pipe.tokenizer, stock_pipe.tokenizer_2]
    prompt_embeds, pooled = train.encode_prompt(text_encoders, [sspo_utils.tokenize(t, PROMPTS[:1]) for t in tokenizers])
    negative, negative_pooled = train.unconditional_embeds(text_encoders, tokenizers, force_zeros=True)
    latents = [sampler.sample_latents(prompt_embeds, negative, 64, 64, 4, 5.0, torch.Generator().manual_seed(0),
                                      pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled,
                                      add_time_ids=train.compute_time_ids(size, crop, (64, 64))[None])
               for size, crop in (((64, 64), (0, 0)), ((64, 64), (0, 32)), ((512, 64), (0, 0)))]
    assert not torch.equal(latents[0], latents[1]) and not torch.equal(latents[0], latents[2])


def test_batched_self_sample_step_does_not_depend_on_chunking(stock_pipe):
    """x^s for several micro-batches, with per-sample add_time_ids, is the same in one call or in chunks
    (DDIM; up to batch-size-dependent fp32 kernels): each sample keeps its own conditioning."""
    from diffusers import DDIMScheduler

    sampler = make_sampler(stock_pipe, DDIMScheduler)
    text_encoders = [stock_pipe.text_encoder, stock_pipe.text_encoder_2]
    tokenizers = [stock_pipe.tokenizer, stock_pipe.tokenizer_2]
    conditions = [train.encode_prompt(text_encoders, [sspo_utils.tokenize(t, PROMPTS) for t in tokenizers])] * 2
    negative, negative_pooled = train.unconditional_embeds(text_encoders, tokenizers, force_zeros=True)
    time_ids = [torch.tensor([[64.0, 96, 0, 16, 64, 64], [80, 64, 8, 0, 64, 64]])] * 2
    results = [sspo_utils.self_sample_step(
        sampler, [c[0] for c in conditions], negative, 64, 64, 3, 5.0, torch.Generator().manual_seed(0), chunk,
        pooled_prompt_embeds=[c[1] for c in conditions], negative_pooled_prompt_embeds=negative_pooled,
        add_time_ids=time_ids) for chunk in (None, 1, 3)]
    for latents in results[1:]:
        for got, want in zip(latents, results[0]):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(results[0][0], results[0][1])  # different noise per micro-batch


# ---------------------------------------------------------------------------
# Micro-conditioning recorded by the data pipeline (SDXL paper, sec. 2.2)
# ---------------------------------------------------------------------------


def preprocess_one(image, *flags):
    from transformers import CLIPTokenizer

    args = train.parse_args(["--pretrained_model_name_or_path", "unused", "--train_data_dir", "unused",
                             "--resolution", "64", *flags])
    tokenizer = CLIPTokenizer(*sspo_tiny.write_tokenizer_files(tempfile.mkdtemp()), model_max_length=77)
    preprocess = train.PreprocessTrain(args, [tokenizer, tokenizer], "text", ("image",), False)
    processed = preprocess({"text": ["a caption"], "image": [image]})
    return processed["pixel_values"][0], processed["add_time_ids"][0]


def gradient_image(width, height):
    """Every pixel distinct along x, so a crop's position can be read back from its pixels."""
    x = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
    y = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    array = torch.stack([x / width, y / height, torch.zeros_like(x)], dim=-1)
    return Image.fromarray((array * 255).round().to(torch.uint8).numpy())


def test_center_crop_records_original_size_and_crop_corner():
    # A 256x128 (w x h) image: resized to 128x64, then the centre 64x64 is cut from x = 32.
    _, time_ids = preprocess_one(gradient_image(256, 128))
    assert time_ids.tolist() == [128, 256, 0, 32, 64, 64]
    # A square image of the target size is not cropped at all.
    _, time_ids = preprocess_one(gradient_image(64, 64))
    assert time_ids.tolist() == [64, 64, 0, 0, 64, 64]
    # A tall one is cropped vertically.
    _, time_ids = preprocess_one(gradient_image(64, 100))
    assert time_ids.tolist() == [100, 64, 18, 0, 64, 64]


def test_random_crop_corner_is_where_the_pixels_come_from():
    """The recorded (top, left) is the offset of the trained pixels in the resized image."""
    from torchvision import transforms

    image = gradient_image(192, 64)  # already 64 high: the resize keeps it, only the crop moves
    resized = transforms.ToTensor()(image) * 2 - 1
    corners = set()
    for seed in range(6):
        torch.manual_seed(seed)
        pixels, time_ids = preprocess_one(image, "--random_crop")
        top, left = int(time_ids[2]), int(time_ids[3])
        assert time_ids[:2].tolist() == [64, 192] and time_ids[4:].tolist() == [64, 64]
        assert torch.allclose(pixels, resized[:, top:top + 64, left:left + 64], atol=1e-6)
        corners.add(left)
    assert len(corners) > 1  # the crop really moves


def test_flip_records_the_corner_in_the_flipped_image():
    from torchvision import transforms

    image = gradient_image(192, 64)
    flipped = transforms.ToTensor()(image).flip(-1) * 2 - 1
    for seed in range(8):
        torch.manual_seed(seed)
        pixels, time_ids = preprocess_one(image, "--random_crop", "--random_flip")
        left = int(time_ids[3])
        if torch.allclose(pixels, flipped[:, :, left:left + 64], atol=1e-6):
            return
    pytest.fail("no flipped crop in 8 draws")


# ---------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------


def common_args(model_dir, output_dir, *extra):
    return ["--pretrained_model_name_or_path", model_dir, "--output_dir", str(output_dir), "--resolution", "64",
            "--train_batch_size", "2", "--self_sample_steps", "2", "--self_sample_guidance_scale", "5",
            "--learning_rate", "1e-3", "--lr_scheduler", "constant", "--seed", "0", *extra]


def sspo_args(model_dir, data_dir, output_dir, *extra):
    """8 odd-size images, batch 2, accumulation 2: 2 optimizer steps per epoch, random crops and flips."""
    return common_args(model_dir, output_dir, "--train_data_dir", data_dir, "--gradient_accumulation_steps", "2",
                       "--snapshot_steps", "1", "--checkpointing_steps", "3", "--random_crop", "--random_flip",
                       "--report_to", "tensorboard", *extra)


@pytest.fixture(scope="module")
def sspo_run(sdxl_model_dir, odd_size_imagefolder, tmp_path_factory):
    """4 SSPO optimizer steps (two epochs) through accelerate launch, a checkpoint at step 3, validation images."""
    output_dir = tmp_path_factory.mktemp("sdxl_sspo_run")
    result = run_script(sspo_args(sdxl_model_dir, odd_size_imagefolder, output_dir, "--max_train_steps", "4",
                                  "--validation_prompts", PROMPTS[0], "--validation_steps", "2",
                                  "--num_validation_images", "1", "--validation_inference_steps", "2"),
                        launcher="accelerate")
    assert_ok(result)
    return output_dir, result


def test_sspo_run_writes_lora_card_checkpoint_and_metrics(sspo_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir, _ = sspo_run
    assert (output_dir / "pytorch_lora_weights.safetensors").is_file()
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-3"]
    assert sspo_utils.verify_run(str(output_dir), print_fn=lambda *a: None) == 0
    card = (output_dir / "README.md").read_text()
    for expected in ("- sspo", "- stable-diffusion-xl", "StableDiffusionXLPipeline", "`ssr` | `self_sample`", "image_0.png"):
        assert expected in card, expected
    validation = sorted(p.name for p in (output_dir / "validation").iterdir())
    assert {"validation_step2_0.png", "validation_step4_0.png", "final_lora_step4_0.png", "final_base_step4_0.png"} <= set(validation)
    assert Image.open(output_dir / "validation" / "final_lora_step4_0.png").size == (64, 64)
    pool = sspo_utils.ReferencePool.read_state(output_dir / "checkpoint-3" / "reference_pool.safetensors")
    assert pool["steps"] == [0, 1, 2, 3]
    assert json.loads((output_dir / "checkpoint-3" / "sspo_run_config.json").read_text())["rank"] == 8
    event_dir = next((output_dir / "logs").rglob("events.out.tfevents.*")).parent
    accumulator = EventAccumulator(str(event_dir))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"loss", "ssr_sft_fraction", "implicit_acc", "model_err_s", "ref_err_s", "snapshot_age", "grad_norm"} <= tags


def test_saved_lora_loads_in_stock_sdxl_pipeline_and_changes_output(sspo_run, sdxl_model_dir):
    from diffusers import StableDiffusionXLPipeline

    output_dir, _ = sspo_run
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_model_dir)
    pipe.set_progress_bar_config(disable=True)

    def generate():
        return pipe(PROMPTS[0], num_inference_steps=3, output_type="latent", generator=torch.Generator().manual_seed(0)).images

    base = generate()
    pipe.load_lora_weights(str(output_dir))
    assert not torch.equal(base, generate())
    assert all(key.startswith("unet.") for key in load_file(output_dir / "pytorch_lora_weights.safetensors"))


def test_resume_is_exact(sspo_run, sdxl_model_dir, odd_size_imagefolder, tmp_path):
    """Stopped after step 3 (mid-epoch), resumed to step 4: the same LoRA, bit for bit, and the same logged loss.
    Both runs go through accelerate launch, which runs a CPU process at one thread: a plain `python` resume used
    both cores, and its float reductions, hence its weights, differed in the last bits."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    straight, _ = sspo_run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    result = run_script(sspo_args(sdxl_model_dir, odd_size_imagefolder, resumed, "--max_train_steps", "4",
                                  "--resume_from_checkpoint", "latest"), launcher="accelerate")
    assert_ok(result)
    assert "Resuming from" in result.stdout + result.stderr
    lora_straight = load_file(straight / "pytorch_lora_weights.safetensors")
    lora_resumed = load_file(resumed / "pytorch_lora_weights.safetensors")
    assert lora_straight.keys() == lora_resumed.keys()
    assert all(torch.equal(lora_straight[key], lora_resumed[key]) for key in lora_straight)

    def logged_loss(output_dir):
        accumulator = EventAccumulator(str(next((output_dir / "logs").rglob("events.out.tfevents.*")).parent))
        accumulator.Reload()
        return {event.step: event.value for event in accumulator.Scalars("loss")}

    assert logged_loss(resumed)[4] == logged_loss(straight)[4]


@pytest.fixture(scope="module")
def pickapic_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sdxl_pickapic")
    sspo_tiny.write_pickapic_parquet(str(path), [1, 0, 0.5, 1, 0, 1, 0.5, 0])
    return str(path)


def test_dpo_on_pickapic_pairs_drops_ties_and_skips_a_nonfinite_step(sdxl_model_dir, pickapic_dir, tmp_path):
    """Diffusion-DPO on the real pairs, with caption dropout and 8-bit Adam; step 1's loss is made
    NaN from outside: the step is skipped, training goes on."""
    result = run_script(common_args(sdxl_model_dir, tmp_path, "--dataset_name", pickapic_dir, "--loss_type", "dpo",
                                    "--max_train_steps", "2", "--report_to", "none", "--use_8bit_adam",
                                    "--proportion_empty_prompts", "0.5"), nonfinite_steps="1")
    assert_ok(result)
    assert "kept 6 of 8 rows (2 ties or unlabeled rows dropped)" in result.stdout + result.stderr
    assert "Step 1: non-finite loss" in result.stderr and "Step 2: non-finite" not in result.stderr
    lora = load_file(tmp_path / "pytorch_lora_weights.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in lora.values())
    assert any(tensor.abs().sum() > 0 for key, tensor in lora.items() if "lora.up" in key)  # step 2 updated (up starts at 0)


@pytest.mark.slow  # another minute-long subprocess; the default suite covers SFT through the SD1.5 script
def test_sft_streaming_runs(sdxl_model_dir, pickapic_dir, tmp_path):
    result = run_script(common_args(sdxl_model_dir, tmp_path, "--dataset_name", pickapic_dir, "--loss_type", "sft",
                                    "--streaming", "--max_train_steps", "2", "--report_to", "none"))
    assert_ok(result)
    assert (tmp_path / "README.md").read_text().count("`sft`") >= 1
