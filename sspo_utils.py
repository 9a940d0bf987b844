# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""Shared building blocks of the SSPO training scripts.

SSPO (Self-Sampling Preference Optimization, arXiv 2410.05255; v1: SePPO) trains a
diffusion model from winning images x^w alone. The loser of each Diffusion-DPO pair is
replaced by a sample x^s that a past checkpoint generates for the same caption:

* RCR (Random Checkpoint Replay): once per optimizer step a checkpoint is drawn
  uniformly from the reference pool (the initial model included). It is the reference
  model of the DPO loss and the generator of x^s.
* SSR (Self-Sampling Regularization): per sample, if the reference denoises the noised
  winner x_t^w better than the policy, its sample is probably a winner too, so the
  sample's DPO term is dropped (DPO becomes SFT).

Sections, in the paper's vocabulary:
  1. losses: ``per_sample_error``, ``sspo_loss``, ``dpo_loss``
  2. the RCR reference pool: ``ReferencePool``
  3. the self-sampling pipeline: ``SSPOSelfSamplingPipeline``, and ``MergedSnapshotUNet``, a copy of the
     frozen UNet with the drawn snapshot merged in, to sample from without LoRA layers or autocast
  4. reproducible randomness: ``TrainingGenerators``
  5. checkpoints: atomic, fsynced save with a SHA-256 manifest, rotation, a verified ``latest``
     lookup, run compatibility, and ``python sspo_utils.py verify OUTPUT_DIR``
  6. model card and validation media (images, GIF/MP4 videos, trackers)
  7. LoRA save/load and the checkpoint hooks (restore into the existing adapter)
  8. flag checks and user-facing errors: ``SSPOInputError``, ``SSPOTrainingError``
  9. script plumbing both trainers share: flags, accelerator, data with ``--on_bad_sample``,
     resume, the non-finite guard, per-step logging, snapshots and checkpoints
"""

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils.torch_utils import randn_tensor


logger = logging.getLogger(__name__)

SSR_MODES = ("sft", "flip", "off", "self_sample")
REFERENCE_STRATEGIES = ("uniform", "latest", "initial")


class SSPOInputError(ValueError):
    """Bad user input (flags, data, checkpoints). The scripts print its message as one line
    and exit with status 2, instead of a traceback."""


class SSPOTrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps). One line, exit status 3."""


# ---------------------------------------------------------------------------
# 1. Losses
# ---------------------------------------------------------------------------


def per_sample_error(model_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Denoising error ||pred - target||^2 averaged over every latent element, one value
    per sample: shape (B,). Works for images (b c h w) and videos (b c f h w)."""
    squared_error = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    return squared_error.flatten(start_dim=1).mean(dim=1)


def _dpo_terms(model_err_w, model_err_l, ref_err_w, ref_err_l, beta, indicator):
    model_diff = model_err_w - model_err_l
    ref_diff = ref_err_w - ref_err_l
    delta_w = model_err_w - ref_err_w  # Δ^w
    delta_l = model_err_l - ref_err_l  # Δ^s (or Δ^l for real pairs)
    # The 1/2 factor follows Diffusion-DPO's original code (beta=5000 for SD1.5).
    logits = -0.5 * beta * (delta_w - indicator * delta_l)
    loss = -F.logsigmoid(logits)
    return loss, logits, model_diff, ref_diff


def sspo_loss(
    model_err_w: torch.Tensor,
    model_err_s: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_s: torch.Tensor,
    beta: float,
    ssr: str = "sft",
):
    """SSPO loss on per-sample errors of shape (B,).

    ``model_err_*`` are e_θ on the noised winner x_t^w and on the noised self-sample x_t^s
    (with grad); ``ref_err_*`` are e_ref from the RCR reference (no grad).

        Δ^w = e_θ^w − e_ref^w,   Δ^s = e_θ^s − e_ref^s
        loss_i = −log σ(−β/2 · (Δ^w − I_i · Δ^s))

    SSR indicator ``I`` (no grad):
      * ``ssr="sft"`` (SSPO): I = 1 if e_θ^w <= e_ref^w (the policy is at least as good on the
        winner, so the reference's sample is a loser: DPO), else I = 0 (SFT on x^w only).
      * ``ssr="flip"`` (SePPO v1): I = +1 or −1; a better reference makes x^s a second winner.
      * ``ssr="off"``: I = 1 always (plain DPO against the self-sample).
      * ``ssr="self_sample"`` (this project's switch, chosen offline by the decisive study's rule C):
        I = 0 (SFT) if the policy denoises the self-sample better than the reference does
        (e_θ^s < e_ref^s: x^s lies where the policy has already moved), else I = 1. No extra UNet pass.

    Returns ``(loss, info)``; ``info`` holds per-sample ``ssr_indicator``, ``implicit_acc``
    (share of samples whose model_diff < ref_diff), ``reward_margin`` and ``ssr_sft_fraction``,
    the share of samples SSR switched (I <= 0: to SFT, or for ``flip`` to a second winner).
    """
    if ssr not in SSR_MODES:
        raise ValueError(f"ssr must be one of {SSR_MODES}, got {ssr!r}")
    with torch.no_grad():
        policy_not_worse = (model_err_w <= ref_err_w).to(model_err_w.dtype)
        if ssr == "sft":
            indicator = policy_not_worse
        elif ssr == "flip":
            indicator = 2.0 * policy_not_worse - 1.0
        elif ssr == "self_sample":
            indicator = (model_err_s >= ref_err_s).to(model_err_w.dtype)
        else:
            indicator = torch.ones_like(model_err_w)
    losses, logits, model_diff, ref_diff = _dpo_terms(
        model_err_w, model_err_s, ref_err_w, ref_err_s, beta, indicator
    )
    info = {
        "ssr_indicator": indicator.detach(),
        "ssr_sft_fraction": (indicator <= 0).float().mean().detach(),
        "implicit_acc": (model_diff < ref_diff).float().mean().detach(),
        "reward_margin": logits.detach(),
    }
    return losses.mean(), info


def dpo_loss(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
):
    """Diffusion-DPO loss (Wallace et al.) on real pairs, same conventions as ``sspo_loss``:
    loss_i = −log σ(−β/2 · ((e_θ^w − e_θ^l) − (e_ref^w − e_ref^l)))."""
    ones = torch.ones_like(model_err_w)
    losses, logits, model_diff, ref_diff = _dpo_terms(
        model_err_w, model_err_l, ref_err_w, ref_err_l, beta, ones
    )
    info = {
        "implicit_acc": (model_diff < ref_diff).float().mean().detach(),
        "reward_margin": logits.detach(),
    }
    return losses.mean(), info


# ---------------------------------------------------------------------------
# 2. RCR reference pool
# ---------------------------------------------------------------------------


class ReferencePool:
    """The RCR checkpoint pool: snapshots of the trainable weights (LoRA adapter tensors, or
    motion modules), drawn as reference model and self-sampler.

    * Entry 0 is always the initial model (a fresh gaussian-init LoRA has B = 0).
    * ``max_snapshots`` bounds memory. Once full, entry 0 is kept and the other slots are
      replaced by reservoir sampling (Vitter's algorithm R), so they stay a uniform sample of
      every snapshot ever offered, and a uniform draw from the pool remains (close to) RCR's
      uniform draw over the whole history.
    * ``swapped_in`` copies a snapshot into the live parameters in place and restores them
      exactly afterwards. No second UNet copy exists. Use it *before* the policy forward:
      in-place copies after it would break autograd's version counters.
    """

    def __init__(
        self,
        named_parameters: Iterable,
        max_snapshots: Optional[int] = None,
        storage_device: str = "cpu",
        seed: int = 0,
    ):
        self.names: List[str] = []
        self.params: List[torch.Tensor] = []
        for name, param in named_parameters:
            self.names.append(name)
            self.params.append(param)
        if not self.params:
            raise ValueError("ReferencePool needs at least one trainable parameter to snapshot.")
        if max_snapshots is not None and max_snapshots < 2:
            raise SSPOInputError(
                f"--max_snapshots {max_snapshots} cannot hold the initial model plus any other "
                "checkpoint; use at least 2, or leave it unset for an unbounded pool."
            )
        self.max_snapshots = max_snapshots
        self.storage_device = torch.device(storage_device)
        self.snapshots: List[List[torch.Tensor]] = []
        self.steps: List[int] = []  # optimizer step at which each entry was taken
        self.num_offered = 0  # non-initial snapshots offered so far (reservoir counter)
        self.reservoir_generator = torch.Generator().manual_seed(seed)
        self._backup: Optional[List[torch.Tensor]] = None
        self._swapped = False
        self.add(step=0)

    def __len__(self):
        return len(self.snapshots)

    @torch.no_grad()
    def _copy_live(self) -> List[torch.Tensor]:
        return [p.detach().to(self.storage_device, copy=True) for p in self.params]

    @torch.no_grad()
    def add(self, step: int) -> Optional[int]:
        """Offer a snapshot of the current weights. Returns its slot, or None when the
        reservoir rejected it."""
        if not self.snapshots:
            self.snapshots.append(self._copy_live())
            self.steps.append(step)
            return 0
        self.num_offered += 1
        if self.max_snapshots is None or len(self.snapshots) < self.max_snapshots:
            self.snapshots.append(self._copy_live())
            self.steps.append(step)
            return len(self.snapshots) - 1
        # Reservoir over the non-initial slots: keep the n-th offer with prob. (K-1)/n.
        capacity = self.max_snapshots - 1
        j = int(torch.randint(self.num_offered, (1,), generator=self.reservoir_generator))
        if j >= capacity:
            return None
        slot = j + 1
        self.snapshots[slot] = self._copy_live()
        self.steps[slot] = step
        return slot

    def sample(self, strategy: str, generator: Optional[torch.Generator] = None) -> int:
        """Index of the reference for this optimizer step. ``uniform`` is RCR, ``latest``
        behaves like SPIN-Diffusion, ``initial`` is the base model (Diffusion-DPO)."""
        if strategy == "uniform":
            return int(torch.randint(len(self.snapshots), (1,), generator=generator))
        if strategy == "latest":
            return max(range(len(self.steps)), key=lambda i: (self.steps[i], i))
        if strategy == "initial":
            return 0
        raise ValueError(f"reference strategy must be one of {REFERENCE_STRATEGIES}, got {strategy!r}")

    @contextlib.contextmanager
    def swapped_in(self, index: int):
        """Run the block with snapshot ``index`` as the model's weights, then restore the live
        weights bit for bit."""
        if self._swapped:
            raise RuntimeError("ReferencePool.swapped_in is not re-entrant: the live weights are already swapped out.")
        self._swapped = True
        with torch.no_grad():
            if self._backup is None:
                self._backup = [torch.empty_like(p) for p in self.params]
            live = [p.detach() for p in self.params]
            torch._foreach_copy_(self._backup, live)
            torch._foreach_copy_(live, self.snapshots[index])
        try:
            yield self
        finally:
            with torch.no_grad():
                torch._foreach_copy_(live, self._backup)
            self._swapped = False

    def state_dict(self) -> Dict:
        return {
            "names": list(self.names),
            "snapshots": [[t.cpu() for t in snap] for snap in self.snapshots],
            "steps": list(self.steps),
            "num_offered": self.num_offered,
            "max_snapshots": self.max_snapshots,
            "reservoir_generator": self.reservoir_generator.get_state(),
        }

    def load_state_dict(self, state: Dict):
        if list(state["names"]) != self.names:
            raise SSPOInputError(
                "The checkpoint's reference pool snapshots other parameters than this run trains "
                "(different LoRA target modules or train target). Resume with the same settings, "
                "or start a new --output_dir."
            )
        if self.max_snapshots is not None and len(state["snapshots"]) > self.max_snapshots:
            raise SSPOInputError(
                f"The checkpoint's reference pool holds {len(state['snapshots'])} snapshots, more than "
                f"--max_snapshots {self.max_snapshots}. Resume with --max_snapshots >= {len(state['snapshots'])}."
            )
        for snap in state["snapshots"]:
            if len(snap) != len(self.params):
                raise SSPOInputError(
                    f"The checkpoint's reference pool snapshots {len(snap)} tensors, this run trains "
                    f"{len(self.params)}. Resume with the same settings, or start a new --output_dir."
                )
            for saved, live, name in zip(snap, self.params, self.names):
                if saved.shape != live.shape:
                    raise SSPOInputError(
                        f"The checkpoint's reference pool has {name} of shape {tuple(saved.shape)}, "
                        f"but this run's is {tuple(live.shape)} (another --rank?). Resume with the "
                        "same settings, or start a new --output_dir."
                    )
        self.snapshots = [
            [t.to(self.storage_device, dtype=p.dtype) for t, p in zip(snap, self.params)]
            for snap in state["snapshots"]
        ]
        self.steps = list(state["steps"])
        self.num_offered = int(state["num_offered"])
        self.reservoir_generator.set_state(state["reservoir_generator"])

    def save(self, path: str):
        """Write the pool as safetensors (tensors) with its bookkeeping in the header: no pickle."""
        from safetensors.torch import save_file

        state = self.state_dict()
        tensors = {f"snapshot.{i}.{j}": t.contiguous() for i, snap in enumerate(state["snapshots"]) for j, t in enumerate(snap)}
        tensors["reservoir_generator"] = state["reservoir_generator"]
        header = {key: json.dumps(state[key]) for key in ("names", "steps", "num_offered", "max_snapshots")}
        save_file(tensors, path, metadata=header)

    @staticmethod
    def read_state(path: str) -> Dict:
        """The state dict stored by ``save`` (for ``load_state_dict``, or to inspect a checkpoint)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = {key: json.loads(value) for key, value in f.metadata().items()}
            num_tensors = len(header["names"])
            num_snapshots = len(header["steps"])
            header["snapshots"] = [[f.get_tensor(f"snapshot.{i}.{j}") for j in range(num_tensors)]
                                   for i in range(num_snapshots)]
            header["reservoir_generator"] = f.get_tensor("reservoir_generator")
        return header

    def load(self, path: str):
        self.load_state_dict(self.read_state(path))

    def nbytes_per_snapshot(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.params)


# ---------------------------------------------------------------------------
# 3. Self-sampling pipeline
# ---------------------------------------------------------------------------


class SSPOSelfSamplingPipeline(StableDiffusionPipeline):
    """StableDiffusionPipeline patched for self-sampling inside the training step.

    ``sample_latents`` takes the step's precomputed prompt embeddings, runs classifier-free
    guidance as one batched UNet call per denoising step, and returns the final latent z_s
    (no VAE decode, no safety checker, no PIL). It runs under ``torch.inference_mode()``
    with whatever RCR snapshot is swapped in, and puts the UNet's train/eval mode back as it
    found it. For the same seed, scheduler, steps and embeddings its latents equal the stock
    pipeline's ``output_type="latent"`` output.

    ``num_frames`` serves video UNets (b c f h w latents): prompt embeddings are then
    repeated per frame, as UNetMotionModel requires since diffusers 0.31.
    """

    @classmethod
    def from_training_components(cls, vae, text_encoder, tokenizer, unet, scheduler):
        return cls(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def latent_shape(self, batch_size: int, height: int, width: int, num_frames: Optional[int] = None):
        channels = self.unet.config.in_channels
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        if num_frames is None:
            return (batch_size, channels, h, w)
        return (batch_size, channels, num_frames, h, w)

    @torch.inference_mode()
    def sample_latents(
        self,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor,
        height: int,
        width: int,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        generator=None,
        num_frames: Optional[int] = None,
        latents: Optional[torch.Tensor] = None,
        unet: Optional[torch.nn.Module] = None,
    ) -> torch.Tensor:
        batch_size = prompt_embeds.shape[0]
        if negative_prompt_embeds.shape[0] == 1 and batch_size > 1:
            negative_prompt_embeds = negative_prompt_embeds.expand(batch_size, -1, -1)
        do_cfg = guidance_scale > 1.0
        embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if do_cfg else prompt_embeds
        if num_frames is not None:
            embeds = embeds.repeat_interleave(num_frames, dim=0)

        shape = self.latent_shape(batch_size, height, width, num_frames)
        return denoise_with_guidance(self, shape, embeds, num_inference_steps, guidance_scale, generator, latents,
                                     unet=unet)


def denoise_with_guidance(pipeline, shape, embeds, num_inference_steps, guidance_scale, generator=None, latents=None,
                          added_cond_kwargs=None, unet=None):
    """The denoising loop of the stock pipelines, from initial noise (``latents``, else drawn
    with ``generator``) to z_s: one batched UNet call per step on [uncond, cond] when
    guidance_scale > 1 (``embeds`` and ``added_cond_kwargs`` already hold both halves). The
    UNet (the pipeline's, or ``unet``, e.g. a MergedSnapshotUNet's copy) runs in eval mode and
    is put back as it was found."""
    unet, scheduler = pipeline.unet if unet is None else unet, pipeline.scheduler
    device, dtype = embeds.device, embeds.dtype
    do_cfg = guidance_scale > 1.0
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    else:
        latents = latents.to(device=device, dtype=dtype)
    scheduler.set_timesteps(num_inference_steps, device=device)
    latents = latents * scheduler.init_noise_sigma
    extra_step_kwargs = pipeline.prepare_extra_step_kwargs(generator, 0.0)

    was_training = unet.training
    unet.eval()
    try:
        for t in scheduler.timesteps:
            model_input = torch.cat([latents, latents]) if do_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise_pred = unet(model_input, t, encoder_hidden_states=embeds, added_cond_kwargs=added_cond_kwargs,
                              return_dict=False)[0]
            if do_cfg:
                noise_uncond, noise_text = noise_pred.chunk(2)
                noise_pred = noise_uncond + guidance_scale * (noise_text - noise_uncond)
            latents = scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
    finally:
        unet.train(was_training)
    return latents


class SSPOSDXLSelfSamplingPipeline(StableDiffusionXLPipeline):
    """The SDXL twin of ``SSPOSelfSamplingPipeline``: ``sample_latents`` also takes the pooled
    text embeddings and the micro-conditioning ``add_time_ids`` (one row of six numbers per
    sample), and returns z_s equal to the stock ``StableDiffusionXLPipeline(output_type="latent")``
    for the same inputs and generator. The unconditional half uses the same add_time_ids, as the
    stock pipeline does when no negative sizes are given."""

    @classmethod
    def from_training_components(cls, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler):
        return cls(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                   tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)

    def latent_shape(self, batch_size: int, height: int, width: int, num_frames: Optional[int] = None):
        return (batch_size, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

    @torch.inference_mode()
    def sample_latents(self, prompt_embeds, negative_prompt_embeds, height, width, num_inference_steps=20,
                       guidance_scale=5.0, generator=None, num_frames=None, latents=None, unet=None, *,
                       pooled_prompt_embeds, negative_pooled_prompt_embeds, add_time_ids) -> torch.Tensor:
        batch_size = prompt_embeds.shape[0]
        add_time_ids = add_time_ids.to(prompt_embeds.device, dtype=prompt_embeds.dtype)
        if guidance_scale > 1.0:
            embeds = torch.cat([negative_prompt_embeds.expand(batch_size, -1, -1), prompt_embeds])
            text_embeds = torch.cat([negative_pooled_prompt_embeds.expand(batch_size, -1), pooled_prompt_embeds])
            add_time_ids = torch.cat([add_time_ids, add_time_ids])
        else:
            embeds, text_embeds = prompt_embeds, pooled_prompt_embeds
        shape = self.latent_shape(batch_size, height, width)
        return denoise_with_guidance(self, shape, embeds, num_inference_steps, guidance_scale, generator, latents,
                                     added_cond_kwargs={"text_embeds": text_embeds, "time_ids": add_time_ids}, unet=unet)


def self_sample_step(
    self_sampler: SSPOSelfSamplingPipeline,
    prompt_embeds: Sequence[torch.Tensor],
    negative_prompt_embeds: torch.Tensor,
    height: int,
    width: int,
    num_inference_steps: int,
    guidance_scale: float,
    generator: torch.Generator,
    chunk_size: Optional[int] = None,
    num_frames: Optional[int] = None,
    unet: Optional[torch.nn.Module] = None,
    **conditioning,
) -> List[torch.Tensor]:
    """x^s for every micro-batch of one optimizer step, from the RCR snapshot: ``unet`` (the UNet that
    ``rcr_sampling_unet`` yields), or by default the pipeline's UNet with the snapshot swapped in.

    ``prompt_embeds`` holds one tensor per micro-batch. All self-samples are generated in
    batched calls of ``chunk_size`` (default: all at once), which keeps the GPU busy where
    one small call per micro-batch would not. The initial noise is drawn per micro-batch, in
    order, exactly as per-micro-batch sampling draws it, so with the deterministic DDIM
    sampler the result does not depend on ``chunk_size``. (DDPM also draws noise at every
    denoising step, per call: same distribution, different draws.) Returns one latent
    tensor per micro-batch.

    ``conditioning`` goes on to ``sample_latents``: a list (one tensor per micro-batch, such as
    SDXL's pooled embeddings and add_time_ids) is batched like ``prompt_embeds``, anything
    else (the unconditional pooled embedding) is passed as it is.
    """
    sizes = [embeds.shape[0] for embeds in prompt_embeds]
    device, dtype = prompt_embeds[0].device, prompt_embeds[0].dtype
    initial_noise = torch.cat([
        randn_tensor(self_sampler.latent_shape(size, height, width, num_frames), generator=generator, device=device,
                     dtype=dtype) for size in sizes])
    all_embeds = torch.cat(list(prompt_embeds))
    chunk_size = chunk_size or len(all_embeds)
    batched = {name: torch.cat(list(value)) for name, value in conditioning.items() if isinstance(value, (list, tuple))}
    latents = [
        self_sampler.sample_latents(all_embeds[start:start + chunk_size], negative_prompt_embeds, height, width,
                                    num_inference_steps, guidance_scale, generator, num_frames=num_frames,
                                    latents=initial_noise[start:start + chunk_size], unet=unet,
                                    **{**conditioning, **{name: value[start:start + chunk_size]
                                                          for name, value in batched.items()}})
        for start in range(0, len(all_embeds), chunk_size)]
    return list(torch.cat(latents).split(sizes))


MERGED_COPY_CHOICES = ("auto", "on", "off")
LORA_A_NAME = re.compile(r"^(?P<module>.+)\.lora_A\.(?P<adapter>[^.]+)\.weight$")


class MergedSnapshotUNet:
    """The self-sampler's own UNet: a copy of the frozen UNet in the sampling dtype, with an RCR
    snapshot merged into its weights (W + scaling * B A for a LoRA, the snapshot itself for fully
    trained modules such as AnimateDiff's motion modules).

    * ``merge(snapshot)`` returns the copy with ``snapshot`` (one entry of ``ReferencePool.snapshots``)
      merged in. It recomputes the merged weights only when the snapshot differs from the last one,
      always from the trained UNet's frozen base weights, so the result never depends on which
      snapshots were merged before (resume stays exact).
    * The copy has no LoRA layers and every weight is cast once to ``dtype``: sampling runs without
      autocast and without the per-layer casts and rank-r products of the LoRA layers.
    * The trained UNet and its LoRA are only read, never written.
    * Cost: one UNet in ``dtype`` (``nbytes``). Build it before ``accelerator.prepare``, which patches
      the trained UNet's forward with autocast.
    """

    def __init__(self, unet: torch.nn.Module, trained_names: Sequence[str], dtype: torch.dtype):
        import copy

        self.names = list(trained_names)
        self.dtype = dtype
        trained = dict(unet.named_parameters())
        merged = copy.deepcopy(unet)
        merged.__dict__.pop("forward", None)  # accelerate's autocast patch, if it was already there
        if getattr(merged, "peft_config", None):
            merged.unload_lora()  # each LoRA layer becomes its base layer
        merged.requires_grad_(False)
        if getattr(merged, "is_gradient_checkpointing", False):
            merged.disable_gradient_checkpointing()
        self.unet = merged.to(dtype=dtype).eval()
        copy_params = dict(self.unet.named_parameters())
        modules = dict(unet.named_modules())
        index = {name: i for i, name in enumerate(self.names)}
        # (copy weight, frozen base weight, index of A, index of B, scaling) and (copy weight, index)
        self.lora_merges, self.full_copies = [], []
        for i, name in enumerate(self.names):
            lora = LORA_A_NAME.match(name)
            if lora:
                module, adapter = lora.group("module"), lora.group("adapter")
                base = trained[f"{module}.base_layer.weight"]
                if base.dim() != 2 or getattr(modules[module], "fan_in_fan_out", False):
                    raise ValueError(f"The merged self-sampler handles LoRA on linear layers only; {module} is not one.")
                self.lora_merges.append((copy_params[f"{module}.weight"], base, i,
                                         index[f"{module}.lora_B.{adapter}.weight"], modules[module].scaling[adapter]))
            elif ".lora_B." not in name:
                if ".lora_" in name or name not in copy_params:
                    raise ValueError(f"The merged self-sampler cannot merge the trained tensor {name}.")
                self.full_copies.append((copy_params[name], i))
        self._merged = None  # weak reference to the first tensor of the snapshot merged last
        self.merges = 0

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.unet.parameters())

    @torch.no_grad()
    def merge(self, snapshot: Sequence[torch.Tensor]) -> torch.nn.Module:
        import weakref

        if self._merged is not None and self._merged() is snapshot[0]:
            return self.unet
        for weight, base, a, b, scaling in self.lora_merges:
            lora_a, lora_b = (snapshot[j].to(weight.device, torch.float32) for j in (a, b))
            weight.copy_(base.float() + scaling * (lora_b @ lora_a))  # one rounding to the sampling dtype
        for weight, j in self.full_copies:
            weight.copy_(snapshot[j])
        self._merged = weakref.ref(snapshot[0])
        self.merges += 1
        return self.unet


def merged_copy_fits(unet: torch.nn.Module, dtype: torch.dtype) -> bool:
    """``--self_sample_merged_copy auto``: on for a CUDA UNet whose copy takes at most a quarter
    of the free device memory, so the training step keeps its room. Off elsewhere: CPU runs keep the
    LoRA-layer sampler, with which the committed CPU studies were made, so that they rerun bit for bit."""
    device = next(unet.parameters()).device
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    nbytes = sum(p.numel() for name, p in unet.named_parameters() if ".lora_" not in name) * torch.finfo(dtype).bits // 8
    return nbytes <= free / 4


def create_merged_copy(choice: str, unet: torch.nn.Module, trained_names: Sequence[str],
                       dtype: torch.dtype) -> Optional[MergedSnapshotUNet]:
    """The merged-copy self-sampler for ``--self_sample_merged_copy`` (auto, on, off), or None for
    the LoRA-layer one. Logs the choice and its memory cost."""
    if choice == "off" or (choice == "auto" and not merged_copy_fits(unet, dtype)):
        logger.info(f"Self-sampling through the trained UNet with the RCR snapshot swapped in (--self_sample_merged_copy "
                    f"{choice}).")
        return None
    merged = MergedSnapshotUNet(unet, trained_names, dtype)
    logger.info(f"Self-sampling from a merged copy of the UNet in {str(dtype).replace('torch.', '')}: "
                f"{merged.nbytes / 2**30:.2f} GiB more memory (--self_sample_merged_copy off saves it).")
    return merged


@contextlib.contextmanager
def rcr_sampling_unet(reference_pool: "ReferencePool", index: int, unet: torch.nn.Module,
                      merged_copy: Optional[MergedSnapshotUNet] = None):
    """The UNet that generates x^s from RCR snapshot ``index``: the merged copy with that snapshot
    merged in, or else ``unet`` (the trained one) with the snapshot swapped into its weights for
    the duration of the block."""
    if merged_copy is not None:
        yield merged_copy.merge(reference_pool.snapshots[index])
        return
    with reference_pool.swapped_in(index):
        yield unet


# ---------------------------------------------------------------------------
# 4. Reproducible randomness
# ---------------------------------------------------------------------------


class TrainingGenerators:
    """Dedicated CPU generators for every training-time random draw, saved in checkpoints so
    that a resumed run draws exactly what the straight run would have drawn.

    * ``rcr``: which pool entry is the reference (RCR); the same on every rank.
    * ``noise``: timesteps t and noise eps; per rank.
    * ``sampling``: initial latents of the self-samples x^s; per rank.
    * ``dataloader``: the shuffle order (with accelerate's seedable sampler).
    """

    names = ("rcr", "noise", "sampling", "dataloader")

    def __init__(self, seed: int, process_index: int = 0):
        self.rcr = torch.Generator().manual_seed(seed)
        self.noise = torch.Generator().manual_seed(seed + 1_000_003 * (process_index + 1))
        self.sampling = torch.Generator().manual_seed(seed + 2_000_003 * (process_index + 1))
        self.dataloader = torch.Generator().manual_seed(seed)

    def state_dict(self):
        return {name: getattr(self, name).get_state() for name in self.names}

    def load_state_dict(self, state):
        for name in self.names:
            getattr(self, name).set_state(state[name])


# ---------------------------------------------------------------------------
# 5. Checkpoints
# ---------------------------------------------------------------------------

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
RUN_CONFIG_NAME = "sspo_run_config.json"
MANIFEST_NAME = "sspo_manifest.json"


def fsync_path(path: str):
    """Flush a file's data, or a folder's entries, to the disk. A rename is only durable once the
    folder that holds it is fsynced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        # Some network filesystems cannot fsync a folder (EINVAL); their files were fsynced already.
        if not (error.errno == errno.EINVAL and os.path.isdir(path)):
            raise
    finally:
        os.close(fd)


def fsync_tree(directory: str):
    """fsync every file and folder under ``directory``, then ``directory`` itself."""
    for root, _, files in os.walk(directory, topdown=False):
        for name in files:
            fsync_path(os.path.join(root, name))
        fsync_path(root)


def write_json_durably(path: str, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def save_files_durably(output_dir: str, write, prefix: str = ".tmp-save-"):
    """Call ``write(tmp_dir)`` on a temporary folder inside ``output_dir``, then move its files in,
    each fsynced first and the folder after: neither a killed run nor a power loss leaves half a
    file in ``output_dir``, only the old or the complete new version of each."""
    import tempfile

    os.makedirs(output_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=prefix) as tmp_dir:
        write(tmp_dir)
        for name in sorted(os.listdir(tmp_dir)):
            fsync_path(os.path.join(tmp_dir, name))
            os.replace(os.path.join(tmp_dir, name), os.path.join(output_dir, name))
    fsync_path(output_dir)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(checkpoint_dir: str):
    """List every file of the checkpoint with its size and SHA-256. Written last, it marks the
    checkpoint complete, and resume checks the files against it."""
    files = {}
    for root, _, names in os.walk(checkpoint_dir):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, checkpoint_dir).replace(os.sep, "/")
            if relative != MANIFEST_NAME:
                files[relative] = {"size": os.path.getsize(path), "sha256": file_sha256(path)}
    write_json_durably(os.path.join(checkpoint_dir, MANIFEST_NAME),
                       {"format": 1, "files": files, "files_sha256": manifest_digest(files)})


def manifest_digest(files: Dict) -> str:
    """Digest of the manifest's own entries, so a damaged manifest is not taken for a damaged file."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def checkpoint_problems(checkpoint_dir: str) -> List[str]:
    """What is damaged in a checkpoint, each naming the file and the mismatch (missing, size,
    digest); empty when every file matches the manifest. A checkpoint written before manifests
    existed (run config, no manifest) cannot be checked and counts as intact."""
    manifest_path = os.path.join(checkpoint_dir, MANIFEST_NAME)
    if not os.path.isfile(manifest_path):
        return [] if is_old_format(checkpoint_dir) else [f"{MANIFEST_NAME}: missing"]
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        files = manifest["files"]
        if manifest_digest(files) != manifest["files_sha256"]:
            return [f"{MANIFEST_NAME}: its entries do not match its own digest"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return [f"{MANIFEST_NAME}: unreadable ({type(error).__name__})"]
    problems, same_size = [], []
    for name, entry in sorted(files.items()):  # sizes first: a truncated file is found without hashing
        path = os.path.join(checkpoint_dir, name)
        if not os.path.isfile(path):
            problems.append(f"{name}: missing")
        elif os.path.getsize(path) != entry["size"]:
            problems.append(f"{name}: {os.path.getsize(path)} bytes, the manifest says {entry['size']}")
        else:
            same_size.append((name, path, entry))
    problems += [f"{name}: SHA-256 digest differs from the manifest" for name, path, entry in same_size
                 if file_sha256(path) != entry["sha256"]]
    return problems


def is_old_format(checkpoint_dir: str) -> bool:
    """Written before checkpoints had a manifest: a run config that does not name one."""
    try:
        with open(os.path.join(checkpoint_dir, RUN_CONFIG_NAME)) as f:
            return MANIFEST_NAME not in json.load(f).values()
    except (OSError, ValueError, AttributeError):
        return False


def list_checkpoints(output_dir: str) -> List[str]:
    """``checkpoint-<step>`` folders in ``output_dir``, oldest first, intact or not. Temporary
    ``.tmp-checkpoint-*`` folders left by a killed run are never listed."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(match.group(1)), name) for name in os.listdir(output_dir)
             if (match := CHECKPOINT_PATTERN.match(name)) and os.path.isdir(os.path.join(output_dir, name))]
    return [os.path.join(output_dir, name) for _, name in sorted(found)]


def checkpoint_step(path: str) -> int:
    match = CHECKPOINT_PATTERN.match(os.path.basename(os.path.normpath(path)))
    if not match:
        raise SSPOInputError(f"{path} is not a checkpoint folder named checkpoint-<step>.")
    return int(match.group(1))


def newest_intact_checkpoint(output_dir: str, warn=None, exclude: Optional[str] = None) -> Optional[str]:
    """The newest checkpoint whose files match its manifest, verified from the newest down;
    ``warn`` gets one line per damaged checkpoint skipped."""
    for path in reversed(list_checkpoints(output_dir)):
        if exclude is not None and os.path.abspath(path) == os.path.abspath(exclude):
            continue
        problems = checkpoint_problems(path)
        if not problems:
            return path
        if warn is not None:
            warn(f"Skipping damaged checkpoint {path}: {problems[0]}")
    return None


def resolve_resume_checkpoint(resume_from_checkpoint: Optional[str], output_dir: str, warn=logger.warning) -> Optional[str]:
    """Path of the verified checkpoint to resume from. ``latest`` picks the newest intact one in
    ``output_dir`` (None, a fresh start, when there is no checkpoint at all; an error when every
    one is damaged). An explicit path that fails verification is an error naming the damaged
    file and the checkpoint to use instead."""
    warn = warn or (lambda message: None)
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        path = newest_intact_checkpoint(output_dir, warn)
        if path is None and list_checkpoints(output_dir):
            raise SSPOInputError(
                f"Every checkpoint in {output_dir} is damaged, so there is nothing to resume from (`python sspo_utils.py "
                f"verify {output_dir}` says why). Drop --resume_from_checkpoint, or use a new --output_dir, to start over.")
    else:
        path = resume_from_checkpoint
        if not os.path.isdir(path):
            path = os.path.join(output_dir, resume_from_checkpoint)
        if not os.path.isdir(path):
            raise SSPOInputError(
                f"--resume_from_checkpoint {resume_from_checkpoint}: no such checkpoint folder. "
                "Pass a checkpoint-<step> folder, or 'latest'."
            )
        checkpoint_step(path)
        problems = checkpoint_problems(path)
        if problems:
            fallback = newest_intact_checkpoint(os.path.dirname(os.path.abspath(path)), exclude=path)
            instead = (f"Resume from {fallback} instead, the newest intact checkpoint" if fallback
                       else "No other checkpoint there is intact: start a new run")
            raise SSPOInputError(f"--resume_from_checkpoint {path} is damaged: {problems[0]}. {instead}.")
    if path is not None and not os.path.isfile(os.path.join(path, MANIFEST_NAME)):
        warn(f"{path} has no {MANIFEST_NAME} (it was written before checkpoints were checksummed), "
             "so it cannot be verified; resuming from it anyway.")
    return path


def verify_run(path: str, print_fn=print) -> int:
    """``python sspo_utils.py verify OUTPUT_DIR``: print each checkpoint of a run (or the one
    checkpoint ``path`` names) as intact or damaged, and why. Exit status 0 when none is damaged,
    1 when some are, 2 when there is no checkpoint."""
    if CHECKPOINT_PATTERN.match(os.path.basename(os.path.normpath(path))) and os.path.isdir(path):
        checkpoints, output_dir = [path], os.path.dirname(os.path.abspath(path))
    else:
        checkpoints, output_dir = list_checkpoints(path), path
    if not checkpoints:
        print_fn(f"{path}: no checkpoint-<step> folder to verify.")
        return 2
    damaged = 0
    for checkpoint in checkpoints:
        problems = checkpoint_problems(checkpoint)
        damaged += bool(problems)
        if problems:
            status = "damaged: " + "; ".join(problems)
        elif not os.path.isfile(os.path.join(checkpoint, MANIFEST_NAME)):
            status = f"unverified: no {MANIFEST_NAME} (written before checkpoints were checksummed); resume accepts it"
        else:
            sizes = [os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(checkpoint) for name in names]
            status = f"intact ({len(sizes)} files, {sum(sizes) / 2**20:.1f} MiB, SHA-256 checked)"
        print_fn(f"{checkpoint}: {status}")
    if os.path.isdir(output_dir):
        for name in sorted(os.listdir(output_dir)):
            if name.startswith(".tmp-checkpoint-"):
                print_fn(f"{os.path.join(output_dir, name)}: left by an interrupted write; never resumed from, safe to delete")
    if len(checkpoints) > 1:
        latest = newest_intact_checkpoint(output_dir)
        print_fn(f"--resume_from_checkpoint latest resumes from {latest}." if latest
                 else "No intact checkpoint: --resume_from_checkpoint latest stops with an error.")
    return 1 if damaged else 0


def check_run_config(checkpoint_dir: str, run_config: Dict):
    """Refuse a checkpoint written by an incompatible run (another LoRA rank, targets or loss),
    with a message that says which setting differs."""
    path = os.path.join(checkpoint_dir, RUN_CONFIG_NAME)
    if not os.path.isfile(path):
        raise SSPOInputError(
            f"{checkpoint_dir} has no {RUN_CONFIG_NAME}: it was not written by an SSPO script "
            "(or it is incomplete). Resume from another checkpoint or start a new --output_dir."
        )
    with open(path) as f:
        saved = json.load(f)
    for key, value in run_config.items():
        if key in saved and saved[key] != value:
            raise SSPOInputError(
                f"{checkpoint_dir} comes from a run with {key}={saved[key]!r}, but this run has "
                f"{key}={value!r}. Resume with the same setting, or start a new --output_dir."
            )


POOL_FILE_NAME = "reference_pool.safetensors"


def generators_file(checkpoint_dir: str, process_index: int) -> str:
    return os.path.join(checkpoint_dir, f"sspo_generators_rank{process_index}.safetensors")


def save_generators(path: str, generators: "TrainingGenerators"):
    from safetensors.torch import save_file

    save_file(generators.state_dict(), path)


def load_generators(checkpoint_dir: str, generators: "TrainingGenerators", process_index: int):
    """Restore this rank's dedicated generators (noise, self-sampling, RCR, dataloader)."""
    from safetensors.torch import load_file

    path = generators_file(checkpoint_dir, process_index)
    if not os.path.isfile(path):
        raise SSPOInputError(f"{checkpoint_dir} has no generator state for rank {process_index}: it was written by a run "
                             "with fewer processes. Resume with the same number of processes.")
    generators.load_state_dict(load_file(path))


def save_checkpoint_atomically(accelerator, output_dir: str, step: int, run_config: Dict,
                               generators: "TrainingGenerators", reference_pool: "ReferencePool",
                               total_limit: Optional[int] = None) -> str:
    """``accelerator.save_state`` (weights via the hooks, optimizer, LR schedule, RNGs) plus the
    RCR pool, every rank's generators, the run config and the manifest (written last), all into a
    temporary folder that is renamed to ``checkpoint-<step>`` only when complete and fsynced: a run
    killed mid-write leaves a ``.tmp-`` folder that ``latest`` ignores, and after a power loss the
    renamed folder holds complete files. Old checkpoints are rotated out only once the new one is
    on disk, so an intact checkpoint always exists. Call on every process."""
    final_dir = os.path.join(output_dir, f"checkpoint-{step}")
    tmp_dir = os.path.join(output_dir, f".tmp-checkpoint-{step}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp_dir)
    # The noise and sampling generators differ per rank, so each rank writes its own.
    save_generators(generators_file(tmp_dir, accelerator.process_index), generators)
    accelerator.wait_for_everyone()
    fsync_tree(tmp_dir)  # on every rank: ranks on other machines write their files to their own disks
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pool_path = os.path.join(tmp_dir, POOL_FILE_NAME)
        reference_pool.save(pool_path)
        fsync_path(pool_path)
        # Naming the manifest tells a deleted manifest apart from a checkpoint written before manifests.
        write_json_durably(os.path.join(tmp_dir, RUN_CONFIG_NAME), {**run_config, "checkpoint_manifest": MANIFEST_NAME})
        write_manifest(tmp_dir)  # last: its presence marks a complete checkpoint
        fsync_path(tmp_dir)
        if os.path.isdir(final_dir):
            shutil.rmtree(final_dir)
        os.replace(tmp_dir, final_dir)
        fsync_path(output_dir)  # the rename is durable only now; older checkpoints may go
        if total_limit is not None:
            rotate_checkpoints(output_dir, step, total_limit)
    accelerator.wait_for_everyone()
    return final_dir


def rotate_checkpoints(output_dir: str, step: int, total_limit: int):
    """Delete checkpoints beyond ``total_limit``, never the new one (``step``). Those past ``step``
    were left by a run later resumed from an earlier checkpoint (perhaps because they are
    damaged), so they go first, then the oldest."""
    others = [path for path in list_checkpoints(output_dir) if checkpoint_step(path) != step]
    ordered = [p for p in others if checkpoint_step(p) > step] + [p for p in others if checkpoint_step(p) < step]
    for old in ordered[: max(0, len(ordered) + 1 - max(total_limit, 1))]:
        logger.info(f"Removing old checkpoint {old} (--checkpoints_total_limit {total_limit})")
        shutil.rmtree(old)


# ---------------------------------------------------------------------------
# 6. Model card and validation media
# ---------------------------------------------------------------------------


def save_model_card(
    output_dir: str,
    base_model: str,
    dataset_name: Optional[str],
    sspo_settings: Dict,
    images: Sequence = (),
    repo_id: Optional[str] = None,
    pipeline_name: str = "StableDiffusionPipeline",
    validation_prompts: Sequence[str] = (),
    media_extension: str = "png",
    extra_tags: Sequence[str] = (),
    usage_code: Optional[str] = None,
) -> str:
    """Write README.md (a Hub model card) and its preview images into ``output_dir``, durably
    (``save_files_durably``). ``images`` are PIL images (or callables that save themselves, for GIFs)."""
    widget_lines, gallery = [], []
    for i in range(len(images)):
        file_name = f"image_{i}.{media_extension}"
        prompt = validation_prompts[i % len(validation_prompts)] if validation_prompts else ""
        widget_lines.append(f"- text: {json.dumps(prompt)}\n  output:\n    url: {file_name}")
        gallery.append(f"![sample {i}: {prompt}]({file_name})")
    tags = ["sspo", "lora", "diffusers", "text-to-image" if media_extension == "png" else "text-to-video",
            "diffusers-training", *extra_tags]
    front_matter = ["---", f"base_model: {base_model}", "library_name: diffusers", "license: creativeml-openrail-m",
                    "tags:"] + [f"- {tag}" for tag in tags]
    if dataset_name:
        front_matter += ["datasets:", f"- {dataset_name}"]
    if widget_lines:
        front_matter += ["widget:"] + widget_lines
    front_matter.append("---")
    settings_table = "\n".join(f"| `{key}` | `{value}` |" for key, value in sspo_settings.items())
    title = repo_id or os.path.basename(os.path.abspath(output_dir))
    default_usage = (f"import torch\nfrom diffusers import {pipeline_name}\n\n"
                     f"pipe = {pipeline_name}.from_pretrained(\"{base_model}\", torch_dtype=torch.float16).to(\"cuda\")\n"
                     f"pipe.load_lora_weights(\"{repo_id or output_dir}\")")
    body = f"""
# {title}

SSPO (Self-Sampling Preference Optimization, [arXiv 2410.05255](https://arxiv.org/abs/2410.05255))
LoRA weights for **{base_model}**, trained on {f"`{dataset_name}`" if dataset_name else "a local dataset"}
from winning samples only: the losing sample of each Diffusion-DPO pair is generated by a checkpoint
drawn at random from the run's own history (RCR), and a pair's DPO term is dropped when that
checkpoint already denoises the winner better than the model being trained (SSR).

## Samples

{chr(10).join(gallery) if gallery else "No validation samples were generated for this run."}

## Use

```python
{usage_code or default_usage}
```

## Training settings

| setting | value |
| --- | --- |
{settings_table}
"""

    def write(directory):
        for i, image in enumerate(images):
            path = os.path.join(directory, f"image_{i}.{media_extension}")
            if callable(image):
                image(path)
            else:
                image.save(path)
        with open(os.path.join(directory, "README.md"), "w") as f:
            f.write("\n".join(front_matter) + "\n" + body)

    save_files_durably(output_dir, write, prefix=".tmp-card-")
    return os.path.join(output_dir, "README.md")


def log_images_to_trackers(accelerator, images: Sequence, prompts: Sequence[str], phase: str, step: int):
    """Send validation images to tensorboard and/or wandb, whichever are active."""
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            stacked = np.stack([np.asarray(image) for image in images])
            tracker.writer.add_images(phase, stacked, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({phase: [wandb.Image(image, caption=f"{i}: {prompts[i % len(prompts)]}")
                                 for i, image in enumerate(images)]}, step=step)


def save_video(frames: Sequence, path: str, fps: int = 8):
    """Write PIL frames as .gif (Pillow) or .mp4 (PyAV, H.264 when available)."""
    if path.endswith(".gif"):
        frames[0].save(path, save_all=True, append_images=list(frames[1:]), duration=int(1000 / fps), loop=0)
        return path
    import av

    width, height = (frames[0].width // 2) * 2, (frames[0].height // 2) * 2  # yuv420p wants even sizes
    with av.open(path, mode="w") as container:
        try:
            av.Codec("libx264", "w")
            stream = container.add_stream("libx264", rate=fps, options={"crf": "12", "preset": "veryfast"})
        except Exception:  # a PyAV build without libx264
            stream = container.add_stream("mpeg4", rate=fps)
            stream.bit_rate = 2_000_000
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            image = frame.convert("RGB").crop((0, 0, width, height))
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode())
    return path


def log_videos_to_trackers(accelerator, videos: Sequence[Sequence], prompts: Sequence[str], phase: str, step: int,
                           fps: int = 8):
    """Send validation videos (lists of PIL frames) to tensorboard (``add_video``, which needs
    moviepy; without it the frames go as an image strip) and/or wandb (``wandb.Video``)."""
    import numpy as np

    clips = np.stack([np.stack([np.asarray(frame.convert("RGB")) for frame in video]) for video in videos])  # n t h w c
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            try:
                from moviepy import editor  # noqa: F401  (what tensorboard's add_video needs)

                tracker.writer.add_video(phase, clips.transpose(0, 1, 4, 2, 3), step, fps=fps)
            except ImportError:
                logger.warning("moviepy is not installed: logging validation videos to tensorboard as frame strips.")
                tracker.writer.add_images(phase, np.concatenate(list(clips), axis=2), step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({phase: [wandb.Video(clip.transpose(0, 3, 1, 2), fps=fps, format="gif",
                                             caption=f"{i}: {prompts[i % len(prompts)]}") for i, clip in enumerate(clips)]},
                        step=step)


# ---------------------------------------------------------------------------
# 7. LoRA save/load (final output and checkpoint hooks)
# ---------------------------------------------------------------------------

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def lora_layers_for_saving(model, adapter_name: str = "default") -> Dict[str, torch.Tensor]:
    """The trained adapter in diffusers' LoRA format (what ``save_lora_weights`` expects)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(model, adapter_name=adapter_name))


def save_lora_atomically(pipeline_cls, output_dir: str, model, **save_kwargs) -> str:
    """Write ``pytorch_lora_weights.safetensors`` durably (``save_files_durably``)."""
    save_files_durably(output_dir, lambda tmp_dir: pipeline_cls.save_lora_weights(
        tmp_dir, unet_lora_layers=lora_layers_for_saving(model), **save_kwargs), prefix=".tmp-lora-")
    return os.path.join(output_dir, LORA_WEIGHT_NAME)


def load_lora_into_existing_adapter(pipeline_cls, model, lora_dir: str, adapter_name: str = "default"):
    """Restore saved LoRA weights into the adapter that is already being trained.

    diffusers' DPO example resumes with ``load_lora_into_unet``, which creates a *second*
    adapter while the optimizer still holds the first, so training silently goes on with
    stale weights. ``set_peft_model_state_dict`` fills the existing adapter instead."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    lora_state_dict, _ = pipeline_cls.lora_state_dict(lora_dir)
    unet_state_dict = {k.replace("unet.", "", 1): v for k, v in lora_state_dict.items() if k.startswith("unet.")}
    unet_state_dict = convert_unet_state_dict_to_peft(unet_state_dict)
    expected = get_peft_model_state_dict(model, adapter_name=adapter_name)
    for key, tensor in expected.items():
        saved = unet_state_dict.get(key)
        if saved is None:
            raise SSPOInputError(
                f"The LoRA in {lora_dir} has no weight for {key}: it was trained on other target "
                "modules. Resume with the same settings, or start a new --output_dir."
            )
        if saved.shape != tensor.shape:
            raise SSPOInputError(
                f"The LoRA in {lora_dir} has {key} of shape {tuple(saved.shape)}, but this run's is "
                f"{tuple(tensor.shape)}: it was trained with another --rank. Resume with the same "
                "--rank, or start a new --output_dir."
            )
    result = set_peft_model_state_dict(model, unet_state_dict, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise SSPOInputError(f"The LoRA in {lora_dir} has weights this run does not train: {unexpected[:3]}...")


def register_checkpoint_hooks(accelerator, save_trained, load_trained):
    """Make ``accelerator.save_state``/``load_state`` store only what trains, through
    ``save_trained(model, dir)`` and ``load_trained(model, dir)``, instead of the whole model."""

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for saved_model in models:
                save_trained(accelerator.unwrap_model(saved_model), output_dir)
        # Pop on every rank so accelerate does not also write the full model.
        while weights:
            weights.pop()

    def load_model_hook(models, input_dir):
        while models:
            load_trained(accelerator.unwrap_model(models.pop()), input_dir)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def register_lora_checkpoint_hooks(accelerator, pipeline_cls):
    """Checkpoints hold the LoRA (diffusers format); resume restores it into the existing adapter."""
    register_checkpoint_hooks(
        accelerator,
        lambda model, directory: pipeline_cls.save_lora_weights(directory, unet_lora_layers=lora_layers_for_saving(model)),
        lambda model, directory: load_lora_into_existing_adapter(pipeline_cls, model, directory),
    )


# ---------------------------------------------------------------------------
# 8. Flag checks shared by both scripts, and clear errors
# ---------------------------------------------------------------------------


def check_pretrained_model(path: str, required_subfolders: Sequence[str] = ("unet", "vae", "text_encoder", "tokenizer")):
    """Fail early, with a fix, on a local model folder that does not exist or lacks a part.
    Hub ids ("org/name") are left to diffusers."""
    looks_local = os.path.isabs(path) or path.startswith(".") or os.path.exists(path) or path.count("/") > 1
    if not looks_local:
        return
    if not os.path.isdir(path):
        raise SSPOInputError(
            f"--pretrained_model_name_or_path {path}: no such folder. Pass a diffusers model folder "
            "or a Hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5."
        )
    for subfolder in required_subfolders:
        if not os.path.isdir(os.path.join(path, subfolder)):
            raise SSPOInputError(
                f"--pretrained_model_name_or_path {path} has no '{subfolder}' folder: it is not a "
                "complete diffusers pipeline. Save one with pipeline.save_pretrained(path)."
            )


def check_xformers_available():
    from diffusers.utils.import_utils import is_xformers_available

    if not torch.cuda.is_available():
        raise SSPOInputError(
            "--enable_xformers_memory_efficient_attention needs a CUDA GPU; xformers kernels do not run "
            "on CPU. Drop the flag: PyTorch's SDPA attention is the default."
        )
    if not is_xformers_available():
        raise SSPOInputError(
            "--enable_xformers_memory_efficient_attention: xformers is not installed. "
            "Run `pip install xformers`, or drop the flag (PyTorch SDPA is the default)."
        )


def optimizer_class(use_8bit_adam: bool):
    """AdamW, or bitsandbytes' 8-bit AdamW (which also runs on CPU tensors)."""
    if not use_8bit_adam:
        return torch.optim.AdamW
    try:
        import bitsandbytes as bnb
    except ImportError as error:
        raise SSPOInputError(
            f"--use_8bit_adam needs bitsandbytes ({error}). Run `pip install bitsandbytes`, or drop the flag."
        ) from error
    return bnb.optim.AdamW8bit


def input_error_message(error: BaseException) -> str:
    """One line for the user. Errors raised in dataloader workers come back wrapped in
    PyTorch's 'Caught ... in DataLoader worker' text; keep only the original message."""
    text = str(error).strip()
    for marker in (f"{SSPOInputError.__name__}: ", f"{SSPOTrainingError.__name__}: "):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
    return text.splitlines()[0] if text else type(error).__name__


def run_with_clear_errors(main, parse_args):
    """Call ``main(parse_args())``; bad input (flags, data, checkpoints) ends with one
    'error: ...' line and exit status 2, a training stop (SSPOTrainingError) with status 3,
    instead of a traceback."""
    import gc
    import sys

    try:
        main(parse_args())
        return
    except (SSPOInputError, SSPOTrainingError) as error:
        message = input_error_message(error)
        status = 2 if isinstance(error, SSPOInputError) else 3
        # Free main()'s frames so open progress bars close first and the error stays the last line.
        error.__traceback__ = None
    gc.collect()
    sys.stderr.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


# ---------------------------------------------------------------------------
# 9. Script plumbing shared by both trainers (flags, accelerator, resume, step metrics)
# ---------------------------------------------------------------------------

SELF_SAMPLE_SCHEDULER_NAMES = ("ddim", "ddpm")


def add_shared_arguments(parser, loss_types: Sequence[str], default_output_dir: str, ssr_default: str = "self_sample"):
    """Flags every trainer takes, named as in diffusers' examples, plus the SSPO group. ``ssr_default``: the
    decisive study chose ``self_sample`` on images only, so a trainer of another kind keeps the paper's SSR."""
    group = parser.add_argument_group("model")
    group.add_argument("--pretrained_model_name_or_path", type=str, required=True,
                       help="Hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or local diffusers folder.")
    group.add_argument("--revision", type=str, default=None)
    group.add_argument("--variant", type=str, default=None, help="Weights variant, e.g. fp16.")
    group.add_argument("--rank", type=int, default=8, help="LoRA rank.")
    group.add_argument("--lora_alpha", type=int, default=None, help="LoRA alpha (default: --rank).")

    group = parser.add_argument_group("SSPO")
    loss_help = {"sspo": "sspo: SSPO on winners", "sft": "sft: plain MSE on winners (no self-sampling)",
                 "dpo": "dpo: Diffusion-DPO on real pairs (Pick-a-Pic jpg_0/jpg_1/label_0), base model as reference"}
    group.add_argument("--loss_type", choices=loss_types, default="sspo",
                       help=". ".join(loss_help[name] for name in loss_types) + ".")
    group.add_argument("--beta_dpo", type=float, default=5000.0,
                       help="β of the DPO/SSPO loss; the loss uses β/2 as in Diffusion-DPO's code (5000 for SD1.5).")
    group.add_argument("--ssr", choices=SSR_MODES, default=ssr_default,
                       help=f"SSR (default: {ssr_default}): self_sample (not in the paper) drops a sample's DPO term "
                            "when the policy denoises the self-sample x^s better than the reference; sft (the paper's "
                            "SSR) drops it when the reference beats the policy on x^w; flip (SePPO v1) then counts the "
                            "self-sample as a second winner; off never switches (docs/sspo-flags-and-choices.md).")
    group.add_argument("--reference_strategy", choices=REFERENCE_STRATEGIES, default="uniform",
                       help="uniform: RCR, a uniform draw over the pool; latest: newest snapshot (SPIN-Diffusion-like); "
                            "initial: always the base model.")
    group.add_argument("--snapshot_steps", type=int, default=100,
                       help="Add a snapshot of the trained weights to the reference pool every N optimizer steps.")
    group.add_argument("--max_snapshots", type=int, default=None,
                       help="Bound the pool to K snapshots. When full, the initial model is kept and the other slots are "
                            "replaced by reservoir sampling, so the pool stays a uniform sample of the whole history. "
                            "Default: unbounded (one copy of the trained weights per snapshot).")
    group.add_argument("--snapshots_on_device", action="store_true",
                       help="Keep pool snapshots on the accelerator instead of CPU (faster swaps, more GPU memory).")
    group.add_argument("--self_sample_steps", type=int, default=20, help="Denoising steps of each self-sample x^s.")
    group.add_argument("--self_sample_guidance_scale", type=float, default=7.5, help="CFG scale of self-sampling.")
    group.add_argument("--self_sample_scheduler", choices=SELF_SAMPLE_SCHEDULER_NAMES, default="ddim",
                       help="Sampler of self-sampling, built from the model's scheduler config.")
    group.add_argument("--proportion_empty_prompts", type=float, default=0.0,
                       help="Share of a batch's captions replaced by the empty caption in the loss (x^s is still sampled "
                            "for the real caption). SD's pretraining drops captions so that classifier-free guidance "
                            "works; fine-tuning on captions alone lets the unconditional prediction drift, and CFG "
                            "amplifies the drift. 0 (default) as in Diffusion-DPO.")
    group.add_argument("--self_sample_batch_size", type=int, default=None,
                       help="Self-samples per generation call. The RCR reference is drawn once per optimizer step, so "
                            "the x^s of all its micro-batches are generated together, in chunks of this size. Default: "
                            "all of them (train_batch_size x gradient_accumulation_steps) in one call; lower it to bound "
                            "memory (e.g. for long videos).")
    group.add_argument("--self_sample_merged_copy", choices=MERGED_COPY_CHOICES, default="auto",
                       help="Self-sample from a copy of the frozen UNet in the weight dtype with the drawn RCR snapshot's "
                            "LoRA merged in (no LoRA layers, no autocast casts; refreshed when the drawn snapshot changes). "
                            "Costs one UNet in that dtype (1.6 GiB for SD1.5 in bf16). auto: on for a CUDA UNet whose copy "
                            "takes at most a quarter of the free memory, off on CPU. off: sample through the trained "
                            "UNet's LoRA layers with the snapshot swapped in (no extra memory).")

    group = parser.add_argument_group("optimization")
    group.add_argument("--train_batch_size", type=int, default=4)
    group.add_argument("--gradient_accumulation_steps", type=int, default=1)
    group.add_argument("--num_train_epochs", type=int, default=1)
    group.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    group.add_argument("--learning_rate", type=float, default=1e-5)
    group.add_argument("--scale_lr", action="store_true",
                       help="Multiply the lr by accumulation steps, batch size and number of processes.")
    group.add_argument("--lr_scheduler", type=str, default="constant_with_warmup",
                       help='"linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup".')
    group.add_argument("--lr_warmup_steps", type=int, default=0)
    group.add_argument("--adam_beta1", type=float, default=0.9)
    group.add_argument("--adam_beta2", type=float, default=0.999)
    group.add_argument("--adam_weight_decay", type=float, default=1e-2)
    group.add_argument("--adam_epsilon", type=float, default=1e-8)
    group.add_argument("--max_grad_norm", type=float, default=1.0)
    group.add_argument("--max_nonfinite_steps", type=int, default=10,
                       help="Steps with a NaN/inf loss or gradient norm are skipped (no update, no snapshot) and logged; "
                            "after this many in a row the run stops with a checkpoint of the last good weights.")
    group.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes' 8-bit AdamW.")
    group.add_argument("--seed", type=int, default=None, help="Any integer, 0 included, makes the run reproducible.")
    group.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None)
    group.add_argument("--allow_tf32", action="store_true")
    group.add_argument("--gradient_checkpointing", action="store_true")
    group.add_argument("--enable_xformers_memory_efficient_attention", action="store_true")
    group.add_argument("--dataloader_num_workers", type=int, default=0)

    group = parser.add_argument_group("checkpoints, logging, validation, hub")
    group.add_argument("--output_dir", type=str, default=default_output_dir)
    group.add_argument("--checkpointing_steps", type=int, default=500)
    group.add_argument("--checkpoints_total_limit", type=int, default=None)
    group.add_argument("--resume_from_checkpoint", type=str, default=None, help='A checkpoint folder, or "latest".')
    group.add_argument("--logging_dir", type=str, default="logs")
    group.add_argument("--report_to", type=str, default="tensorboard", help='"tensorboard", "wandb", "all" or "none".')
    group.add_argument("--validation_prompts", type=str, nargs="+", default=None)
    group.add_argument("--validation_steps", type=int, default=200, help="Validate every N optimizer steps.")
    group.add_argument("--validation_inference_steps", type=int, default=30)
    group.add_argument("--push_to_hub", action="store_true")
    group.add_argument("--hub_model_id", type=str, default=None)
    group.add_argument("--hub_token", type=str, default=None,
                       help="Prefer `hf auth login` or the HF_TOKEN environment variable: a flag shows in process "
                            "lists. The token is never logged or saved.")
    return parser


def check_shared_args(args, positive: Sequence[str] = ()):
    """Reject nonsense values of the shared flags (and of ``positive`` script flags)."""
    if args.resolution <= 0 or args.resolution % 8:
        raise SSPOInputError(f"--resolution {args.resolution} must be a positive multiple of 8 (the VAE downsamples by 8).")
    for name in ("rank", "snapshot_steps", "self_sample_steps", "train_batch_size", "gradient_accumulation_steps",
                 "checkpointing_steps", "validation_steps", "validation_inference_steps", "max_nonfinite_steps", *positive):
        if getattr(args, name) < 1:
            raise SSPOInputError(f"--{name} {getattr(args, name)} must be at least 1.")
    if args.self_sample_batch_size is not None and args.self_sample_batch_size < 1:
        raise SSPOInputError(f"--self_sample_batch_size {args.self_sample_batch_size} must be at least 1.")
    if args.max_snapshots is not None and args.max_snapshots < 2:
        raise SSPOInputError(f"--max_snapshots {args.max_snapshots} cannot hold the initial model plus any other; use >= 2.")
    if args.beta_dpo <= 0:
        raise SSPOInputError(f"--beta_dpo {args.beta_dpo} must be positive.")
    if not 0 <= args.proportion_empty_prompts < 1:
        raise SSPOInputError(f"--proportion_empty_prompts {args.proportion_empty_prompts} must be in [0, 1).")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        raise SSPOInputError(f"--max_train_steps {args.max_train_steps} must be at least 1.")
    if args.lora_alpha is None:
        args.lora_alpha = args.rank


def pick_column(columns, requested, guesses, flag):
    """The column named by ``flag`` (checked), else the first of ``guesses`` present."""
    if requested is not None:
        if requested not in columns:
            raise SSPOInputError(f"{flag} {requested!r} is not a data column; columns are {sorted(columns)}.")
        return requested
    for guess in guesses:
        if guess in columns:
            return guess
    raise SSPOInputError(f"No {flag.strip('-').replace('_', ' ')} found among columns {sorted(columns)}; pass {flag}.")


BAD_SAMPLE_POLICIES = ("error", "skip")


def add_bad_sample_argument(group, what: str):
    group.add_argument("--on_bad_sample", choices=BAD_SAMPLE_POLICIES, default="error",
                       help=f"A {what}: stop with an error naming it, or skip it (another sample is drawn in its "
                            "place and the count is logged as skipped_bad_samples).")


class BadSamplePolicyDataset(torch.utils.data.Dataset):
    """Base of both scripts' training datasets. Subclasses define ``load(index)`` (decode and
    augment one sample) and ``describe(index)`` (how to name it in an error).

    * A sample that fails to load stops the run with a one-line error naming it
      (``on_bad_sample="error"``), or is replaced by another random sample and counted in
      ``num_skipped`` (``"skip"``).
    * All randomness inside ``load`` (crops, flips, clip starts, replacement draws) comes from
      the CPU RNG reseeded from (seed, epoch, index), so a sample's augmentation does not depend
      on what was loaded before it: a resumed run sees exactly what the straight run saw,
      whatever the dataloader prefetched before the checkpoint.
    """

    def __init__(self, num_items: int, on_bad_sample: str, seed: int):
        self.num_items, self.on_bad_sample, self.seed, self.epoch = num_items, on_bad_sample, seed, 0

    def __len__(self):
        return self.num_items

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def load(self, index):
        raise NotImplementedError

    def describe(self, index) -> str:
        return f"#{index}"

    def __getitem__(self, index):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(hash((self.seed, self.epoch, index)) % 2**63)
            for attempt in range(max(self.num_items, 1)):
                try:
                    return {**self.load(index), "num_skipped": attempt}
                except Exception as error:
                    if self.on_bad_sample == "error":
                        reason = input_error_message(error).rstrip(".")
                        raise SSPOInputError(f"Bad sample {self.describe(index)}: {reason}. Fix or remove it, or pass "
                                             "--on_bad_sample skip.") from error
                    last_reason = input_error_message(error).rstrip(".")
                    index = int(torch.randint(self.num_items, (1,)))
        raise SSPOInputError(f"--on_bad_sample skip: all {self.num_items} samples tried were bad (the last: {last_reason}). "
                             "Check the data and flags such as --num_frames.")


def optimizer_step_batches(accelerator, dataloader, skip: int = 0):
    """Yields the micro-batches of one optimizer step at a time: up to
    --gradient_accumulation_steps consecutive batches, fewer at the end of an epoch (where
    accelerate also steps). Gathering them first lets self-sampling run batched over the
    whole step. ``skip`` batches are skipped first (resume)."""
    batches = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
    step_batches = []
    for batch in batches:
        step_batches.append(batch)
        if len(step_batches) == accelerator.gradient_accumulation_steps:
            yield step_batches
            step_batches = []
    if step_batches:
        yield step_batches


@contextlib.contextmanager
def accumulate_micro_batch(accelerator, model, is_last: bool):
    """``accelerator.accumulate(model)`` with the optimizer-step boundary set by
    ``optimizer_step_batches``: accelerate's own rule would see the end of the dataloader
    as soon as the last step's batches are gathered, and step too early. Gradients are
    synced across processes (and the optimizer steps) only on the last micro-batch."""
    accelerator.sync_gradients = is_last
    with contextlib.nullcontext() if is_last else accelerator.no_sync(model):
        yield


def start_epoch(dataloader, epoch: int):
    """The shuffle order (seedable sampler) and the per-sample augmentation seeds depend only on
    (seed, epoch); accelerate tells the sampler, this also tells the dataset."""
    dataloader.set_epoch(epoch)
    if hasattr(dataloader.dataset, "set_epoch"):
        dataloader.dataset.set_epoch(epoch)


def create_accelerator(args, project_name: str):
    """The Accelerator (seedable data order), logging, seeds and this rank's dedicated
    generators. Also fails early on unusable optional features, and verifies the checkpoint
    to resume from (``args.resume_path``)."""
    import datasets
    import diffusers
    import transformers
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir,
                                            logging_dir=os.path.join(args.output_dir, args.logging_dir)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    for library in (datasets, transformers, diffusers):
        if accelerator.is_local_main_process:
            library.utils.logging.set_verbosity_warning()
        else:
            library.utils.logging.set_verbosity_error()
    if args.seed is not None:
        set_seed(args.seed)
    # Verified before models load or anything is written: a damaged checkpoint fails in seconds.
    args.resume_path = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir,
                                                 warn=logger.warning if accelerator.is_main_process else None)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    if args.enable_xformers_memory_efficient_attention:
        check_xformers_available()
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    generators = TrainingGenerators(args.seed if args.seed is not None else 0, accelerator.process_index)
    return accelerator, generators


def weight_dtype_of(accelerator) -> torch.dtype:
    """dtype of the frozen weights; trainable weights stay fp32."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def create_optimizer(args, parameters, num_processes: int):
    if args.scale_lr:
        args.learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * num_processes
    return optimizer_class(args.use_8bit_adam)(parameters, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                               weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)


def prepare_for_training(args, accelerator, model, optimizer, dataloader, streaming: bool = False):
    """LR schedule, ``accelerator.prepare``, and the step/epoch arithmetic (diffusers' rules).
    Returns (model, optimizer, dataloader, lr_scheduler, num_update_steps_per_epoch)."""
    from diffusers.optimization import get_scheduler

    if args.max_train_steps is None:  # streaming runs are required to pass it (checked with the flags)
        per_epoch = math.ceil(len(dataloader) / accelerator.num_processes / args.gradient_accumulation_steps)
        args.max_train_steps = args.num_train_epochs * per_epoch
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)
    if streaming:
        num_update_steps_per_epoch = None
        args.num_train_epochs = 10**9  # a stream ends when --max_train_steps is reached
    else:
        num_update_steps_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
        args.num_train_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)
    return model, optimizer, dataloader, lr_scheduler, num_update_steps_per_epoch


def tracker_config(args) -> Dict:
    """Flags for tensorboard/wandb hparams: scalars only, and never the Hub token."""
    return {k: v for k, v in vars(args).items() if not isinstance(v, (list, tuple)) and k != "hub_token"}


def run_config_of(args, keys: Sequence[str]) -> Dict:
    """Settings a checkpoint must share with the run that resumes it."""
    return {key: getattr(args, key) for key in keys}


def resume_training_state(args, accelerator, generators, reference_pool, run_config: Dict,
                          num_update_steps_per_epoch: Optional[int]):
    """Restore the checkpoint ``create_accelerator`` verified, if any: accelerate state (LoRA via
    the hooks, optimizer, LR, RNGs, the RCR pool) and this rank's generators. Returns
    (global_step, first_epoch, micro-batches to skip in first_epoch)."""
    resume_path = args.resume_path
    if resume_path is None:
        if args.resume_from_checkpoint:
            accelerator.print(f"No checkpoint in {args.output_dir}; starting a new run.")
        return 0, 0, 0
    check_run_config(resume_path, run_config)
    accelerator.print(f"Resuming from {resume_path}")
    accelerator.load_state(resume_path)
    load_generators(resume_path, generators, accelerator.process_index)
    reference_pool.load(os.path.join(resume_path, POOL_FILE_NAME))
    global_step = checkpoint_step(resume_path)
    if num_update_steps_per_epoch is None:  # streaming: no epochs to skip into
        return global_step, 0, 0
    first_epoch = global_step // num_update_steps_per_epoch
    resume_batches = (global_step % num_update_steps_per_epoch) * args.gradient_accumulation_steps
    return global_step, first_epoch, resume_batches


def training_target(noise_scheduler, latents, noise, timesteps):
    """eps for epsilon-prediction models, v for v-prediction models."""
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    return noise


def noisy_pair(noise_scheduler, latents_w, latents_l, noise, timesteps):
    """x_t^w and x_t^s (or x_t^l) stacked in one batch, with t and eps shared within each pair
    as in Diffusion-DPO. Returns (noisy latents, target, timesteps), each of batch 2B."""
    latents = torch.cat([latents_w, latents_l.to(latents_w)])
    pair_noise, pair_t = torch.cat([noise, noise]), torch.cat([timesteps, timesteps])
    return (noise_scheduler.add_noise(latents, pair_noise, pair_t),
            training_target(noise_scheduler, latents, pair_noise, pair_t), pair_t)


def micro_batch_metrics(loss, info, errors):
    """Detached per-micro-batch tensors; reduced once per optimizer step (no .item() here)."""
    metrics = {"loss": loss.detach()}
    for key in ("ssr_sft_fraction", "implicit_acc"):
        if key in info:
            metrics[key] = info[key]
    if "reward_margin" in info:
        metrics["reward_margin"] = info["reward_margin"].mean()
    metrics.update({key: value.detach().mean() for key, value in errors.items()})
    return metrics


def reduce_step_metrics(accelerator, step_metrics):
    """Average over the step's micro-batches and over processes; one sync per step."""
    keys = list(step_metrics[0])
    stacked = torch.stack([torch.stack([m[k].float() for k in keys]) for m in step_metrics]).mean(dim=0)
    stacked = accelerator.reduce(stacked.to(accelerator.device), reduction="mean")
    return dict(zip(keys, stacked.tolist()))


SSPO_CARD_SETTINGS = ("loss_type", "ssr", "reference_strategy", "beta_dpo", "snapshot_steps", "max_snapshots",
                      "self_sample_steps", "self_sample_guidance_scale", "self_sample_scheduler", "rank", "lora_alpha",
                      "learning_rate", "train_batch_size", "gradient_accumulation_steps", "max_train_steps",
                      "resolution", "mixed_precision", "seed")


def create_hub_repo(args) -> Optional[str]:
    if not args.push_to_hub:
        return None
    from huggingface_hub import create_repo

    return create_repo(args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir)),
                       exist_ok=True, token=args.hub_token).repo_id


def upload_output_dir(args, repo_id: str, commit_message: str = "SSPO training output"):
    """The LoRA (or motion adapter), the model card and its previews; no checkpoints or logs."""
    from huggingface_hub import upload_folder

    upload_folder(repo_id=repo_id, folder_path=args.output_dir, commit_message=commit_message, token=args.hub_token,
                  ignore_patterns=["step_*", "epoch_*", "checkpoint-*", ".tmp-*", "logs/*"])


def load_base_components(args, **scheduler_overrides):
    """Tokenizer, text encoder, VAE, 2D UNet and the DDPM training scheduler of an SD1.5-family
    base (hub id or local folder), with a clear error when something is missing."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    check_pretrained_model(args.pretrained_model_name_or_path)
    path, revision, variant = args.pretrained_model_name_or_path, args.revision, args.variant
    try:
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", revision=revision)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", revision=revision, variant=variant)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", revision=revision, variant=variant)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", revision=revision, variant=variant)
        noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **scheduler_overrides)
    except OSError as error:
        raise SSPOInputError(f"Could not load the model {path}: {str(error).splitlines()[0]}") from error
    return tokenizer, text_encoder, vae, unet, noise_scheduler


def self_sample_scheduler(args, noise_scheduler):
    """The self-sampler's own scheduler instance (DDIM or DDPM) from the training scheduler's config."""
    from diffusers import DDIMScheduler, DDPMScheduler

    return {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}[args.self_sample_scheduler].from_config(noise_scheduler.config)


def tokenize(tokenizer, captions):
    return tokenizer(list(captions), max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def encode_prompt_ids(text_encoder, input_ids):
    return text_encoder(input_ids.to(text_encoder.device), return_dict=False)[0]


def drop_captions(prompt_embeds, empty_prompt_embeds, proportion, generator):
    """Replace each row of ``prompt_embeds`` by the empty caption's embedding with probability
    ``proportion`` (caption dropout, as in SD's pretraining). Draws nothing when ``proportion`` is 0,
    so runs without dropout keep their random streams.

    ``prompt_embeds`` and ``empty_prompt_embeds`` may also be tuples of tensors (SDXL's sequence
    and pooled embeddings): one draw per row then drops all of them together."""
    if proportion <= 0:
        return prompt_embeds
    embeds, empties = (prompt_embeds, empty_prompt_embeds) if isinstance(prompt_embeds, tuple) else (
        (prompt_embeds,), (empty_prompt_embeds,))
    dropped = (torch.rand(embeds[0].shape[0], generator=generator) < proportion).to(embeds[0].device)
    kept = tuple(torch.where(dropped.view(-1, *[1] * (e.dim() - 1)), empty.to(e), e) for e, empty in zip(embeds, empties))
    return kept if isinstance(prompt_embeds, tuple) else kept[0]


def draw_noise_and_timesteps(noise_scheduler, latents, generator):
    """eps ~ N(0, I) and t ~ U{0..T-1} from the dedicated noise generator (saved in checkpoints)."""
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    return noise, timesteps.to(latents.device)


def log_optimizer_step(accelerator, progress_bar, step_metrics, global_step, lr_scheduler, grad_norm,
                       reference_pool=None, reference_index=None, nonfinite_guard=None, num_skipped=0) -> Dict:
    """Reduce the step's metrics, add lr, grad_norm, pool size and the age of the RCR draw, run
    the non-finite check (``nonfinite_guard.last_step_finite``), update the progress bar and
    send everything to the trackers."""
    logs = reduce_step_metrics(accelerator, step_metrics)
    logs.update(lr=lr_scheduler.get_last_lr()[0], grad_norm=float(grad_norm))
    if nonfinite_guard is not None:
        nonfinite_guard.check(logs, global_step)
    if nonfinite_guard is not None and nonfinite_guard.total:
        logs["nonfinite_steps"] = nonfinite_guard.total
    if num_skipped:  # bad samples replaced under --on_bad_sample skip, so far (this rank)
        logs["skipped_bad_samples"] = num_skipped
    if reference_index is not None:
        logs.update(pool_size=len(reference_pool), snapshot_age=global_step - 1 - reference_pool.steps[reference_index])
    progress_bar.update(1)
    progress_bar.set_postfix(loss=f"{logs['loss']:.4f}", ssr_sft=f"{logs.get('ssr_sft_fraction', 0):.2f}")
    accelerator.log(logs, step=global_step)
    return logs


class NonFiniteGuard:
    """Skips optimizer steps whose loss or gradient norm is not finite (NaN/inf), counts them,
    and asks the run to stop after ``max_consecutive`` in a row. Decisions use metrics already
    reduced over processes, so every rank takes the same one."""

    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0
        self.last_step_finite = True

    def check(self, logs: Dict, global_step: int) -> bool:
        finite = math.isfinite(logs["loss"]) and math.isfinite(logs["grad_norm"])
        self.last_step_finite = finite
        if finite:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        logger.warning(f"Step {global_step}: non-finite loss ({logs['loss']}) or grad norm ({logs['grad_norm']}); "
                       f"skipped without an update ({self.consecutive} in a row, {self.total} in all).")
        return False

    @property
    def exhausted(self) -> bool:
        return self.consecutive >= self.max_consecutive


def apply_optimizer_step(optimizer, lr_scheduler, nonfinite_guard: NonFiniteGuard) -> bool:
    """Update the weights unless the guard found this step's loss or gradient norm non-finite
    (then the step is skipped: no update); clear the gradients either way."""
    step_is_finite = nonfinite_guard.last_step_finite
    if step_is_finite:
        optimizer.step()
        lr_scheduler.step()
    optimizer.zero_grad()
    return step_is_finite


def snapshot_and_checkpoint(args, accelerator, global_step, reference_pool, generators, run_config,
                            nonfinite_guard: Optional[NonFiniteGuard] = None, step_was_finite: bool = True):
    """After an optimizer step: offer a snapshot to the RCR pool every --snapshot_steps (SSPO
    only, and not after a skipped non-finite step), and write a checkpoint every
    --checkpointing_steps (after the snapshot, so the checkpoint's pool includes it). After
    --max_nonfinite_steps skipped steps in a row, checkpoint the last good weights and stop."""
    if nonfinite_guard is not None and nonfinite_guard.exhausted:
        path = save_checkpoint_atomically(accelerator, args.output_dir, global_step, run_config, generators,
                                          reference_pool, args.checkpoints_total_limit)
        raise SSPOTrainingError(
            f"{nonfinite_guard.consecutive} optimizer steps in a row had a non-finite loss or gradient norm "
            f"(--max_nonfinite_steps {nonfinite_guard.max_consecutive}); stopped. The last good weights are in {path}. "
            "Lower --learning_rate or --beta_dpo, or use bf16 instead of fp16, then resume from it.")
    if args.loss_type == "sspo" and global_step % args.snapshot_steps == 0 and step_was_finite:
        reference_pool.add(global_step)
    if global_step % args.checkpointing_steps == 0:
        path = save_checkpoint_atomically(accelerator, args.output_dir, global_step, run_config, generators,
                                          reference_pool, args.checkpoints_total_limit)
        logger.info(f"Saved state to {path}")


def begin_training(args, accelerator, project_name, pipeline_cls, generators, reference_pool, num_update_steps_per_epoch):
    """After ``prepare_for_training``, in both image trainers: checkpoints that hold the LoRA in
    ``pipeline_cls``'s format, the run config a resume is checked against, the trackers, the
    resume itself, the run header and the progress bar.
    Returns (run_config, global_step, first_epoch, resume_batches, progress_bar)."""
    from tqdm.auto import tqdm

    register_lora_checkpoint_hooks(accelerator, pipeline_cls)
    run_config = run_config_of(args, ("rank", "lora_alpha", "loss_type", "pretrained_model_name_or_path"))
    if accelerator.is_main_process:
        accelerator.init_trackers(project_name, config=tracker_config(args))
    global_step, first_epoch, resume_batches = resume_training_state(
        args, accelerator, generators, reference_pool, run_config, num_update_steps_per_epoch)
    log_run_header(args, accelerator, reference_pool)
    progress_bar = tqdm(range(args.max_train_steps), initial=global_step, desc="Steps",
                        disable=not accelerator.is_local_main_process)
    return run_config, global_step, first_epoch, resume_batches, progress_bar


def draw_reference(args, reference_pool, generator) -> Optional[int]:
    """RCR: the pool entry that is this optimizer step's reference model and self-sampler, drawn
    once per step; the initial model for --loss_type dpo, none for sft."""
    if args.loss_type == "sft":
        return None
    return reference_pool.sample("initial" if args.loss_type == "dpo" else args.reference_strategy, generator)


def log_run_header(args, accelerator, reference_pool):
    logger.info(
        f"***** Running {args.loss_type} training *****  steps={args.max_train_steps} total batch="
        f"{args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps} (per device "
        f"{args.train_batch_size} x {accelerator.num_processes} processes x {args.gradient_accumulation_steps} "
        f"accumulation); pool: {len(reference_pool)} snapshot(s), {reference_pool.nbytes_per_snapshot() / 2**20:.1f} MiB each"
    )
    if args.loss_type == "sspo":
        per_step = args.train_batch_size * args.gradient_accumulation_steps
        per_call = min(args.self_sample_batch_size or per_step, per_step)
        logger.info(f"Self-sampling: {per_step} x^s per optimizer step and process, in {math.ceil(per_step / per_call)} "
                    f"call(s) of up to {per_call}, {args.self_sample_steps} {args.self_sample_scheduler} steps, "
                    f"CFG {args.self_sample_guidance_scale}")


def machine_info(device) -> Dict:
    """Where a benchmark or evaluation ran: device and its name (GPU, or the CPU model), core and
    thread counts, library versions, and the date, for the reports of bench_sspo.py and
    evaluate_sspo.py."""
    import datetime
    import platform

    import diffusers
    import transformers

    device = torch.device(device)
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    now = datetime.datetime.now().astimezone()
    return {"device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model,
            "cpu_model": cpu_model, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "date": now.date().isoformat(), "datetime": now.isoformat(timespec="seconds")}


# ---------------------------------------------------------------------------
# 10. Image data both image trainers read (winners x^w, and losers x^l for dpo)
# ---------------------------------------------------------------------------

PICKAPIC_COLUMNS = ("jpg_0", "jpg_1", "label_0")
CAPTION_COLUMN_GUESSES = ("caption", "text", "prompt")
IMAGE_COLUMN_GUESSES = ("image", "jpg", "img")


def load_raw_dataset(args):
    """--train_data_dir (imagefolder), or --dataset_name: a Hub id, a dataset folder or one
    .parquet/.jsonl/.csv file; streamed with --streaming."""
    from datasets import load_dataset

    if args.train_data_dir is not None:
        if not os.path.isdir(args.train_data_dir):
            raise SSPOInputError(f"--train_data_dir {args.train_data_dir}: no such folder.")
        return load_dataset("imagefolder", data_dir=args.train_data_dir, split="train", cache_dir=args.cache_dir,
                            streaming=args.streaming)
    name = args.dataset_name
    file_format = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}.get(os.path.splitext(name)[1])
    try:
        if file_format and os.path.isfile(name):
            return load_dataset(file_format, data_files=name, split="train", streaming=args.streaming)
        return load_dataset(name, args.dataset_config_name, split=args.dataset_split_name, cache_dir=args.cache_dir,
                            streaming=args.streaming)
    except (FileNotFoundError, ValueError, ConnectionError) as error:
        raise SSPOInputError(f"Could not load --dataset_name {name} (split {args.dataset_split_name}): {error}") from error


def prepare_image_dataset(args):
    """Load the data and find its caption and image columns. Pick-a-Pic v2 rows (jpg_0, jpg_1,
    label_0) keep the labelled winner; ties and unlabeled rows are dropped.
    Returns (dataset, caption_column, image_columns, is_pickapic)."""
    import datasets

    dataset = load_raw_dataset(args)
    columns = list(dataset.column_names or dataset.features or [])
    caption_column = pick_column(columns, args.caption_column, CAPTION_COLUMN_GUESSES, "--caption_column")
    is_pickapic = all(column in columns for column in PICKAPIC_COLUMNS) and args.image_column is None
    if args.loss_type == "dpo" and not is_pickapic:
        raise SSPOInputError("--loss_type dpo needs preference pairs in Pick-a-Pic format (columns jpg_0, jpg_1, "
                             f"label_0); this dataset has {sorted(columns)}. Use --loss_type sspo for winner-only data.")
    if is_pickapic:
        def is_decided(label_0, has_label=True):
            return bool(has_label) and label_0 in (0, 1)

        label_columns = ["label_0", "has_label"] if "has_label" in columns else ["label_0"]
        num_rows = None if args.streaming else len(dataset)
        dataset = dataset.filter(is_decided, input_columns=label_columns)
        if num_rows is not None:
            logger.info(f"Pick-a-Pic format: kept {len(dataset)} of {num_rows} rows "
                        f"({num_rows - len(dataset)} ties or unlabeled rows dropped).")
        else:
            logger.info("Pick-a-Pic format (streaming): ties and unlabeled rows are dropped on the fly.")
        image_columns = ("jpg_0", "jpg_1")
    else:
        image_columns = (pick_column(columns, args.image_column, IMAGE_COLUMN_GUESSES, "--image_column"),)
        if isinstance(dataset.features, datasets.Features) and isinstance(dataset.features.get(image_columns[0]), datasets.Image):
            # Decode ourselves, so a corrupt file is reported with its name.
            dataset = dataset.cast_column(image_columns[0], datasets.Image(decode=False))
    if args.max_train_samples is not None:
        dataset = dataset.take(args.max_train_samples) if args.streaming else dataset.shuffle(seed=args.seed).select(
            range(min(args.max_train_samples, len(dataset))))
    if not args.streaming and len(dataset) == 0:
        raise SSPOInputError("The training dataset is empty (after dropping ties/unlabeled rows and --max_train_samples). "
                             "Check --dataset_name/--train_data_dir and --dataset_split_name.")
    return dataset, caption_column, image_columns, is_pickapic


def decode_image(value, description):
    """A PIL RGB image from a PIL image, a datasets Image dict (bytes or path) or raw bytes."""
    import io

    from PIL import Image

    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict):
            image = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
        else:
            image = Image.open(io.BytesIO(value))
        return image.convert("RGB")
    except Exception as error:
        raise SSPOInputError(f"Could not decode the image of {description}: {error}.") from error


def pair_columns(examples, i, image_columns, is_pickapic, keep_loser):
    """The columns that hold row ``i``'s x^w (and x^l when ``keep_loser``): in Pick-a-Pic rows
    the labelled winner comes first."""
    if is_pickapic:
        columns = ("jpg_0", "jpg_1") if examples["label_0"][i] == 1 else ("jpg_1", "jpg_0")
    else:
        columns = image_columns
    return columns[: 2 if keep_loser else 1]


class WinnerImageDataset(BadSamplePolicyDataset):
    """Rows of a map-style dataset through a trainer's batched ``preprocess``, one at a time, so
    a bad image follows --on_bad_sample and augmentations are reproducible per (seed, epoch, row)."""

    def __init__(self, dataset, preprocess, on_bad_sample, seed):
        super().__init__(len(dataset), on_bad_sample, seed)
        self.dataset, self.preprocess = dataset, preprocess

    def load(self, index):
        processed = self.preprocess({key: [value] for key, value in self.dataset[index].items()})
        return {key: values[0] for key, values in processed.items()}

    def describe(self, index):
        return f"row {index}"


def build_image_dataloader(args, accelerator, generators, make_preprocess, collate_fn):
    """The training DataLoader. ``make_preprocess(caption_column, image_columns, is_pickapic)``
    builds the trainer's preprocessing (decode, resize, crop, tokenize). Map-style data is
    read through ``WinnerImageDataset``; --streaming data is shuffled in a buffer and mapped."""
    with accelerator.main_process_first():
        dataset, caption_column, image_columns, is_pickapic = prepare_image_dataset(args)
    preprocess = make_preprocess(caption_column, image_columns, is_pickapic)
    if args.streaming:
        dataset = dataset.shuffle(seed=args.seed or 0, buffer_size=1000).map(
            preprocess, batched=True, remove_columns=list(dataset.column_names or []))
        return torch.utils.data.DataLoader(dataset.with_format("torch"), batch_size=args.train_batch_size,
                                           collate_fn=collate_fn, num_workers=args.dataloader_num_workers)
    # A dedicated generator: building the resumed iterator must not consume the global RNG.
    return torch.utils.data.DataLoader(WinnerImageDataset(dataset, preprocess, args.on_bad_sample, args.seed or 0),
                                       shuffle=True, batch_size=args.train_batch_size, collate_fn=collate_fn,
                                       num_workers=args.dataloader_num_workers, generator=generators.dataloader)


def add_image_data_arguments(parser, default_resolution: int):
    """The data flags of both image trainers, named as in diffusers' examples."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset_name", type=str, default=None,
                       help="Hub dataset id, local dataset folder, or .parquet/.jsonl/.csv file. Pick-a-Pic v2 "
                            "(jpg_0, jpg_1, label_0) is detected: the winner is kept, ties and unlabeled rows dropped.")
    group.add_argument("--dataset_config_name", type=str, default=None)
    group.add_argument("--dataset_split_name", type=str, default="train")
    group.add_argument("--train_data_dir", type=str, default=None, help="An imagefolder with metadata.jsonl.")
    group.add_argument("--image_column", type=str, default=None, help="Default: image, jpg or img, whichever exists.")
    group.add_argument("--caption_column", type=str, default=None, help="Default: caption, text or prompt.")
    group.add_argument("--cache_dir", type=str, default=None)
    group.add_argument("--streaming", action="store_true",
                       help="Stream the dataset instead of downloading it (Pick-a-Pic v2 train is ~300 GB). "
                            "Needs --max_train_steps.")
    group.add_argument("--max_train_samples", type=int, default=None)
    group.add_argument("--resolution", type=int, default=default_resolution)
    crop = group.add_mutually_exclusive_group()
    crop.add_argument("--center_crop", action="store_true", help="Center crop (the default).")
    crop.add_argument("--random_crop", action="store_true")
    group.add_argument("--random_flip", action="store_true")
    add_bad_sample_argument(group, "row whose image cannot be decoded (not with --streaming, which always stops)")
    group.add_argument("--num_validation_images", type=int, default=2, help="Images per validation prompt.")
    return group


def check_image_data_args(args):
    """Reject nonsense data flags before any model is loaded."""
    if args.dataset_name is None and args.train_data_dir is None:
        raise SSPOInputError("Pass --dataset_name (hub id, folder or parquet) or --train_data_dir (imagefolder).")
    if args.streaming and args.max_train_steps is None:
        raise SSPOInputError("--streaming datasets have no length: pass --max_train_steps.")
    check_shared_args(args, positive=("num_validation_images",))


def generate_validation_images(args, accelerator, pipeline, weight_dtype, step, phase, **call_kwargs):
    """``--num_validation_images`` per validation prompt from ``pipeline`` (seeded by --seed), saved
    under ``output_dir/validation`` and sent to the trackers. Returns the PIL images."""
    from contextlib import nullcontext

    logger.info(f"Running {phase}: {args.num_validation_images} image(s) for each of {len(args.validation_prompts)} prompt(s).")
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(args.seed if args.seed is not None else 0)
    autocast = torch.autocast(accelerator.device.type, dtype=weight_dtype) if weight_dtype != torch.float32 else nullcontext()
    images = []
    with autocast:
        for prompt in args.validation_prompts:
            images += pipeline(prompt, num_inference_steps=args.validation_inference_steps, generator=generator,
                               num_images_per_prompt=args.num_validation_images, **call_kwargs).images
    folder = os.path.join(args.output_dir, "validation")
    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(images):
        image.save(os.path.join(folder, f"{phase}_step{step}_{i}.png"))
    log_images_to_trackers(accelerator, images, args.validation_prompts, phase, step)
    return images


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python sspo_utils.py", description="SSPO checkpoint tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check a run's checkpoints against their manifests, without training")
    verify.add_argument("path", help="a run's --output_dir, or one checkpoint-<step> folder")
    sys.exit(verify_run(parser.parse_args().path))
