# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""The shapes world: a small text-to-image (and text-to-video) world with an exact reward, in which
preference alignment can be measured.

Everything about the world lives here, in four parts:
  1. the caption grammar ("a small red circle at the top left on a blue background", and for video
     "a small red circle in the center on a blue background, moving left"), with a fixed set of held-out
     combinations that no training set ever contains;
  2. the renderer, which draws exactly what a caption says;
  3. the ground-truth reward: a number in [0, 1] computed from pixels, no learned model;
  4. builders: the SD1.5- and SDXL-shaped pipelines and the MotionAdapter, their pretraining, and
     Pick-a-Pic-style preference data judged by the reward.

The trainers and ``sspo_utils`` know nothing of this file: the world reaches them as an ordinary
model folder and an ordinary dataset.

    python shapes_world.py pretrain --output_dir models/shapes-sd15 --threads 2 --unet_steps 1800 \
        --prediction_type v_prediction --unet_lr 2e-3 --ema_decay 0.999 --decoder_steps 250  # the shipped base, ~30 min
    python shapes_world.py pretrain_sdxl --output_dir models/shapes-sdxl --init_model models/shapes-sd15 --threads 1 \
        --unet_steps 500 --batch_size 32 --unet_lr 1e-3                     # the shipped SDXL-shaped base, ~32 min
    python shapes_world.py pretrain_video --model models/shapes-sd15 --video_model_dir models/shapes-sd15-video \
        --output_dir models/shapes-motion-adapter                                  # the shipped video model, ~19 min
    python shapes_world.py preferences --model models/shapes-sd15 --guidance_scale 2 --output_dir data/shapes-pickapic
    python shapes_world.py video_preferences --model models/shapes-sd15-video --guidance_scale 2 --pairs_per_caption 2 \
        --motion_adapter models/shapes-motion-adapter --output_dir data/shapes-chronomagic
    python shapes_world.py prompts --output_dir data      # train / held-out prompt files
    python shapes_world.py check --model models/shapes-sd15   # base reward vs renderer vs chance
"""

import argparse
import dataclasses
import io
import itertools
import json
import math
import os
import random
import shutil
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from sspo_utils import SSPOInputError, run_with_clear_errors, training_target


# ---------------------------------------------------------------------------
# 1. Caption grammar
# ---------------------------------------------------------------------------

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 50, 170),
    "white": (245, 245, 245),
}  # also the palette of sspo_tiny's random test fixtures
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.32, "big": 0.50}  # side of the shape's box, as a fraction of the image side
POSITIONS = {  # phrase -> centre of the shape, as fractions of the image side (x, y)
    "at the top left": (0.28, 0.28),
    "at the top right": (0.72, 0.28),
    "in the center": (0.50, 0.50),
    "at the bottom left": (0.28, 0.72),
    "at the bottom right": (0.72, 0.72),
}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0)}  # what videos can name (see all_video_specs)
VIDEO_POSITION = "in the center"  # the one position of the video grammar (see all_video_specs)
VIDEO_HELD_OUT_FRACTION = 0.2  # of the video captions, besides those whose still caption is held out
VIDEO_TRAVEL = 0.20  # how far a video's shape moves over the clip, as a fraction of the image side
HELD_OUT_FRACTION = 0.1
DAMAGE_SEED_OFFSET = 7919  # web_damage draws from its own stream
DECODER_SEED_OFFSET = 104729  # so does the decoder fine-tune (phase 3)
HELD_OUT_SEED = 2410  # fixed forever: changing it would leak held-out captions into training
IMAGE_SIZE = 32


@dataclasses.dataclass(frozen=True)
class ShapeSpec:
    """What a caption asks for. ``direction`` is set for videos only."""
    color: str
    shape: str
    background: str
    size: Optional[str] = None
    position: Optional[str] = None
    direction: Optional[str] = None

    @property
    def caption(self) -> str:
        image_caption = f"a {self.size} {self.color} {self.shape} {self.position} on a {self.background} background"
        # The motion goes last: the image base reads its words by position, so a video caption
        # starts with exactly the image caption it has learned to draw.
        return image_caption if self.direction is None else f"{image_caption}, moving {self.direction}"


def all_image_specs() -> List[ShapeSpec]:
    """Every image caption of the grammar: 6 colours x 3 shapes x 5 backgrounds x 2 sizes x 5 positions = 900."""
    return [ShapeSpec(c, s, b, size, pos) for c, s, b, size, pos in
            itertools.product(COLORS, SHAPES, COLORS, SIZES, POSITIONS) if b != c]


def all_video_specs() -> List[ShapeSpec]:
    """Every video caption: an image caption in the center and one of 2 directions, 180 x 2 = 360.

    One position and left/right only, because that is what a MotionAdapter for this base can learn: its
    motion modules never see the caption, so the word reaches them only through the spatial features
    around the shape, and on 8x8 latents those change with the position. Over all five positions and
    four directions, 26 adapters moved the shape the same way whatever the word said
    (experiments/results/2026-11-29/video-direction-probe); with one position they follow it."""
    return [dataclasses.replace(spec, direction=d) for spec in all_image_specs() if spec.position == VIDEO_POSITION
            for d in DIRECTIONS]


def split_specs(specs: Sequence[ShapeSpec], fraction: float = HELD_OUT_FRACTION, also_held=frozenset()):
    """(train, held_out): a fixed share of the combinations, and any spec in ``also_held``, is held out of
    every training set."""
    held = set(random.Random(HELD_OUT_SEED).sample(range(len(specs)), round(fraction * len(specs))))
    held |= {i for i, s in enumerate(specs) if s in also_held}
    return [s for i, s in enumerate(specs) if i not in held], [s for i, s in enumerate(specs) if i in held]


def image_split():
    return split_specs(all_image_specs())


def video_split():
    """A video caption is held out when its still caption is held out of the image base, or by a fixed 20%
    draw: 98 of 360, so that the held-out set is big enough to measure."""
    held_stills = set(image_split()[1])
    specs = all_video_specs()
    also_held = {s for s in specs if dataclasses.replace(s, direction=None) in held_stills}
    return split_specs(specs, VIDEO_HELD_OUT_FRACTION, also_held)


def parse_caption(caption: str) -> ShapeSpec:
    """The ShapeSpec a caption of the grammar asks for; ValueError for any other text."""
    text = caption.strip().rstrip(".")
    image_text, _, motion = text.partition(", moving ")  # video: "{image caption}, moving {direction}"
    words = image_text.split()
    if len(words) < 8 or (motion and len(motion.split()) != 1):
        raise ValueError(f"not a shapes-world caption: {caption!r}")
    size, color, shape = words[1:4]  # a {size} {color} {shape} {position...} on a {bg} background
    spec = ShapeSpec(color, shape, words[-2], size, " ".join(words[4:-4]), motion or None)
    if spec.caption != " ".join(text.split()) or not _known(spec):
        raise ValueError(f"not a shapes-world caption: {caption!r}")
    return spec


def _known(spec: ShapeSpec) -> bool:
    return (spec.color in COLORS and spec.background in COLORS and spec.shape in SHAPES and spec.size in SIZES
            and spec.position in POSITIONS and (spec.direction is None or spec.direction in DIRECTIONS))


def grammar_words() -> List[str]:
    words = {"a", "on", "background", "moving"} | set(COLORS) | set(SHAPES) | set(SIZES) | set(DIRECTIONS)
    for phrase in POSITIONS:
        words.update(phrase.split())
    return sorted(words)


# ---------------------------------------------------------------------------
# 2. Renderer
# ---------------------------------------------------------------------------

def _draw_shape(draw, shape, box, fill):
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _box(center, side, image_size):
    cx, cy = center[0] * image_size, center[1] * image_size
    half = side * image_size / 2
    return (cx - half, cy - half, cx + half - 1, cy + half - 1)


def render(spec: ShapeSpec, image_size: int = IMAGE_SIZE, rng: Optional[random.Random] = None) -> Image.Image:
    """The image a caption describes; ``rng`` jitters the centre by up to image_size/32 pixels."""
    jitter = (rng.uniform(-1, 1) * image_size / 32, rng.uniform(-1, 1) * image_size / 32) if rng else (0, 0)
    center = POSITIONS[spec.position]
    center = (center[0] + jitter[0] / image_size, center[1] + jitter[1] / image_size)
    image = Image.new("RGB", (image_size, image_size), COLORS[spec.background])
    _draw_shape(ImageDraw.Draw(image), spec.shape, _box(center, SIZES[spec.size], image_size), COLORS[spec.color])
    return image


def render_video(spec: ShapeSpec, num_frames: int = 8, image_size: int = IMAGE_SIZE,
                 rng: Optional[random.Random] = None) -> List[Image.Image]:
    """Frames of the captioned shape, of the named size, moving ``VIDEO_TRAVEL`` of the image side in
    the named direction on a path centred on the named position (jittered by ``rng`` as ``render`` is).
    A big shape near a corner moving outwards is cut by the frame edge on its last frames."""
    dx, dy = DIRECTIONS[spec.direction]
    jitter = (rng.uniform(-1, 1) / 32, rng.uniform(-1, 1) / 32) if rng else (0, 0)
    center = POSITIONS[spec.position]
    frames = []
    for i in range(num_frames):
        progress = VIDEO_TRAVEL * (i / max(1, num_frames - 1) - 0.5)
        image = Image.new("RGB", (image_size, image_size), COLORS[spec.background])
        box = _box((center[0] + jitter[0] + dx * progress, center[1] + jitter[1] + dy * progress), SIZES[spec.size],
                   image_size)
        _draw_shape(ImageDraw.Draw(image), spec.shape, box, COLORS[spec.color])
        frames.append(image)
    return frames


def degrade(image: Image.Image, kind: str, rng: random.Random) -> Image.Image:
    """Damage for tests and data: "blur", "noise", "blank" (the background alone), or the two
    web-like kinds of ``web_damage``: "faded" (washed out towards grey) and "soft_blur"."""
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=image.size[0] / 10))
    if kind == "faded":
        return fade(image, 0.6)
    if kind == "soft_blur":
        return image.filter(ImageFilter.GaussianBlur(radius=image.size[0] / 16))
    array = np.asarray(image).astype(np.float32)
    if kind == "noise":
        noise = np.random.default_rng(rng.randrange(2**31)).uniform(0, 255, array.shape)
        return Image.fromarray(noise.astype(np.uint8))
    if kind == "blank":
        return Image.new("RGB", image.size, tuple(int(v) for v in array[0, 0]))
    raise ValueError(f"unknown degradation {kind!r}")


def fade(image: Image.Image, strength: float) -> Image.Image:
    """Blend towards mid-grey: at strength >= 0.5 no palette colour stays within COLOR_TOLERANCE."""
    return Image.blend(image, Image.new("RGB", image.size, (128, 128, 128)), strength)


def web_damage(frames: List[Image.Image], rng: random.Random, damage_rate: float) -> List[Image.Image]:
    """Pretraining data as the web has it: with probability ``damage_rate`` a picture (every frame
    of a clip alike) is washed out (faded by 0.5-0.7) or softly blurred, half and half. A base model
    learns this share of damaged outputs: a bad mode for preference data to select against, as
    SD1.5's ugly samples are for Pick-a-Pic (the damaged-world probe in experiments/results/)."""
    if rng.random() >= damage_rate:
        return frames
    if rng.random() < 0.5:
        strength = rng.uniform(0.5, 0.7)
        return [fade(frame, strength) for frame in frames]
    return [degrade(frame, "soft_blur", rng) for frame in frames]


# ---------------------------------------------------------------------------
# 3. Ground-truth reward
# ---------------------------------------------------------------------------

COLOR_TOLERANCE = 60.0  # RGB distance within which a pixel counts as a palette colour
_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
_PALETTE_NAMES = list(COLORS)


def _palette_labels(array: np.ndarray) -> np.ndarray:
    """Per pixel: index of the nearest palette colour, or -1 when none is within COLOR_TOLERANCE."""
    distance = np.linalg.norm(array[:, :, None, :] - _PALETTE[None, None], axis=-1)
    labels = distance.argmin(-1)
    labels[distance.min(-1) > COLOR_TOLERANCE] = -1
    return labels


def _clean(mask: np.ndarray) -> np.ndarray:
    """Drop pixels with fewer than two 4-neighbours in the mask (stray sampling speckle)."""
    padded = np.pad(mask, 1)
    neighbours = padded[:-2, 1:-1].astype(int) + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    return mask & (neighbours >= 2)


def _shape_stats(mask: np.ndarray):
    """(area, fill of the bounding box, centroid x, centroid y) of a cleaned mask, in pixels."""
    ys, xs = np.nonzero(mask)
    box_area = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    return len(xs), len(xs) / box_area, xs.mean() + 0.5, ys.mean() + 0.5


def _calibrate_fills():
    """Bounding-box fill of each shape as the renderer draws it (rasterised, not ideal geometry)."""
    fills = {}
    for shape in SHAPES:
        values = []
        for size, position in itertools.product(SIZES, POSITIONS):
            array = np.asarray(render(ShapeSpec("red", shape, "blue", size, position))).astype(np.float32)
            values.append(_shape_stats(_clean(_palette_labels(array) == 0))[1])
        fills[shape] = float(np.mean(values))
    return fills


SHAPE_FILLS = _calibrate_fills()
FILL_SIGMA = 0.07  # square 1.0 vs circle ~0.8 vs triangle ~0.55: a wrong kind scores near 0
SIZE_SIGMA = 0.5  # in log area: the other size word (area ratio ~2.4) scores about 0.2
POSITION_SIGMA = 0.1  # in image sides: a neighbouring position (>= 0.22 away) scores under 0.1


def _expected_area(shape, side, image_size):
    return SHAPE_FILLS[shape] * (side * image_size) ** 2


def _static_scores(array: np.ndarray, spec: ShapeSpec, side: float) -> Dict[str, float]:
    """Colour, background and shape-kind scores of one frame, plus the stats for size and position."""
    n = array.shape[0]
    labels = _palette_labels(array)
    expected = _expected_area(spec.shape, side, n)
    background = float(np.mean(labels == _PALETTE_NAMES.index(spec.background)))
    scores = {"background": min(1.0, background / (1 - expected / n ** 2))}
    mask = _clean(labels == _PALETTE_NAMES.index(spec.color))
    if mask.sum() < 3:
        return {**scores, "color": 0.0, "shape": 0.0, "area": 0.0, "center": None}
    area, fill, cx, cy = _shape_stats(mask)
    scores["color"] = min(1.0, area / (0.5 * expected))
    scores["shape"] = math.exp(-((fill - SHAPE_FILLS[spec.shape]) / FILL_SIGMA) ** 2 / 2)
    return {**scores, "area": area, "center": (cx / n, cy / n)}


def _size_score(area: float, spec: ShapeSpec, image_size: int) -> float:
    ratio = area / _expected_area(spec.shape, SIZES[spec.size], image_size)
    return math.exp(-(math.log(ratio) / SIZE_SIGMA) ** 2 / 2)


def _position_score(center, spec: ShapeSpec) -> float:
    distance = math.dist(center, POSITIONS[spec.position])
    return math.exp(-(distance / POSITION_SIGMA) ** 2 / 2)


def _as_array(image) -> np.ndarray:
    return np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image).astype(np.float32)


def reward_components(image, caption: str) -> Dict[str, float]:
    """Per-attribute scores in [0, 1] of an image (PIL or HxWx3 uint8) for a caption:
    color (pixels of the named shape colour), background, shape (kind, from the bounding-box fill),
    size (area vs the named size) and position (centroid vs the named position)."""
    spec = parse_caption(caption)
    if spec.direction is not None:
        raise ValueError(f"{caption!r} is a video caption; use video_reward_components")
    array = _as_array(image)
    stats = _static_scores(array, spec, SIZES[spec.size])
    scores = {k: stats[k] for k in ("color", "background", "shape")}
    if stats["center"] is None:
        return {**scores, "size": 0.0, "position": 0.0}
    return {**scores, "size": _size_score(stats["area"], spec, array.shape[0]),
            "position": _position_score(stats["center"], spec)}


def reward(image, caption: str) -> float:
    """The ground-truth reward: the mean of the five attribute scores, in [0, 1]."""
    return float(np.mean(list(reward_components(image, caption).values())))


def video_reward_components(frames, caption: str) -> Dict[str, float]:
    """Per-attribute scores of a clip: the image attributes averaged over frames (size and position
    over the frames where the shape is found; the path is centred on the named position), and
    direction: the centroid's displacement from the first to the last frame where the shape is
    found, along the named direction, relative to half the rendered travel (clipped to [0, 1])."""
    spec = parse_caption(caption)
    if spec.direction is None:
        raise ValueError(f"{caption!r} is an image caption; use reward_components")
    arrays = [_as_array(f) for f in frames]
    per_frame = [_static_scores(array, spec, SIZES[spec.size]) for array in arrays]
    scores = {k: float(np.mean([s[k] for s in per_frame])) for k in ("color", "background", "shape")}
    found = [s for s in per_frame if s["center"] is not None]
    scores["size"] = float(np.sum([_size_score(s["area"], spec, arrays[0].shape[0]) for s in found])) / len(frames)
    centers = [s["center"] for s in found]
    scores["position"] = _position_score(tuple(np.mean(centers, axis=0)), spec) if centers else 0.0
    if len(centers) < 2:
        return {**scores, "direction": 0.0}
    dx, dy = DIRECTIONS[spec.direction]
    along = (centers[-1][0] - centers[0][0]) * dx + (centers[-1][1] - centers[0][1]) * dy
    scores["direction"] = float(np.clip(along / (0.5 * VIDEO_TRAVEL), 0.0, 1.0))
    return scores


def video_reward(frames, caption: str) -> float:
    """The ground-truth video reward: the mean of the six attribute scores (the image's five and
    direction), in [0, 1]."""
    return float(np.mean(list(video_reward_components(frames, caption).values())))


# ---------------------------------------------------------------------------
# 4. Builders: tokenizer, model, pretraining, preference data
# ---------------------------------------------------------------------------

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def bytes_to_unicode() -> List[str]:
    """CLIP's reversible byte -> printable-unicode table (one symbol per byte), so that any caption
    tokenizes. Also the base vocabulary of sspo_tiny's byte-level test tokenizer."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def _bpe(symbols: List[str], ranks: Dict) -> List[str]:
    """Byte-pair encoding as CLIP applies it: merge the best-ranked adjacent pair until none is left."""
    symbols = list(symbols)
    while len(symbols) > 1:
        rank, i = min((ranks.get(pair, math.inf), i) for i, pair in enumerate(zip(symbols, symbols[1:])))
        if rank == math.inf:
            break
        first, second = symbols[i], symbols[i + 1]
        merged, j = [], 0
        while j < len(symbols):
            if j + 1 < len(symbols) and symbols[j] == first and symbols[j + 1] == second:
                merged.append(first + second)
                j += 2
            else:
                merged.append(symbols[j])
                j += 1
        symbols = merged
    return symbols


def write_shapes_tokenizer_files(directory: str):
    """A CLIP vocabulary that is byte-level (any text tokenizes) plus merges that make every word of
    the grammar one token, so that the text encoder sees words, not letters. Returns (vocab, merges)."""
    symbols = bytes_to_unicode()
    tokens = symbols + [s + "</w>" for s in symbols]
    merges, ranks = [], {}
    for word in grammar_words():
        # Append the merge of the first two pieces until the word is one token. Earlier words are
        # single tokens already, so a new (lowest-ranked) merge cannot split them.
        while len(pieces := _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)) > 1:
            ranks[(pieces[0], pieces[1])] = len(merges)
            merges.append((pieces[0], pieces[1]))
            tokens.append(pieces[0] + pieces[1])
    tokens += list(SPECIAL_TOKENS)
    os.makedirs(directory, exist_ok=True)
    vocab_file, merges_file = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump({token: i for i, token in enumerate(tokens)}, f, ensure_ascii=False)
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return vocab_file, merges_file


def build_shapes_components(seed: int = 0, prediction_type: str = "epsilon"):
    """Random-init SD1.5-shaped components for the shapes world: 32 px images -> 4x8x8 latents
    (a 3-block VAE), a 2-block cross-attention UNet, a 2-layer CLIP text encoder on a word-level
    vocabulary, and SD1.5's DDIM scheduler settings (``prediction_type`` "v_prediction": SD2's target)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=16, sample_size=IMAGE_SIZE,
    )
    tokenizer = shapes_tokenizer()
    return dict(unet=unet, vae=vae, text_encoder=shapes_text_encoder(tokenizer), tokenizer=tokenizer,
                scheduler=shapes_scheduler(prediction_type))


def shapes_tokenizer():
    """The CLIP tokenizer of the grammar (``write_shapes_tokenizer_files``), 77 tokens like CLIP's."""
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer(*write_shapes_tokenizer_files(tmp), model_max_length=77)


def shapes_text_encoder(tokenizer, with_projection: bool = False, num_hidden_layers: int = 2):
    """A random-init CLIP text encoder of width 32 for the grammar's tokenizer; ``with_projection``:
    CLIPTextModelWithProjection (SDXL's second encoder, whose projected EOS embedding is the pooled one)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    bos_id, eos_id = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=num_hidden_layers,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=bos_id, eos_token_id=eos_id,
        pad_token_id=eos_id, **({"projection_dim": 32} if with_projection else {}),
    )
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def shapes_scheduler(prediction_type: str):
    """SD1.5's DDIM settings (SDXL's betas are the same); ``prediction_type`` "v_prediction": SD2's target."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


SDXL_TIME_EMBED_DIM = 8  # per micro-conditioning number; SDXL's is 256


def build_shapes_sdxl_components(seed: int = 0, prediction_type: str = "v_prediction", tokenizer=None):
    """Random-init SDXL-shaped components for the shapes world (the VAE comes from the SD1.5-shaped base):
    two CLIP text encoders on the grammar's tokenizer, the second with a projection, whose penultimate
    hidden states are concatenated (64 wide) for cross-attention, and a UNet with
    ``addition_embed_type="text_time"`` that adds the second encoder's pooled embedding and the six
    micro-conditioning numbers (original size, crop top-left, target size) to the timestep embedding.
    Three layers per encoder, so that the penultimate layer SDXL reads is as deep as the SD1.5 base's
    whole encoder. ``tokenizer``: another model's (default: the grammar's, ``shapes_tokenizer``)."""
    import copy

    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = tokenizer or shapes_tokenizer()
    text_encoder = shapes_text_encoder(tokenizer, num_hidden_layers=3)
    text_encoder_2 = shapes_text_encoder(tokenizer, with_projection=True, num_hidden_layers=3)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        attention_head_dim=8, norm_num_groups=32, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=text_encoder_2.config.projection_dim + 6 * SDXL_TIME_EMBED_DIM,
    )
    return dict(unet=unet, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                tokenizer_2=copy.deepcopy(tokenizer), scheduler=shapes_scheduler(prediction_type))


def sdxl_prompt_embeddings(text_encoders, input_ids: torch.Tensor):
    """(prompt_embeds, pooled_prompt_embeds) as StableDiffusionXLPipeline.encode_prompt computes them: each
    encoder's penultimate hidden states, concatenated, and the last encoder's projected embedding."""
    hidden_states = []
    for text_encoder in text_encoders:
        output = text_encoder(input_ids, output_hidden_states=True)
        hidden_states.append(output.hidden_states[-2])
    return torch.cat(hidden_states, dim=-1), output[0]


def to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images -> (b, 3, h, w) in [-1, 1]."""
    array = np.stack([np.asarray(image.convert("RGB")) for image in images]).astype(np.float32)
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1


def mismatch(spec: ShapeSpec, rng: random.Random) -> ShapeSpec:
    """The spec with one attribute changed at random: a "web-like" caption that misdescribes its image."""
    field = rng.choice(["color", "shape", "background", "size", "position"] + (["direction"] if spec.direction else []))
    choices = {"color": COLORS, "shape": SHAPES, "background": COLORS, "size": SIZES, "position": POSITIONS,
               "direction": DIRECTIONS}[field]
    value = rng.choice([v for v in choices if v != getattr(spec, field)
                        and not (field == "color" and v == spec.background)
                        and not (field == "background" and v == spec.color)])
    return dataclasses.replace(spec, **{field: value})


def _lr_at(step, total, peak, warmup=100):
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def _save_state(path, **state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def denoising_step(unet, noise_scheduler, clean, text_embeddings, optimizer, parameters, generator,
                    snr_gamma: Optional[float] = None):
    """One step of SD's pretraining objective: noise x_0 to x_t at a uniform t, predict epsilon (or v,
    when the scheduler's ``prediction_type`` is "v_prediction", as SD2 does).
    ``text_embeddings`` is called after the draws, so that its cost never shifts them; it returns the
    encoder hidden states, or (SDXL) a dict of the UNet's conditioning keyword arguments. With
    ``snr_gamma``, each sample's loss is weighted by min(SNR(t), gamma) / SNR(t) (Min-SNR, Hang et al. 2023)."""
    noise = torch.randn(clean.shape, generator=generator)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],), generator=generator)
    noisy = noise_scheduler.add_noise(clean, noise, timesteps)
    conditioning = text_embeddings()
    if isinstance(conditioning, dict):
        prediction = unet(noisy, timesteps, **conditioning).sample
    else:
        prediction = unet(noisy, timesteps, conditioning).sample
    target = training_target(noise_scheduler, clean, noise, timesteps)
    if snr_gamma is None:  # the shipped weights' exact arithmetic
        loss = torch.nn.functional.mse_loss(prediction, target)
    else:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(noise_scheduler, timesteps)
        v_prediction = noise_scheduler.config.prediction_type == "v_prediction"
        weights = torch.clamp(snr, max=snr_gamma) / (snr + 1 if v_prediction else snr)
        loss = ((prediction - target).pow(2).flatten(1).mean(1) * weights).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    return loss


def train_denoiser(unet, text_encoders: Dict[str, torch.nn.Module], conditioning, latents: torch.Tensor, generator,
                   noise_scheduler, steps: int, lr: float, batch_size: int, caption_dropout: float, state_path: str,
                   state: Optional[Dict], timings: Dict, save_every: int, ema_decay: Optional[float],
                   snr_gamma: Optional[float], saved_with: Optional[Dict] = None):
    """The UNet phase of pretraining, shared by the SD1.5- and SDXL-shaped bases: the UNet and the text
    encoders learn together (``denoising_step``) on random batches of ``latents``.
    ``conditioning(index, dropped)`` gives the UNet's text conditioning for those samples, unconditional
    where ``dropped`` (the ``caption_dropout`` share). Saves a resumable state to ``state_path`` every
    ``save_every`` steps (with ``saved_with`` besides), resumes from ``state``, and leaves the EMA of the
    weights in the modules when ``ema_decay`` is set. ``timings["unet_s"]`` counts the seconds."""
    from diffusers.training_utils import EMAModel

    parameters = list(unet.parameters()) + [p for encoder in text_encoders.values() for p in encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-4)
    ema = EMAModel(parameters, decay=ema_decay, use_ema_warmup=True) if ema_decay else None
    start = 0
    if state is not None and "unet" in state:
        unet.load_state_dict(state["unet"])
        for name, encoder in text_encoders.items():
            encoder.load_state_dict(state[name])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        generator.set_state(state["generator"])
        start = state["unet_step"]
    began = time.perf_counter() - timings.get("unet_s", 0.0)
    for module in (unet, *text_encoders.values()):
        module.train()
    for step in range(start, steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        index = torch.randint(0, len(latents), (batch_size,), generator=generator)
        dropped = torch.rand(batch_size, generator=generator) < caption_dropout
        loss = denoising_step(unet, noise_scheduler, latents[index], lambda: conditioning(index, dropped), optimizer,
                              parameters, generator, snr_gamma)
        if ema is not None:
            ema.step(parameters)
        if (step + 1) % 50 == 0:
            _log(f"unet step {step + 1}/{steps} loss {loss.item():.4f}")
        if (step + 1) % save_every == 0 or step + 1 == steps:
            timings["unet_s"] = time.perf_counter() - began
            encoder_states = {name: encoder.state_dict() for name, encoder in text_encoders.items()}
            _save_state(state_path, **(saved_with or {}), unet=unet.state_dict(), **encoder_states,
                        optimizer=optimizer.state_dict(), generator=generator.get_state(), unet_step=step + 1,
                        timings=timings, **({"ema": ema.state_dict()} if ema is not None else {}))
    if ema is not None:
        ema.copy_to(parameters)


def pretraining_renders(seed: int, num_renders: int, mismatch_rate: float, damage_rate: float):
    """The image pretraining set: ``num_renders`` renders of training captions (a tensor in [-1, 1]) and
    their web-like captions, the same for a seed wherever it is rebuilt."""
    rng = random.Random(seed)
    train_specs, _ = image_split()
    specs = [rng.choice(train_specs) for _ in range(num_renders)]
    damage_rng = random.Random(seed + DAMAGE_SEED_OFFSET)  # its own stream: renders and captions as without damage
    images = to_tensor([web_damage([render(spec, rng=rng)], damage_rng, damage_rate)[0] for spec in specs])
    captions = [(mismatch(s, rng) if rng.random() < mismatch_rate else s).caption for s in specs]
    return images, captions


def encode_means(vae, images: torch.Tensor) -> torch.Tensor:
    """Posterior means of the images (unscaled), in the chunks pretraining uses, so a rebuild matches."""
    with torch.no_grad():
        return torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(500)])


def reconstruction_mse(vae, images: torch.Tensor, means: torch.Tensor) -> float:
    """MSE of decoding the first 500 posterior means against their renders: the VAE's number in pretraining.json."""
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(vae.decode(means[:500]).sample, images[:500]))


def finetune_decoder(vae, images: torch.Tensor, means: torch.Tensor, steps: int, seed: int = 0,
                     batch_size: int = 32, lr: float = 1e-3) -> Dict:
    """Phase 3 of pretraining: train the VAE's decoder (and post_quant_conv) alone to reconstruct the
    renders from their frozen posterior means, as sd-vae-ft-mse did for SD1.5. The encoder does not
    change, so the latent space, and the UNet and motion adapter trained in it, stay valid. Why: the
    800-step VAE blurs edges, and the reward's palette check drops blurred pixels, so perfect renders
    scored only 0.725 after a round trip (shape 0.39, size 0.48; experiments/results/2026-11-29/
    vae-ceiling). Returns the reconstruction MSE before and after (first 500 renders) and the seconds."""
    vae.requires_grad_(False).eval()
    decoder_parameters = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    before = reconstruction_mse(vae, images, means)
    for parameter in decoder_parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(decoder_parameters, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed + DECODER_SEED_OFFSET)
    began = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup=20)
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        loss = torch.nn.functional.mse_loss(vae.decode(means[index]).sample, images[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 50 == 0:
            _log(f"decoder step {step + 1}/{steps} loss {loss.item():.4f}")
    seconds = time.perf_counter() - began
    vae.requires_grad_(False)
    return {"decoder_steps": steps, "decoder_batch_size": batch_size, "decoder_lr": lr,
            "decoder_mse_before": before, "decoder_mse_after": reconstruction_mse(vae, images, means),
            "decoder_seconds": round(seconds, 1)}


def pretrain_image_model(output_dir: str, seed: int = 0, vae_steps: int = 800, unet_steps: int = 1300,
                         num_renders: int = 20000, mismatch_rate: float = 0.1, damage_rate: float = 0.0,
                         caption_dropout: float = 0.1,
                         batch_size: int = 64, vae_batch_size: int = 16, vae_lr: float = 2e-3,
                         save_every: int = 250, ema_decay: Optional[float] = None,
                         snr_gamma: Optional[float] = None, vae_latent_noise: Optional[float] = None,
                         unet_lr: float = 1e-3, prediction_type: str = "epsilon", decoder_steps: int = 0) -> Dict:
    """Pretrain the shapes-world StableDiffusionPipeline from scratch and save it to ``output_dir``.

    Phase 1 trains the VAE on renders (MSE + 1e-6 KL, batch ``vae_batch_size``) and sets ``scaling_factor`` to 1/std of the
    latents. Phase 2 trains the UNet and the text encoder together on epsilon prediction, on
    "web-like" data: ``damage_rate`` of the images are washed out or blurred (``web_damage``, in both
    phases), ``mismatch_rate`` of the captions misdescribe their image by one attribute, and
    ``caption_dropout`` are empty so that classifier-free guidance works. Held-out combinations are
    never rendered. ``ema_decay`` saves an exponential moving average of the UNet and text encoder
    instead of their last weights; ``snr_gamma`` weights the loss by Min-SNR. ``vae_latent_noise``
    decodes latents with Gaussian noise of that std relative to the batch's latent std (instead of the
    posterior's tiny std), so that the decoder maps a whole neighbourhood of each code to a clean
    render. ``prediction_type`` "v_prediction" trains on SD2's v target. Phase 3 (``decoder_steps``)
    fine-tunes the VAE's decoder alone (``finetune_decoder``). The shipped base is prediction_type
    "v_prediction", unet_lr 2e-3, ema_decay 0.999, unet_steps 1800, decoder_steps 250, 2 threads; the
    defaults are the previous, epsilon recipe. Deterministic for a seed and thread count; resumes
    from ``.pretrain_state.pt``."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    os.makedirs(output_dir, exist_ok=True)
    state_path = os.path.join(output_dir, ".pretrain_state.pt")
    state = torch.load(state_path, weights_only=True) if os.path.isfile(state_path) else None
    components = build_shapes_components(seed, prediction_type)
    vae, unet, text_encoder, tokenizer = (components[k] for k in ("vae", "unet", "text_encoder", "tokenizer"))
    images, captions = pretraining_renders(seed, num_renders, mismatch_rate, damage_rate)
    input_ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    empty_ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    generator = torch.Generator().manual_seed(seed)
    timings = {}

    # Phase 1: VAE. The posterior's log-variance starts near -10: a fresh VAE samples latents with
    # std ~1, and the decoder then learns from noise for hundreds of steps; SD's VAE has a tiny std too.
    with torch.no_grad():
        latent_channels = vae.config.latent_channels
        vae.quant_conv.bias[latent_channels:] = -10.0
        vae.quant_conv.weight[latent_channels:] *= 0.01
    vae_optimizer = torch.optim.AdamW(vae.parameters(), lr=vae_lr, weight_decay=0.0)
    start = 0
    if state is not None:
        vae.load_state_dict(state["vae"])
        vae_optimizer.load_state_dict(state["vae_optimizer"])
        generator.set_state(state["generator"])
        start = state["vae_step"]
        timings = state["timings"]
    began = time.perf_counter() - timings.get("vae_s", 0.0)
    for step in range(start, vae_steps):
        for group in vae_optimizer.param_groups:
            group["lr"] = _lr_at(step, vae_steps, vae_lr, warmup=50)
        batch = images[torch.randint(0, num_renders, (vae_batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        std = posterior.std if vae_latent_noise is None else vae_latent_noise * posterior.mean.detach().std()
        reconstruction = vae.decode(posterior.mean + std * torch.randn(posterior.mean.shape, generator=generator)).sample
        loss = torch.nn.functional.mse_loss(reconstruction, batch) + 1e-6 * posterior.kl().mean()
        vae_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        vae_optimizer.step()
        if (step + 1) % 50 == 0:
            _log(f"vae step {step + 1}/{vae_steps} loss {loss.item():.4f}")
        if (step + 1) % save_every == 0 or step + 1 == vae_steps:
            timings["vae_s"] = time.perf_counter() - began
            _save_state(state_path, vae=vae.state_dict(), vae_optimizer=vae_optimizer.state_dict(),
                        generator=generator.get_state(), vae_step=step + 1, timings=timings)
    vae.requires_grad_(False).eval()
    means = encode_means(vae, images)
    vae_mse = reconstruction_mse(vae, images, means)
    scaling_factor = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    latents = means * scaling_factor
    _log(f"vae done: reconstruction MSE {vae_mse:.4f}, scaling_factor {scaling_factor:.4f}")

    # Phase 2: UNet + text encoder.
    def conditioning(index, dropped):
        ids = input_ids[index].clone()
        ids[dropped] = empty_ids[0]
        return text_encoder(ids)[0]

    noise_scheduler = DDPMScheduler.from_config(components["scheduler"].config)
    vae_state = dict(vae=vae.state_dict(), vae_optimizer=vae_optimizer.state_dict(), vae_step=vae_steps)
    train_denoiser(unet, {"text_encoder": text_encoder}, conditioning, latents, generator, noise_scheduler, unet_steps,
                   unet_lr, batch_size, caption_dropout, state_path, state, timings, save_every, ema_decay, snr_gamma,
                   saved_with=vae_state)

    # Phase 3: the decoder alone (the latent space the UNet learned stays as it is).
    decoder_info = finetune_decoder(vae, images, means, decoder_steps, seed) if decoder_steps else {"decoder_steps": 0}
    pipeline = StableDiffusionPipeline(**{**components, "unet": unet.eval(), "text_encoder": text_encoder.eval()},
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(output_dir)
    info = {"seed": seed, "vae_steps": vae_steps, "unet_steps": unet_steps, "num_renders": num_renders,
            "mismatch_rate": mismatch_rate, "damage_rate": damage_rate, "caption_dropout": caption_dropout,
            "batch_size": batch_size, "unet_lr": unet_lr, "vae_batch_size": vae_batch_size, "vae_lr": vae_lr,
            "vae_reconstruction_mse": vae_mse, "scaling_factor": scaling_factor, "ema_decay": ema_decay,
            "snr_gamma": snr_gamma, "vae_latent_noise": vae_latent_noise, "prediction_type": prediction_type,
            "vae_seconds": round(timings.get("vae_s", 0.0), 1), "unet_seconds": round(timings.get("unet_s", 0.0), 1),
            **decoder_info, "torch": torch.__version__, "threads": torch.get_num_threads()}
    with open(os.path.join(output_dir, "pretraining.json"), "w") as f:
        json.dump(info, f, indent=2)
    os.remove(state_path)
    return info


def finetune_shipped_decoder(model_dir: str, steps: int) -> Dict:
    """Run phase 3 on an already pretrained model folder, in place: re-render its pretraining set from
    its pretraining.json, fine-tune the decoder as ``pretrain --decoder_steps`` would, then swap the new
    ``vae`` folder in atomically. Runs at the pretraining's thread count, so it gives the weights a whole
    rebuild gives."""
    from diffusers import AutoencoderKL

    info_path = os.path.join(model_dir, "pretraining.json")
    with open(info_path) as f:
        info = json.load(f)
    if info.get("decoder_steps"):
        raise SSPOInputError(f"{model_dir}'s decoder is already fine-tuned ({info['decoder_steps']} steps); a second "
                         "round would match no rebuild. Start from a model pretrained with --decoder_steps 0.")
    torch.set_num_threads(info["threads"])
    images, _ = pretraining_renders(info["seed"], info["num_renders"], info["mismatch_rate"], info["damage_rate"])
    vae = AutoencoderKL.from_pretrained(os.path.join(model_dir, "vae"))
    decoder_info = finetune_decoder(vae, images, encode_means(vae, images), steps, info["seed"])
    staging, old = os.path.join(model_dir, ".vae.new"), os.path.join(model_dir, ".vae.old")
    shutil.rmtree(staging, ignore_errors=True)
    vae.save_pretrained(staging, safe_serialization=True)
    with open(os.path.join(staging, "config.json")) as f:
        config = json.load(f)
    config.pop("_name_or_path", None)  # where it was loaded from: a rebuild's config has no such key
    with open(os.path.join(staging, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(os.path.join(model_dir, "vae"), old)  # a stop between these two leaves the old VAE in .vae.old
    os.replace(staging, os.path.join(model_dir, "vae"))
    shutil.rmtree(old)
    info.update(decoder_info)
    with open(info_path + ".tmp", "w") as f:
        json.dump(info, f, indent=2)
    os.replace(info_path + ".tmp", info_path)
    return info



def warm_start_sdxl(components: Dict, model_dir: str):
    """Initialise the SDXL-shaped UNet and both text encoders from the SD1.5-shaped base in ``model_dir``,
    as SDXL-style models are often started from an earlier one: every UNet weight of the same role is
    copied (1x1-conv projections become linear ones), the cross-attention keys and values read the first
    encoder's half of the 64-wide context with the base's weights and the second half with zeros, the
    added (pooled text + micro-conditioning) embedding starts at zero, and both encoders get the base
    encoder's embeddings and layers (their third layer stays random). Training then adapts the rest.
    The components must be built with ``model_dir``'s tokenizer, whose vocabulary the
    encoder's embeddings index."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = components["unet"]
    target = unet.state_dict()
    with torch.no_grad():
        for name, value in UNet2DConditionModel.from_pretrained(os.path.join(model_dir, "unet")).state_dict().items():
            if ".attn2.to_k." in name or ".attn2.to_v." in name:
                target[name].zero_()[:, :value.shape[1]] = value
            else:
                target[name].copy_(value.reshape(target[name].shape))
        unet.add_embedding.linear_2.weight.zero_()
        unet.add_embedding.linear_2.bias.zero_()
    source = CLIPTextModel.from_pretrained(os.path.join(model_dir, "text_encoder"))
    text_model = getattr(source, "text_model", source).state_dict()  # transformers 5 dropped the wrapper
    for name in ("text_encoder", "text_encoder_2"):
        target_model = getattr(components[name], "text_model", components[name])
        unexpected = target_model.load_state_dict(text_model, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{model_dir}'s text encoder has weights the SDXL-shaped one lacks: {unexpected[:3]}")


def pretrain_sdxl_model(output_dir: str, vae_model_dir: str, seed: int = 0, unet_steps: int = 1800,
                        num_renders: int = 20000, mismatch_rate: float = 0.1, damage_rate: float = 0.0,
                        caption_dropout: float = 0.1, batch_size: int = 64, unet_lr: float = 2e-3,
                        ema_decay: Optional[float] = 0.999, snr_gamma: Optional[float] = None,
                        prediction_type: str = "v_prediction", save_every: int = 250,
                        init_model_dir: Optional[str] = None) -> Dict:
    """Pretrain the SDXL-shaped StableDiffusionXLPipeline (``build_shapes_sdxl_components``) and save it to
    ``output_dir``: the UNet and both text encoders learn as phase 2 of ``pretrain_image_model`` does, on
    the same renders and web-like captions for a seed, in the latent space of the VAE of ``vae_model_dir``
    (the SD1.5-shaped base's; an SDXL VAE differs only in its scaling factor, which is the folder's own).
    The caption dropout zeroes both text embeddings, because an SDXL pipeline
    (``force_zeros_for_empty_prompt``) guides against zeros. Renders are drawn at 32 px and never resized
    or cropped, so every sample's micro-conditioning is (32, 32, 0, 0, 32, 32), what the pipeline passes at
    32 px. ``init_model_dir``: start from that SD1.5-shaped base's UNet and text encoder
    (``warm_start_sdxl``) instead of random weights. Deterministic for a seed and thread count; resumes
    from ``.pretrain_state.pt``."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionXLPipeline

    vae = AutoencoderKL.from_pretrained(os.path.join(vae_model_dir, "vae")).requires_grad_(False).eval()
    os.makedirs(output_dir, exist_ok=True)
    state_path = os.path.join(output_dir, ".pretrain_state.pt")
    state = torch.load(state_path, weights_only=True) if os.path.isfile(state_path) else None
    timings = state["timings"] if state is not None else {}
    began = time.perf_counter()
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(init_model_dir, "tokenizer")) if init_model_dir else None
    components = build_shapes_sdxl_components(seed, prediction_type, tokenizer)
    if init_model_dir is not None:
        warm_start_sdxl(components, init_model_dir)
    unet, tokenizer = components["unet"], components["tokenizer"]
    text_encoders = {name: components[name] for name in ("text_encoder", "text_encoder_2")}
    images, captions = pretraining_renders(seed, num_renders, mismatch_rate, damage_rate)
    latents = encode_means(vae, images) * vae.config.scaling_factor
    input_ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    time_ids = torch.tensor([[IMAGE_SIZE, IMAGE_SIZE, 0, 0, IMAGE_SIZE, IMAGE_SIZE]], dtype=torch.float32)
    timings["data_s"] = time.perf_counter() - began  # renders and latents, redone on a resume
    _log(f"{num_renders} renders encoded in {timings['data_s']:.0f} s")

    def conditioning(index, dropped):
        prompt_embeds, pooled_prompt_embeds = sdxl_prompt_embeddings(text_encoders.values(), input_ids[index])
        kept = (~dropped).to(prompt_embeds.dtype)
        return {"encoder_hidden_states": prompt_embeds * kept[:, None, None],
                "added_cond_kwargs": {"text_embeds": pooled_prompt_embeds * kept[:, None],
                                      "time_ids": time_ids.expand(len(index), -1)}}

    noise_scheduler = DDPMScheduler.from_config(components["scheduler"].config)
    train_denoiser(unet, text_encoders, conditioning, latents, torch.Generator().manual_seed(seed), noise_scheduler,
                   unet_steps, unet_lr, batch_size, caption_dropout, state_path, state, timings, save_every, ema_decay,
                   snr_gamma)
    pipeline = StableDiffusionXLPipeline(vae=vae, unet=unet.eval(), scheduler=components["scheduler"],
                                         tokenizer=tokenizer, tokenizer_2=components["tokenizer_2"],
                                         **{name: encoder.eval() for name, encoder in text_encoders.items()},
                                         force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipeline.save_pretrained(output_dir)
    info = {"seed": seed, "vae_model": vae_model_dir, "init_model": init_model_dir, "unet_steps": unet_steps,
            "num_renders": num_renders, "mismatch_rate": mismatch_rate, "damage_rate": damage_rate,
            "caption_dropout": caption_dropout, "batch_size": batch_size, "unet_lr": unet_lr, "ema_decay": ema_decay,
            "snr_gamma": snr_gamma,
            "prediction_type": prediction_type, "scaling_factor": vae.config.scaling_factor,
            "data_seconds": round(timings["data_s"], 1), "unet_seconds": round(timings.get("unet_s", 0.0), 1),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    with open(os.path.join(output_dir, "pretraining.json"), "w") as f:
        json.dump(info, f, indent=2)
    os.remove(state_path)
    return info


def load_pipeline(model_dir: str, motion_adapter_dir: Optional[str] = None):
    """The shapes-world pipeline from its folder: StableDiffusionPipeline (StableDiffusionXLPipeline for the
    SDXL-shaped base), or AnimateDiffPipeline when a MotionAdapter folder is given (the same DDIM scheduler)."""
    from diffusers import AnimateDiffPipeline, MotionAdapter, StableDiffusionPipeline, StableDiffusionXLPipeline

    with open(os.path.join(model_dir, "model_index.json")) as f:
        sdxl = json.load(f)["_class_name"] == "StableDiffusionXLPipeline"
    if sdxl and motion_adapter_dir is not None:
        raise ValueError(f"{model_dir} is an SDXL pipeline; the shapes world's motion adapter is for the SD1.5 one")
    if sdxl:
        pipeline = StableDiffusionXLPipeline.from_pretrained(model_dir, add_watermarker=False)
        return pipeline.set_progress_bar_config(disable=True) or pipeline
    pipeline = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, requires_safety_checker=False)
    if motion_adapter_dir is None:
        return pipeline.set_progress_bar_config(disable=True) or pipeline
    adapter = MotionAdapter.from_pretrained(motion_adapter_dir)
    video_pipeline = AnimateDiffPipeline(vae=pipeline.vae, text_encoder=pipeline.text_encoder, tokenizer=pipeline.tokenizer,
                                         unet=pipeline.unet, motion_adapter=adapter, scheduler=pipeline.scheduler)
    video_pipeline.set_progress_bar_config(disable=True)
    return video_pipeline


@torch.no_grad()
def generate(pipeline, captions: Sequence[str], seeds: Sequence[int], num_inference_steps: int = 20,
             guidance_scale: float = 5.0, batch_size: int = 64, num_frames: int = 8):
    """One image (or clip, for an AnimateDiffPipeline) per (caption, seed), each from its own seeded
    CPU generator, so that a result does not depend on the batch it was drawn in."""
    from diffusers import AnimateDiffPipeline

    video = isinstance(pipeline, AnimateDiffPipeline)
    outputs = []
    for start in range(0, len(captions), batch_size):
        chunk = slice(start, start + batch_size)
        kwargs = dict(prompt=list(captions[chunk]), generator=[torch.Generator().manual_seed(s) for s in seeds[chunk]],
                      num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, output_type="pil")
        if video:
            outputs.extend(pipeline(num_frames=num_frames, height=IMAGE_SIZE, width=IMAGE_SIZE, **kwargs).frames)
        else:
            outputs.extend(pipeline(height=IMAGE_SIZE, width=IMAGE_SIZE, **kwargs).images)
    return outputs


def pretrain_motion_adapter(model_dir: str, output_dir: str, seed: int = 0, steps: int = 1600, num_clips: int = 1000,
                            num_frames: int = 8, batch_size: int = 8, mismatch_rate: float = 0.0, damage_rate: float = 0.0,
                            caption_dropout: float = 0.1, save_every: int = 100,
                            video_model_dir: Optional[str] = None, train_text_encoder: bool = False) -> Dict:
    """Pretrain a MotionAdapter for the shapes UNet on moving-shape clips, AnimateDiff-style: the
    VAE and text encoder stay frozen and the motion modules learn (the base's epsilon or v target on
    per-frame latents, b c f h w). Held-out video combinations are never rendered. Resumes from
    ``.pretrain_state.pt``.

    Motion modules attend over frames only, never to the caption, so with a frozen image UNet the
    direction word reaches them only as far as the image model's cross-attention happens to carry it.
    With ``video_model_dir``, that cross-attention (attn2) learns too, and the result is saved there as
    a whole model folder: an SD1.5 fine-tune to pair with the adapter, as AnimateDiff users pair
    community checkpoints (or v3's domain adapter). The shipped video model is made this way, and
    follows "moving left/right" on held-out captions (experiments/results/2026-11-29/video-direction-probe).

    ``train_text_encoder`` (with ``video_model_dir``) trains the text encoder too: the image model's
    encoder never saw "moving" (still images have no motion), so its embedding stays at its random
    initial value."""
    from diffusers import DDPMScheduler, MotionAdapter, UNetMotionModel

    if train_text_encoder and video_model_dir is None:
        raise ValueError("train_text_encoder needs video_model_dir: the trained text encoder is saved there")
    os.makedirs(output_dir, exist_ok=True)
    state_path = os.path.join(output_dir, ".pretrain_state.pt")
    base = load_pipeline(model_dir)
    vae, text_encoder, tokenizer = base.vae, base.text_encoder, base.tokenizer
    torch.manual_seed(seed)
    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=2, motion_num_attention_heads=4,
                            motion_norm_num_groups=32, motion_max_seq_length=32)
    unet = UNetMotionModel.from_unet2d(base.unet, adapter)
    unet.freeze_unet2d_params()
    if video_model_dir is not None:
        for name, parameter in unet.named_parameters():
            if ".attn2." in name and "motion_modules" not in name:
                parameter.requires_grad_(True)
    rng = random.Random(seed)
    train_specs, _ = video_split()
    specs = [rng.choice(train_specs) for _ in range(num_clips)]
    damage_rng = random.Random(seed + DAMAGE_SEED_OFFSET)
    clips = [web_damage(render_video(spec, num_frames, rng=rng), damage_rng, damage_rate) for spec in specs]
    captions = [(mismatch(s, rng) if rng.random() < mismatch_rate else s).caption for s in specs]
    with torch.no_grad():
        frames = to_tensor([frame for clip in clips for frame in clip])
        latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in frames.split(1000)])
        latents = (latents * vae.config.scaling_factor).unflatten(0, (num_clips, num_frames)).transpose(1, 2)
        distinct = sorted(set(captions)) + [""]
        ids = tokenizer(distinct, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        # A trained text encoder encodes each batch in the step; a frozen one, every caption once, here.
        embeddings = None if train_text_encoder else torch.cat([text_encoder(chunk)[0] for chunk in ids.split(256)])
    caption_index = torch.tensor([distinct.index(c) for c in captions])
    noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)
    text_encoder.requires_grad_(train_text_encoder)
    parameters = [p for p in unet.parameters() if p.requires_grad]
    parameters += list(text_encoder.parameters()) if train_text_encoder else []
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    start, seconds = 0, 0.0
    if os.path.isfile(state_path):
        state = torch.load(state_path, weights_only=True)
        unet.load_state_dict(state["unet"])
        if train_text_encoder:
            text_encoder.load_state_dict(state["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start, seconds = state["step"], state["seconds"]
    began = time.perf_counter() - seconds
    unet.train()
    text_encoder.train(train_text_encoder)

    def frame_embeddings(text_index):
        # Since diffusers 0.31 the motion UNet wants one text embedding per frame.
        chosen = text_encoder(ids[text_index])[0] if train_text_encoder else embeddings[text_index]
        return chosen.repeat_interleave(num_frames, dim=0)

    for step in range(start, steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, 1e-3, warmup=50)
        index = torch.randint(0, num_clips, (batch_size,), generator=generator)
        text_index = caption_index[index].clone()
        text_index[torch.rand(batch_size, generator=generator) < caption_dropout] = len(distinct) - 1
        loss = denoising_step(unet, noise_scheduler, latents[index], lambda: frame_embeddings(text_index), optimizer,
                              parameters, generator)
        if (step + 1) % 25 == 0:
            _log(f"motion step {step + 1}/{steps} loss {loss.item():.4f}")
        if (step + 1) % save_every == 0 or step + 1 == steps:
            trained_text_encoder = {"text_encoder": text_encoder.state_dict()} if train_text_encoder else {}
            _save_state(state_path, unet=unet.state_dict(), **trained_text_encoder, optimizer=optimizer.state_dict(),
                        generator=generator.get_state(), step=step + 1, seconds=time.perf_counter() - began)
            seconds = time.perf_counter() - began
    unet.eval().save_motion_modules(output_dir)
    text_encoder.eval()
    if video_model_dir is not None:
        spatial = {k: v for k, v in unet.state_dict().items() if "motion_modules" not in k}
        base.unet.load_state_dict(spatial)  # strict: the motion UNet's spatial keys are the 2D UNet's
        base.save_pretrained(video_model_dir, safe_serialization=True)
    info = {"seed": seed, "steps": steps, "num_clips": num_clips, "num_frames": num_frames, "batch_size": batch_size,
            "mismatch_rate": mismatch_rate, "damage_rate": damage_rate, "caption_dropout": caption_dropout,
            "seconds": round(seconds, 1), "base_model": model_dir, "video_model": video_model_dir,
            "trained": ("motion modules" + (" + image UNet cross-attention" if video_model_dir else "")
                        + (" + text encoder" if train_text_encoder else "")),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    for directory in (output_dir, video_model_dir) if video_model_dir else (output_dir,):
        with open(os.path.join(directory, "pretraining.json"), "w") as f:
            json.dump(info, f, indent=2)
    os.remove(state_path)
    return info


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def judge(reward_0: float, reward_1: float, margin: float):
    """Pick-a-Pic labels from two rewards: (label_0, label_1), a tie (0.5, 0.5) within ``margin``."""
    if abs(reward_0 - reward_1) < margin:
        return 0.5, 0.5
    return (1.0, 0.0) if reward_0 > reward_1 else (0.0, 1.0)


def make_image_preferences(model_dir: str, output_dir: str, seed: int = 0, margin: float = 0.05,
                           num_inference_steps: int = 20, guidance_scale: float = 5.0,
                           num_captions: Optional[int] = None) -> Dict:
    """Pick-a-Pic-style pairs: for each training caption, two base-model images from different seeds,
    judged by the ground-truth reward (ties within ``margin``). Writes
    ``output_dir/data/train-00000-of-00001.parquet`` with caption, jpg_0, jpg_1, label_0, label_1,
    has_label, are_different, and the rewards (reward_0, reward_1) for analysis."""
    import datasets

    train_specs, _ = image_split()
    specs = train_specs if num_captions is None else random.Random(seed).sample(train_specs, num_captions)
    captions = [spec.caption for spec in specs]
    pipeline = load_pipeline(model_dir)
    images = generate(pipeline, [c for c in captions for _ in range(2)],
                      [seed * 1_000_000 + i for i in range(2 * len(captions))], num_inference_steps, guidance_scale)
    rows = {k: [] for k in ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "has_label", "are_different",
                            "reward_0", "reward_1")}
    for i, caption in enumerate(captions):
        first, second = images[2 * i], images[2 * i + 1]
        rewards = reward(first, caption), reward(second, caption)
        label_0, label_1 = judge(*rewards, margin)
        rows["caption"].append(caption)
        rows["jpg_0"].append(_jpeg(first))
        rows["jpg_1"].append(_jpeg(second))
        rows["label_0"].append(label_0)
        rows["label_1"].append(label_1)
        rows["has_label"].append(True)
        rows["are_different"].append(True)
        rows["reward_0"].append(rewards[0])
        rows["reward_1"].append(rewards[1])
    os.makedirs(os.path.join(output_dir, "data"), exist_ok=True)
    datasets.Dataset.from_dict(rows).to_parquet(os.path.join(output_dir, "data", "train-00000-of-00001.parquet"))
    winners = [max(a, b) for a, b, l in zip(rows["reward_0"], rows["reward_1"], rows["label_0"]) if l != 0.5]
    summary = {"model": model_dir, "captions": len(captions), "seed": seed, "margin": margin,
               "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
               "ties": rows["label_0"].count(0.5), "mean_reward_all": float(np.mean(rows["reward_0"] + rows["reward_1"])),
               "mean_reward_winners": float(np.mean(winners)) if winners else None}
    with open(os.path.join(output_dir, "preferences.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def make_video_preferences(model_dir: str, motion_adapter_dir: str, output_dir: str, seed: int = 0,
                           margin: float = 0.05, num_inference_steps: int = 20, guidance_scale: float = 5.0,
                           num_frames: int = 8, num_captions: Optional[int] = None, pairs_per_caption: int = 1) -> Dict:
    """The video counterpart: two base clips per training caption (``pairs_per_caption`` such pairs, as
    Pick-a-Pic has several pairs per prompt), judged by the video reward. Winners go to a
    ChronoMagic-layout folder (``videos/<id>.mp4`` + ``ChronoMagic_train.csv``), ties are dropped,
    and the losers are kept in ``losers/<id>.mp4`` with ``pairs.csv``."""
    import csv

    from sspo_utils import save_video

    train_specs, _ = video_split()
    specs = train_specs if num_captions is None else random.Random(seed).sample(train_specs, num_captions)
    # Round after round over the captions, so the first round is the data of pairs_per_caption=1.
    captions = [spec.caption for _ in range(pairs_per_caption) for spec in specs]
    pipeline = load_pipeline(model_dir, motion_adapter_dir)
    clips = generate(pipeline, [c for c in captions for _ in range(2)],
                     [seed * 1_000_000 + i for i in range(2 * len(captions))], num_inference_steps, guidance_scale,
                     batch_size=16, num_frames=num_frames)
    for folder in ("videos", "losers"):
        os.makedirs(os.path.join(output_dir, folder), exist_ok=True)
    winners, pairs = [], []
    for i, caption in enumerate(captions):
        rewards = video_reward(clips[2 * i], caption), video_reward(clips[2 * i + 1], caption)
        label_0, _ = judge(*rewards, margin)
        pairs.append((f"shapes{i:05d}", caption, *rewards, label_0))
        if label_0 == 0.5:
            continue
        win, lose = (0, 1) if label_0 == 1 else (1, 0)
        save_video(clips[2 * i + win], os.path.join(output_dir, "videos", f"shapes{i:05d}.mp4"))
        save_video(clips[2 * i + lose], os.path.join(output_dir, "losers", f"shapes{i:05d}.mp4"))
        winners.append((f"shapes{i:05d}", caption, max(rewards)))
    with open(os.path.join(output_dir, "ChronoMagic_train.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["videoid", "name", "is_transmit"])
        writer.writerows((videoid, caption, 1) for videoid, caption, _ in winners)
    with open(os.path.join(output_dir, "pairs.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["videoid", "caption", "reward_0", "reward_1", "label_0"])
        writer.writerows(pairs)
    summary = {"model": model_dir, "motion_adapter": motion_adapter_dir, "captions": len(specs), "seed": seed,
               "margin": margin, "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
               "num_frames": num_frames, "pairs_per_caption": pairs_per_caption, "pairs": len(pairs),
               "ties": len(pairs) - len(winners),
               "mean_reward_all": float(np.mean([p[2] for p in pairs] + [p[3] for p in pairs])),
               "mean_reward_winners": float(np.mean([w[2] for w in winners])) if winners else None}
    with open(os.path.join(output_dir, "preferences.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def write_prompt_files(output_dir: str, num_held_out: int = 32, num_train: int = 32, seed: int = 0) -> Dict[str, str]:
    """Evaluation prompt files (one caption per line): a fixed sample of held-out and of training
    captions, for images and for videos, and every held-out caption (``-all``), for evaluations that need
    the power of the whole held-out set. Returns {name: path}."""
    rng = random.Random(seed)
    files = {}
    for kind, (train, held) in (("image", image_split()), ("video", video_split())):
        for split, specs, count in (("heldout", held, num_held_out), ("train", train, num_train),
                                    ("heldout-all", held, None)):
            name = f"shapes-{split}-{kind}-prompts.txt"
            chosen = sorted(specs if count is None else rng.sample(specs, min(count, len(specs))),
                            key=lambda s: s.caption)
            files[name] = os.path.join(output_dir, name)
            os.makedirs(output_dir, exist_ok=True)
            with open(files[name], "w") as f:
                f.write("".join(spec.caption + "\n" for spec in chosen))
    return files


def check_base(model_dir: str, prompts_file: str, motion_adapter_dir: Optional[str] = None, images_per_prompt: int = 2,
               seed: int = 0, num_inference_steps: int = 20, guidance_scale: float = 5.0) -> Dict:
    """Where the base model stands on a prompt file: its mean reward, the renderer's (the ceiling),
    and chance (the base's images scored against a random other caption of the same file)."""
    with open(prompts_file) as f:
        captions = [line.strip() for line in f if line.strip()]
    video = motion_adapter_dir is not None
    score = video_reward if video else reward
    pipeline = load_pipeline(model_dir, motion_adapter_dir)
    repeated = [c for c in captions for _ in range(images_per_prompt)]
    outputs = generate(pipeline, repeated, [seed + i for i in range(len(repeated))], num_inference_steps,
                       guidance_scale, batch_size=16 if video else 64)
    rng = random.Random(seed)
    shuffled = [rng.choice([c for c in captions if c != caption]) for caption in repeated]
    draw = (lambda spec: render_video(spec, rng=rng)) if video else (lambda spec: render(spec, rng=rng))
    components = (video_reward_components if video else reward_components)
    per_attribute = [components(o, c) for o, c in zip(outputs, repeated)]
    return {"prompts_file": prompts_file, "captions": len(captions), "images_per_prompt": images_per_prompt,
            "base": float(np.mean([score(o, c) for o, c in zip(outputs, repeated)])),
            "base_per_attribute": {k: float(np.mean([p[k] for p in per_attribute])) for k in per_attribute[0]},
            "renderer": float(np.mean([score(draw(parse_caption(c)), c) for c in repeated])),
            "chance": float(np.mean([score(o, c) for o, c in zip(outputs, shuffled)])),
            "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "seed": seed}



def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Build the shapes world: pretrain its models, make its preference data.")
    commands = parser.add_subparsers(dest="command", required=True)
    pretrain = commands.add_parser("pretrain", help="Pretrain the SD1.5-shaped image model from scratch.")
    pretrain.add_argument("--output_dir", default="models/shapes-sd15")
    pretrain.add_argument("--vae_steps", type=int, default=800)
    pretrain.add_argument("--unet_steps", type=int, default=1300)
    pretrain.add_argument("--num_renders", type=int, default=20000)
    pretrain.add_argument("--ema_decay", type=float, default=None, help="Save an EMA of the weights (e.g. 0.999).")
    pretrain.add_argument("--snr_gamma", type=float, default=None, help="Min-SNR loss weighting (e.g. 5).")
    pretrain.add_argument("--batch_size", type=int, default=64, help="UNet pretraining batch size.")
    pretrain.add_argument("--prediction_type", default="epsilon", choices=["epsilon", "v_prediction"],
                          help="The UNet's target: epsilon (SD1.5) or v (SD2).")
    pretrain.add_argument("--unet_lr", type=float, default=1e-3, help="Peak learning rate of the UNet and text encoder.")
    pretrain.add_argument("--vae_latent_noise", type=float, default=None,
                          help="Train the VAE decoder on latents noised by this fraction of their std (e.g. 0.5).")
    pretrain.add_argument("--decoder_steps", type=int, default=0,
                          help="Phase 3: fine-tune the VAE decoder alone for this many steps (the shipped base: 250).")
    sdxl = commands.add_parser("pretrain_sdxl", help="Pretrain the SDXL-shaped image model (two text encoders, "
                                                     "micro-conditioning) in the latent space of the SD1.5-shaped one.")
    sdxl.add_argument("--output_dir", default="models/shapes-sdxl")
    sdxl.add_argument("--vae_model", default="models/shapes-sd15", help="The model folder whose VAE it uses.")
    sdxl.add_argument("--unet_steps", type=int, default=1800)
    sdxl.add_argument("--num_renders", type=int, default=20000)
    sdxl.add_argument("--batch_size", type=int, default=64, help="UNet pretraining batch size.")
    sdxl.add_argument("--unet_lr", type=float, default=2e-3, help="Peak learning rate of the UNet and text encoders.")
    sdxl.add_argument("--ema_decay", type=float, default=0.999, help="EMA of the weights; 0 saves the last weights.")
    sdxl.add_argument("--prediction_type", default="v_prediction", choices=["epsilon", "v_prediction"])
    sdxl.add_argument("--init_model", default=None,
                      help="Start the UNet and text encoders from this SD1.5-shaped base (the shipped SDXL-shaped "
                           "base: models/shapes-sd15) instead of random weights.")
    decoder = commands.add_parser("finetune_decoder",
                                  help="Phase 3 alone, in place, on a model pretrained with --decoder_steps 0 "
                                       "(at the thread count its pretraining.json records).")
    decoder.add_argument("--model", default="models/shapes-sd15")
    decoder.add_argument("--decoder_steps", type=int, default=250)
    video = commands.add_parser("pretrain_video", help="Pretrain a MotionAdapter for the image model's UNet.")
    video.add_argument("--model", default="models/shapes-sd15")
    video.add_argument("--output_dir", default="models/shapes-motion-adapter")
    video.add_argument("--steps", type=int, default=1600)
    video.add_argument("--num_clips", type=int, default=1000)
    video.add_argument("--num_frames", type=int, default=8)
    video.add_argument("--video_model_dir", default=None,
                       help="Also train the image UNet's cross-attention, so that the motion can follow the caption, "
                            "and save that video base model folder here (the shipped one: models/shapes-sd15-video).")
    video.add_argument("--train_text_encoder", action="store_true",
                       help="With --video_model_dir: train the text encoder too, which never saw the direction words.")
    for command, rate in ((pretrain, 0.1), (sdxl, 0.1), (video, 0.0)):
        command.add_argument("--mismatch_rate", type=float, default=rate,
                             help="Share of web-like captions that misdescribe their image by one attribute (the "
                                  "shipped image model: 0.1; its video model: 0).")
        command.add_argument("--damage_rate", type=float, default=0.0,
                             help="Share of web-like pictures that are washed out or blurred (web_damage); the "
                                  "shipped weights used 0.")
    for command in (pretrain, sdxl, video):
        command.add_argument("--threads", type=int, default=1,
                             help="CPU threads. The shipped image model was made with 2, its video model and "
                                  "motion adapter with 1; the same seed and thread count give the same weights.")
    preferences = commands.add_parser("preferences", help="Pick-a-Pic-format pairs judged by the reward.")
    video_preferences = commands.add_parser("video_preferences", help="ChronoMagic-layout winners (and losers).")
    check = commands.add_parser("check", help="Reward of the base model vs the renderer and chance on a prompt file.")
    for command in (preferences, video_preferences, check):
        command.add_argument("--model", default="models/shapes-sd15")
        command.add_argument("--num_inference_steps", type=int, default=20)
        command.add_argument("--guidance_scale", type=float, default=5.0, help=None if command is check else
                             "The shipped data used 2: at 5 the v-prediction base is over-guided and its pairs too "
                             "alike to teach anything (README, 'The shapes world').")
    for command in (video_preferences, check):
        command.add_argument("--motion_adapter", default=None, help="A MotionAdapter folder: video instead of images.")
    for command in (preferences, video_preferences):
        command.add_argument("--output_dir", required=True)
        command.add_argument("--margin", type=float, default=0.05, help="Reward difference under which a pair is a tie.")
        command.add_argument("--num_captions", type=int, default=None, help="Default: every training caption.")
    video_preferences.add_argument("--pairs_per_caption", type=int, default=1,
                                   help="Pairs of clips per caption, each from new seeds (the shipped data: 2).")
    check.add_argument("--prompts", required=True, help="A prompt file written by the prompts command.")
    check.add_argument("--output", default=None, help="Also write the numbers to this JSON file.")
    prompts = commands.add_parser("prompts", help="Write the held-out and training evaluation prompt files.")
    prompts.add_argument("--output_dir", default="data")
    prompts.add_argument("--num_prompts", type=int, default=32)
    for command in (pretrain, sdxl, video, preferences, video_preferences, check, prompts):
        command.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(input_args)
    if args.command == "pretrain_sdxl":
        check_sdxl_pretraining_args(args)
    check_args(args)
    return args


def _check_folder(flag: str, path: str, required: Sequence[str], what: str):
    """A local folder holding every name in ``required``, else SSPOInputError naming the flag."""
    if not os.path.isdir(path):
        raise SSPOInputError(f"{flag} {path}: no such folder. Pass {what}.")
    missing = [name for name in required if not os.path.exists(os.path.join(path, name))]
    if missing:
        raise SSPOInputError(f"{flag} {path} has no {missing[0]!r}: it is not {what}.")


def check_args(args):
    """Reject bad flags before anything is loaded or written: missing models or files, counts and
    steps below 1, rates and scales out of range (one 'error:' line, exit status 2)."""
    command = args.command
    # Counts and step numbers: at least 1 (--decoder_steps of pretrain may be 0: no phase 3).
    for flag, minimum in (("vae_steps", 1), ("unet_steps", 1), ("num_renders", 1), ("batch_size", 1), ("threads", 1),
                          ("decoder_steps", 0 if command == "pretrain" else 1), ("steps", 1), ("num_clips", 1),
                          ("num_inference_steps", 1), ("num_captions", 1), ("pairs_per_caption", 1),
                          ("num_prompts", 1), ("vae_latent_noise", 0)):
        value = getattr(args, flag, None)
        if value is not None and not value >= minimum:  # "not >=": NaN fails too
            raise SSPOInputError(f"--{flag} {value} must be at least {minimum}.")
    for flag in ("mismatch_rate", "damage_rate"):
        value = getattr(args, flag, None)
        if value is not None and not 0 <= value <= 1:
            raise SSPOInputError(f"--{flag} {value} must be in [0, 1].")
    if not 0 <= getattr(args, "margin", 0) < 1:
        raise SSPOInputError(f"--margin {args.margin} must be in [0, 1): rewards lie in [0, 1].")
    if not getattr(args, "guidance_scale", 1) >= 1:
        raise SSPOInputError(f"--guidance_scale {args.guidance_scale} must be at least 1 (1 turns guidance off).")
    if command == "pretrain":
        for flag in ("unet_lr", "snr_gamma"):
            if getattr(args, flag) is not None and not getattr(args, flag) > 0:
                raise SSPOInputError(f"--{flag} {getattr(args, flag)} must be positive.")
        if args.ema_decay is not None and not 0 < args.ema_decay < 1:
            raise SSPOInputError(f"--ema_decay {args.ema_decay} must be in (0, 1), e.g. 0.999.")
    if command == "pretrain_video" and not 2 <= args.num_frames <= 32:
        raise SSPOInputError(f"--num_frames {args.num_frames} must be in [2, 32] (a move needs 2 frames; the "
                             "adapter's motion_max_seq_length is 32).")
    if command == "pretrain_video" and args.train_text_encoder and not args.video_model_dir:
        raise SSPOInputError("--train_text_encoder needs --video_model_dir, where the trained text encoder is saved.")
    if command == "video_preferences" and not args.motion_adapter:
        raise SSPOInputError("video_preferences needs --motion_adapter (e.g. models/shapes-motion-adapter).")

    if hasattr(args, "model"):
        _check_folder("--model", args.model, ["model_index.json", "unet", "vae", "text_encoder", "tokenizer",
                                              "scheduler"] + (["pretraining.json"] if command == "finetune_decoder" else []),
                      "a shapes-world model folder (made by `shapes_world.py pretrain`, e.g. models/shapes-sd15)")
    if getattr(args, "motion_adapter", None):
        _check_folder("--motion_adapter", args.motion_adapter, ["config.json"],
                      "a MotionAdapter folder (made by `shapes_world.py pretrain_video`, e.g. models/shapes-motion-adapter)")
    if command in ("preferences", "video_preferences") and args.num_captions is not None:
        available = len((image_split() if command == "preferences" else video_split())[0])
        if args.num_captions > available:
            raise SSPOInputError(f"--num_captions {args.num_captions}: there are only {available} training captions.")
    if command == "check":
        _check_prompt_file(args.prompts, video=args.motion_adapter is not None)


def _check_prompt_file(path: str, video: bool):
    """check's prompt file: there, shapes-world captions of the checked kind, at least two of them."""
    kind = "video" if video else "image"
    if not os.path.isfile(path):
        raise SSPOInputError(f"--prompts {path}: no such file. Write the prompt files with `shapes_world.py prompts`.")
    with open(path) as f:
        lines = [(number, line.strip()) for number, line in enumerate(f, 1) if line.strip()]
    for number, caption in lines:
        try:
            is_video = parse_caption(caption).direction is not None
        except ValueError:
            raise SSPOInputError(f"--prompts {path}: line {number} is not a shapes-world caption: {caption!r}.") from None
        if is_video != video:
            raise SSPOInputError(f"--prompts {path}: line {number} is {'an image' if video else 'a video'} caption, "
                                 f"but the check is on {kind}s: pass a shapes-*-{kind}-prompts.txt file, or "
                                 f"{'drop' if video else 'pass'} --motion_adapter.")
    if len({caption for _, caption in lines}) < 2:
        raise SSPOInputError(f"--prompts {path}: needs at least 2 different captions (chance scores each image "
                             "against another caption of the file).")


def check_sdxl_pretraining_args(args):
    """Bad ``pretrain_sdxl`` flags stop before anything is written (one 'error:' line, exit status 2)."""
    for name in ("unet_steps", "num_renders", "batch_size", "threads"):
        if getattr(args, name) < 1:
            raise SSPOInputError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not args.unet_lr > 0:
        raise SSPOInputError(f"--unet_lr must be positive, got {args.unet_lr}")
    if not 0 <= args.ema_decay < 1:
        raise SSPOInputError(f"--ema_decay must be in [0, 1), got {args.ema_decay}")
    for name in ("mismatch_rate", "damage_rate"):
        if not 0 <= getattr(args, name) <= 1:
            raise SSPOInputError(f"--{name} must be in [0, 1], got {getattr(args, name)}")
    if not os.path.isfile(os.path.join(args.vae_model, "vae", "config.json")):
        raise SSPOInputError(f"--vae_model {args.vae_model} has no vae/config.json (give a model folder such as "
                     "models/shapes-sd15)")
    if args.init_model is not None and not os.path.isfile(os.path.join(args.init_model, "unet", "config.json")):
        raise SSPOInputError(f"--init_model {args.init_model} has no unet/config.json (give a model folder such as "
                     "models/shapes-sd15)")
    if os.path.isfile(os.path.join(args.output_dir, "model_index.json")):
        raise SSPOInputError(f"--output_dir {args.output_dir} already holds a model; choose a new folder")


def main(args):
    if args.command in ("pretrain", "pretrain_sdxl", "pretrain_video"):
        torch.set_num_threads(args.threads)
    if args.command == "pretrain":
        result = pretrain_image_model(args.output_dir, args.seed, args.vae_steps, args.unet_steps, args.num_renders,
                                      args.mismatch_rate, args.damage_rate, ema_decay=args.ema_decay,
                                      snr_gamma=args.snr_gamma, vae_latent_noise=args.vae_latent_noise,
                                      batch_size=args.batch_size, unet_lr=args.unet_lr,
                                      prediction_type=args.prediction_type, decoder_steps=args.decoder_steps)
    elif args.command == "pretrain_sdxl":
        result = pretrain_sdxl_model(args.output_dir, args.vae_model, args.seed, args.unet_steps, args.num_renders,
                                     args.mismatch_rate, args.damage_rate, batch_size=args.batch_size,
                                     unet_lr=args.unet_lr, ema_decay=args.ema_decay or None,
                                     prediction_type=args.prediction_type, init_model_dir=args.init_model)
    elif args.command == "finetune_decoder":
        result = finetune_shipped_decoder(args.model, args.decoder_steps)
    elif args.command == "pretrain_video":
        result = pretrain_motion_adapter(args.model, args.output_dir, args.seed, args.steps, args.num_clips,
                                         args.num_frames, mismatch_rate=args.mismatch_rate,
                                         damage_rate=args.damage_rate, video_model_dir=args.video_model_dir,
                                         train_text_encoder=args.train_text_encoder)
    elif args.command == "preferences":
        result = make_image_preferences(args.model, args.output_dir, args.seed, args.margin, args.num_inference_steps,
                                        args.guidance_scale, args.num_captions)
    elif args.command == "video_preferences":
        result = make_video_preferences(args.model, args.motion_adapter, args.output_dir, args.seed, args.margin,
                                        args.num_inference_steps, args.guidance_scale, num_captions=args.num_captions,
                                        pairs_per_caption=args.pairs_per_caption)
    elif args.command == "prompts":
        result = write_prompt_files(args.output_dir, args.num_prompts, args.num_prompts, args.seed)
    else:
        result = check_base(args.model, args.prompts, args.motion_adapter, seed=args.seed,
                            num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale)
        if args.output:
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            with open(args.output, "w") as f:
                json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    run_with_clear_errors(main, parse_args)
