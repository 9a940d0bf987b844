#!/usr/bin/env python
# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""Generate with the base model (SD1.5-family, SDXL or AnimateDiff) and one or more SSPO LoRAs
from the same per-image seeds, then score every image (or video) the way the papers do and write
a paired comparison report.

    python evaluate_sspo.py --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --lora_path sspo-sd15-pickapic --prompts pickapic --metrics pickscore hpsv2 aesthetic clip imagereward

Image metrics: PickScore, HPSv2/HPSv2.1, LAION aesthetic v2, CLIP score, ImageReward (optional).
Video metrics (AnimateDiff): CLIPSIM, temporal consistency, frame FID, FVD (StyleGAN-V I3D), PSNR.
Outputs in --output_dir: the images or videos, manifest.jsonl, scores.jsonl, report.json,
report.md, grid.png (and grid.gif for video). A re-run skips what is already on disk.
"""

import argparse
import contextlib
import csv
import dataclasses
import datetime
import gc
import json
import logging
import os
import re
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from sspo_utils import LORA_WEIGHT_NAME, SSPOInputError, machine_info, pick_column, run_with_clear_errors, save_video


logger = logging.getLogger("evaluate_sspo")


@dataclasses.dataclass(frozen=True)
class MetricInfo:
    task: str  # "image" or "video"
    label: str
    description: str
    higher_is_better: bool = True
    set_level: bool = False  # one number per model (FID, FVD): no per-prompt values, no win rate


METRICS = {
    "pickscore": MetricInfo("image", "PickScore", "logit_scale.exp() * cos(image, text) of PickScore (CLIP-H fine-tuned on Pick-a-Pic)"),
    "hpsv2": MetricInfo("image", "HPSv2", "100 * cos(image, text) of the HPS v2 (or v2.1) ViT-H-14"),
    "aesthetic": MetricInfo("image", "Aesthetic", "LAION improved aesthetic predictor v2 (MLP on L2-normalised "
                                                 "CLIP ViT-L/14 image embeddings), 1-10 scale"),
    "clip": MetricInfo("image", "CLIP score", "max(100 * cos(image, text), 0) of CLIP (ViT-L/14 by default)"),
    "imagereward": MetricInfo("image", "ImageReward", "ImageReward-v1.0 reward (optional: needs the image-reward package)"),
    "clipsim": MetricInfo("video", "CLIPSIM", "mean over frames of max(100 * cos(frame, text), 0)"),
    "temporal_consistency": MetricInfo("video", "Temporal consistency",
                                       "mean CLIP image-embedding cosine of consecutive frames"),
    "fid": MetricInfo("video", "FID (frames)", "Frechet Inception Distance of all frames vs the reference videos' frames",
                      higher_is_better=False, set_level=True),
    "fvd": MetricInfo("video", "FVD", "Frechet Video Distance with the StyleGAN-V I3D TorchScript detector vs the "
                                      "reference videos", higher_is_better=False, set_level=True),
    "psnr": MetricInfo("video", "PSNR", "mean per-frame PSNR (dB) against the reference video of the same prompt id"),
    "shapes_reward": MetricInfo("image", "Shapes reward", "ground-truth reward of the shapes world (shapes_world.py), "
                                                         "in [0, 1], computed from pixels with no learned model"),
    "shapes_video_reward": MetricInfo("video", "Shapes video reward", "ground-truth video reward of the shapes world "
                                                                      "(colour, background, shape, size, position, direction of "
                                                                      "motion)"),
}
DEFAULT_METRICS = {"image": ["pickscore", "hpsv2", "aesthetic", "clip", "imagereward"],
                   "video": ["clipsim", "temporal_consistency"]}
REFERENCE_METRICS = ("fid", "fvd", "psnr")
OPTIONAL_METRICS = ("imagereward",)  # reported as unavailable instead of stopping the run

# Named prompt sources: where they live and which column holds the prompt.
PROMPT_SOURCES = {
    "pickapic": {"location": "yuvalkirstain/pickapic_v2_no_images", "split": "validation_unique", "column": "caption"},
    "parti": {"location": "nateraw/parti-prompts", "split": "train", "column": "Prompt"},
    "hpsv2": {"location": "zhwang/HPDv2", "column": None},
    "chronomagic": {"location": "https://raw.githubusercontent.com/PKU-YuanGroup/ChronoMagic-Bench/main/prompts/"
                                "Captions_ChronoMagic-Bench-150.csv", "column": "name", "id_column": "videoid"},
}
HPSV2_STYLES = ("anime", "concept-art", "paintings", "photo")
PROMPT_FILE_EXTENSIONS = (".txt", ".csv", ".jsonl")
CAPTION_COLUMN_GUESSES = ("caption", "prompt", "Prompt", "text", "name")
ID_COLUMN_GUESSES = ("videoid", "id", "prompt_id")
HPS_CHECKPOINTS = {"v2.0": "xswu/HPSv2/HPS_v2_compressed.pt", "v2.1": "xswu/HPSv2/HPS_v2.1_compressed.pt"}
VIDEO_EXTENSIONS = (".mp4", ".gif", ".webm", ".avi", ".mov", ".mkv")
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Generate with the base model and SSPO LoRAs from the same seeds, "
                                                 "score the results and write a paired comparison report.")
    group = parser.add_argument_group("models")
    group.add_argument("--pretrained_model_name_or_path", type=str, required=True,
                       help="Base model: Hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or local folder.")
    group.add_argument("--revision", type=str, default=None)
    group.add_argument("--variant", type=str, default=None, help="Weights variant, e.g. fp16.")
    group.add_argument("--lora_path", type=str, nargs="+", default=[],
                       help="One or more trained outputs to compare with the base: a LoRA folder "
                            f"({LORA_WEIGHT_NAME}, e.g. an output_dir or checkpoint-<step> folder, or a Hub repo id) "
                            "or, for video, a MotionAdapter folder (train_sspo_animatediff.py --train_target "
                            "motion_modules).")
    group.add_argument("--model_names", type=str, nargs="+", default=None,
                       help="Names for the --lora_path entries in the report (default: folder basenames).")
    group.add_argument("--motion_adapter_name_or_path", type=str, default=None,
                       help="MotionAdapter for text-to-video (e.g. guoyww/animatediff-motion-adapter-v1-5-2); "
                            "implies --task video.")
    group.add_argument("--task", choices=("image", "video"), default=None,
                       help="Default: video if --motion_adapter_name_or_path is given, else image.")
    group.add_argument("--scheduler", choices=("default", "ddim", "ddpm", "pndm", "euler"), default="default",
                       help="Sampler; 'default' keeps the model's own (PNDM for SD1.5, as the papers' default "
                            "pipeline call does).")
    group.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no",
                       help="Generation dtype (scorers always run in fp32).")
    group.add_argument("--device", type=str, default=None, help="Default: cuda when available, else cpu.")

    group = parser.add_argument_group("prompts")
    group.add_argument("--prompts", type=str, required=True,
                       help="pickapic (Pick-a-Pic v2 validation_unique, column caption), parti (PartiPrompts), hpsv2 "
                            "(HPDv2 benchmark, 4 styles), chronomagic (ChronoMagic-Bench CSV), or a local .txt "
                            "(one prompt per line), .csv or .jsonl file.")
    group.add_argument("--prompts_dataset_path", type=str, default=None,
                       help="Where a named source lives, for offline use or mirrors: a dataset id or local dataset "
                            "folder/file (pickapic, parti), a Hub dataset id or local folder with anime.json etc. "
                            "(hpsv2), a CSV path or URL (chronomagic).")
    group.add_argument("--prompts_split", type=str, default=None,
                       help="Dataset split (default: validation_unique for pickapic, train for parti).")
    group.add_argument("--caption_column", type=str, default=None,
                       help="Prompt column of a .csv/.jsonl/dataset (default: the source's, or caption, prompt, "
                            "text or name).")
    group.add_argument("--id_column", type=str, default=None,
                       help="Column that names each prompt (default: videoid or id when present, else the index). "
                            "PSNR pairs reference videos by this id: <reference_videos>/<id>.mp4.")
    group.add_argument("--hpsv2_styles", type=str, nargs="+", default=list(HPSV2_STYLES), choices=HPSV2_STYLES)
    group.add_argument("--num_prompts", type=int, default=None, help="Use the first N prompts (default: all).")

    group = parser.add_argument_group("generation")
    group.add_argument("--images_per_prompt", type=int, default=1, help="Images (or videos) per prompt and model.")
    group.add_argument("--num_inference_steps", type=int, default=50)
    group.add_argument("--guidance_scale", type=float, default=7.5)
    group.add_argument("--seed", type=int, default=0,
                       help="Image j of prompt i uses seed + i * images_per_prompt + j, for every model.")
    group.add_argument("--resolution", type=int, default=None, help="Height and width (default: the model's).")
    group.add_argument("--generation_batch_size", type=int, default=1,
                       help="Images (or videos) per pipeline call. Each keeps its own seeded generator, so a batch "
                            "changes its pixels only by float rounding; 1 (the default) is exactly reproducible.")
    group.add_argument("--num_frames", type=int, default=16, help="Video frames.")
    group.add_argument("--fps", type=int, default=8, help="Frame rate of the saved videos and grid.gif.")
    group.add_argument("--overwrite", action="store_true", help="Regenerate everything, even what is on disk.")

    group = parser.add_argument_group("metrics (every model id or file can point at a local copy)")
    group.add_argument("--metrics", type=str, nargs="+", default=None,
                       help=f"Default for images: {' '.join(DEFAULT_METRICS['image'])}; for video: "
                            f"{' '.join(DEFAULT_METRICS['video'])}. All: {', '.join(METRICS)}.")
    group.add_argument("--score_batch_size", type=int, default=16)
    group.add_argument("--pickscore_model", type=str, default="yuvalkirstain/PickScore_v1")
    group.add_argument("--pickscore_processor", type=str, default="laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
    group.add_argument("--hps_version", choices=tuple(HPS_CHECKPOINTS), default="v2.0")
    group.add_argument("--hps_checkpoint", type=str, default=None,
                       help="HPS weights: a local file or <hub repo>/<file> (default: xswu/HPSv2/HPS_v2_compressed.pt "
                            "or HPS_v2.1_compressed.pt, by --hps_version).")
    group.add_argument("--hps_model_config", type=str, default="ViT-H-14",
                       help="open_clip architecture the HPS weights load into: a name or a model-config .json file.")
    group.add_argument("--aesthetic_checkpoint", type=str, default="trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth",
                       help="LAION aesthetic MLP weights (sac+logos+ava1-l14-linearMSE): a local .pth/.safetensors "
                            "or <hub repo>/<file>.")
    group.add_argument("--aesthetic_clip_model", type=str, default="openai/clip-vit-large-patch14",
                       help="CLIP whose image embeddings the aesthetic MLP reads.")
    group.add_argument("--clip_model", type=str, default="openai/clip-vit-large-patch14",
                       help="CLIP for the CLIP score, CLIPSIM and temporal consistency.")
    group.add_argument("--imagereward_model", type=str, default="ImageReward-v1.0",
                       help="Name or checkpoint path for ImageReward.load().")
    group.add_argument("--reference_videos", type=str, default=None,
                       help="Folder of reference videos, for fid, fvd and psnr.")
    group.add_argument("--fid_feature_extractor", type=str, default=None,
                       help="A TorchScript module (uint8 N,3,H,W frames -> N,D features) to use instead of InceptionV3.")
    group.add_argument("--inception_weights", type=str, default=None,
                       help="Local torch-fidelity InceptionV3 weights (weights-inception-2015-12-05-6726825d.pth) for FID; "
                            "default: torch-fidelity downloads them.")
    group.add_argument("--fvd_detector", type=str, default=None,
                       help="StyleGAN-V I3D TorchScript file (i3d_torchscript.pt), required for fvd.")
    group.add_argument("--fvd_resolution", type=int, default=224, help="Frames are resized and cropped to this for I3D.")

    group = parser.add_argument_group("report")
    group.add_argument("--output_dir", type=str, default="sspo-eval")
    group.add_argument("--bootstrap_samples", type=int, default=1000, help="Resamples for the 95%% bootstrap CIs.")
    group.add_argument("--grid_prompts", type=int, default=4, help="Prompt rows in grid.png / grid.gif.")

    args = parser.parse_args(input_args)
    check_args(args)
    return args


def check_args(args):
    """Reject bad flags before anything is loaded or generated."""
    if args.task is None:
        args.task = "video" if args.motion_adapter_name_or_path else "image"
    if args.task == "video" and not args.motion_adapter_name_or_path:
        raise SSPOInputError("--task video needs --motion_adapter_name_or_path (e.g. guoyww/animatediff-motion-adapter-v1-5-2).")
    for flag in ("images_per_prompt", "num_inference_steps", "num_frames", "fps", "score_batch_size", "fvd_resolution",
                 "generation_batch_size"):
        if getattr(args, flag) <= 0:
            raise SSPOInputError(f"--{flag} must be positive, got {getattr(args, flag)}.")
    for flag in ("num_prompts", "resolution"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            raise SSPOInputError(f"--{flag} must be positive, got {getattr(args, flag)}.")
    if args.bootstrap_samples < 0 or args.grid_prompts < 0:
        raise SSPOInputError("--bootstrap_samples and --grid_prompts cannot be negative.")

    args.metrics = list(dict.fromkeys(args.metrics or DEFAULT_METRICS[args.task]))
    for name in args.metrics:
        if name not in METRICS:
            raise SSPOInputError(f"Unknown metric {name!r} in --metrics. Valid for {args.task}: "
                                 f"{', '.join(m for m, info in METRICS.items() if info.task == args.task)}.")
        if METRICS[name].task != args.task:
            valid = ", ".join(m for m, info in METRICS.items() if info.task == args.task)
            raise SSPOInputError(f"--metrics {name} is a{'n' if METRICS[name].task == 'image' else ''} "
                                 f"{METRICS[name].task} metric and does not apply to --task {args.task}; use: {valid}.")
    needs_reference = [name for name in args.metrics if name in REFERENCE_METRICS]
    if needs_reference and not (args.reference_videos and os.path.isdir(args.reference_videos)):
        where = f"--reference_videos {args.reference_videos}: no such folder" if args.reference_videos else \
            "--reference_videos is not set"
        raise SSPOInputError(f"--metrics {' '.join(needs_reference)} compare against reference videos, but {where}. "
                             "Pass a folder of videos (for psnr named <prompt id>.mp4).")
    if "fvd" in args.metrics and not (args.fvd_detector and os.path.isfile(args.fvd_detector)):
        raise SSPOInputError(f"--metrics fvd needs --fvd_detector, the StyleGAN-V I3D TorchScript file "
                             f"(i3d_torchscript.pt); got {args.fvd_detector!r}.")
    for flag in ("fid_feature_extractor", "inception_weights"):
        if getattr(args, flag) and not os.path.isfile(getattr(args, flag)):
            raise SSPOInputError(f"--{flag} {getattr(args, flag)}: no such file.")

    if args.prompts not in PROMPT_SOURCES:
        extension = os.path.splitext(args.prompts)[1].lower()
        if not os.path.isfile(args.prompts):
            raise SSPOInputError(f"--prompts {args.prompts}: no such prompt file. Pass a .txt, .csv or .jsonl file, or "
                                 f"one of {', '.join(PROMPT_SOURCES)}.")
        if extension not in PROMPT_FILE_EXTENSIONS:
            raise SSPOInputError(f"--prompts {args.prompts}: unsupported file type {extension or '(none)'}; use "
                                 f"{', '.join(PROMPT_FILE_EXTENSIONS)}.")
    args.models = model_specs(args)


# ---------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prompt:
    index: int  # position in the prompt list: fixes the seeds and the file names
    text: str
    id: str  # source id (ChronoMagic videoid, HPDv2 style_index) or the index; reference videos pair by it


def load_prompts(args) -> List[Prompt]:
    """The prompt list of --prompts, cut to --num_prompts. Raises SSPOInputError when it is
    empty or cannot be loaded (with a pointer to the offline override)."""
    if args.prompts == "hpsv2":
        rows = hpsv2_rows(args)
    elif args.prompts == "chronomagic":
        rows = read_table_file(fetch_csv(args.prompts_dataset_path or PROMPT_SOURCES["chronomagic"]["location"], args))
    elif args.prompts in PROMPT_SOURCES:
        rows = hub_dataset_rows(args)
    else:
        rows = read_table_file(args.prompts)

    source = PROMPT_SOURCES.get(args.prompts, {})
    if not rows:
        raise SSPOInputError(f"--prompts {args.prompts}: no prompts found (the file or split is empty).")
    columns = list(rows[0])
    caption_column = pick_column(columns, args.caption_column or source.get("column"), CAPTION_COLUMN_GUESSES,
                                 "--caption_column")
    id_column = args.id_column or next((c for c in (source.get("id_column"), *ID_COLUMN_GUESSES) if c in columns), None)
    if id_column is not None and id_column not in columns:
        raise SSPOInputError(f"--id_column {id_column} is not a column of the prompts; columns: {columns}.")
    prompts = []
    for row in rows:
        text = str(row.get(caption_column) or "").strip()
        if not text:
            continue
        index = len(prompts)
        prompt_id = str(row[id_column]) if id_column else row.get("_id", f"{index:05d}")
        prompts.append(Prompt(index, text, prompt_id))
    if args.num_prompts is not None:
        prompts = prompts[: args.num_prompts]
    if not prompts:
        raise SSPOInputError(f"--prompts {args.prompts}: no prompts found (empty file, or empty column "
                             f"{caption_column!r}).")
    return prompts


def read_table_file(path) -> List[Dict]:
    """Rows of a .txt (one prompt per line, column 'prompt'), .csv or .jsonl prompt file."""
    extension = os.path.splitext(path)[1].lower()
    with open(path, encoding="utf-8") as f:
        if extension == ".txt":
            return [{"prompt": line.strip()} for line in f if line.strip()]
        if extension == ".csv":
            return list(csv.DictReader(f))
        rows = []
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise SSPOInputError(f"--prompts {path}: line {number} is not JSON ({error}).") from error
        return rows


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def offline_hint(what, error):
    return SSPOInputError(f"Could not load {what} ({first_line(error)}). Offline or on a mirror? Pass a local "
                          ".txt/.csv/.jsonl file as --prompts, or point --prompts_dataset_path at a local copy.")


def hub_dataset_rows(args) -> List[Dict]:
    """Rows of a named dataset source (Pick-a-Pic, PartiPrompts): a local parquet/jsonl/csv file,
    or a dataset id or folder, streamed so that only the requested split is read."""
    from datasets import load_dataset

    source = PROMPT_SOURCES[args.prompts]
    location, split = args.prompts_dataset_path or source["location"], args.prompts_split or source["split"]
    wanted = {args.caption_column, source["column"], args.id_column, *CAPTION_COLUMN_GUESSES, *ID_COLUMN_GUESSES}
    try:
        if os.path.isfile(location):
            file_format = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}.get(
                os.path.splitext(location)[1].lower(), "parquet")
            dataset = load_dataset(file_format, data_files=location, split="train")
        else:
            dataset = load_dataset(location, split=split, streaming=True)
        return [{k: v for k, v in row.items() if k in wanted} for row in dataset]
    except Exception as error:  # offline, gated, renamed: all end the same way for the user
        raise offline_hint(f"the {args.prompts} prompts from {location} (split {split})", error) from error


def hpsv2_rows(args) -> List[Dict]:
    """HPDv2 benchmark prompts: benchmark/<style>.json (a list of strings) per style, from a local
    folder or the Hub dataset (zhwang/HPDv2 by default). Ids are <style>_<index>."""
    location = args.prompts_dataset_path or PROMPT_SOURCES["hpsv2"]["location"]
    rows = []
    for style in args.hpsv2_styles:
        path = next((p for p in (os.path.join(location, f"{style}.json"), os.path.join(location, "benchmark", f"{style}.json"))
                     if os.path.isfile(p)), None)
        if path is None:
            try:
                from huggingface_hub import hf_hub_download

                path = hf_hub_download(location, f"benchmark/{style}.json", repo_type="dataset")
            except Exception as error:
                raise offline_hint(f"the HPDv2 {style} prompts from {location}", error) from error
        with open(path, encoding="utf-8") as f:
            rows += [{"prompt": text, "_id": f"{style}_{i:03d}"} for i, text in enumerate(json.load(f))]
    return rows


def fetch_csv(location, args) -> str:
    """A local CSV path, or a URL downloaded once into <output_dir>/prompts/."""
    if os.path.isfile(location):
        return location
    if not location.startswith(("http://", "https://")):
        raise SSPOInputError(f"--prompts_dataset_path {location}: no such CSV file.")
    import urllib.request

    target = os.path.join(args.output_dir, "prompts", os.path.basename(location.split("?")[0]) or "prompts.csv")
    if not os.path.isfile(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            urllib.request.urlretrieve(location, target + ".tmp")
        except Exception as error:
            raise offline_hint(f"the ChronoMagic-Bench CSV from {location}", error) from error
        os.replace(target + ".tmp", target)
    return target


# ---------------------------------------------------------------------------
# The models to compare: the base and one per --lora_path
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Optional[str]
    kind: str  # "base", "lora" or "motion_adapter"


def trained_output_kind(path, task) -> str:
    """'lora' for a LoRA folder (or Hub repo id), 'motion_adapter' for a MotionAdapter folder."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, LORA_WEIGHT_NAME)):
            return "lora"
        config_file = os.path.join(path, "config.json")
        if os.path.isfile(config_file):
            with open(config_file, encoding="utf-8") as f:
                if json.load(f).get("_class_name") == "MotionAdapter":
                    if task != "video":
                        raise SSPOInputError(f"--lora_path {path} is a MotionAdapter: it needs --task video and "
                                             "--motion_adapter_name_or_path.")
                    return "motion_adapter"
        raise SSPOInputError(f"--lora_path {path} holds neither {LORA_WEIGHT_NAME} nor a MotionAdapter config.json; "
                             "pass a training output_dir or a checkpoint-<step> folder.")
    if HUB_ID.match(path) and not path.startswith("."):
        return "lora"  # a Hub repo id; load_lora_weights reports if it does not exist
    raise SSPOInputError(f"--lora_path {path}: no such folder.")


def model_specs(args) -> List[ModelSpec]:
    names = args.model_names or [os.path.basename(os.path.normpath(p)) for p in args.lora_path]
    if len(names) != len(args.lora_path):
        raise SSPOInputError(f"--model_names has {len(names)} names for {len(args.lora_path)} --lora_path entries.")
    taken = {"base"}
    for name in names:
        if name in taken or not re.match(r"^[\w.+-]+$", name):
            raise SSPOInputError(f"Model name {name!r} is {'taken' if name in taken else 'not a plain folder name'}: "
                                 "name each --lora_path uniquely with --model_names (and not 'base').")
        taken.add(name)
    return [ModelSpec("base", None, "base")] + [
        ModelSpec(name, path, trained_output_kind(path, args.task)) for name, path in zip(names, args.lora_path)]


def is_sdxl_base(args) -> bool:
    """Whether the base is an SDXL pipeline, from the class its model_index.json names."""
    from diffusers import DiffusionPipeline

    config = DiffusionPipeline.load_config(args.pretrained_model_name_or_path, revision=args.revision)
    return "XL" in config.get("_class_name", "")


def load_pipeline(args, device, dtype):
    """The base StableDiffusionPipeline or StableDiffusionXLPipeline (whichever the model folder
    is), or AnimateDiffPipeline with the base MotionAdapter (returned too, to restore it after
    evaluating a trained MotionAdapter)."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, MotionAdapter, \
        PNDMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    path = args.pretrained_model_name_or_path
    common = dict(revision=args.revision, variant=args.variant, torch_dtype=dtype)
    try:
        if args.task == "video":
            motion_adapter = MotionAdapter.from_pretrained(args.motion_adapter_name_or_path, torch_dtype=dtype)
            pipeline = AnimateDiffPipeline.from_pretrained(path, motion_adapter=motion_adapter, **common)
        elif is_sdxl_base(args):
            motion_adapter = None
            # No invisible watermark: the scores must not depend on whether that package is installed.
            pipeline = StableDiffusionXLPipeline.from_pretrained(path, add_watermarker=False, **common)
        else:
            motion_adapter = None
            pipeline = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False,
                                                               **common)
    except (OSError, ValueError) as error:
        raise SSPOInputError(f"Could not load the base model {path}"
                             f"{' with ' + args.motion_adapter_name_or_path if args.task == 'video' else ''}: "
                             f"{first_line(error)}") from error
    if args.scheduler != "default":
        scheduler_class = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler, "pndm": PNDMScheduler,
                           "euler": EulerDiscreteScheduler}[args.scheduler]
        pipeline.scheduler = scheduler_class.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)  # our own bar counts images, not steps
    return pipeline.to(device), motion_adapter


@contextlib.contextmanager
def model_weights(pipeline, spec: ModelSpec, base_motion_adapter, dtype):
    """Put a model's trained weights into the shared base pipeline, and take them out after."""
    if spec.kind == "base":
        yield
        return
    try:
        if spec.kind == "lora":
            pipeline.load_lora_weights(spec.path, adapter_name=spec.name)
        else:
            from diffusers import MotionAdapter

            pipeline.unet.load_motion_modules(MotionAdapter.from_pretrained(spec.path, torch_dtype=dtype))
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        what = "LoRA" if spec.kind == "lora" else "MotionAdapter"
        raise SSPOInputError(f"Could not load the {what} of --lora_path {spec.path}: {first_line(error)}") from error
    try:
        yield
    finally:
        if spec.kind == "lora":
            pipeline.unload_lora_weights()
        else:
            pipeline.unet.load_motion_modules(base_motion_adapter)


# ---------------------------------------------------------------------------
# Generation: paired seeds, resumable, with a manifest
# ---------------------------------------------------------------------------

GENERATION_KEYS = ("task", "pretrained_model_name_or_path", "revision", "variant", "motion_adapter_name_or_path",
                   "scheduler", "mixed_precision", "num_inference_steps", "guidance_scale", "seed", "images_per_prompt",
                   "resolution", "num_frames")


def seed_for(args, prompt_index: int, image_index: int) -> int:
    """One seed per (prompt, image), the same for every model: each comparison is paired."""
    return args.seed + prompt_index * args.images_per_prompt + image_index


def relative_output_path(args, model: str, prompt: Prompt, image_index: int) -> str:
    extension = ".mp4" if args.task == "video" else ".png"
    return os.path.join(model, f"{prompt.index:05d}_{image_index:02d}{extension}")


def check_generation_settings(args):
    """Resume only into a folder made with the same generation settings; else images would mix."""
    path = os.path.join(args.output_dir, "generation_config.json")
    settings = {key: getattr(args, key) for key in GENERATION_KEYS}
    if os.path.isfile(path) and not args.overwrite:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        changed = [f"{key} ({saved.get(key)!r} -> {value!r})" for key, value in settings.items() if saved.get(key) != value]
        if changed:
            raise SSPOInputError(f"--output_dir {args.output_dir} holds generations made with other settings: "
                                 f"{', '.join(changed)}. Use a new --output_dir, or --overwrite to regenerate.")
    os.makedirs(args.output_dir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2)


def read_manifest(args) -> Dict[tuple, Dict]:
    """Manifest rows keyed by (model, prompt_index, image_index); the last row of a key wins and a
    line cut short by a kill is ignored."""
    path, rows = os.path.join(args.output_dir, "manifest.jsonl"), {}
    if os.path.isfile(path) and not args.overwrite:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    rows[(row["model"], row["prompt_index"], row["image_index"])] = row
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
    return rows


def write_manifest(args, rows: Dict[tuple, Dict]):
    path = os.path.join(args.output_dir, "manifest.jsonl")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for key in sorted(rows):
            f.write(json.dumps(rows[key]) + "\n")
    os.replace(path + ".tmp", path)


def open_manifest_for_append(args):
    """The manifest, opened to append one row per finished file (after a newline, should a killed
    run have left half a line)."""
    path = os.path.join(args.output_dir, "manifest.jsonl")
    mode = "w" if args.overwrite else "a"
    if mode == "a" and os.path.isfile(path) and os.path.getsize(path):
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            needs_newline = f.read(1) != b"\n"
    else:
        needs_newline = False
    manifest_file = open(path, mode, encoding="utf-8")
    if needs_newline:
        manifest_file.write("\n")
    return manifest_file


def is_complete(path: str, task: str) -> bool:
    """The file exists and decodes (a file cut short by a kill does not)."""
    if not os.path.isfile(path):
        return False
    try:
        if task == "video":
            return len(read_video_frames(path, max_frames=1)) == 1
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:
        return False


@torch.no_grad()
def generate_batch(pipeline, args, prompts: Sequence[Prompt], seeds: Sequence[int]) -> List:
    """Images (PIL) or videos (lists of PIL frames), one per (prompt, seed). Each has its own CPU
    generator, so its starting noise is the same on every device and in any batch."""
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    kwargs = dict(num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                  generator=generators[0] if len(generators) == 1 else generators)
    if args.resolution:
        kwargs.update(height=args.resolution, width=args.resolution)
    texts = [prompt.text for prompt in prompts]
    if args.task == "video":
        return list(pipeline(texts, num_frames=args.num_frames, **kwargs).frames)
    return pipeline(texts, **kwargs).images


def save_output(output, path: str, args):
    """Write through a temporary file, so a kill never leaves a file that looks complete."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp_path = path[: -len(os.path.splitext(path)[1])] + ".tmp" + os.path.splitext(path)[1]
    if args.task == "video":
        save_video(output, tmp_path, fps=args.fps)
    else:
        output.save(tmp_path)
    os.replace(tmp_path, path)


def generate_all(args, specs: Sequence[ModelSpec], prompts: Sequence[Prompt], device, dtype) -> List[Dict]:
    """Generate what is not on disk yet for every model; returns this run's manifest rows."""
    check_generation_settings(args)
    manifest = read_manifest(args)
    plan = {spec.name: [] for spec in specs}
    for spec in specs:
        for prompt in prompts:
            for j in range(args.images_per_prompt):
                row = {"model": spec.name, "lora_path": spec.path, "prompt_index": prompt.index, "image_index": j,
                       "prompt_id": prompt.id, "prompt": prompt.text, "seed": seed_for(args, prompt.index, j),
                       "path": relative_output_path(args, spec.name, prompt, j)}
                previous = manifest.get((spec.name, prompt.index, j))
                done = (previous is not None and all(previous.get(k) == row[k] for k in ("prompt", "seed", "lora_path"))
                        and is_complete(os.path.join(args.output_dir, row["path"]), args.task))
                plan[spec.name].append((row, prompt, done))

    todo = sum(not done for rows in plan.values() for _, _, done in rows)
    logger.info(f"{len(specs)} model(s) x {len(prompts)} prompt(s) x {args.images_per_prompt}: {todo} to generate, "
                f"{sum(len(r) for r in plan.values()) - todo} already on disk.")
    if todo:
        pipeline, base_motion_adapter = load_pipeline(args, device, dtype)
        with open_manifest_for_append(args) as manifest_file:
            for spec in specs:
                missing = [(row, prompt) for row, prompt, done in plan[spec.name] if not done]
                if not missing:
                    continue
                with model_weights(pipeline, spec, base_motion_adapter, dtype), \
                        tqdm(total=len(missing), desc=f"Generating ({spec.name})", unit=args.task) as progress:
                    for chunk in batches(missing, args.generation_batch_size):
                        outputs = generate_batch(pipeline, args, [p for _, p in chunk], [row["seed"] for row, _ in chunk])
                        for (row, _), output in zip(chunk, outputs):
                            save_output(output, os.path.join(args.output_dir, row["path"]), args)
                            manifest_file.write(json.dumps(row) + "\n")  # appended at once: a killed run resumes here
                            manifest_file.flush()
                            manifest[(row["model"], row["prompt_index"], row["image_index"])] = row
                        progress.update(len(chunk))
        del pipeline, base_motion_adapter
        free_memory()
    rows = [row for spec in specs for row, _, _ in plan[spec.name]]
    for row in rows:
        manifest[(row["model"], row["prompt_index"], row["image_index"])] = row
    write_manifest(args, manifest)
    return rows


def free_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------
# Video files
# ---------------------------------------------------------------------------


def read_video_frames(path: str, max_frames: Optional[int] = None) -> List[Image.Image]:
    """Decode a video (PyAV) or GIF (Pillow) into RGB PIL frames."""
    frames = []
    if path.lower().endswith(".gif"):
        with Image.open(path) as gif:
            for index in range(getattr(gif, "n_frames", 1)):
                if max_frames is not None and index >= max_frames:
                    break
                gif.seek(index)
                frames.append(gif.convert("RGB"))
        return frames
    import av

    with av.open(path) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_image().convert("RGB"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    return frames


def list_videos(folder: str) -> List[str]:
    return sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                  if name.lower().endswith(VIDEO_EXTENSIONS))


def find_reference_video(folder: str, prompt_id: str) -> Optional[str]:
    return next((os.path.join(folder, prompt_id + ext) for ext in VIDEO_EXTENSIONS
                 if os.path.isfile(os.path.join(folder, prompt_id + ext))), None)


def frames_to_uint8(frames: Sequence[Image.Image], size=None) -> torch.Tensor:
    """PIL frames -> uint8 tensor (T, 3, H, W), resized (bicubic) to ``size`` (W, H) if given."""
    arrays = [np.asarray((f.resize(size, Image.BICUBIC) if size and f.size != tuple(size) else f).convert("RGB"))
              for f in frames]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------
# Score formulas on embeddings (what the tests check by hand)
# ---------------------------------------------------------------------------


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)


def pickscore_from_embeddings(image_embeds, text_embeds, logit_scale) -> torch.Tensor:
    """PickScore: logit_scale.exp() * cos(image, text) (logit_scale is the model's log scale)."""
    return torch.as_tensor(logit_scale).float().exp() * cosine(image_embeds, text_embeds)


def hps_from_embeddings(image_embeds, text_embeds) -> torch.Tensor:
    """HPSv2: the cosine, reported x 100 (no logit scale)."""
    return 100.0 * cosine(image_embeds, text_embeds)


def clip_score_from_embeddings(image_embeds, text_embeds) -> torch.Tensor:
    """CLIP score: max(100 * cos, 0)."""
    return (100.0 * cosine(image_embeds, text_embeds)).clamp(min=0)


def temporal_consistency_from_embeddings(frame_embeds) -> torch.Tensor:
    """Mean cosine of consecutive frames (one video's (T, D) embeddings)."""
    return cosine(frame_embeds[:-1], frame_embeds[1:]).mean()


def psnr_from_frames(generated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean over frames of 10 * log10(255^2 / MSE) for uint8 (T, 3, H, W) frames of equal size,
    capped at 100 dB per frame (identical frames would be infinite)."""
    mse = (generated.double() - reference.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(255.0 ** 2 / mse.clamp(min=1e-30))).clamp(max=100.0).mean()


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2) of two (N, D) feature sets.
    tr((S_a S_b)^1/2) is the sum of the square roots of the eigenvalues of S_a S_b."""
    if len(features_a) < 2 or len(features_b) < 2:
        raise SSPOInputError(f"A Frechet distance needs at least 2 items per side, got {len(features_a)} and "
                             f"{len(features_b)}: generate more prompts or add reference videos.")
    a, b = features_a.double(), features_b.double()
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    trace_sqrt = torch.linalg.eigvals(cov_a @ cov_b).sqrt().real.sum()
    return float((a.mean(0) - b.mean(0)).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt)


# ---------------------------------------------------------------------------
# Image scorers: score(images, prompts) -> tensor (N,)
# ---------------------------------------------------------------------------


def features_tensor(output) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output with pooler_output (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class CLIPEmbedder:
    """Projected CLIP image and text embeddings from a transformers CLIP-like model and processor."""

    def __init__(self, model, processor, device="cpu"):
        self.model, self.processor, self.device = model.to(device).eval(), processor, device

    @torch.inference_mode()
    def images(self, images) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        return features_tensor(self.model.get_image_features(pixel_values=pixels)).float().cpu()

    @torch.inference_mode()
    def texts(self, texts) -> torch.Tensor:
        tokens = self.processor(text=list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return features_tensor(self.model.get_text_features(**tokens)).float().cpu()


def load_clip_embedder(model_name, processor_name, flag, device) -> CLIPEmbedder:
    from transformers import AutoModel, AutoProcessor

    try:
        return CLIPEmbedder(AutoModel.from_pretrained(model_name), AutoProcessor.from_pretrained(processor_name), device)
    except (OSError, ValueError) as error:
        raise SSPOInputError(f"{flag} {model_name}: could not load it ({first_line(error)}). Offline or on a "
                             f"mirror? Point {flag} at a local copy (a save_pretrained folder).") from error


class PickScoreScorer:
    """PickScore (Kirstain et al.): CLIP-H fine-tuned on Pick-a-Pic; logit_scale.exp() * cos."""

    def __init__(self, model, processor, device="cpu"):
        self.embedder = CLIPEmbedder(model, processor, device)
        self.logit_scale = float(model.logit_scale.detach().float().cpu())

    @classmethod
    def from_pretrained(cls, model_name, processor_name, device="cpu"):
        embedder = load_clip_embedder(model_name, processor_name, "--pickscore_model", device)
        return cls(embedder.model, embedder.processor, device)

    def score(self, images, prompts) -> torch.Tensor:
        return pickscore_from_embeddings(self.embedder.images(images), self.embedder.texts(prompts), self.logit_scale)

    def describe(self):
        return {"logit_scale": self.logit_scale, "scale_used": float(np.exp(self.logit_scale))}


class CLIPScoreScorer:
    """CLIP score: max(100 * cos(image, text), 0)."""

    def __init__(self, model, processor, device="cpu"):
        self.embedder = CLIPEmbedder(model, processor, device)

    @classmethod
    def from_pretrained(cls, model_name, device="cpu", flag="--clip_model"):
        embedder = load_clip_embedder(model_name, model_name, flag, device)
        return cls(embedder.model, embedder.processor, device)

    def score(self, images, prompts) -> torch.Tensor:
        return clip_score_from_embeddings(self.embedder.images(images), self.embedder.texts(prompts))

    def describe(self):
        return {"scale_used": 100.0, "clipped_at": 0.0}


class HPSScorer:
    """HPS v2 / v2.1 (Wu et al.): an open_clip ViT-H-14 with the HPS weights; 100 * cos."""

    def __init__(self, model, preprocess, tokenizer, device="cpu", version="v2.0"):
        self.model, self.preprocess, self.tokenizer = model.to(device).eval(), preprocess, tokenizer
        self.device, self.version = device, version

    @classmethod
    def from_checkpoint(cls, model_config, checkpoint, device="cpu", version="v2.0"):
        """Build the open_clip architecture with pretrained=None and load the HPS weights into it
        (no dependency on the hpsv2 package)."""
        import open_clip

        name = model_config
        if model_config.endswith(".json"):
            if not os.path.isfile(model_config):
                raise SSPOInputError(f"--hps_model_config {model_config}: no such file.")
            open_clip.add_model_config(model_config)
            name = os.path.splitext(os.path.basename(model_config))[0]
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
        except RuntimeError as error:
            raise SSPOInputError(f"--hps_model_config {model_config}: {error}") from error
        state_dict = load_state_dict_file(checkpoint, "--hps_checkpoint")
        state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        if missing:
            raise SSPOInputError(f"--hps_checkpoint {checkpoint} does not fit --hps_model_config {model_config}: "
                                 f"{len(missing)} weights missing (e.g. {missing[0]}).")
        if unexpected:
            logger.warning(f"HPS checkpoint: ignored {len(unexpected)} unexpected weights (e.g. {unexpected[0]}).")
        return cls(model, preprocess, open_clip.get_tokenizer(name), device, version)

    @torch.inference_mode()
    def score(self, images, prompts) -> torch.Tensor:
        pixels = torch.stack([self.preprocess(image) for image in images]).to(self.device)
        image_embeds = self.model.encode_image(pixels).float().cpu()
        text_embeds = self.model.encode_text(self.tokenizer(list(prompts)).to(self.device)).float().cpu()
        return hps_from_embeddings(image_embeds, text_embeds)

    def describe(self):
        return {"version": self.version, "scale_used": 100.0}


class AestheticMLP(torch.nn.Module):
    """The LAION improved aesthetic predictor v2 head (linear layers, no activations), laid out
    so that the released state dict (layers.0 ... layers.7) loads as is."""

    def __init__(self, input_size=768):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_size, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))

    def forward(self, embeds):
        return self.layers(embeds)


def aesthetic_from_embeddings(mlp, image_embeds) -> torch.Tensor:
    """The MLP on L2-normalised CLIP image embeddings."""
    return mlp(F.normalize(image_embeds.float(), dim=-1)).squeeze(-1)


class AestheticScorer:
    def __init__(self, clip_model, processor, mlp, device="cpu"):
        self.embedder = CLIPEmbedder(clip_model, processor, device)
        self.mlp = mlp.float().eval()

    @classmethod
    def from_checkpoint(cls, checkpoint, clip_model_name, device="cpu"):
        embedder = load_clip_embedder(clip_model_name, clip_model_name, "--aesthetic_clip_model", device)
        mlp = AestheticMLP(embedder.model.config.projection_dim)
        try:
            mlp.load_state_dict(load_state_dict_file(checkpoint, "--aesthetic_checkpoint"))
        except RuntimeError as error:
            raise SSPOInputError(f"--aesthetic_checkpoint {checkpoint} is not an aesthetic MLP for "
                                 f"{clip_model_name}: {first_line(error)}") from error
        return cls(embedder.model, embedder.processor, mlp, device)

    @torch.inference_mode()
    def score(self, images, prompts=None) -> torch.Tensor:
        return aesthetic_from_embeddings(self.mlp, self.embedder.images(images))

    def describe(self):
        return {"scale": "LAION aesthetic v2 (about 1-10)"}


class MetricUnavailable(Exception):
    """An optional metric cannot run here; the report says why and the run goes on."""


class ImageRewardScorer:
    """ImageReward (Xu et al.), only if the image-reward package imports (its PyPI release breaks
    on transformers >= 5)."""

    def __init__(self, model):
        self.model = model

    @classmethod
    def load(cls, name, device="cpu"):
        try:
            import ImageReward
        except Exception as error:  # ImportError, or the package's own failure on transformers >= 5
            raise MetricUnavailable(f"the image-reward package does not import here ({type(error).__name__}: "
                                    f"{first_line(error)}); `pip install image-reward` "
                                    "needs transformers < 5") from error
        try:
            return cls(ImageReward.load(name, device=device))
        except Exception as error:
            raise MetricUnavailable(f"ImageReward.load({name!r}) failed: {first_line(error)}") from error

    @torch.inference_mode()
    def score(self, images, prompts) -> torch.Tensor:
        return torch.tensor([float(self.model.score(prompt, image)) for image, prompt in zip(images, prompts)])

    def describe(self):
        return {}


def resolve_file(spec: str, flag: str) -> str:
    """A local file, or '<owner>/<repo>/<path in repo>' on the Hub (downloaded to the HF cache)."""
    if os.path.isfile(spec):
        return spec
    parts = spec.split("/")
    if len(parts) >= 3 and not spec.startswith((".", "/")):
        from huggingface_hub import hf_hub_download

        try:
            return hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]))
        except Exception as error:
            raise SSPOInputError(f"{flag} {spec}: not a local file, and the Hub download failed "
                                 f"({first_line(error)}). Pass a local copy of the file.") from error
    raise SSPOInputError(f"{flag} {spec}: no such file.")


def load_state_dict_file(spec: str, flag: str) -> Dict[str, torch.Tensor]:
    path = resolve_file(spec, flag)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise SSPOInputError(f"{flag} {spec}: not a weights file ({first_line(error)}).") from error
    return state.get("state_dict", state) if isinstance(state, dict) else state


# ---------------------------------------------------------------------------
# Video scorers
# ---------------------------------------------------------------------------


class CLIPSIMScorer:
    """CLIPSIM: the CLIP score of every frame against the prompt, averaged over the frames."""

    def __init__(self, clip_scorer: CLIPScoreScorer):
        self.clip = clip_scorer

    def score(self, videos, prompts) -> torch.Tensor:
        return torch.stack([self.clip.score(frames, [prompt] * len(frames)).mean() for frames, prompt in zip(videos, prompts)])

    def describe(self):
        return {"scale_used": 100.0, "clipped_at": 0.0}


class TemporalConsistencyScorer:
    def __init__(self, model, processor, device="cpu"):
        self.embedder = CLIPEmbedder(model, processor, device)

    def score(self, videos, prompts=None) -> torch.Tensor:
        return torch.stack([temporal_consistency_from_embeddings(self.embedder.images(frames)) for frames in videos])

    def describe(self):
        return {"scale": "cosine in [-1, 1]"}


class PSNRScorer:
    """PSNR of each generated video against its paired reference (resized to the generated size,
    both cut to the shorter length)."""

    def score(self, videos, references) -> torch.Tensor:
        values = []
        for frames, reference in zip(videos, references):
            length = min(len(frames), len(reference))
            values.append(psnr_from_frames(frames_to_uint8(frames[:length]),
                                           frames_to_uint8(reference[:length], size=frames[0].size)))
        return torch.stack(values).float()

    def describe(self):
        return {"unit": "dB", "data_range": 255, "pairing": "<reference_videos>/<prompt id>.<ext>"}


class FrameFID:
    """FID over video frames with torchmetrics' FrechetInceptionDistance. ``feature`` is 2048 (the
    torch-fidelity InceptionV3) or any module mapping uint8 (N, 3, H, W) to (N, D)."""

    def __init__(self, feature=2048, weights_path=None, device="cpu"):
        from torchmetrics.image.fid import FrechetInceptionDistance

        kwargs = {"feature_extractor_weights_path": weights_path} if weights_path and isinstance(feature, int) else {}
        self.metric = FrechetInceptionDistance(feature=feature, reset_real_features=False, **kwargs).to(device)
        self.device = device

    def add_reference(self, videos):
        for frames in videos:
            self.metric.update(frames_to_uint8(frames).to(self.device), real=True)

    def distance(self, videos) -> float:
        self.metric.reset()  # keeps the reference features (reset_real_features=False)
        for frames in videos:
            self.metric.update(frames_to_uint8(frames).to(self.device), real=False)
        return float(self.metric.compute())

    def describe(self):
        return {"feature": "custom TorchScript" if getattr(self.metric, "used_custom_model", False) else "InceptionV3 pool3 (2048)"}


class FrechetVideoDistance:
    """FVD with the StyleGAN-V I3D TorchScript detector: clips of T frames, resized (shorter side)
    and center-cropped to ``resolution``, scaled to [-1, 1], (B, 3, T, H, W); features are the
    detector's pre-softmax output (rescale=False, resize=False, return_features=True)."""

    def __init__(self, detector, resolution=224, device="cpu"):
        self.detector, self.resolution, self.device = detector.to(device).eval(), resolution, device
        self.reference_features = None

    @classmethod
    def from_file(cls, path, resolution=224, device="cpu"):
        try:
            return cls(torch.jit.load(path, map_location="cpu"), resolution, device)
        except Exception as error:
            raise SSPOInputError(f"--fvd_detector {path}: not a TorchScript module ({first_line(error)}).") from error

    def clip_tensor(self, frames) -> torch.Tensor:
        video = frames_to_uint8(frames).float() / 255.0  # T, 3, H, W
        height, width = video.shape[-2:]
        scale = self.resolution / min(height, width)
        video = F.interpolate(video, size=(max(self.resolution, round(height * scale)), max(self.resolution, round(width * scale))),
                              mode="bilinear", align_corners=False)
        top, left = (video.shape[-2] - self.resolution) // 2, (video.shape[-1] - self.resolution) // 2
        video = video[..., top: top + self.resolution, left: left + self.resolution]
        return (video * 2 - 1).permute(1, 0, 2, 3)  # 3, T, H, W in [-1, 1]

    @torch.inference_mode()
    def features(self, videos, batch_size=4) -> torch.Tensor:
        feats, batch = [], []
        for frames in videos:
            batch.append(self.clip_tensor(frames))
            if len(batch) == batch_size:
                feats.append(self.run_detector(batch))
                batch = []
        if batch:
            feats.append(self.run_detector(batch))
        return torch.cat(feats)

    def run_detector(self, batch):
        clips = torch.stack(batch).to(self.device)
        return self.detector(clips, rescale=False, resize=False, return_features=True).float().cpu()

    def add_reference(self, videos):
        self.reference_features = self.features(videos)

    def distance(self, videos) -> float:
        return frechet_distance(self.features(videos), self.reference_features)

    def describe(self):
        return {"detector": "StyleGAN-V I3D TorchScript", "resolution": self.resolution}


# ---------------------------------------------------------------------------
# Ground-truth scorer of the shapes world
# ---------------------------------------------------------------------------


class ShapesRewardScorer:
    """The shapes world's exact reward of an image (or clip) for its caption; needs no download."""

    def __init__(self, video: bool = False):
        import shapes_world

        self.name = "shapes_video_reward" if video else "shapes_reward"
        self.reward = shapes_world.video_reward if video else shapes_world.reward

    def score(self, items, prompts) -> torch.Tensor:
        try:
            return torch.tensor([self.reward(item, prompt) for item, prompt in zip(items, prompts)])
        except ValueError as error:
            raise SSPOInputError(f"--metrics {self.name} scores captions of the shapes world only: {error}.") from error

    def describe(self):
        return {"scale": "[0, 1]", "computed_from": "pixels, no learned model"}


# ---------------------------------------------------------------------------
# Building scorers from the flags, and scoring
# ---------------------------------------------------------------------------


def build_scorer(name: str, args, device):
    """The scorer of a metric, from the model ids/files in the flags. Raises MetricUnavailable for
    an optional metric that cannot run, SSPOInputError for a required one."""
    if name == "pickscore":
        return PickScoreScorer.from_pretrained(args.pickscore_model, args.pickscore_processor, device)
    if name == "hpsv2":
        return HPSScorer.from_checkpoint(args.hps_model_config, args.hps_checkpoint or HPS_CHECKPOINTS[args.hps_version],
                                         device, args.hps_version)
    if name == "aesthetic":
        return AestheticScorer.from_checkpoint(args.aesthetic_checkpoint, args.aesthetic_clip_model, device)
    if name == "clip":
        return CLIPScoreScorer.from_pretrained(args.clip_model, device)
    if name == "imagereward":
        return ImageRewardScorer.load(args.imagereward_model, device)
    if name == "clipsim":
        return CLIPSIMScorer(CLIPScoreScorer.from_pretrained(args.clip_model, device))
    if name == "temporal_consistency":
        embedder = load_clip_embedder(args.clip_model, args.clip_model, "--clip_model", device)
        return TemporalConsistencyScorer(embedder.model, embedder.processor, device)
    if name == "psnr":
        return PSNRScorer()
    if name in ("shapes_reward", "shapes_video_reward"):
        return ShapesRewardScorer(video=name == "shapes_video_reward")
    if name == "fid":
        try:
            feature = torch.jit.load(args.fid_feature_extractor, map_location="cpu").eval() \
                if args.fid_feature_extractor else 2048
            return FrameFID(feature, args.inception_weights, device)
        except Exception as error:  # torch-fidelity downloads its InceptionV3 weights when none are given
            raise SSPOInputError(f"--metrics fid: could not build the feature extractor ({first_line(error)}). "
                                 "Offline? Pass --inception_weights (a local weights-inception-2015-12-05-6726825d.pth) or "
                                 "--fid_feature_extractor.") from error
    if name == "fvd":
        return FrechetVideoDistance.from_file(args.fvd_detector, args.fvd_resolution, device)
    raise SSPOInputError(f"Unknown metric {name!r}.")


def load_item(args, row):
    path = os.path.join(args.output_dir, row["path"])
    if args.task == "video":
        return read_video_frames(path)
    with Image.open(path) as image:
        return image.convert("RGB")


def batches(items, size):
    for start in range(0, len(items), size):
        yield items[start: start + size]


def score_all(args, specs, rows, device):
    """Per-item scores {metric: {(model, prompt_index, image_index): value}}, set-level values
    {metric: {model: value}}, each metric's status and scale notes."""
    per_item, set_level, notes = {}, {}, {}
    for name in args.metrics:
        try:
            scorer = build_scorer(name, args, device)
        except MetricUnavailable as reason:
            logger.warning(f"Metric {name} is unavailable: {reason}. Going on with the other metrics.")
            notes[name] = {"status": f"unavailable: {reason}"}
            continue
        notes[name] = {"status": "ok", "source": metric_source(name, args), **scorer.describe()}
        try:
            if METRICS[name].set_level:
                set_level[name] = score_set_level(args, scorer, specs, rows, name)
            else:
                per_item[name] = score_per_item(args, scorer, rows, name)
        except Exception as error:
            if name not in OPTIONAL_METRICS:
                raise
            # An optional scorer that loads but breaks while scoring must not end the run either.
            logger.warning(f"Metric {name} failed while scoring ({first_line(error)}). Going on with the other metrics.")
            notes[name] = {"status": f"unavailable: scoring failed ({type(error).__name__}: {first_line(error)})"}
        del scorer
        free_memory()
    return per_item, set_level, notes


def metric_source(name, args) -> str:
    """The models and files a metric was computed with, for the report."""
    return {
        "pickscore": f"{args.pickscore_model} (processor {args.pickscore_processor})",
        "hpsv2": f"{args.hps_checkpoint or HPS_CHECKPOINTS[args.hps_version]} in open_clip {args.hps_model_config}",
        "aesthetic": f"{args.aesthetic_checkpoint} on {args.aesthetic_clip_model}",
        "clip": args.clip_model, "clipsim": args.clip_model, "temporal_consistency": args.clip_model,
        "imagereward": args.imagereward_model,
        "fid": f"{args.fid_feature_extractor or args.inception_weights or 'torch-fidelity InceptionV3'} vs {args.reference_videos}",
        "fvd": f"{args.fvd_detector} vs {args.reference_videos}",
        "psnr": args.reference_videos,
        "shapes_reward": "shapes_world.reward", "shapes_video_reward": "shapes_world.video_reward",
    }[name]


def score_per_item(args, scorer, rows, name):
    """{(model, prompt_index, image_index): score} for a metric with one value per image or video
    (PSNR: only the prompts that have a reference video)."""
    values = {}
    references = {}
    if name == "psnr":
        references = {row["prompt_id"]: find_reference_video(args.reference_videos, row["prompt_id"]) for row in rows}
        if not any(references.values()):
            raise SSPOInputError(f"--metrics psnr: no reference video in {args.reference_videos} is named after a "
                                 f"prompt id (e.g. {rows[0]['prompt_id']}.mp4); set --id_column or rename the files.")
        rows = [row for row in rows if references[row["prompt_id"]]]
    # Batches never mix models: a model's scores do not depend on which other models are compared.
    model_batches = [batch for model in dict.fromkeys(row["model"] for row in rows)
                     for batch in batches([row for row in rows if row["model"] == model], args.score_batch_size)]
    for batch in tqdm(model_batches, desc=f"Scoring {name}", unit="batch"):
        items = [load_item(args, row) for row in batch]
        if name == "psnr":
            scores = scorer.score(items, [read_video_frames(references[row["prompt_id"]]) for row in batch])
        else:
            scores = scorer.score(items, [row["prompt"] for row in batch])
        for row, value in zip(batch, scores.tolist()):
            values[(row["model"], row["prompt_index"], row["image_index"])] = float(value)
    return values


def reference_clips(args, paths, counts, exact_length):
    """Decode the reference videos one at a time (a benchmark's worth does not fit in memory),
    keeping their first --num_frames frames; with ``exact_length``, shorter clips are skipped."""
    for path in tqdm(paths, desc="Reference videos", unit="video"):
        frames = read_video_frames(path, max_frames=args.num_frames)
        if exact_length and len(frames) < args.num_frames:
            counts["skipped_short"] += 1
            continue
        counts["used"] += 1
        yield frames


def score_set_level(args, scorer, specs, rows, name):
    """FID/FVD: the reference features once, then one distance per model."""
    paths, counts = list_videos(args.reference_videos), {"used": 0, "skipped_short": 0}
    # I3D clips must all have the generated length; FID looks at single frames.
    scorer.add_reference(reference_clips(args, paths, counts, exact_length=name == "fvd"))
    if counts["skipped_short"]:
        logger.warning(f"{name}: skipped {counts['skipped_short']} reference videos shorter than {args.num_frames} frames.")
    values = {}
    for spec in specs:
        model_rows = [row for row in rows if row["model"] == spec.name]
        videos = (load_item(args, row) for row in model_rows)
        distance = scorer.distance(tqdm(videos, total=len(model_rows), desc=f"Scoring {name} ({spec.name})", unit="video"))
        values[spec.name] = {"value": distance, "n_generated": len(model_rows), "n_reference": counts["used"]}
    return values


# ---------------------------------------------------------------------------
# Statistics: bootstrap CIs and paired win rates
# ---------------------------------------------------------------------------


def bootstrap_ci(values, num_samples=1000, seed=0, confidence=0.95):
    """Percentile bootstrap CI of the mean, with a fixed seed (the same numbers on every run)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2 or num_samples == 0:
        return mean, mean
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(num_samples, len(values)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_win_rate(model_scores, base_scores, num_samples=1000, seed=0) -> Dict:
    """Share of prompts where the model scored higher than the base (per-prompt scores, already
    averaged over the images of a prompt); a tie counts 0.5. CI: bootstrap over prompts."""
    model_scores, base_scores = np.asarray(model_scores, np.float64), np.asarray(base_scores, np.float64)
    outcomes = np.where(model_scores > base_scores, 1.0, np.where(model_scores == base_scores, 0.5, 0.0))
    low, high = bootstrap_ci(outcomes, num_samples, seed)
    return {"win_rate": float(outcomes.mean()), "ci_low": low, "ci_high": high, "wins": int((outcomes == 1).sum()),
            "ties": int((outcomes == 0.5).sum()), "losses": int((outcomes == 0).sum()), "n_prompts": len(outcomes)}


def paired_difference(model_scores, base_scores, num_samples=1000, seed=0) -> Dict:
    """Mean of the per-prompt differences model - base, with a bootstrap CI over prompts. The pairing
    (same prompts, same seeds) removes the prompt-to-prompt spread that widens each model's own CI."""
    differences = np.asarray(model_scores, np.float64) - np.asarray(base_scores, np.float64)
    low, high = bootstrap_ci(differences, num_samples, seed)
    return {"mean": float(differences.mean()), "ci_low": low, "ci_high": high, "n_prompts": len(differences)}


def prompt_means(values: Dict[tuple, float], model: str) -> Dict[int, float]:
    """Average a model's per-image scores over the images of each prompt."""
    grouped = {}
    for (name, prompt_index, _), value in values.items():
        if name == model:
            grouped.setdefault(prompt_index, []).append(value)
    return {index: float(np.mean(v)) for index, v in sorted(grouped.items())}


def summarize(args, specs, per_item, set_level) -> Dict:
    results = {spec.name: {} for spec in specs}
    for name, values in per_item.items():
        base = prompt_means(values, "base")
        for spec in specs:
            means = prompt_means(values, spec.name)
            low, high = bootstrap_ci(list(means.values()), args.bootstrap_samples, args.seed)
            entry = {"mean": float(np.mean(list(means.values()))), "ci_low": low, "ci_high": high,
                     "n_prompts": len(means), "n_items": sum(1 for key in values if key[0] == spec.name)}
            if spec.name != "base":
                shared = sorted(set(means) & set(base))
                pair = [means[i] for i in shared], [base[i] for i in shared]
                entry["win_rate_vs_base"] = paired_win_rate(*pair, args.bootstrap_samples, args.seed)
                entry["difference_vs_base"] = paired_difference(*pair, args.bootstrap_samples, args.seed)
            results[spec.name][name] = entry
    for name, values in set_level.items():
        for spec in specs:
            results[spec.name][name] = {**values[spec.name], "set_level": True}
    return results


# ---------------------------------------------------------------------------
# Report: JSON, Markdown, grids
# ---------------------------------------------------------------------------


def write_report(args, specs, prompts, results, notes, device) -> Dict:
    report = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": machine_info(device),
        "settings": {k: v for k, v in vars(args).items() if k != "models"},
        "models": [dataclasses.asdict(spec) for spec in specs],
        "num_prompts": len(prompts),
        "seeds": f"image j of prompt i uses seed {args.seed} + i * {args.images_per_prompt} + j, for every model",
        "statistics": {"ci": f"95% percentile bootstrap over prompts, {args.bootstrap_samples} resamples, seed {args.seed}",
                       "win_rate": "share of prompts where the model's per-prompt mean beats the base's; ties count 0.5",
                       "difference": "mean over prompts of the model's per-prompt mean minus the base's",
                       "set_level": "FID/FVD are one number per model (no CI, no win rate)"},
        "metrics": {name: {"label": METRICS[name].label, "description": METRICS[name].description,
                           "higher_is_better": METRICS[name].higher_is_better, **notes[name]} for name in args.metrics},
        "results": results,
    }
    with open(os.path.join(args.output_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(args.output_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write(markdown_report(args, specs, prompts, results, notes))
    return report


def markdown_report(args, specs, prompts, results, notes) -> str:
    available = [name for name in args.metrics if notes[name]["status"] == "ok"]
    arrow = {True: "↑", False: "↓"}
    header = [METRICS[name].label + " " + arrow[METRICS[name].higher_is_better] for name in available]
    lines = ["# SSPO evaluation", "",
             f"Base model `{args.pretrained_model_name_or_path}`"
             + (f" with `{args.motion_adapter_name_or_path}`" if args.task == "video" else "")
             + f"; prompts `{args.prompts}` ({len(prompts)} prompts, {args.images_per_prompt} per prompt); "
             f"{args.num_inference_steps} steps, CFG {args.guidance_scale}, seed {args.seed} "
             f"(image j of prompt i: seed + i * {args.images_per_prompt} + j, the same for every model).", "",
             "Mean with 95% bootstrap CI over prompts (FID/FVD: one number per model).", "",
             "| model | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for spec in specs:
        cells = []
        for name in available:
            entry = results[spec.name][name]
            cells.append(f"{entry['value']:.3f}" if entry.get("set_level")
                         else f"{entry['mean']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]")
        lines.append(f"| {spec.name} | " + " | ".join(cells) + " |")
    paired = [name for name in available if not METRICS[name].set_level]
    if len(specs) > 1 and paired:
        lines += ["", "Paired with the base (same prompts, same seeds): the mean per-prompt difference model - base, "
                      "and the win rate, the share of prompts where the model scored higher (ties count 0.5); "
                      "95% bootstrap CIs over prompts.", "",
                  "| model | " + " | ".join(f"{METRICS[n].label}: difference | {METRICS[n].label}: win rate"
                                            for n in paired) + " |", "|---" * (2 * len(paired) + 1) + "|"]
        for spec in specs[1:]:
            cells = []
            for name in paired:
                d, w = (results[spec.name][name][key] for key in ("difference_vs_base", "win_rate_vs_base"))
                cells += [f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]",
                          f"{100 * w['win_rate']:.1f}% [{100 * w['ci_low']:.1f}, {100 * w['ci_high']:.1f}]"]
            lines.append(f"| {spec.name} | " + " | ".join(cells) + " |")
    lines += ["", "Metrics:"]
    for name in args.metrics:
        status = notes[name]["status"]
        extra = {k: v for k, v in notes[name].items() if k != "status"}
        lines.append(f"- **{METRICS[name].label}** (`{name}`): {METRICS[name].description}"
                     + (f"; {json.dumps(extra)}" if extra else "")
                     + ("" if status == "ok" else f". **Unavailable**: {status[len('unavailable: '):]}"))
    lines += ["", "Numbers from a different protocol (prompt set, sampler, steps, seeds, images per prompt) are not "
                  "comparable with these.", ""]
    return "\n".join(lines)


def caption_font(size=12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def fit_text(draw, text, font, width):
    """``text``, shortened with '...' until it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def grid_frame(cells: List[List[Image.Image]], row_captions, column_captions, cell: int) -> Image.Image:
    """Prompt rows x model columns, model names on top and each prompt above its row."""
    font, caption_height, header = caption_font(), 18, 20
    grid = Image.new("RGB", (cell * len(column_captions), header + len(cells) * (cell + caption_height)), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(column_captions):
        draw.text((c * cell + 4, 4), fit_text(draw, name, font, cell - 8), fill="black", font=font)
    for r, (row, caption) in enumerate(zip(cells, row_captions)):
        top = header + r * (cell + caption_height)
        draw.text((4, top + 3), fit_text(draw, caption, font, grid.width - 8), fill="black", font=font)
        for c, image in enumerate(row):
            grid.paste(image.convert("RGB").resize((cell, cell)), (c * cell, top + caption_height))
    return grid


def write_grids(args, specs, prompts, rows):
    """grid.png (first image of the first --grid_prompts prompts, for each model) and, for video,
    grid.gif (the same layout, frame by frame)."""
    shown = prompts[: args.grid_prompts]
    if not shown:
        return
    by_key = {(row["model"], row["prompt_index"]): row for row in rows if row["image_index"] == 0}
    items = [[load_item(args, by_key[(spec.name, p.index)]) for spec in specs] for p in shown]
    names, captions = [spec.name for spec in specs], [p.text for p in shown]
    first = items[0][0][0] if args.task == "video" else items[0][0]
    cell = max(128, min(256, max(first.size)))  # at least wide enough for a model name
    if args.task == "image":
        grid_frame(items, captions, names, cell).save(os.path.join(args.output_dir, "grid.png"))
        return
    length = min(len(video) for row in items for video in row)
    frames = [grid_frame([[video[t] for video in row] for row in items], captions, names, cell) for t in range(length)]
    frames[len(frames) // 2].save(os.path.join(args.output_dir, "grid.png"))
    save_video(frames, os.path.join(args.output_dir, "grid.gif"), fps=args.fps)


def write_scores(args, rows, per_item):
    with open(os.path.join(args.output_dir, "scores.jsonl"), "w", encoding="utf-8") as f:
        for row in rows:
            key = (row["model"], row["prompt_index"], row["image_index"])
            scores = {name: values[key] for name, values in per_item.items() if key in values}
            f.write(json.dumps({**{k: row[k] for k in ("model", "prompt_index", "image_index", "prompt_id", "path")},
                                "scores": scores}) + "\n")


def main(args):
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.mixed_precision]
    prompts = load_prompts(args)
    specs = args.models
    logger.info(f"Evaluating {', '.join(s.name for s in specs)} on {len(prompts)} prompts; metrics: {', '.join(args.metrics)}.")

    rows = generate_all(args, specs, prompts, device, dtype)
    per_item, set_level, notes = score_all(args, specs, rows, device)
    results = summarize(args, specs, per_item, set_level)
    write_scores(args, rows, per_item)
    write_report(args, specs, prompts, results, notes, device)
    write_grids(args, specs, prompts, rows)
    logger.info(f"Report: {os.path.join(args.output_dir, 'report.md')}")
    return results


if __name__ == "__main__":
    run_with_clear_errors(main, parse_args)
