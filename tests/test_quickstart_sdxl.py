"""The README's SDXL quickstart (the shipped SDXL-shaped shapes base, end to end), run exactly as written:
it must raise the ground-truth reward on held-out captions, with the same seeds for base and LoRA."""

import pytest

from test_quickstart import held_out_rewards, run_readme_block


@pytest.fixture(scope="module")
def sdxl_quickstart(tmp_path_factory):
    path = tmp_path_factory.mktemp("sdxl-quickstart")
    run_readme_block("quickstart-sdxl", path, skip_install=False)
    return path


@pytest.mark.slow
def test_readme_sdxl_quickstart_writes_a_stock_sdxl_lora_and_a_paired_report(sdxl_quickstart):
    out = sdxl_quickstart / "sspo-shapes-sdxl-lora"
    assert (out / "pytorch_lora_weights.safetensors").is_file() and (out / "README.md").is_file()
    base, lora = held_out_rewards(sdxl_quickstart / "sspo-shapes-sdxl-eval" / "report.json", "shapes_reward")
    assert base["n_items"] == lora["n_items"] > 0


@pytest.mark.slow
def test_readme_sdxl_quickstart_aligns_the_sdxl_shapes_model(sdxl_quickstart):
    base, lora = held_out_rewards(sdxl_quickstart / "sspo-shapes-sdxl-eval" / "report.json", "shapes_reward")
    assert lora["mean"] > base["mean"], (base, lora)
    assert lora["win_rate_vs_base"]["win_rate"] > 0.5, lora
