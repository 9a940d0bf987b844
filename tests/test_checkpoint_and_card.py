"""LoRA save/resume into the existing adapter, atomic checkpoints, model card, hub upload, optional deps."""

import os
import sys
import types

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

import sspo_utils
from sspo_utils import SSPOInputError


def lora_unet(model_dir, rank=4):
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    return unet


def test_lora_restores_into_existing_adapter(tiny_model_dir, tmp_path):
    trained = lora_unet(tiny_model_dir)
    with torch.no_grad():
        for param in trained.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    path = sspo_utils.save_lora_atomically(StableDiffusionPipeline, str(tmp_path), trained)
    assert os.path.basename(path) == "pytorch_lora_weights.safetensors"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]

    fresh = lora_unet(tiny_model_dir)
    optimizer_params = [p for p in fresh.parameters() if p.requires_grad]
    sspo_utils.load_lora_into_existing_adapter(StableDiffusionPipeline, fresh, str(tmp_path))
    assert list(fresh.peft_config) == ["default"]  # no second adapter
    expected, restored = get_peft_model_state_dict(trained), get_peft_model_state_dict(fresh)
    assert expected.keys() == restored.keys()
    assert all(torch.equal(expected[k], restored[k]) for k in expected)
    # The optimizer's parameter objects are the ones that now hold the restored values.
    assert [p for p in fresh.parameters() if p.requires_grad] == optimizer_params
    assert any(p.abs().sum() > 0 for name, p in fresh.named_parameters() if "lora_B" in name)


def test_lora_from_other_rank_is_refused(tiny_model_dir, tmp_path):
    sspo_utils.save_lora_atomically(StableDiffusionPipeline, str(tmp_path), lora_unet(tiny_model_dir, rank=4))
    with pytest.raises(SSPOInputError, match="--rank"):
        sspo_utils.load_lora_into_existing_adapter(StableDiffusionPipeline, lora_unet(tiny_model_dir, rank=2), str(tmp_path))


def test_latest_ignores_incomplete_checkpoints(tmp_path):
    for name in ("checkpoint-2", "checkpoint-10", ".tmp-checkpoint-12", "checkpoint-x", "checkpoint-11"):
        (tmp_path / name).mkdir()
    for complete in ("checkpoint-2", "checkpoint-10", ".tmp-checkpoint-12"):
        (tmp_path / complete / sspo_utils.RUN_CONFIG_NAME).write_text("{}")
    # checkpoint-11 lacks the run config written last (a copy cut short): not complete.
    assert sspo_utils.resolve_resume_checkpoint("latest", str(tmp_path)).endswith("checkpoint-10")
    assert sspo_utils.resolve_resume_checkpoint("latest", str(tmp_path / "empty")) is None
    with pytest.raises(SSPOInputError, match="no such checkpoint"):
        sspo_utils.resolve_resume_checkpoint("checkpoint-7", str(tmp_path))


def test_run_config_mismatch_names_the_setting(tmp_path):
    (tmp_path / sspo_utils.RUN_CONFIG_NAME).write_text('{"rank": 8, "loss_type": "sspo"}')
    sspo_utils.check_run_config(str(tmp_path), {"rank": 8, "loss_type": "sspo"})
    with pytest.raises(SSPOInputError, match="loss_type='sspo'.*loss_type='dpo'"):
        sspo_utils.check_run_config(str(tmp_path), {"rank": 8, "loss_type": "dpo"})
    with pytest.raises(SSPOInputError, match="not written by an SSPO script"):
        sspo_utils.check_run_config(str(tmp_path / "nothing"), {"rank": 8})


def test_model_card_has_metadata_settings_and_images(tmp_path):
    from PIL import Image

    images = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 255, 0))]
    path = sspo_utils.save_model_card(str(tmp_path), "org/base-model", "yuvalkirstain/pickapic_v2",
                                      {"loss_type": "sspo", "ssr": "sft", "beta_dpo": 5000.0}, images,
                                      repo_id="me/sspo-lora", validation_prompts=["a cat"])
    card = open(path).read()
    assert card.startswith("---\nbase_model: org/base-model\n")
    for expected in ("- sspo\n", "- lora\n", "- diffusers\n", "- yuvalkirstain/pickapic_v2", "| `ssr` | `sft` |",
                     "url: image_1.png", 'text: "a cat"', 'pipe.load_lora_weights("me/sspo-lora")'):
        assert expected in card
    assert (tmp_path / "image_0.png").is_file() and (tmp_path / "image_1.png").is_file()


def test_push_to_hub_uploads_output_dir_with_card(monkeypatch, tmp_path):
    import huggingface_hub
    import train_sspo_sd15 as train

    calls = {}
    monkeypatch.setattr(huggingface_hub, "create_repo",
                        lambda repo_id, exist_ok, token: types.SimpleNamespace(repo_id=f"me/{repo_id}"))
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kwargs: calls.update(kwargs))
    args = train.parse_args(["--pretrained_model_name_or_path", "org/base", "--dataset_name", "org/data",
                             "--output_dir", str(tmp_path), "--push_to_hub", "--hub_model_id", "sspo-test"])
    train.finish_run(args, None, None, None, None, None, torch.float32, step=0)  # no validation prompts
    assert calls["repo_id"] == "me/sspo-test" and calls["folder_path"] == str(tmp_path)
    assert "checkpoint-*" in calls["ignore_patterns"]
    assert "# me/sspo-test" in (tmp_path / "README.md").read_text()


def test_8bit_adam_without_bitsandbytes_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import now fails as if not installed
    with pytest.raises(SSPOInputError, match="pip install bitsandbytes"):
        sspo_utils.optimizer_class(use_8bit_adam=True)
    assert sspo_utils.optimizer_class(use_8bit_adam=False) is torch.optim.AdamW


def test_8bit_adam_with_bitsandbytes_steps_on_cpu():
    pytest.importorskip("bitsandbytes")
    param = torch.nn.Parameter(torch.randn(64, 64))
    optimizer = sspo_utils.optimizer_class(use_8bit_adam=True)([param], lr=1e-2)
    before = param.detach().clone()
    param.sum().backward()
    optimizer.step()
    assert not torch.equal(before, param.detach())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_xformers_without_cuda_is_a_clear_error():
    with pytest.raises(SSPOInputError, match="needs a CUDA GPU"):
        sspo_utils.check_xformers_available()


def test_input_error_message_unwraps_dataloader_worker_text():
    wrapped = SSPOInputError("Caught SSPOInputError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                             "call last):\n  File \"x.py\", line 1\nsspo_utils.SSPOInputError: Could not decode x.png. Fix it.\n")
    assert sspo_utils.input_error_message(wrapped) == "Could not decode x.png. Fix it."


class FakeAccelerator:
    """Just what save_checkpoint_atomically needs; ``fail_after`` files simulates a crash or a full disk."""

    is_main_process, process_index = True, 0

    def __init__(self, fail=False):
        self.fail = fail

    def wait_for_everyone(self):
        pass

    def save_state(self, directory):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "optimizer.bin"), "wb") as f:
            f.write(b"x" * 10)
        if self.fail:
            raise OSError(28, "No space left on device")


def test_checkpoint_rotation_and_a_failed_write_keep_the_last_complete_checkpoint(tmp_path):
    param = torch.nn.Parameter(torch.zeros(3))
    pool, generators = sspo_utils.ReferencePool([("w", param)]), sspo_utils.TrainingGenerators(0)
    for step in (1, 2, 3):
        sspo_utils.save_checkpoint_atomically(FakeAccelerator(), str(tmp_path), step, {"rank": 4}, generators, pool,
                                              total_limit=1)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3"]  # limit 1 keeps the newest complete one
    with pytest.raises(OSError, match="No space left"):
        sspo_utils.save_checkpoint_atomically(FakeAccelerator(fail=True), str(tmp_path), 4, {"rank": 4}, generators,
                                              pool, total_limit=1)
    # The interrupted write is left as a .tmp- folder; the last complete checkpoint is intact and still "latest".
    assert sorted(os.listdir(tmp_path)) == [".tmp-checkpoint-4", "checkpoint-3"]
    assert sspo_utils.resolve_resume_checkpoint("latest", str(tmp_path)).endswith("checkpoint-3")
    restored = sspo_utils.ReferencePool([("w", torch.nn.Parameter(torch.ones(3)))])
    restored.load(str(tmp_path / "checkpoint-3" / sspo_utils.POOL_FILE_NAME))
    assert restored.steps == [0] and torch.equal(restored.snapshots[0][0], torch.zeros(3))
    other = sspo_utils.TrainingGenerators(123)
    sspo_utils.load_generators(str(tmp_path / "checkpoint-3"), other, 0)
    assert torch.equal(torch.randn(4, generator=other.noise), torch.randn(4, generator=generators.noise))
