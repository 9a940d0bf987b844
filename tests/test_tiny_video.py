"""The tiny video default: a MotionAdapter that fits the tiny UNet, mp4 clips of moving
shapes written with PyAV, and the ChronoMagic and generic video dataset layouts."""

import csv
import json
import os
import re
import runpy
import sys

import numpy as np
import pytest
import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

import sspo_tiny


CAPTION = re.compile(r"^a (\w+) (circle|square|triangle) moving (right|left) on a (\w+) background$")


def decode_mp4(path):
    """(list of HxWx3 uint8 tensors, codec name, pix_fmt) of an mp4, decoded with PyAV."""
    av = pytest.importorskip("av")
    with av.open(path) as container:
        stream = container.streams.video[0]
        codec, pix_fmt = stream.codec_context.name, stream.codec_context.pix_fmt
        frames = [torch.from_numpy(frame.to_ndarray(format="rgb24")) for frame in container.decode(stream)]
    return frames, codec, pix_fmt


def near(pixel, color, tol=40):
    return (pixel.int() - torch.tensor(color)).abs().max().item() <= tol


def shape_columns(frame, color, tol=40):
    """Mean column of the pixels near ``color`` (HxWx3 tensor or PIL image)."""
    if not isinstance(frame, torch.Tensor):
        frame = torch.from_numpy(np.array(frame))
    mask = ((frame.int() - torch.tensor(color)).abs().max(dim=-1).values <= tol)
    assert mask.sum() > 20, "the shape is missing from the frame"
    return mask.nonzero()[:, 1].float().mean().item()


# ---------------------------------------------------------------------------
# MotionAdapter
# ---------------------------------------------------------------------------


def test_motion_adapter_fits_the_tiny_unet(tiny_model_dir, tiny_motion_adapter_dir):
    adapter = MotionAdapter.from_pretrained(tiny_motion_adapter_dir)
    assert tuple(adapter.config.block_out_channels) == (32, 64)
    assert adapter.config.motion_layers_per_block == 2
    assert adapter.config.motion_max_seq_length == 32
    unet2d = UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet")
    unet = UNetMotionModel.from_unet2d(unet2d, adapter).eval()

    num_frames = 4
    sample = torch.randn((1, 4, num_frames, 8, 8), generator=torch.Generator().manual_seed(0))
    text = torch.randn((1, 77, unet2d.config.cross_attention_dim), generator=torch.Generator().manual_seed(1))
    text = text.repeat_interleave(num_frames, dim=0)  # one copy per frame, as UNetMotionModel wants
    with torch.no_grad():
        out = unet(sample, torch.tensor(500), encoder_hidden_states=text).sample
        assert out.shape == (1, 4, num_frames, 8, 8)
        assert torch.isfinite(out).all()

        # the random motion modules are live: changing the last frame moves the first one's output
        changed = sample.clone()
        changed[:, :, -1] += 1.0
        out_changed = unet(changed, torch.tensor(500), encoder_hidden_states=text).sample
    assert not torch.allclose(out_changed[:, :, 0], out[:, :, 0], atol=1e-5)


# ---------------------------------------------------------------------------
# Frames and mp4
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["right", "left"])
def test_moving_shape_frames_move_a_few_pixels_per_frame(direction):
    frames = sspo_tiny.moving_shape_frames("red", "circle", "blue", num_frames=16, size=64, direction=direction)
    assert len(frames) == 16
    assert all(f.size == (64, 64) and f.mode == "RGB" for f in frames)
    columns = [shape_columns(f, sspo_tiny.COLORS["red"], tol=0) for f in frames]
    steps = [b - a for a, b in zip(columns, columns[1:])]
    sign = 1 if direction == "right" else -1
    assert all(1 <= sign * s <= 4 for s in steps), steps
    # the whole shape stays inside the frame, on the background
    for f in frames:
        assert f.getpixel((0, 0)) == f.getpixel((63, 63)) == sspo_tiny.COLORS["blue"]


def test_moving_shape_frames_rejects_an_unknown_direction():
    with pytest.raises(ValueError, match="direction"):
        sspo_tiny.moving_shape_frames("red", "circle", "blue", 4, direction="up")


@pytest.mark.parametrize("shape", sspo_tiny.SHAPES)
def test_mp4_decodes_to_the_written_frames(tmp_path, shape):
    av = pytest.importorskip("av")
    frames = sspo_tiny.moving_shape_frames("yellow", shape, "purple", num_frames=6, size=64, seed=3)
    path = sspo_tiny.write_mp4(str(tmp_path / "clip.mp4"), frames, fps=8)
    decoded, codec, pix_fmt = decode_mp4(path)
    expected_codec = "h264" if "libx264" in av.codecs_available else "mpeg4"
    assert (codec, pix_fmt) == (expected_codec, "yuv420p")
    assert len(decoded) == 6
    assert all(tuple(f.shape) == (64, 64, 3) for f in decoded)
    yellow, purple = sspo_tiny.COLORS["yellow"], sspo_tiny.COLORS["purple"]
    for original, frame in zip(frames, decoded):
        assert near(frame[1, 1], purple) and near(frame[62, 62], purple)
        # the decoded shape sits where it was drawn, give or take a pixel
        assert abs(shape_columns(frame, yellow) - shape_columns(original, yellow, tol=0)) < 1.5
        assert (frame.int() - torch.from_numpy(np.array(original)).int()).abs().float().mean() < 6


def test_mp4_with_odd_size_is_cropped_to_even(tmp_path):
    frames = [f.crop((0, 0, 33, 31)) for f in sspo_tiny.moving_shape_frames("red", "square", "white", 3)]
    decoded, _, _ = decode_mp4(sspo_tiny.write_mp4(str(tmp_path / "odd.mp4"), frames))
    assert len(decoded) == 3
    assert tuple(decoded[0].shape) == (30, 32, 3)


def test_write_mp4_needs_frames(tmp_path):
    with pytest.raises(ValueError, match="at least one frame"):
        sspo_tiny.write_mp4(str(tmp_path / "empty.mp4"), [])


# ---------------------------------------------------------------------------
# Dataset layouts
# ---------------------------------------------------------------------------


def check_clip(path, caption, num_frames):
    """The clip decodes to ``num_frames`` 64 px frames whose colours match the caption."""
    color, _, direction, background = CAPTION.match(caption).groups()
    decoded, _, _ = decode_mp4(path)
    assert len(decoded) == num_frames
    assert tuple(decoded[0].shape) == (64, 64, 3)
    assert near(decoded[0][1, 1], sspo_tiny.COLORS[background])
    first, last = shape_columns(decoded[0], sspo_tiny.COLORS[color]), shape_columns(decoded[-1], sspo_tiny.COLORS[color])
    assert (last > first) if direction == "right" else (last < first)


def test_chronomagic_layout(tmp_path):
    lengths = [3, 5, 4]
    metadata = sspo_tiny.build_tiny_video_dataset(str(tmp_path / "cm"), num_videos=3, num_frames=lengths)
    assert metadata == str(tmp_path / "cm" / "ChronoMagic_train.csv")
    with open(metadata, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["videoid", "name", "is_transmit"]
        rows = list(reader)
    assert len(rows) == 3
    assert len({r["videoid"] for r in rows}) == 3
    assert sorted(os.listdir(tmp_path / "cm" / "videos")) == sorted(r["videoid"] + ".mp4" for r in rows)
    for row, length in zip(rows, lengths):
        assert CAPTION.match(row["name"]), row["name"]
        assert row["is_transmit"] == "1"
        check_clip(str(tmp_path / "cm" / "videos" / (row["videoid"] + ".mp4")), row["name"], length)


def test_generic_layout(tmp_path):
    metadata = sspo_tiny.build_tiny_video_dataset(str(tmp_path / "gen"), num_videos=2, num_frames=4, layout="generic")
    assert metadata == str(tmp_path / "gen" / "metadata.jsonl")
    with open(metadata, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert [r["file"] for r in rows] == ["clip_0.mp4", "clip_1.mp4"]
    for row in rows:
        assert set(row) == {"file", "text"}
        check_clip(str(tmp_path / "gen" / "videos" / row["file"]), row["text"], 4)


def test_layouts_share_captions_for_a_seed(tmp_path):
    cm = sspo_tiny.build_tiny_video_dataset(str(tmp_path / "a"), num_videos=3, num_frames=2, seed=7)
    gen = sspo_tiny.build_tiny_video_dataset(str(tmp_path / "b"), num_videos=3, num_frames=2, seed=7, layout="generic")
    with open(cm, newline="") as f:
        cm_captions = [r["name"] for r in csv.DictReader(f)]
    with open(gen) as f:
        gen_captions = [json.loads(line)["text"] for line in f]
    assert cm_captions == gen_captions


def test_dataset_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        sspo_tiny.build_tiny_video_dataset(str(tmp_path / "x"), num_videos=1, num_frames=2, layout="webvid")
    with pytest.raises(ValueError, match="lengths"):
        sspo_tiny.build_tiny_video_dataset(str(tmp_path / "y"), num_videos=3, num_frames=[2, 2])


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def run_cli(monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["sspo_tiny.py", *argv])
    runpy.run_path(sspo_tiny.__file__, run_name="__main__")


def test_cli_without_video_is_unchanged(tmp_path, monkeypatch):
    assert sspo_tiny.parse_args([]).with_video is False
    run_cli(monkeypatch, "--output_dir", str(tmp_path), "--num_examples", "2")
    assert sorted(os.listdir(tmp_path)) == ["data", "model"]


def test_cli_with_video(tmp_path, monkeypatch):
    run_cli(monkeypatch, "--output_dir", str(tmp_path), "--num_examples", "2", "--with_video")
    assert sorted(os.listdir(tmp_path)) == ["chronomagic", "data", "model", "motion_adapter"]
    MotionAdapter.from_pretrained(str(tmp_path / "motion_adapter"))
    with open(tmp_path / "chronomagic" / "ChronoMagic_train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    decoded, _, _ = decode_mp4(str(tmp_path / "chronomagic" / "videos" / (rows[0]["videoid"] + ".mp4")))
    assert len(decoded) == 16
