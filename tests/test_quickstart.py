"""The README's first command (tiny default, end to end), run exactly as written minus the install line."""

import os
import re
import subprocess
import sys

import pytest


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_block(marker):
    text = open(os.path.join(REPO_ROOT, "README.md")).read()
    match = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)```", text, re.S)
    assert match, f"README has no ```bash block after <!-- {marker} -->"
    return match.group(1)


@pytest.mark.slow
def test_readme_quickstarts_train_the_tiny_defaults(tmp_path):
    lines = readme_block("quickstart").strip().splitlines()
    assert "pip install -r requirements.txt" in lines[0]
    command = "\n".join(lines[1:]) + "\n" + readme_block("quickstart-video")  # the venv already exists here
    # Run in a scratch folder that looks like the repo, with .venv pointing at this interpreter's venv.
    for name in ("train_sspo_sd15.py", "train_sspo_animatediff.py", "sspo_utils.py", "sspo_tiny.py"):
        os.symlink(os.path.join(REPO_ROOT, name), tmp_path / name)
    os.symlink(sys.prefix, tmp_path / ".venv")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-5000:]
    image_dir = tmp_path / "sspo-tiny-lora"
    assert (image_dir / "pytorch_lora_weights.safetensors").is_file()
    assert (image_dir / "README.md").is_file()
    assert list((image_dir / "validation").glob("final_lora_*.png"))
    assert list((image_dir / "validation").glob("final_base_*.png"))
    video_dir = tmp_path / "sspo-tiny-animatediff"
    assert (video_dir / "pytorch_lora_weights.safetensors").is_file()
    assert (video_dir / "image_0.gif").is_file() and "image_0.gif" in (video_dir / "README.md").read_text()
    assert list((video_dir / "validation").glob("final_trained_*.mp4"))


def test_readme_test_command_matches_ci():
    command = readme_block("tests").strip()
    ci = open(os.path.join(REPO_ROOT, ".ci", "run")).read()
    for line in command.splitlines():
        step = line.strip().rstrip("\\").strip()
        for part in step.split("&&"):
            assert part.strip() in ci, f"README test step {part.strip()!r} is not what CI runs"
