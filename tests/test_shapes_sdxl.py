"""The SDXL-shaped shapes base: its architecture, its pretraining (from scratch and warm-started from the
SD1.5-shaped base), the builders that read it (preferences, check), and ``pretrain_sdxl``'s bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch

import shapes_world as sw


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTION = "a big red circle in the center on a blue background"


@pytest.fixture(scope="module")
def random_sd15_model(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    path = str(tmp_path_factory.mktemp("shapes_sd15") / "model")
    StableDiffusionPipeline(**sw.build_shapes_components(seed=0), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(path)
    return path


def _tiny_sdxl_pretraining(path, vae_model, **kwargs):
    torch.set_num_threads(1)
    return sw.pretrain_sdxl_model(str(path), vae_model, unet_steps=4, num_renders=32, batch_size=4, save_every=2,
                                  **kwargs)


@pytest.fixture(scope="module")
def tiny_sdxl_model(random_sd15_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("shapes_sdxl") / "model"
    _tiny_sdxl_pretraining(path, random_sd15_model)
    return str(path)


def _unet_state(path):
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "unet", "diffusion_pytorch_model.safetensors"))


def test_the_saved_base_is_an_sdxl_pipeline_with_two_encoders_and_micro_conditioning(tiny_sdxl_model):
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    pipeline = sw.load_pipeline(tiny_sdxl_model)
    assert isinstance(pipeline, StableDiffusionXLPipeline)
    assert type(pipeline.text_encoder) is CLIPTextModel
    assert isinstance(pipeline.text_encoder_2, CLIPTextModelWithProjection)
    unet = pipeline.unet.config
    assert unet.addition_embed_type == "text_time"
    widths = pipeline.text_encoder.config.hidden_size + pipeline.text_encoder_2.config.hidden_size
    assert unet.cross_attention_dim == widths
    # The pooled embedding plus six micro-conditioning numbers feed the added embedding.
    assert unet.projection_class_embeddings_input_dim == (pipeline.text_encoder_2.config.projection_dim
                                                          + 6 * unet.addition_time_embed_dim)
    assert pipeline.config.force_zeros_for_empty_prompt
    images = sw.generate(pipeline, [CAPTION], [0], num_inference_steps=2)
    assert images[0].size == (sw.IMAGE_SIZE, sw.IMAGE_SIZE)


def test_pretraining_conditions_the_unet_as_the_stock_pipeline_does(tiny_sdxl_model):
    """The embeddings pretraining feeds the UNet are StableDiffusionXLPipeline.encode_prompt's."""
    pipeline = sw.load_pipeline(tiny_sdxl_model)
    ids = pipeline.tokenizer([CAPTION, ""], padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
    with torch.no_grad():
        prompt_embeds, pooled = sw.sdxl_prompt_embeddings([pipeline.text_encoder, pipeline.text_encoder_2], ids)
        stock, _, stock_pooled, _ = pipeline.encode_prompt([CAPTION, ""], do_classifier_free_guidance=False)
    assert torch.equal(prompt_embeds, stock) and torch.equal(pooled, stock_pooled)


def test_sdxl_pretraining_is_deterministic_and_resumes_to_the_same_weights(random_sd15_model, tiny_sdxl_model, tmp_path,
                                                                          monkeypatch):
    real_save = sw._save_state

    def save_then_stop(path, **state):
        real_save(path, **state)
        if state.get("unet_step") == 2:
            raise KeyboardInterrupt("stopped mid-pretraining")

    monkeypatch.setattr(sw, "_save_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _tiny_sdxl_pretraining(tmp_path / "stopped", random_sd15_model)
    assert not os.path.exists(tmp_path / "stopped" / "model_index.json")
    monkeypatch.setattr(sw, "_save_state", real_save)
    info = _tiny_sdxl_pretraining(tmp_path / "stopped", random_sd15_model)
    whole, resumed = _unet_state(tiny_sdxl_model), _unet_state(tmp_path / "stopped")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not os.path.exists(tmp_path / "stopped" / ".pretrain_state.pt")
    assert info["unet_steps"] == 4 and info["threads"] == 1
    # The VAE is the SD1.5-shaped base's, scaling factor and all.
    with open(os.path.join(random_sd15_model, "vae", "config.json")) as f, \
            open(tmp_path / "stopped" / "vae" / "config.json") as g:
        assert json.load(f)["scaling_factor"] == json.load(g)["scaling_factor"]


def test_the_warm_start_copies_the_sd15_base_and_starts_the_new_inputs_at_zero(random_sd15_model):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(random_sd15_model, "tokenizer"))
    components = sw.build_shapes_sdxl_components(seed=1, tokenizer=tokenizer)
    sw.warm_start_sdxl(components, random_sd15_model)
    source = UNet2DConditionModel.from_pretrained(os.path.join(random_sd15_model, "unet")).state_dict()
    target = components["unet"].state_dict()
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    width = source[key].shape[1]
    assert torch.equal(target[key][:, :width], source[key]) and not target[key][:, width:].any()
    assert torch.equal(target["conv_in.weight"], source["conv_in.weight"])
    proj = "down_blocks.0.attentions.0.proj_in.weight"
    assert torch.equal(target[proj], source[proj].flatten(1))
    assert not target["add_embedding.linear_2.weight"].any()
    text = CLIPTextModel.from_pretrained(os.path.join(random_sd15_model, "text_encoder"))
    source_layer = getattr(text, "text_model", text).encoder.layers[1].mlp.fc1.weight
    for name in ("text_encoder", "text_encoder_2"):
        encoder = components[name]
        assert torch.equal(getattr(encoder, "text_model", encoder).encoder.layers[1].mlp.fc1.weight, source_layer)


def test_preferences_and_check_read_the_sdxl_base(tiny_sdxl_model, tmp_path):
    import datasets

    summary = sw.make_image_preferences(tiny_sdxl_model, str(tmp_path / "prefs"), num_inference_steps=2,
                                        num_captions=4, margin=0.0)
    rows = datasets.load_dataset(str(tmp_path / "prefs"), split="train")
    assert summary["captions"] == 4 == len(rows)
    held = {s.caption for s in sw.image_split()[1]}
    assert not held & set(rows["caption"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(CAPTION + "\n" + "a small green square at the top left on a white background\n")
    result = sw.check_base(tiny_sdxl_model, str(prompts), images_per_prompt=1, num_inference_steps=2)
    assert 0 <= result["base"] <= 1 and result["renderer"] > 0.9


@pytest.mark.parametrize("flags,message", [
    (["--unet_steps", "0"], "--unet_steps must be at least 1"),
    (["--batch_size", "-1"], "--batch_size must be at least 1"),
    (["--unet_lr", "0"], "--unet_lr must be positive"),
    (["--ema_decay", "1.5"], "--ema_decay must be in [0, 1)"),
    (["--mismatch_rate", "2"], "--mismatch_rate must be in [0, 1]"),
    (["--vae_model", "no-such-model"], "--vae_model no-such-model has no vae/config.json"),
    (["--init_model", "no-such-model"], "--init_model no-such-model has no unet/config.json"),
    (["--unet_steps", "many"], "invalid int value"),
], ids=["steps", "batch", "lr", "ema", "mismatch", "vae-model", "init-model", "not-a-number"])
def test_pretrain_sdxl_refuses_bad_input_with_one_error_line_and_writes_nothing(tmp_path, capsys, flags, message):
    """Type errors stop in argparse (exit 2, one error line); range and folder errors raise SSPOInputError,
    which the command line turns into one 'error:' line and exit status 2 (run_with_clear_errors)."""
    from sspo_utils import SSPOInputError

    output_dir = tmp_path / "out"
    with pytest.raises((SystemExit, SSPOInputError)) as stop:
        sw.parse_args(["pretrain_sdxl", "--output_dir", str(output_dir),
                       "--vae_model", os.path.join(REPO_ROOT, "models", "shapes-sd15"), *flags])
    if stop.type is SystemExit:
        assert stop.value.code == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(errors) == 1 and message in errors[0], errors
    else:
        assert message in str(stop.value)
    assert not output_dir.exists()


def test_pretrain_sdxl_will_not_overwrite_a_model(tiny_sdxl_model):
    """From the command line: exit status 2, one error line, the model untouched."""
    before = _unet_state(tiny_sdxl_model)
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "shapes_world.py"), "pretrain_sdxl",
                             "--output_dir", tiny_sdxl_model], capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=600)
    assert result.returncode == 2 and "already holds a model" in result.stderr
    assert len([line for line in result.stderr.splitlines() if "error:" in line]) == 1
    assert "Traceback" not in result.stderr
    after = _unet_state(tiny_sdxl_model)
    assert all(torch.equal(before[k], after[k]) for k in before)
