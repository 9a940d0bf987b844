# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""The embedded tiny default: an SD1.5-shaped pipeline with random weights and a small
synthetic caption+image dataset, both built locally with no download.

    python sspo_tiny.py --output_dir tiny
    # -> tiny/model  (a StableDiffusionPipeline folder: --pretrained_model_name_or_path)
    #    tiny/data   (an imagefolder with metadata.jsonl: --train_data_dir)
    python sspo_tiny.py --output_dir tiny --with_sdxl
    # -> also tiny/sdxl_model  (a StableDiffusionXLPipeline folder for train_sspo_sdxl.py)
    python sspo_tiny.py --output_dir tiny --with_video
    # -> also tiny/motion_adapter  (a MotionAdapter folder for the tiny UNet)
    #         tiny/videos          (ChronoMagic layout: videos/<videoid>.mp4 + ChronoMagic_train.csv)

The training scripts load these through their ordinary code paths. Tests use the same
builders, plus ``write_pickapic_parquet`` for Pick-a-Pic-format preference data.
"""

import argparse
import io
import json
import os
import random

import torch
from PIL import Image, ImageDraw

# The fixtures share the shapes world's palette, shape names and byte-level CLIP vocabulary
# (this module imports the world, never the other way round).
from shapes_world import COLORS, SHAPES, SPECIAL_TOKENS, bytes_to_unicode


def write_tokenizer_files(directory):
    """A byte-level CLIP vocabulary (each byte alone and word-final, plus the two special
    tokens) with no merges. Returns (vocab_file, merges_file)."""
    os.makedirs(directory, exist_ok=True)
    symbols = bytes_to_unicode()
    tokens = symbols + [s + "</w>" for s in symbols] + list(SPECIAL_TOKENS)
    vocab = {token: i for i, token in enumerate(tokens)}
    vocab_file = os.path.join(directory, "vocab.json")
    merges_file = os.path.join(directory, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    return vocab_file, merges_file


def build_tiny_components(seed=0, cross_attention_dim=32):
    """Random-weight SD1.5-shaped components: 64 px images -> 4x8x8 latents."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    import tempfile

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=64,
    )
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = write_tokenizer_files(tmp)
        tokenizer = CLIPTokenizer(vocab_file, merges_file, model_max_length=77)
    bos_id = tokenizer.convert_tokens_to_ids("<|startoftext|>")
    eos_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cross_attention_dim,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def build_tiny_pipeline(path, seed=0):
    """Save a tiny StableDiffusionPipeline folder at ``path``; returns ``path``."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline(
        **build_tiny_components(seed),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(path)
    return path


def build_tiny_sdxl_components(seed=0, hidden_size=32):
    """Random-weight SDXL-architecture components (64 px -> 4x8x8 latents): two CLIP text
    encoders (the second with a projection, whose output is the pooled embedding), both
    tokenizers, and a UNet with ``addition_embed_type="text_time"`` (micro-conditioning).
    ``cross_attention_dim`` is the two encoders' widths together, and the added embedding
    takes six time ids of ``addition_time_embed_dim`` each plus the pooled projection."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    base = build_tiny_components(seed, cross_attention_dim=hidden_size)
    torch.manual_seed(seed + 1)
    addition_time_embed_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        cross_attention_dim=2 * hidden_size,
        attention_head_dim=(2, 4),
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + hidden_size,
        norm_num_groups=32,
    )
    tokenizer = base["tokenizer"]
    text_config = base["text_encoder"].config.to_dict()
    text_config.update(projection_dim=hidden_size)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_config))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    return dict(unet=unet, vae=base["vae"], text_encoder=base["text_encoder"], text_encoder_2=text_encoder_2,
                tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=scheduler)


def build_tiny_sdxl_pipeline(path, seed=0):
    """Save a tiny StableDiffusionXLPipeline folder at ``path``; returns ``path``."""
    from diffusers import StableDiffusionXLPipeline

    StableDiffusionXLPipeline(**build_tiny_sdxl_components(seed)).save_pretrained(path)
    return path


def draw_shape_image(color, shape, background, size=64, jitter=None):
    """A solid shape on a solid background: simple enough that the tiny model can learn it."""
    rng = jitter or random.Random(0)
    image = Image.new("RGB", (size, size), COLORS[background])
    draw = ImageDraw.Draw(image)
    margin = rng.randint(size // 8, size // 4)
    box = (margin, margin, size - margin, size - margin)
    if shape == "circle":
        draw.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        draw.rectangle(box, fill=COLORS[color])
    else:
        draw.polygon([(size // 2, margin), (size - margin, size - margin), (margin, size - margin)], fill=COLORS[color])
    return image


def synthetic_examples(num_examples, seed=0, size=64):
    """(caption, image) pairs: 'a red circle on a blue background' and the like."""
    rng = random.Random(seed)
    names = list(COLORS)
    for _ in range(num_examples):
        color, background = rng.sample(names, 2)
        shape = rng.choice(SHAPES)
        yield f"a {color} {shape} on a {background} background", draw_shape_image(color, shape, background, size, rng)


def build_tiny_imagefolder(path, num_examples=32, seed=0, size=64, caption_column="text"):
    """An imagefolder dataset (``--train_data_dir``): PNGs plus metadata.jsonl."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "metadata.jsonl"), "w") as metadata:
        for i, (caption, image) in enumerate(synthetic_examples(num_examples, seed, size)):
            file_name = f"{i:05d}.png"
            image.save(os.path.join(path, file_name))
            metadata.write(json.dumps({"file_name": file_name, caption_column: caption}) + "\n")
    return path


def _jpeg_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_pickapic_parquet(path, labels, split="train", seed=0, size=64, corrupt_rows=()):
    """A Pick-a-Pic v2-format parquet at ``path/data/<split>-00000-of-00001.parquet``.

    ``labels`` is a list of label_0 values (1, 0 or 0.5 for a tie); the preferred image is
    drawn with the caption's colours, the other with swapped colours, so winners are
    checkable. Rows in ``corrupt_rows`` get truncated JPEG bytes for the winner.
    Returns the list of expected winner captions (ties dropped)."""
    import datasets

    rng = random.Random(seed)
    rows = {k: [] for k in ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "are_different", "has_label")}
    names = list(COLORS)
    for i, label_0 in enumerate(labels):
        color, background = rng.sample(names, 2)
        shape = rng.choice(SHAPES)
        good = _jpeg_bytes(draw_shape_image(color, shape, background, size, rng))
        bad = _jpeg_bytes(draw_shape_image(background, shape, color, size, rng))
        if i in corrupt_rows:
            good = good[: len(good) // 3]
        jpg_0, jpg_1 = (good, bad) if label_0 == 1 else (bad, good)
        rows["caption"].append(f"a {color} {shape} on a {background} background")
        rows["jpg_0"].append(jpg_0)
        rows["jpg_1"].append(jpg_1)
        rows["label_0"].append(float(label_0))
        rows["label_1"].append(float(1 - label_0))
        rows["are_different"].append(True)
        rows["has_label"].append(True)
    os.makedirs(os.path.join(path, "data"), exist_ok=True)
    datasets.Dataset.from_dict(rows).to_parquet(os.path.join(path, "data", f"{split}-00000-of-00001.parquet"))
    return path



# ---------------------------------------------------------------------------
# Video: a tiny MotionAdapter and ChronoMagic-format clips of moving shapes
# ---------------------------------------------------------------------------

DIRECTIONS = ("right", "left")


def build_tiny_motion_adapter(path, seed=0):
    """Save a random-weight MotionAdapter at ``path`` that fits build_tiny_components' UNet
    (two blocks of 32/64 channels, two layers per block); returns ``path``.

    ``UNetMotionModel.from_unet2d(unet, adapter)`` and ``AnimateDiffPipeline(...,
    motion_adapter=adapter)`` accept it; clips may be up to 32 frames long."""
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    adapter = MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=2,
        motion_num_attention_heads=4,
        motion_norm_num_groups=32,
        motion_max_seq_length=32,
    )
    adapter.save_pretrained(path)
    return path


def moving_shape_frames(color, shape, background, num_frames, size=64, seed=0, direction="right"):
    """``num_frames`` PIL frames of a solid ``shape`` on a solid ``background`` that moves
    horizontally (``direction`` "right" or "left") a few pixels per frame."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    rng = random.Random(seed)
    extent = max(2, (size * 3) // 8)  # the shape's width and height
    margin = max(1, size // 16)
    travel = max(0, size - extent - 2 * margin)
    step = max(1, min(4, travel // max(1, num_frames - 1)))
    top = rng.randint(margin, max(margin, size - extent - margin))
    start = margin if direction == "right" else size - margin - extent
    sign = 1 if direction == "right" else -1
    frames = []
    for i in range(num_frames):
        left = start + sign * min(i * step, travel)
        image = Image.new("RGB", (size, size), COLORS[background])
        draw = ImageDraw.Draw(image)
        box = (left, top, left + extent - 1, top + extent - 1)
        if shape == "circle":
            draw.ellipse(box, fill=COLORS[color])
        elif shape == "square":
            draw.rectangle(box, fill=COLORS[color])
        else:
            x0, y0, x1, y1 = box
            draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=COLORS[color])
        frames.append(image)
    return frames


def write_mp4(path, frames, fps=8):
    """Encode PIL ``frames`` to an mp4 at ``path`` (H.264 where PyAV has libx264), through the
    same writer the trainers use for validation videos. Returns ``path``."""
    from sspo_utils import save_video

    if not frames:
        raise ValueError("write_mp4 needs at least one frame")
    if min(frames[0].size) < 2:
        raise ValueError(f"frames are too small to encode: {frames[0].size}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return save_video(frames, path, fps=fps)


def synthetic_video_examples(num_videos, num_frames=16, size=64, seed=0):
    """(caption, frames) pairs: 'a red circle moving right on a blue background' and the
    like. ``num_frames`` is one length for all clips or a list with one per clip."""
    lengths = list(num_frames) if isinstance(num_frames, (list, tuple)) else [num_frames] * num_videos
    if len(lengths) != num_videos:
        raise ValueError(f"num_frames lists {len(lengths)} lengths for {num_videos} videos")
    rng = random.Random(seed)
    names = list(COLORS)
    for i, length in enumerate(lengths):
        color, background = rng.sample(names, 2)
        shape = rng.choice(SHAPES)
        direction = rng.choice(DIRECTIONS)
        caption = f"a {color} {shape} moving {direction} on a {background} background"
        yield caption, moving_shape_frames(color, shape, background, length, size, seed + i, direction)


def build_tiny_video_dataset(path, num_videos=8, num_frames=16, size=64, seed=0, layout="chronomagic"):
    """mp4 clips of moving shapes with captions; returns the metadata file's path.

    layout "chronomagic": ``path/videos/<videoid>.mp4`` and ``path/ChronoMagic_train.csv``
    with columns videoid,name,is_transmit (name is the caption, is_transmit is 1).
    layout "generic": ``path/videos/clip_<i>.mp4`` and ``path/metadata.jsonl`` with keys
    ``file`` (relative to ``path/videos``) and ``text``.
    ``num_frames`` is an int or a list of per-clip lengths."""
    import csv

    if layout not in ("chronomagic", "generic"):
        raise ValueError(f"layout must be 'chronomagic' or 'generic', got {layout!r}")
    video_dir = os.path.join(path, "videos")
    os.makedirs(video_dir, exist_ok=True)
    rows = []
    for i, (caption, frames) in enumerate(synthetic_video_examples(num_videos, num_frames, size, seed)):
        name = f"tiny{i:05d}" if layout == "chronomagic" else f"clip_{i}"
        write_mp4(os.path.join(video_dir, name + ".mp4"), frames)
        rows.append((name, caption))
    if layout == "chronomagic":
        metadata_file = os.path.join(path, "ChronoMagic_train.csv")
        with open(metadata_file, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["videoid", "name", "is_transmit"])
            for name, caption in rows:
                writer.writerow([name, caption, 1])
    else:
        metadata_file = os.path.join(path, "metadata.jsonl")
        with open(metadata_file, "w", encoding="utf-8") as f:
            for name, caption in rows:
                f.write(json.dumps({"file": name + ".mp4", "text": caption}) + "\n")
    return metadata_file

def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Build the tiny offline SSPO default (model + data).")
    parser.add_argument("--output_dir", default="tiny_sspo", help="Writes <output_dir>/model and <output_dir>/data.")
    parser.add_argument("--num_examples", type=int, default=64, help="Synthetic caption+image pairs.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--with_video",
        action="store_true",
        help="Also write <output_dir>/motion_adapter (a tiny MotionAdapter for the tiny UNet) and "
        "<output_dir>/chronomagic (ChronoMagic layout: videos/*.mp4, 8 clips of 16 frames, plus ChronoMagic_train.csv).",
    )
    parser.add_argument("--with_sdxl", action="store_true",
                        help="Also write <output_dir>/sdxl_model (a tiny SDXL-architecture pipeline).")
    return parser.parse_args(input_args)


if __name__ == "__main__":
    args = parse_args()
    model_dir = build_tiny_pipeline(os.path.join(args.output_dir, "model"), seed=args.seed)
    data_dir = build_tiny_imagefolder(os.path.join(args.output_dir, "data"), args.num_examples, args.seed)
    print(f"tiny model: {model_dir}\ntiny data:  {data_dir}")
    if args.with_sdxl:
        print(f"tiny SDXL model: {build_tiny_sdxl_pipeline(os.path.join(args.output_dir, 'sdxl_model'), seed=args.seed)}")
    if args.with_video:
        adapter_dir = build_tiny_motion_adapter(os.path.join(args.output_dir, "motion_adapter"), seed=args.seed)
        video_csv = build_tiny_video_dataset(
            os.path.join(args.output_dir, "chronomagic"), num_videos=8, num_frames=16, seed=args.seed
        )
        print(f"tiny motion adapter: {adapter_dir}\ntiny videos: {video_csv}")
