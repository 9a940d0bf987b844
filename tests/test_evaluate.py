"""evaluate_sspo.py on tiny, locally built models; nothing is downloaded.

* The score formulas against hand computations on fixed embeddings, and every scorer class on
  tiny random-weight models of its architecture family (a tiny CLIPModel + processor, a tiny
  open_clip config, a tiny aesthetic MLP, tiny TorchScript FID/FVD feature extractors).
* Statistics: bootstrap CIs and the paired win rate on fixed numbers.
* Prompt sources: local .txt/.csv/.jsonl, HPDv2 and ChronoMagic-Bench layouts, a local parquet.
* End to end on the tiny SD and AnimateDiff models: base + LoRAs (and a MotionAdapter) generate
  with paired seeds, the manifest, scores and reports exist, a re-run regenerates nothing.
* Bad input: one ``error:`` line and exit 2; a missing ImageReward is reported, exit 0.
"""

import csv
import importlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import evaluate_sspo as ev
import sspo_tiny
from sspo_utils import SSPOInputError


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "evaluate_sspo.py")
PROMPTS = ["a red circle on a blue background", "a yellow square on a green background",
           "a white triangle on a purple background"]
PROJECTION_DIM = 16


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny models run fastest on one thread; on a busy 2-core machine two intra-op threads
    made a 4-frame AnimateDiff sample 40x slower (14.5 s against 0.33 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------
# Tiny scorer models, saved to disk so that the CLI flags can load them
# ---------------------------------------------------------------------------


def tiny_clip(tmp_dir):
    """A random-weight CLIPModel (32 px images, 16-d projections) and its processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab_file, merges_file = sspo_tiny.write_tokenizer_files(tmp_dir)
    tokenizer = CLIPTokenizer(vocab_file, merges_file, model_max_length=77)
    eos_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=eos_id, pad_token_id=eos_id),
        vision_config=dict(image_size=32, patch_size=16, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=PROJECTION_DIM)
    return CLIPModel(config).eval(), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


class TinyFrameFeatures(torch.nn.Module):
    """FID stand-in for InceptionV3: uint8 (N, 3, H, W) -> 2x2 average colours (N, 12)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x.float() / 255.0, 2).flatten(1)


class TinyI3D(torch.nn.Module):
    """FVD stand-in with the StyleGAN-V detector's call signature: (B, 3, T, H, W) -> (B, 6)."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], dim=1)


@pytest.fixture(scope="module")
def scorer_files(tmp_path_factory):
    """Every tiny scorer model on disk: CLIP folder, aesthetic MLP, HPS open_clip config + weights,
    TorchScript FID and FVD feature extractors."""
    import open_clip

    root = tmp_path_factory.mktemp("scorers")
    model, processor = tiny_clip(str(root / "tokenizer_files"))
    model.save_pretrained(root / "clip")
    processor.save_pretrained(root / "clip")
    torch.manual_seed(1)
    torch.save(ev.AestheticMLP(PROJECTION_DIM).state_dict(), root / "aesthetic.pth")
    hps_config = {"embed_dim": PROJECTION_DIM,
                  "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    with open(root / "tiny-hps-clip.json", "w") as f:
        json.dump(hps_config, f)
    open_clip.add_model_config(str(root / "tiny-hps-clip.json"))
    hps_model = open_clip.create_model("tiny-hps-clip", pretrained=None)
    torch.save({"state_dict": hps_model.state_dict()}, root / "hps.pt")
    torch.jit.script(TinyFrameFeatures()).save(str(root / "fid_features.pt"))
    torch.jit.script(TinyI3D()).save(str(root / "i3d.pt"))
    return {"clip": str(root / "clip"), "aesthetic": str(root / "aesthetic.pth"), "hps_config": str(root / "tiny-hps-clip.json"),
            "hps": str(root / "hps.pt"), "fid": str(root / "fid_features.pt"), "fvd": str(root / "i3d.pt")}


def image_scorer_flags(files):
    return ["--pickscore_model", files["clip"], "--pickscore_processor", files["clip"], "--clip_model", files["clip"],
            "--aesthetic_clip_model", files["clip"], "--aesthetic_checkpoint", files["aesthetic"],
            "--hps_model_config", files["hps_config"], "--hps_checkpoint", files["hps"]]


def random_images(n, size=48, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


# ---------------------------------------------------------------------------
# Score formulas against hand computations
# ---------------------------------------------------------------------------


def test_formulas_on_fixed_embeddings():
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    text = torch.tensor([[1.0, 1.0], [0.0, 3.0], [-1.0, 0.0]])
    cos = torch.tensor([2 ** -0.5, 1.0, -1.0])
    # PickScore: exp(logit_scale) * cos; with logit_scale = log(100) that is 100 * cos.
    assert torch.allclose(ev.pickscore_from_embeddings(image, text, np.log(100.0)), 100 * cos, atol=1e-4)
    assert torch.allclose(ev.pickscore_from_embeddings(image, text, 0.0), cos, atol=1e-6)
    assert torch.allclose(ev.hps_from_embeddings(image, text), 100 * cos, atol=1e-4)
    assert torch.allclose(ev.clip_score_from_embeddings(image, text), torch.tensor([70.7107, 100.0, 0.0]), atol=1e-3)
    frames = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # consecutive cosines 1/sqrt(2), 1/sqrt(2)
    assert float(ev.temporal_consistency_from_embeddings(frames)) == pytest.approx(2 ** -0.5, abs=1e-6)


def test_aesthetic_is_the_mlp_on_normalised_embeddings():
    torch.manual_seed(0)
    mlp = ev.AestheticMLP(4).eval()
    embeds = torch.tensor([[3.0, 0.0, 4.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    x = embeds / embeds.norm(dim=-1, keepdim=True)
    for index in (0, 2, 4, 6, 7):  # the linear layers of the released head, no activations
        layer = mlp.layers[index]
        x = x @ layer.weight.T + layer.bias
    assert torch.allclose(ev.aesthetic_from_embeddings(mlp, embeds), x.squeeze(-1), atol=1e-5)
    assert sorted(k.split(".")[1] for k in mlp.state_dict() if k.endswith("weight")) == ["0", "2", "4", "6", "7"]


def test_psnr_and_frechet_distance_by_hand():
    zeros, tens = torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.full((2, 3, 4, 4), 10, dtype=torch.uint8)
    assert float(ev.psnr_from_frames(zeros, tens)) == pytest.approx(10 * np.log10(255 ** 2 / 100), abs=1e-6)
    assert float(ev.psnr_from_frames(tens, tens)) == pytest.approx(100.0)
    # 1-D Gaussians: (mu1 - mu2)^2 + s1^2 + s2^2 - 2 s1 s2 with sample variances.
    a, b = torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [5.0], [9.0]])
    expected = (1.0 - 5.0) ** 2 + 2.0 + 16.0 - 2 * np.sqrt(2.0 * 16.0)
    assert ev.frechet_distance(a, b) == pytest.approx(expected, abs=1e-9)
    features = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    assert ev.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    assert ev.frechet_distance(features, features + torch.tensor([1.0, 2.0, 2.0])) == pytest.approx(9.0, abs=1e-6)
    with pytest.raises(SSPOInputError, match="at least 2"):
        ev.frechet_distance(features[:1], features)


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------


def test_paired_win_rate_on_fixed_numbers():
    result = ev.paired_win_rate([3.0, 1.0, 2.0, 2.0], [1.0, 2.0, 2.0, 0.0], num_samples=2000, seed=0)
    assert result["win_rate"] == pytest.approx(0.625)  # wins 1 + 0 + 0.5 (tie) + 1, over 4 prompts
    assert (result["wins"], result["ties"], result["losses"], result["n_prompts"]) == (2, 1, 1, 4)
    assert 0.0 <= result["ci_low"] <= 0.625 <= result["ci_high"] <= 1.0
    assert result == ev.paired_win_rate([3.0, 1.0, 2.0, 2.0], [1.0, 2.0, 2.0, 0.0], num_samples=2000, seed=0)
    ties = ev.paired_win_rate([1.0, 2.0], [1.0, 2.0])
    assert (ties["win_rate"], ties["ci_low"], ties["ci_high"]) == (0.5, 0.5, 0.5)


def test_paired_difference_on_fixed_numbers():
    result = ev.paired_difference([3.0, 1.0, 2.0, 2.0], [1.0, 2.0, 2.0, 0.0], num_samples=2000, seed=0)
    assert result["mean"] == pytest.approx(0.75)  # (2 - 1 + 0 + 2) / 4
    assert result["ci_low"] < 0.75 < result["ci_high"] and result["n_prompts"] == 4
    # A constant shift has no spread: the pairing makes its CI a point, however spread out the prompts are.
    shifted = ev.paired_difference([10.1, -5.9, 0.1], [10.0, -6.0, 0.0])
    assert shifted["ci_low"] == pytest.approx(0.1) and shifted["ci_high"] == pytest.approx(0.1)


def test_bootstrap_ci_and_prompt_means():
    values = np.arange(100, dtype=float)
    low, high = ev.bootstrap_ci(values, num_samples=1000, seed=0)
    assert low < 49.5 < high and high - low < 25
    assert ev.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert ev.bootstrap_ci([5.0]) == (5.0, 5.0)
    scores = {("m", 0, 0): 1.0, ("m", 0, 1): 3.0, ("m", 1, 0): 2.0, ("base", 0, 0): 9.0}
    assert ev.prompt_means(scores, "m") == {0: 2.0, 1: 2.0}


# ---------------------------------------------------------------------------
# Scorer classes on tiny models
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip_parts(scorer_files):
    from transformers import AutoProcessor, CLIPModel

    return CLIPModel.from_pretrained(scorer_files["clip"]).eval(), AutoProcessor.from_pretrained(scorer_files["clip"])


def hand_embeddings(model, processor, images, prompts):
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    tokens = processor(text=prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        text = model.text_projection(model.text_model(input_ids=tokens["input_ids"],
                                                      attention_mask=tokens["attention_mask"]).pooler_output)
    return image, text


def test_clip_family_scorers_match_the_formulas(tiny_clip_parts):
    model, processor = tiny_clip_parts
    images, prompts = random_images(3), PROMPTS
    image_embeds, text_embeds = hand_embeddings(model, processor, images, prompts)

    pickscore = ev.PickScoreScorer(model, processor)
    scores = pickscore.score(images, prompts)
    assert scores.shape == (3,)
    expected = model.logit_scale.exp().item() * F.cosine_similarity(image_embeds, text_embeds)
    assert torch.allclose(scores, expected, atol=1e-4)
    assert pickscore.describe()["scale_used"] == pytest.approx(model.logit_scale.exp().item())

    clip_scores = ev.CLIPScoreScorer(model, processor).score(images, prompts)
    assert clip_scores.shape == (3,)
    assert torch.allclose(clip_scores, (100 * F.cosine_similarity(image_embeds, text_embeds)).clamp(min=0), atol=1e-4)

    torch.manual_seed(0)
    mlp = ev.AestheticMLP(PROJECTION_DIM)
    aesthetic = ev.AestheticScorer(model, processor, mlp).score(images, prompts)
    assert aesthetic.shape == (3,)
    assert torch.allclose(aesthetic, mlp(F.normalize(image_embeds, dim=-1)).squeeze(-1).detach(), atol=1e-5)


def test_scorers_load_from_files(scorer_files):
    images = random_images(2)
    aesthetic = ev.AestheticScorer.from_checkpoint(scorer_files["aesthetic"], scorer_files["clip"])
    assert aesthetic.score(images, PROMPTS[:2]).shape == (2,)
    pickscore = ev.PickScoreScorer.from_pretrained(scorer_files["clip"], scorer_files["clip"])
    assert torch.isfinite(pickscore.score(images, PROMPTS[:2])).all()
    with pytest.raises(SSPOInputError, match="--pickscore_model"):
        ev.PickScoreScorer.from_pretrained(os.path.join(scorer_files["clip"], "missing"), scorer_files["clip"])
    with pytest.raises(SSPOInputError, match="--aesthetic_checkpoint"):
        ev.AestheticScorer.from_checkpoint(scorer_files["hps"], scorer_files["clip"])  # not an aesthetic MLP


def test_hps_scorer_on_tiny_open_clip(scorer_files):
    scorer = ev.HPSScorer.from_checkpoint(scorer_files["hps_config"], scorer_files["hps"], version="v2.1")
    images = random_images(3)
    scores = scorer.score(images, PROMPTS)
    assert scores.shape == (3,) and scorer.describe() == {"version": "v2.1", "scale_used": 100.0}
    with torch.no_grad():
        pixels = torch.stack([scorer.preprocess(image) for image in images])
        image_embeds = scorer.model.encode_image(pixels)
        text_embeds = scorer.model.encode_text(scorer.tokenizer(PROMPTS))
    assert torch.allclose(scores, 100 * F.cosine_similarity(image_embeds, text_embeds), atol=1e-4)
    with pytest.raises(SSPOInputError, match="does not fit"):
        ev.HPSScorer.from_checkpoint(scorer_files["hps_config"], scorer_files["aesthetic"])


def test_imagereward_missing_is_unavailable_not_an_error():
    if imagereward_imports():
        pytest.skip("image-reward imports here")
    with pytest.raises(ev.MetricUnavailable, match="image-reward"):
        ev.ImageRewardScorer.load("ImageReward-v1.0")


def imagereward_imports():
    try:
        importlib.import_module("ImageReward")
        return True
    except Exception:
        return False


def moving_videos(n, frames=4, size=32, seed=0):
    return [sspo_tiny.moving_shape_frames("red", "square", "blue", frames, size, seed + i) for i in range(n)]


def test_video_scorers_on_tiny_models(tiny_clip_parts, scorer_files):
    model, processor = tiny_clip_parts
    videos = moving_videos(3)
    clipsim = ev.CLIPSIMScorer(ev.CLIPScoreScorer(model, processor)).score(videos, PROMPTS)
    assert clipsim.shape == (3,)
    image_embeds, text_embeds = hand_embeddings(model, processor, videos[0], [PROMPTS[0]] * 4)
    expected = (100 * F.cosine_similarity(image_embeds, text_embeds)).clamp(min=0).mean()
    assert float(clipsim[0]) == pytest.approx(float(expected), abs=1e-3)

    consistency = ev.TemporalConsistencyScorer(model, processor).score(videos, PROMPTS)
    assert consistency.shape == (3,)
    assert float(consistency[0]) == pytest.approx(float(F.cosine_similarity(image_embeds[:-1], image_embeds[1:]).mean()),
                                                  abs=1e-5)

    psnr = ev.PSNRScorer().score(videos, [videos[0], videos[1], [f.resize((64, 64)) for f in videos[0]]])
    assert psnr.shape == (3,) and float(psnr[0]) == pytest.approx(100.0) and float(psnr[2]) < 100.0

    fid = ev.FrameFID(torch.jit.load(scorer_files["fid"]))
    fid.add_reference(moving_videos(4, seed=10))
    assert np.isfinite(fid.distance(videos)) and fid.distance(videos) >= -1e-6

    fvd = ev.FrechetVideoDistance.from_file(scorer_files["fvd"], resolution=16)
    assert fvd.clip_tensor(videos[0]).shape == (3, 4, 16, 16)
    fvd.add_reference(videos)
    assert fvd.distance(videos) == pytest.approx(0.0, abs=1e-6)
    assert fvd.distance([[Image.new("RGB", (32, 32), "white")] * 4] * 3) > 0.1


# ---------------------------------------------------------------------------
# Prompt sources
# ---------------------------------------------------------------------------


def prompt_args(prompts, *extra):
    return ev.parse_args(["--pretrained_model_name_or_path", "unused", "--prompts", prompts, "--metrics", "clip", *extra])


def test_prompt_files_and_named_source_layouts(tmp_path):
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n\n")
    loaded = ev.load_prompts(prompt_args(str(tmp_path / "p.txt")))
    assert [p.text for p in loaded] == PROMPTS and [p.id for p in loaded] == ["00000", "00001", "00002"]

    with open(tmp_path / "p.csv", "w", newline="") as f:
        csv.writer(f).writerows([["videoid", "name"], ["a_1", PROMPTS[0]], ["b_2", PROMPTS[1]]])
    loaded = ev.load_prompts(prompt_args(str(tmp_path / "p.csv")))
    assert [(p.id, p.text) for p in loaded] == [("a_1", PROMPTS[0]), ("b_2", PROMPTS[1])]

    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(PROMPTS)))
    loaded = ev.load_prompts(prompt_args(str(tmp_path / "p.jsonl"), "--num_prompts", "2"))
    assert [(p.index, p.id, p.text) for p in loaded] == [(0, "0", PROMPTS[0]), (1, "1", PROMPTS[1])]

    for style in ev.HPSV2_STYLES:  # the HPDv2 benchmark layout: benchmark/<style>.json lists of strings
        (tmp_path / "hpd" / "benchmark").mkdir(parents=True, exist_ok=True)
        (tmp_path / "hpd" / "benchmark" / f"{style}.json").write_text(json.dumps([f"{style} one", f"{style} two"]))
    loaded = ev.load_prompts(prompt_args("hpsv2", "--prompts_dataset_path", str(tmp_path / "hpd")))
    assert len(loaded) == 8 and loaded[2].text == "concept-art one" and loaded[2].id == "concept-art_000"

    loaded = ev.load_prompts(prompt_args("chronomagic", "--prompts_dataset_path", str(tmp_path / "p.csv")))
    assert loaded[1].id == "b_2"

    import datasets

    datasets.Dataset.from_dict({"caption": PROMPTS, "best_image_uid": ["x", "y", "z"]}).to_parquet(
        str(tmp_path / "validation_unique.parquet"))
    loaded = ev.load_prompts(prompt_args("pickapic", "--prompts_dataset_path", str(tmp_path / "validation_unique.parquet")))
    assert [p.text for p in loaded] == PROMPTS
    # A local copy of the Hub repo (hf download ... --local-dir): data/<split>-*.parquet, split validation_unique.
    (tmp_path / "pickapic" / "data").mkdir(parents=True)
    for split, captions in (("train", ["not this one"]), ("validation_unique", PROMPTS[:2])):
        datasets.Dataset.from_dict({"caption": captions}).to_parquet(
            str(tmp_path / "pickapic" / "data" / f"{split}-00000-of-00001.parquet"))
    loaded = ev.load_prompts(prompt_args("pickapic", "--prompts_dataset_path", str(tmp_path / "pickapic")))
    assert [p.text for p in loaded] == PROMPTS[:2]


def test_offline_hub_prompts_give_a_clear_error(tmp_path):
    args = prompt_args("parti", "--prompts_dataset_path", "nobody-has/this-dataset-sspo-test")
    with pytest.raises(SSPOInputError, match="--prompts_dataset_path"):
        ev.load_prompts(args)


# ---------------------------------------------------------------------------
# Bad input: clear errors at parse time (before any model is loaded)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("extra, message", [
    (["--metrics", "pickscor"], "Unknown metric 'pickscor'.*pickscore, hpsv2, aesthetic, clip, imagereward"),
    (["--metrics", "fvd"], "video metric and does not apply to --task image"),
    (["--lora_path", "no/such/lora/folder"], "no such folder"),
    (["--lora_path", "{out}", "--model_names", "base"], "name each --lora_path uniquely"),
    (["--images_per_prompt", "0"], "--images_per_prompt must be positive"),
])
def test_bad_image_flags(tmp_path, extra, message):
    (tmp_path / "p.txt").write_text("a prompt\n")
    extra = [e.replace("{out}", str(tmp_path)) for e in extra]
    with pytest.raises(SSPOInputError, match=message):
        ev.parse_args(["--pretrained_model_name_or_path", "m", "--prompts", str(tmp_path / "p.txt"), *extra])


def test_bad_prompt_files_and_video_flags(tmp_path, tiny_motion_adapter_dir):
    base = ["--pretrained_model_name_or_path", "m"]
    with pytest.raises(SSPOInputError, match="no such prompt file"):
        ev.parse_args(base + ["--prompts", str(tmp_path / "missing.txt")])
    (tmp_path / "p.parquet").write_bytes(b"x")
    with pytest.raises(SSPOInputError, match="unsupported file type .parquet"):
        ev.parse_args(base + ["--prompts", str(tmp_path / "p.parquet")])
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(SSPOInputError, match="no prompts found"):
        ev.load_prompts(ev.parse_args(base + ["--prompts", str(tmp_path / "empty.txt")]))
    video = base + ["--prompts", str(tmp_path / "empty.txt"), "--motion_adapter_name_or_path", tiny_motion_adapter_dir]
    with pytest.raises(SSPOInputError, match="image metric and does not apply to --task video"):
        ev.parse_args(video + ["--metrics", "pickscore"])
    with pytest.raises(SSPOInputError, match="--reference_videos is not set"):
        ev.parse_args(video + ["--metrics", "psnr"])
    with pytest.raises(SSPOInputError, match="no such folder"):
        ev.parse_args(video + ["--metrics", "fid", "--reference_videos", str(tmp_path / "nope")])
    with pytest.raises(SSPOInputError, match="--fvd_detector"):
        ev.parse_args(video + ["--metrics", "fvd", "--reference_videos", str(tmp_path)])
    with pytest.raises(SSPOInputError, match="needs --motion_adapter_name_or_path"):
        ev.parse_args(base + ["--prompts", str(tmp_path / "empty.txt"), "--task", "video"])


def run_script(args, timeout=600):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=REPO_ROOT)


def test_cli_bad_input_exits_2_with_one_error_line(tmp_path):
    result = run_script(["--pretrained_model_name_or_path", "m", "--prompts", str(tmp_path / "missing.txt")])
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --prompts") and "no such prompt file" in last and "Traceback" not in result.stderr
    (tmp_path / "p.txt").write_text("a prompt\n")
    result = run_script(["--pretrained_model_name_or_path", "m", "--prompts", str(tmp_path / "p.txt"),
                         "--metrics", "clip", "bogus"])
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: Unknown metric 'bogus'")


# ---------------------------------------------------------------------------
# End to end: tiny SD1.5 with LoRAs
# ---------------------------------------------------------------------------


def save_tiny_lora(pipeline_cls, unet, target_modules, path, scale):
    """A peft LoRA on ``unet`` with lora_B ~ N(0, scale) (scale 0: the base model), saved as the
    trainers save theirs."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=target_modules))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    pipeline_cls.save_lora_weights(path, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))
    return str(path)


@pytest.fixture(scope="module")
def tiny_loras(tiny_model_dir, tmp_path_factory):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    root = tmp_path_factory.mktemp("loras")
    targets = ["to_k", "to_q", "to_v", "to_out.0"]
    return {name: save_tiny_lora(StableDiffusionPipeline, UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet"),
                                 targets, root / name, scale)
            for name, scale in (("sspo_random", 0.5), ("sspo_zero", 0.0))}


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return str(path)


def image_eval_args(model_dir, prompts, out, loras, files, *extra):
    return ["--pretrained_model_name_or_path", model_dir, "--prompts", prompts, "--output_dir", str(out),
            "--lora_path", *loras, "--images_per_prompt", "2", "--num_inference_steps", "2", "--seed", "0",
            "--bootstrap_samples", "200", "--metrics", "pickscore", "hpsv2", "aesthetic", "clip",
            *image_scorer_flags(files), *extra]


@pytest.fixture(scope="module")
def image_run(tiny_model_dir, prompt_file, tiny_loras, scorer_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("image_eval") / "eval"
    argv = image_eval_args(tiny_model_dir, prompt_file, out, [tiny_loras["sspo_random"], tiny_loras["sspo_zero"]],
                           scorer_files)
    results = ev.main(ev.parse_args(argv))
    return out, argv, results


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_image_eval_writes_images_manifest_and_reports(image_run, scorer_files):
    files = scorer_files
    out, _, results = image_run
    manifest = read_jsonl(out / "manifest.jsonl")
    assert len(manifest) == 3 * 3 * 2
    assert {row["model"] for row in manifest} == {"base", "sspo_random", "sspo_zero"}
    for row in manifest:
        assert {"prompt", "seed", "model", "path"} <= set(row) and row["prompt"] == PROMPTS[row["prompt_index"]]
        assert row["seed"] == row["prompt_index"] * 2 + row["image_index"]  # seed 0 is a real seed
        with Image.open(out / row["path"]) as image:
            assert image.size == (64, 64)
    assert len(read_jsonl(out / "scores.jsonl")) == 18

    report = json.loads((out / "report.json").read_text())
    assert {"machine", "settings", "created", "seeds", "statistics"} <= set(report)
    assert report["machine"]["torch"] == torch.__version__ and report["settings"]["num_inference_steps"] == 2
    assert report["metrics"]["pickscore"]["status"] == "ok" and report["metrics"]["pickscore"]["scale_used"] > 0
    assert report["metrics"]["hpsv2"]["scale_used"] == 100.0 and files["hps"] in report["metrics"]["hpsv2"]["source"]
    for model in ("base", "sspo_random", "sspo_zero"):
        for metric in ("pickscore", "hpsv2", "aesthetic", "clip"):
            entry = report["results"][model][metric]
            assert entry["ci_low"] <= entry["mean"] <= entry["ci_high"] and entry["n_prompts"] == 3
            assert entry["n_items"] == 6
    assert "win_rate_vs_base" not in report["results"]["base"]["clip"]
    assert report["results"] == json.loads(json.dumps(results))
    markdown = (out / "report.md").read_text()
    assert "| model | PickScore ↑ | HPSv2 ↑ | Aesthetic ↑ | CLIP score ↑ |" in markdown
    assert "| sspo_random |" in markdown and "ties count 0.5" in markdown and "not comparable" in markdown
    assert "| model | PickScore: difference | PickScore: win rate |" in markdown
    assert "| sspo_zero | +0.000 [+0.000, +0.000] | 50.0% [50.0, 50.0] |" in markdown
    with Image.open(out / "grid.png") as grid:
        assert grid.width == 3 * 128 and grid.height > 3 * 128


def test_paired_seeds_a_zero_lora_reproduces_the_base(image_run):
    out, _, results = image_run
    for prompt_index in range(3):
        for image_index in range(2):
            name = f"{prompt_index:05d}_{image_index:02d}.png"
            base = np.asarray(Image.open(out / "base" / name))
            assert np.array_equal(base, np.asarray(Image.open(out / "sspo_zero" / name)))
            assert not np.array_equal(base, np.asarray(Image.open(out / "sspo_random" / name)))
    win = results["sspo_zero"]["pickscore"]["win_rate_vs_base"]
    assert (win["win_rate"], win["ties"], win["n_prompts"]) == (0.5, 3, 3)
    difference = results["sspo_zero"]["pickscore"]["difference_vs_base"]
    assert (difference["mean"], difference["ci_low"], difference["ci_high"]) == (0.0, 0.0, 0.0)
    assert results["sspo_random"]["pickscore"]["difference_vs_base"]["mean"] == pytest.approx(
        results["sspo_random"]["pickscore"]["mean"] - results["base"]["pickscore"]["mean"])
    assert results["sspo_zero"]["clip"]["mean"] == pytest.approx(results["base"]["clip"]["mean"])


def test_rerun_skips_existing_and_resumes_a_missing_image(image_run, tmp_path, monkeypatch):
    out, argv, results = image_run
    copy = tmp_path / "eval"
    shutil.copytree(out, copy)
    argv = [str(copy) if a == str(out) else a for a in argv]
    before = {p: os.path.getmtime(p) for p in copy.rglob("*.png") if p.name != "grid.png"}

    def must_not_generate(*args, **kwargs):
        raise AssertionError("an image on disk was generated again")

    monkeypatch.setattr(ev, "generate_batch", must_not_generate)
    assert ev.main(ev.parse_args(argv)) == results
    assert before == {p: os.path.getmtime(p) for p in before}

    # A run killed while writing: one image gone, the manifest ends in a cut line.
    target = copy / "sspo_random" / "00001_01.png"
    original = np.asarray(Image.open(target))
    target.unlink()
    with open(copy / "manifest.jsonl", "a") as f:
        f.write('{"model": "sspo_ran')
    calls = []
    monkeypatch.setattr(ev, "generate_batch", lambda *a, **k: calls.extend(p.index for p in a[2]) or generate_batch(*a, **k))
    assert ev.main(ev.parse_args(argv)) == results
    assert calls == [1] and np.array_equal(np.asarray(Image.open(target)), original)
    assert len(read_jsonl(copy / "manifest.jsonl")) == 18

    with pytest.raises(SSPOInputError, match="num_inference_steps"):
        ev.main(ev.parse_args(argv + ["--num_inference_steps", "3"]))


generate_batch = ev.generate_batch


def test_batched_generation_matches_one_at_a_time(image_run, tmp_path):
    out, argv, results = image_run
    batched = tmp_path / "batched"
    argv = [str(batched) if a == str(out) else a for a in argv] + ["--generation_batch_size", "4"]
    ev.main(ev.parse_args(argv))
    singles = sorted(p.relative_to(out) for p in out.rglob("*_*.png"))
    assert singles and singles == sorted(p.relative_to(batched) for p in batched.rglob("*_*.png"))
    for name in singles:  # the same seeds: equal up to float rounding in the batched UNet calls
        difference = np.abs(np.asarray(Image.open(out / name), np.int16) - np.asarray(Image.open(batched / name), np.int16))
        assert difference.max() <= 2, name


def test_optional_metric_failing_while_scoring_is_unavailable(image_run, monkeypatch):
    out, argv, _ = image_run
    args = ev.parse_args(argv)
    args.metrics = ["imagereward", "clip"]
    rows = read_jsonl(out / "manifest.jsonl")

    class Broken:
        def score(self, images, prompts):
            raise RuntimeError("boom")

        def describe(self):
            return {}

    build = ev.build_scorer
    monkeypatch.setattr(ev, "build_scorer", lambda name, *a: Broken() if name in ("imagereward", "aesthetic") else build(name, *a))
    per_item, _, notes = ev.score_all(args, args.models, rows, "cpu")
    assert notes["imagereward"]["status"] == "unavailable: scoring failed (RuntimeError: boom)"
    assert notes["clip"]["status"] == "ok" and len(per_item["clip"]) == 18 and "imagereward" not in per_item
    args.metrics = ["aesthetic"]  # a required metric that breaks stops the run
    with pytest.raises(RuntimeError, match="boom"):
        ev.score_all(args, args.models, rows, "cpu")


def test_cli_imagereward_unavailable_exit_0(tiny_model_dir, prompt_file, scorer_files, tmp_path):
    if imagereward_imports():
        pytest.skip("image-reward imports here")
    out = tmp_path / "eval"
    result = run_script(["--pretrained_model_name_or_path", tiny_model_dir, "--prompts", prompt_file, "--output_dir",
                         str(out), "--num_inference_steps", "2", "--num_prompts", "2", "--metrics", "clip", "imagereward",
                         "--clip_model", scorer_files["clip"], "--bootstrap_samples", "50"])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["imagereward"]["status"].startswith("unavailable: the image-reward package does not import")
    assert report["metrics"]["clip"]["status"] == "ok" and "imagereward" not in report["results"]["base"]
    assert "**Unavailable**" in (out / "report.md").read_text()
    assert "Metric imagereward is unavailable" in result.stderr


# ---------------------------------------------------------------------------
# End to end: tiny AnimateDiff with a motion LoRA and a MotionAdapter
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_setup(tiny_model_dir, tiny_motion_adapter_dir, tmp_path_factory):
    from diffusers import AnimateDiffPipeline, MotionAdapter, UNet2DConditionModel, UNetMotionModel

    root = tmp_path_factory.mktemp("video_eval_inputs")
    metadata = sspo_tiny.build_tiny_video_dataset(str(root / "chronomagic"), num_videos=3, num_frames=8, size=64)
    unet = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet"),
                                       MotionAdapter.from_pretrained(tiny_motion_adapter_dir))
    motion_lora = save_tiny_lora(AnimateDiffPipeline, unet, r".*motion_modules.*\.(to_q|to_k|to_v|to_out\.0)",
                                 root / "motion_lora", 0.5)
    trained_adapter = sspo_tiny.build_tiny_motion_adapter(str(root / "motion_modules_run"), seed=1)
    return {"metadata": metadata, "videos": str(root / "chronomagic" / "videos"), "motion_lora": motion_lora,
            "trained_adapter": trained_adapter}


def test_video_eval_end_to_end(tiny_model_dir, tiny_motion_adapter_dir, video_setup, scorer_files, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    argv = ["--pretrained_model_name_or_path", tiny_model_dir, "--motion_adapter_name_or_path", tiny_motion_adapter_dir,
            "--lora_path", video_setup["motion_lora"], video_setup["trained_adapter"], "--model_names", "lora", "motion",
            "--prompts", video_setup["metadata"], "--output_dir", str(out),
            "--num_frames", "4", "--num_inference_steps", "2", "--bootstrap_samples", "100",
            "--metrics", "clipsim", "temporal_consistency", "fid", "fvd", "psnr", "--clip_model", scorer_files["clip"],
            "--reference_videos", video_setup["videos"], "--fid_feature_extractor", scorer_files["fid"],
            "--fvd_detector", scorer_files["fvd"], "--fvd_resolution", "32"]
    args = ev.parse_args(argv)
    assert [(s.name, s.kind) for s in args.models] == [("base", "base"), ("lora", "lora"), ("motion", "motion_adapter")]
    results = ev.main(args)

    manifest = read_jsonl(out / "manifest.jsonl")
    assert len(manifest) == 9 and manifest[0]["prompt_id"] == "tiny00000" and manifest[0]["path"].endswith(".mp4")
    frames = {row["model"]: ev.read_video_frames(str(out / row["path"])) for row in manifest if row["prompt_index"] == 0}
    assert all(len(f) == 4 and f[0].size == (64, 64) for f in frames.values())
    assert not np.array_equal(np.asarray(frames["base"][2]), np.asarray(frames["lora"][2]))
    assert not np.array_equal(np.asarray(frames["base"][2]), np.asarray(frames["motion"][2]))
    for model in ("base", "lora", "motion"):
        for metric in ("clipsim", "temporal_consistency", "psnr"):
            assert results[model][metric]["n_prompts"] == 3 and np.isfinite(results[model][metric]["mean"])
        for metric in ("fid", "fvd"):
            assert results[model][metric]["set_level"] and np.isfinite(results[model][metric]["value"])
            assert results[model][metric]["n_reference"] == 3 and results[model][metric]["n_generated"] == 3
    assert "win_rate_vs_base" in results["motion"]["psnr"] and "win_rate_vs_base" not in results["motion"]["fvd"]
    with Image.open(out / "grid.gif") as gif:
        assert gif.n_frames == 4 and gif.width == 3 * 128
    assert (out / "grid.png").is_file() and "| FVD ↓ |" in (out / "report.md").read_text()

    # The base motion modules come back after a trained MotionAdapter: regenerate one video of each
    # trained model with the MotionAdapter now first; the LoRA video must come out as before.
    lora_video, motion_video = out / "lora" / "00001_00.mp4", out / "motion" / "00001_00.mp4"
    before = [np.asarray(f) for f in ev.read_video_frames(str(lora_video))]
    lora_video.unlink()
    motion_video.unlink()
    swapped = list(argv)
    swapped[swapped.index("--lora_path") + 1: swapped.index("--lora_path") + 3] = [video_setup["trained_adapter"],
                                                                                  video_setup["motion_lora"]]
    swapped[swapped.index("--model_names") + 1: swapped.index("--model_names") + 3] = ["motion", "lora"]
    swapped = swapped[:swapped.index("--metrics")] + ["--metrics", "clipsim", "--clip_model", scorer_files["clip"]]
    ev.main(ev.parse_args(swapped))
    after = [np.asarray(f) for f in ev.read_video_frames(str(lora_video))]
    assert len(after) == 4 and all(np.array_equal(a, b) for a, b in zip(before, after))
