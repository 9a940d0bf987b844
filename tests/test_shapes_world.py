"""The shapes world: caption grammar, held-out split, tokenizer, ground-truth reward, and the
Pick-a-Pic / ChronoMagic preference-data generators (on a random-weight shapes pipeline)."""

import csv
import dataclasses
import io
import json
import os
import random

import numpy as np
import pytest
from PIL import Image

import shapes_world as sw


# --- grammar and split -------------------------------------------------------------------------

def test_grammar_sizes_and_round_trip():
    specs, videos = sw.all_image_specs(), sw.all_video_specs()
    assert len(specs) == 900 and len(videos) == 360
    assert len({s.caption for s in specs}) == 900
    for spec in specs + videos:
        assert sw.parse_caption(spec.caption) == spec


@pytest.mark.parametrize("caption", ["a photo of an astronaut", "a small red circle at the top on a blue background",
                                     "a huge red circle in the center on a blue background",
                                     "a red circle moving sideways on a blue background",
                                     "a small red circle at the top left on a blue background, moving sideways",
                                     "a red circle on a blue background, moving left", ""])
def test_parse_caption_rejects_other_text(caption):
    with pytest.raises(ValueError, match="not a shapes-world caption"):
        sw.parse_caption(caption)


def test_held_out_split_is_fixed_and_disjoint():
    train, held = sw.image_split()
    again_train, again_held = sw.image_split()
    assert held == again_held and train == again_train
    assert len(held) == 90 and not {s.caption for s in train} & {s.caption for s in held}
    video_train, video_held = sw.video_split()
    assert len(video_train) == 262 and len(video_held) == 98
    assert not {s.caption for s in video_train} & {s.caption for s in video_held}
    # a video whose still caption the image base never saw stays held out of video training too
    still_held = set(held)
    assert all(dataclasses.replace(s, direction=None) not in still_held for s in video_train)
    assert any(dataclasses.replace(s, direction=None) in still_held for s in video_held)


def test_the_video_grammar_is_one_position_moving_left_or_right():
    # the one context in which a MotionAdapter for this base learns the word (video-direction-probe, stop 27)
    videos = sw.all_video_specs()
    assert {s.position for s in videos} == {sw.VIDEO_POSITION} and {s.direction for s in videos} == {"left", "right"}
    stills = [s for s in sw.all_image_specs() if s.position == sw.VIDEO_POSITION]
    assert {dataclasses.replace(s, direction=None) for s in videos} == set(stills)


def test_a_video_caption_starts_with_the_image_caption_the_base_learned():
    # The image base reads its captions by token position (experiments/results/2026-11-29/video-base-diagnosis).
    for spec in random.Random(0).sample(sw.all_video_specs(), 50):
        still = dataclasses.replace(spec, direction=None)
        assert spec.caption == f"{still.caption}, moving {spec.direction}"


def test_prompt_files_hold_out_what_they_say(tmp_path):
    files = sw.write_prompt_files(str(tmp_path), num_held_out=10, num_train=10)
    held = {s.caption for s in sw.image_split()[1]} | {s.caption for s in sw.video_split()[1]}
    for name, path in files.items():
        captions = open(path).read().splitlines()
        assert all((c in held) == ("heldout" in name) for c in captions)
        if "heldout-all" in name:  # every held-out caption of its kind, once
            kind_held = sw.image_split()[1] if "image" in name else sw.video_split()[1]
            assert sorted(captions) == sorted(s.caption for s in kind_held)
        else:
            assert len(captions) == 10


def test_shipped_prompt_files_match_the_generator(tmp_path):
    files = sw.write_prompt_files(str(tmp_path))
    for name, path in files.items():
        assert open(path).read() == open(os.path.join(sw.__file__.rsplit(os.sep, 1)[0], "data", name)).read()


def test_every_grammar_word_is_one_token(tmp_path):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer(*sw.write_shapes_tokenizer_files(str(tmp_path)), model_max_length=77)
    for word in sw.grammar_words():
        assert tokenizer.tokenize(word) == [word + "</w>"]
    assert len(tokenizer.tokenize("a big red circle at the top right on a green background")) == 12
    assert tokenizer.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]  # byte-level fallback


# --- the reward --------------------------------------------------------------------------------

SAMPLE = random.Random(1).sample(sw.all_image_specs(), 60)
ATTRIBUTE_VALUES = {"color": sw.COLORS, "shape": sw.SHAPES, "background": sw.COLORS, "size": sw.SIZES,
                    "position": sw.POSITIONS}


def test_renders_score_near_the_top():
    rng = random.Random(0)
    scores = [sw.reward(sw.render(spec, rng=rng), spec.caption) for spec in SAMPLE]
    assert min(scores) > 0.85 and np.mean(scores) > 0.93
    assert all(0.0 <= s <= 1.0 for s in scores)


@pytest.mark.parametrize("field", list(ATTRIBUTE_VALUES))
def test_changing_one_attribute_of_the_caption_lowers_the_score(field):
    values = ATTRIBUTE_VALUES[field]
    for spec in SAMPLE[:20]:
        image = sw.render(spec)
        right = sw.reward(image, spec.caption)
        for value in values:
            other = dataclasses.replace(spec, **{field: value})
            if value == getattr(spec, field) or other.color == other.background:
                continue
            assert sw.reward(image, other.caption) < right - 0.1, (spec.caption, other.caption)


@pytest.mark.parametrize("kind,ceiling", [("noise", 0.1), ("blank", 0.25), ("blur", 0.65), ("faded", 0.2)])
def test_noise_blur_and_blank_images_score_low(kind, ceiling):
    rng = random.Random(0)
    scores = [sw.reward(sw.degrade(sw.render(s), kind, rng), s.caption) for s in SAMPLE]
    sharp = [sw.reward(sw.render(s), s.caption) for s in SAMPLE]
    assert np.mean(scores) < ceiling and np.mean(scores) < np.mean(sharp) - 0.3


def test_web_damage_washes_out_or_blurs_the_set_share_and_lowers_the_reward():
    rng = random.Random(0)
    specs = [random.Random(i).choice(SAMPLE) for i in range(400)]
    clean = [sw.render(s) for s in specs]
    damaged = [sw.web_damage([image], rng, damage_rate=0.5)[0] for image in clean]
    changed = [i for i, (a, b) in enumerate(zip(clean, damaged)) if a.tobytes() != b.tobytes()]
    assert 0.42 < len(changed) / len(specs) < 0.58
    rewards = [sw.reward(damaged[i], specs[i].caption) for i in changed]
    # Washed-out pictures lose every palette colour (reward ~0); soft blur keeps most of it.
    assert 0.35 < np.mean(np.array(rewards) < 0.2) < 0.65 and max(rewards) > 0.6
    assert np.mean(rewards) < np.mean([sw.reward(clean[i], specs[i].caption) for i in changed]) - 0.3
    assert all(sw.web_damage([image], random.Random(1), 0.0)[0] is image for image in clean[:10])


def test_web_damage_treats_every_frame_of_a_clip_alike():
    spec = sw.parse_caption("a small red circle in the center on a blue background, moving left")  # corners: background
    for seed in range(20):
        clean = sw.render_video(spec)
        frames = sw.web_damage(clean, random.Random(seed), damage_rate=1.0)
        assert all(a.tobytes() != b.tobytes() for a, b in zip(clean, frames))
        assert len({frame.getpixel((0, 0)) for frame in frames}) == 1  # one fade strength (or none) for the clip


def test_reward_refuses_the_wrong_modality():
    image_spec, video_spec = sw.all_image_specs()[0], sw.all_video_specs()[0]
    with pytest.raises(ValueError, match="video caption"):
        sw.reward(sw.render(image_spec), video_spec.caption)
    with pytest.raises(ValueError, match="image caption"):
        sw.video_reward(sw.render_video(video_spec), image_spec.caption)


def test_video_reward_checks_the_direction_of_motion():
    rng = random.Random(0)
    for spec in random.Random(2).sample(sw.all_video_specs(), 20):
        frames = sw.render_video(spec, rng=rng)
        right = sw.video_reward(frames, spec.caption)
        assert right > 0.85  # below 1 where a big shape near a corner leaves the frame
        assert sw.video_reward_components(frames[::-1], spec.caption)["direction"] == 0.0
        assert sw.video_reward_components([frames[0]] * len(frames), spec.caption)["direction"] == 0.0
        for direction in sw.DIRECTIONS:
            if direction != spec.direction:  # direction is one of six scores: a wrong one costs up to 1/6
                assert sw.video_reward(frames, dataclasses.replace(spec, direction=direction).caption) < right - 0.12


@pytest.mark.parametrize("field", list(ATTRIBUTE_VALUES))
def test_video_reward_checks_the_image_attributes_too(field):
    values = ATTRIBUTE_VALUES[field]
    rng = random.Random(0)
    for spec in random.Random(3).sample(sw.all_video_specs(), 20):
        frames = sw.render_video(spec, rng=rng)
        right = sw.video_reward(frames, spec.caption)
        for value in values:
            other = dataclasses.replace(spec, **{field: value})
            if value != getattr(spec, field) and other.color != other.background:
                assert sw.video_reward(frames, other.caption) < right - 0.05, (spec.caption, other.caption)


def test_judge_labels_like_pick_a_pic():
    assert sw.judge(0.9, 0.5, 0.05) == (1.0, 0.0)
    assert sw.judge(0.5, 0.9, 0.05) == (0.0, 1.0)
    assert sw.judge(0.50, 0.53, 0.05) == (0.5, 0.5)


def test_evaluate_knows_the_reward_as_a_metric():
    import evaluate_sspo
    from sspo_utils import SSPOInputError

    scorer = evaluate_sspo.build_scorer("shapes_reward", None, "cpu")
    spec, wrong = SAMPLE[0], dataclasses.replace(SAMPLE[0], shape="square" if SAMPLE[0].shape != "square" else "circle")
    scores = scorer.score([sw.render(spec)] * 2, [spec.caption, wrong.caption])
    assert scores[0] > 0.9 and scores[1] < scores[0] - 0.1
    with pytest.raises(SSPOInputError, match="shapes world only"):
        scorer.score([sw.render(spec)], ["a photo of a cat"])
    assert evaluate_sspo.METRICS["shapes_video_reward"].task == "video"


# --- data generators (random-weight shapes pipeline: the plumbing, not the quality) --------------

@pytest.fixture(scope="module")
def random_shapes_model(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    path = str(tmp_path_factory.mktemp("shapes_random") / "model")
    StableDiffusionPipeline(**sw.build_shapes_components(seed=0), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(path)
    return path


def test_image_preferences_are_pick_a_pic_pairs_judged_by_the_reward(random_shapes_model, tmp_path):
    import datasets

    summary = sw.make_image_preferences(random_shapes_model, str(tmp_path), num_inference_steps=2, num_captions=6,
                                        margin=0.0)
    rows = datasets.load_dataset(str(tmp_path), split="train")
    assert set(["caption", "jpg_0", "jpg_1", "label_0", "label_1"]) <= set(rows.column_names)
    held = {s.caption for s in sw.image_split()[1]}
    for row in rows:
        assert row["caption"] not in held
        assert (row["label_0"], row["label_1"]) == sw.judge(row["reward_0"], row["reward_1"], 0.0)
        assert Image.open(io.BytesIO(row["jpg_0"])).size == (sw.IMAGE_SIZE, sw.IMAGE_SIZE)
    assert summary["captions"] == 6 == len(rows)


def test_video_preferences_write_chronomagic_winners_and_keep_losers(random_shapes_model, tmp_path):
    adapter = str(tmp_path / "adapter")
    from diffusers import MotionAdapter

    MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=2, motion_num_attention_heads=4,
                  motion_norm_num_groups=32, motion_max_seq_length=32).save_pretrained(adapter)
    out = tmp_path / "videos"
    summary = sw.make_video_preferences(random_shapes_model, adapter, str(out), num_inference_steps=2, num_frames=4,
                                        num_captions=3, margin=-1.0)  # margin < 0: no ties, so every caption has a winner
    with open(out / "ChronoMagic_train.csv") as f:
        winners = list(csv.DictReader(f))
    with open(out / "pairs.csv") as f:
        pairs = list(csv.DictReader(f))
    assert len(winners) == len(pairs) == 3 and summary["ties"] == 0
    with open(out / "preferences.json") as f:  # the sampler settings travel with the data
        assert json.load(f)["num_inference_steps"] == 2 == summary["num_inference_steps"]
    held = {s.caption for s in sw.video_split()[1]}
    for row in winners:
        assert row["name"] not in held and row["is_transmit"] == "1"
        assert (out / "videos" / f"{row['videoid']}.mp4").is_file()
        assert (out / "losers" / f"{row['videoid']}.mp4").is_file()

    # Several pairs per caption, as Pick-a-Pic has: round after round over the same captions, new seeds each time.
    more = sw.make_video_preferences(random_shapes_model, adapter, str(tmp_path / "more"), num_inference_steps=2,
                                     num_frames=4, num_captions=3, margin=-1.0, pairs_per_caption=2)
    with open(tmp_path / "more" / "pairs.csv") as f:
        more_pairs = list(csv.DictReader(f))
    assert more["pairs_per_caption"] == 2 and len(more_pairs) == 6
    assert [p["caption"] for p in more_pairs] == [p["caption"] for p in pairs] * 2
    assert len({p["videoid"] for p in more_pairs}) == 6
    clip = lambda pair: (tmp_path / "more" / "videos" / f"{pair['videoid']}.mp4").read_bytes()
    assert all(clip(first) != clip(second) for first, second in zip(more_pairs[:3], more_pairs[3:]))


# --- pretraining ---------------------------------------------------------------------------------

def _tiny_pretraining(path, **kwargs):
    return sw.pretrain_image_model(str(path), seed=0, vae_steps=3, unet_steps=4, num_renders=32, batch_size=4,
                                   vae_batch_size=4, save_every=2, **kwargs)


def _unet_state(path):
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "unet", "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("options", [{}, {"ema_decay": 0.9, "snr_gamma": 5.0},
                                     {"prediction_type": "v_prediction", "snr_gamma": 5.0, "unet_lr": 2e-3}],
                         ids=["defaults", "ema-minsnr", "v-prediction"])
def test_pretraining_is_deterministic_and_a_stopped_run_resumes_to_the_same_weights(tmp_path, monkeypatch, options):
    import torch

    torch.set_num_threads(1)
    _tiny_pretraining(tmp_path / "whole", **options)
    saves = []
    real_save = sw._save_state

    def save_then_stop(path, **state):
        real_save(path, **state)
        saves.append(state.get("unet_step"))
        if state.get("unet_step") == 2:
            raise KeyboardInterrupt("stopped mid-pretraining")

    monkeypatch.setattr(sw, "_save_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _tiny_pretraining(tmp_path / "stopped", **options)
    assert os.path.isfile(tmp_path / "stopped" / ".pretrain_state.pt")
    monkeypatch.setattr(sw, "_save_state", real_save)
    info = _tiny_pretraining(tmp_path / "stopped", **options)
    assert not os.path.exists(tmp_path / "stopped" / ".pretrain_state.pt")
    whole, resumed = _unet_state(tmp_path / "whole"), _unet_state(tmp_path / "stopped")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert info["ema_decay"] == options.get("ema_decay") and info["snr_gamma"] == options.get("snr_gamma")
    assert info["prediction_type"] == options.get("prediction_type", "epsilon")


@pytest.mark.parametrize("options", [{"ema_decay": 0.9}, {"damage_rate": 0.5}, {"vae_latent_noise": 0.5},
                                     {"prediction_type": "v_prediction"}, {"unet_lr": 2e-3}],
                         ids=["ema", "web-damage", "vae-latent-noise", "v-prediction", "unet-lr"])
def test_each_pretraining_option_changes_the_weights(tmp_path, options):
    import torch

    torch.set_num_threads(1)
    _tiny_pretraining(tmp_path / "plain")
    info = _tiny_pretraining(tmp_path / "changed", **options)
    plain, changed = _unet_state(tmp_path / "plain"), _unet_state(tmp_path / "changed")
    assert any(not torch.equal(plain[k], changed[k]) for k in plain)
    assert all(info[k] == v for k, v in options.items())
    with open(tmp_path / "changed" / "scheduler" / "scheduler_config.json") as f:
        assert json.load(f)["prediction_type"] == options.get("prediction_type", "epsilon")


def test_decoder_phase_trains_only_the_decoder_and_the_in_place_run_matches_a_rebuild(tmp_path):
    """Phase 3 must leave the encoder (the UNet's latent space) and the UNet exactly as they were, lower the
    reconstruction error, and give the same VAE whether run inside pretraining or on the saved model."""
    import torch
    from safetensors.torch import load_file

    def vae_state(path):
        return load_file(os.path.join(path, "vae", "diffusion_pytorch_model.safetensors"))

    torch.set_num_threads(1)
    _tiny_pretraining(tmp_path / "in-place")
    info = _tiny_pretraining(tmp_path / "rebuilt", decoder_steps=25)
    assert info["decoder_steps"] == 25 and info["decoder_mse_after"] < info["decoder_mse_before"]
    before, rebuilt = vae_state(tmp_path / "in-place"), vae_state(tmp_path / "rebuilt")
    changed = {k for k in before if not torch.equal(before[k], rebuilt[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    unet = _unet_state(tmp_path / "in-place")
    assert all(torch.equal(unet[k], v) for k, v in _unet_state(tmp_path / "rebuilt").items())

    sw.finetune_shipped_decoder(str(tmp_path / "in-place"), 25)
    after = vae_state(tmp_path / "in-place")
    assert all(torch.equal(after[k], rebuilt[k]) for k in rebuilt)
    assert sorted(os.listdir(tmp_path / "in-place")) == sorted(os.listdir(tmp_path / "rebuilt"))
    for name in ("in-place", "rebuilt"):
        with open(tmp_path / name / "vae" / "config.json") as f:
            config = json.load(f)
        assert "_name_or_path" not in config
    with open(tmp_path / "in-place" / "pretraining.json") as f:
        assert json.load(f)["decoder_mse_after"] == info["decoder_mse_after"]
    with pytest.raises(ValueError, match="already fine-tuned"):
        sw.finetune_shipped_decoder(str(tmp_path / "in-place"), 25)
    assert all(torch.equal(v, after[k]) for k, v in vae_state(tmp_path / "in-place").items())


def test_video_pretraining_can_train_the_cross_attention_into_a_video_base_model(random_shapes_model, tmp_path):
    """Motion modules never see the caption; with video_model_dir the image UNet's cross-attention
    learns with them, and only it: the rest of the saved video base equals the image base."""
    import torch
    from diffusers import MotionAdapter

    torch.set_num_threads(1)
    info = sw.pretrain_motion_adapter(random_shapes_model, str(tmp_path / "adapter"), steps=2, num_clips=4,
                                      num_frames=4, batch_size=2, save_every=1, video_model_dir=str(tmp_path / "video"))
    image, video = _unet_state(random_shapes_model), _unet_state(tmp_path / "video")
    assert set(image) == set(video)
    changed = {k for k in image if not torch.equal(image[k], video[k])}
    assert changed and all(".attn2." in k for k in changed)
    assert any(".attn2.to_k." in k for k in changed)  # the caption's keys, where the direction word enters
    MotionAdapter.from_pretrained(str(tmp_path / "adapter"))
    for folder in ("adapter", "video"):
        with open(tmp_path / folder / "pretraining.json") as f:
            assert json.load(f)["trained"] == info["trained"] == "motion modules + image UNet cross-attention"
    sw.load_pipeline(str(tmp_path / "video"), str(tmp_path / "adapter"))  # loads as an ordinary model folder
    assert not os.path.exists(tmp_path / "adapter" / ".pretrain_state.pt")


def _text_encoder_state(model_dir):
    from safetensors.torch import load_file

    return load_file(os.path.join(model_dir, "text_encoder", "model.safetensors"))


def test_video_pretraining_can_train_the_text_encoder_which_never_saw_the_direction_words(random_shapes_model,
                                                                                          tmp_path):
    """train_text_encoder: the saved video base's text encoder learns too (the image model's never saw
    "moving"); without it, the text encoder stays the image base's; it needs video_model_dir."""
    import torch

    torch.set_num_threads(1)
    common = dict(steps=2, num_clips=4, num_frames=4, batch_size=2, save_every=1)
    with pytest.raises(ValueError, match="needs video_model_dir"):
        sw.pretrain_motion_adapter(random_shapes_model, str(tmp_path / "no"), train_text_encoder=True, **common)
    info = sw.pretrain_motion_adapter(random_shapes_model, str(tmp_path / "adapter"), video_model_dir=str(tmp_path / "te"),
                                      train_text_encoder=True, **common)
    assert info["trained"] == "motion modules + image UNet cross-attention + text encoder"
    image, trained = _text_encoder_state(random_shapes_model), _text_encoder_state(tmp_path / "te")
    assert set(image) == set(trained) and any(not torch.equal(image[k], trained[k]) for k in image)
    image_unet = _unet_state(random_shapes_model)
    changed_unet = {k for k, v in _unet_state(tmp_path / "te").items() if not torch.equal(v, image_unet[k])}
    assert changed_unet and all(".attn2." in k for k in changed_unet)
    sw.pretrain_motion_adapter(random_shapes_model, str(tmp_path / "adapter2"), video_model_dir=str(tmp_path / "frozen"),
                               **common)
    frozen = _text_encoder_state(tmp_path / "frozen")
    assert all(torch.equal(image[k], frozen[k]) for k in image)
    sw.load_pipeline(str(tmp_path / "te"), str(tmp_path / "adapter"))
