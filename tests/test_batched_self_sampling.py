"""Batched self-sampling across gradient accumulation: ``self_sample_step`` generates the x^s of
all micro-batches of an optimizer step in chunks of --self_sample_batch_size, with the same
latents as one call per micro-batch; ``optimizer_step_batches`` / ``accumulate_micro_batch``
keep accelerate's optimizer-step boundaries; and the trainer gives the same weights either way."""

import os
import subprocess
import sys

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file

import sspo_utils
from sspo_utils import SSPOSelfSamplingPipeline, accumulate_micro_batch, optimizer_step_batches, self_sample_step


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a red circle", "a green square", "a blue triangle", "a yellow circle", "a white square"]


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None, requires_safety_checker=False)


def make_sampler(pipe, scheduler_class=DDIMScheduler):
    return SSPOSelfSamplingPipeline.from_training_components(
        pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, scheduler_class.from_config(pipe.scheduler.config))


def micro_batch_embeds(pipe, sizes):
    """One prompt-embedding tensor per micro-batch, of the given sizes."""
    ids = sspo_utils.tokenize(pipe.tokenizer, PROMPTS[:sum(sizes)])
    with torch.no_grad():
        embeds = sspo_utils.encode_prompt_ids(pipe.text_encoder, ids)
    return list(embeds.split(sizes))


def per_micro_batch_latents(sampler, embeds, negative, seed):
    """The unbatched path: one sample_latents call per micro-batch, in order, one generator."""
    generator = torch.Generator().manual_seed(seed)
    return [sampler.sample_latents(e, negative, 64, 64, 4, 7.5, generator) for e in embeds]


@pytest.mark.parametrize("sizes", [[1, 1, 1, 1], [2, 2, 1]])
@pytest.mark.parametrize("chunk_size", [1, 3, None])
def test_batched_equals_per_micro_batch_with_ddim(pipe, sizes, chunk_size):
    sampler = make_sampler(pipe)
    embeds = micro_batch_embeds(pipe, sizes)
    negative = micro_batch_embeds(pipe, [1])[0] * 0  # any fixed negative embedding
    expected = per_micro_batch_latents(sampler, embeds, negative, seed=7)
    batched = self_sample_step(sampler, embeds, negative, 64, 64, 4, 7.5, torch.Generator().manual_seed(7), chunk_size)
    assert [b.shape for b in batched] == [e.shape for e in expected]
    for got, want in zip(batched, expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)  # batch-size-dependent fp32 kernels
    # Not trivially equal: different micro-batches got different noise.
    assert not torch.allclose(batched[0], batched[1])


def test_batched_generator_state_matches_per_micro_batch(pipe):
    """The next draw after the step is the same either way, so later steps agree too."""
    sampler = make_sampler(pipe)
    embeds = micro_batch_embeds(pipe, [1, 1, 1])
    negative = embeds[0] * 0
    generator_a, generator_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for e in embeds:
        sampler.sample_latents(e, negative, 64, 64, 2, 7.5, generator_a)
    self_sample_step(sampler, embeds, negative, 64, 64, 2, 7.5, generator_b, chunk_size=None)
    assert torch.equal(generator_a.get_state(), generator_b.get_state())


def test_ddpm_chunking_changes_draws_but_not_shapes(pipe):
    """DDPM draws noise at every step per call: chunking changes the draws (documented)."""
    sampler = make_sampler(pipe, DDPMScheduler)
    embeds = micro_batch_embeds(pipe, [1, 1])
    negative = embeds[0] * 0
    one_call = self_sample_step(sampler, embeds, negative, 64, 64, 3, 7.5, torch.Generator().manual_seed(0), None)
    per_call = self_sample_step(sampler, embeds, negative, 64, 64, 3, 7.5, torch.Generator().manual_seed(0), 1)
    assert [t.shape for t in one_call] == [t.shape for t in per_call]
    assert torch.isfinite(torch.cat(one_call)).all()


class FakeAccelerator:
    def __init__(self, gradient_accumulation_steps):
        self.gradient_accumulation_steps = gradient_accumulation_steps

    def skip_first_batches(self, dataloader, skip):
        return list(dataloader)[skip:]


@pytest.mark.parametrize("num_batches,accumulation,skip,expected", [
    (8, 3, 0, [[0, 1, 2], [3, 4, 5], [6, 7]]),  # the last step of the epoch is short, as in accelerate
    (8, 2, 0, [[0, 1], [2, 3], [4, 5], [6, 7]]),
    (8, 3, 3, [[3, 4, 5], [6, 7]]),  # resume skips whole optimizer steps
    (3, 1, 0, [[0], [1], [2]]),
])
def test_optimizer_step_batches_groups(num_batches, accumulation, skip, expected):
    groups = list(optimizer_step_batches(FakeAccelerator(accumulation), range(num_batches), skip))
    assert groups == expected


def test_accumulate_micro_batch_sets_the_step_boundary():
    from accelerate import Accelerator

    accelerator = Accelerator(gradient_accumulation_steps=3, cpu=True)
    model = accelerator.prepare(torch.nn.Linear(2, 1))
    seen = []
    for i in range(2):  # a short last step: the second micro-batch is its boundary
        with accumulate_micro_batch(accelerator, model, is_last=i == 1):
            seen.append(accelerator.sync_gradients)
    assert seen == [False, True]


def run_trainer(model_dir, data_dir, output_dir, *extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    command = [sys.executable, os.path.join(REPO_ROOT, "train_sspo_sd15.py"), "--pretrained_model_name_or_path",
               model_dir, "--train_data_dir", data_dir, "--output_dir", str(output_dir), "--resolution", "64",
               "--train_batch_size", "1", "--gradient_accumulation_steps", "3", "--self_sample_steps", "3",
               "--learning_rate", "1e-3", "--seed", "0", "--report_to", "tensorboard", "--snapshot_steps", "1",
               *extra]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return load_file(os.path.join(output_dir, "pytorch_lora_weights.safetensors")), result


def logged_scalars(output_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(next(output_dir.glob("logs/**/events.out.tfevents.*")).parent))
    accumulator.Reload()
    return {tag: [event.value for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_trainer_weights_do_not_depend_on_self_sample_batch_size(tiny_model_dir, tmp_path):
    """Accumulation 3, batch 1: x^s of a step in one call of 3 vs three calls of 1."""
    from sspo_tiny import build_tiny_imagefolder

    data_dir = build_tiny_imagefolder(str(tmp_path / "data"), num_examples=4)
    batched, result = run_trainer(tiny_model_dir, data_dir, tmp_path / "batched", "--checkpointing_steps", "1")
    per_micro_batch, _ = run_trainer(tiny_model_dir, data_dir, tmp_path / "per_micro_batch", "--self_sample_batch_size", "1")
    # Step metrics: the errors on x^s of step 1 come straight from the self-samples.
    batched_logs, per_micro_batch_logs = logged_scalars(tmp_path / "batched"), logged_scalars(tmp_path / "per_micro_batch")
    for key in ("ref_err_s", "model_err_s", "loss", "ref_err_w"):
        assert len(batched_logs[key]) == 2
        torch.testing.assert_close(torch.tensor(batched_logs[key]), torch.tensor(per_micro_batch_logs[key]),
                                   rtol=1e-3, atol=1e-6)
    # Weights: Adam's first updates are nearly sign(grad), so fp32 rounding can flip a gradient
    # component that is almost zero; all but a few elements must agree to 1e-5.
    assert batched.keys() == per_micro_batch.keys()
    differing = sum(int(((batched[n] - per_micro_batch[n]).abs() > 1e-5).sum()) for n in batched)
    total = sum(t.numel() for t in batched.values())
    assert differing <= 0.01 * total, f"{differing} of {total} LoRA weights differ"
    # One epoch of 4 micro-batches at accumulation 3: a step of 3 and a short step of 1.
    assert sorted(p.name for p in (tmp_path / "batched").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert "3 x^s per optimizer step and process, in 1 call(s) of up to 3" in result.stderr


def test_self_sample_batch_size_must_be_positive(tiny_model_dir, tiny_imagefolder_dir, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "train_sspo_sd15.py"), "--pretrained_model_name_or_path",
         tiny_model_dir, "--train_data_dir", tiny_imagefolder_dir, "--output_dir", str(tmp_path / "out"),
         "--self_sample_batch_size", "0"], capture_output=True, text=True, env=env, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 2
    assert "--self_sample_batch_size 0 must be at least 1" in result.stderr
