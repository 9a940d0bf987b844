"""evaluate_sspo.py on an SDXL base: the pipeline class comes from the model folder's
model_index.json, and SDXL LoRAs (saved as train_sspo_sdxl.py saves them) load into it."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate_sspo as ev
import sspo_tiny


PROMPTS = ["a small red circle in the center on a blue background", "a big yellow square at the top left on a green background"]


@pytest.fixture(scope="module")
def sdxl_model_dir(tmp_path_factory):
    return sspo_tiny.build_tiny_sdxl_pipeline(str(tmp_path_factory.mktemp("eval_sdxl") / "model"))


def save_sdxl_lora(model_dir, path, scale):
    """A LoRA on the tiny SDXL UNet with lora_B ~ N(0, scale) (0: the base model), in diffusers' format."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    StableDiffusionXLPipeline.save_lora_weights(
        str(path), unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))
    return str(path)


def test_sdxl_base_and_its_loras_are_evaluated(sdxl_model_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    loras = [save_sdxl_lora(sdxl_model_dir, tmp_path / name, scale) for name, scale in (("xl_random", 0.5), ("xl_zero", 0.0))]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "eval"
    args = ev.parse_args(["--pretrained_model_name_or_path", sdxl_model_dir, "--prompts", str(prompts),
                          "--output_dir", str(out), "--lora_path", *loras, "--images_per_prompt", "1",
                          "--num_inference_steps", "2", "--seed", "0", "--bootstrap_samples", "50",
                          "--metrics", "shapes_reward"])
    assert ev.is_sdxl_base(args)
    pipeline, _ = ev.load_pipeline(args, "cpu", torch.float32)
    assert isinstance(pipeline, StableDiffusionXLPipeline)
    del pipeline

    results = ev.main(args)
    assert set(results) == {"base", "xl_random", "xl_zero"}
    for index in range(len(PROMPTS)):
        name = f"{index:05d}_00.png"
        base = np.asarray(Image.open(out / "base" / name))
        assert base.shape == (64, 64, 3)
        assert np.array_equal(base, np.asarray(Image.open(out / "xl_zero" / name)))  # paired seeds
        assert not np.array_equal(base, np.asarray(Image.open(out / "xl_random" / name)))  # the LoRA is applied
    report = json.loads((out / "report.json").read_text())
    assert report["results"]["xl_random"]["shapes_reward"]["n_prompts"] == len(PROMPTS)


def test_sd15_base_is_not_taken_for_sdxl(tiny_model_dir):
    args = ev.parse_args(["--pretrained_model_name_or_path", tiny_model_dir, "--prompts", "pickapic",
                          "--metrics", "clip"])
    assert not ev.is_sdxl_base(args)
