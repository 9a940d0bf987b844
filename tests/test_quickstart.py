"""The README's quickstarts (the shipped shapes-world models, end to end), run exactly as written minus the
install line: each must raise the ground-truth reward on held-out captions, with the same seeds."""

import json
import os
import subprocess

import pytest

from experiments import readme_quickstarts

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_block(marker):
    return readme_quickstarts.readme_command(marker, seed=0)


def run_readme_block(marker, tmp_path, skip_install):
    """Run a README block in a scratch folder that looks like the repo, with .venv pointing at this
    interpreter's venv (so the install line, already done here, is skipped)."""
    lines = readme_block(marker).strip().splitlines()
    if skip_install:
        assert "pip install -r requirements.txt" in lines[0]
        lines = lines[1:]
    readme_quickstarts.link_repository(str(tmp_path))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-5000:]
    return result


def held_out_rewards(report_path, metric):
    results = json.load(open(report_path))["results"]
    (trained,) = [name for name in results if name != "base"]
    return results["base"][metric], results[trained][metric]


@pytest.fixture(scope="module")
def image_quickstart(tmp_path_factory):
    path = tmp_path_factory.mktemp("image-quickstart")
    run_readme_block("quickstart", path, skip_install=True)
    return path


@pytest.fixture(scope="module")
def video_quickstart(tmp_path_factory):
    path = tmp_path_factory.mktemp("video-quickstart")
    run_readme_block("quickstart-video", path, skip_install=False)
    return path


@pytest.mark.slow
def test_readme_quickstart_writes_the_lora_card_samples_and_a_paired_report(image_quickstart):
    out = image_quickstart / "sspo-shapes-lora"
    assert (out / "pytorch_lora_weights.safetensors").is_file() and (out / "README.md").is_file()
    assert list((out / "validation").glob("final_lora_*.png")) and list((out / "validation").glob("final_base_*.png"))
    base, lora = held_out_rewards(image_quickstart / "sspo-shapes-eval" / "report.json", "shapes_reward")
    # Same prompts (held out of training) and the same seeds for both.
    assert base["n_items"] == lora["n_items"] > 0


@pytest.mark.slow
def test_readme_quickstart_aligns_the_shapes_model(image_quickstart):
    base, lora = held_out_rewards(image_quickstart / "sspo-shapes-eval" / "report.json", "shapes_reward")
    assert lora["mean"] > base["mean"], (base, lora)
    assert lora["win_rate_vs_base"]["win_rate"] > 0.5, lora  # more captions improve than get worse


@pytest.mark.slow
def test_readme_video_quickstart_writes_the_lora_card_and_a_paired_report(video_quickstart):
    out = video_quickstart / "sspo-shapes-animatediff"
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "image_0.gif").is_file() and "image_0.gif" in (out / "README.md").read_text()
    base, lora = held_out_rewards(video_quickstart / "sspo-shapes-video-eval" / "report.json", "shapes_video_reward")
    assert base["n_items"] == lora["n_items"] > 0


@pytest.mark.slow
def test_readme_video_quickstart_aligns_the_shapes_video_model(video_quickstart):
    base, lora = held_out_rewards(video_quickstart / "sspo-shapes-video-eval" / "report.json", "shapes_video_reward")
    assert lora["mean"] > base["mean"], (base, lora)
    assert lora["win_rate_vs_base"]["win_rate"] > 0.5, lora


def test_readme_test_command_matches_ci():
    command = readme_block("tests").strip()
    ci = open(os.path.join(REPO_ROOT, ".ci", "run")).read()
    for line in command.splitlines():
        step = line.strip().rstrip("\\").strip()
        for part in step.split("&&"):
            assert part.strip() in ci, f"README test step {part.strip()!r} is not what CI runs"
