"""experiments/eval_grid.py: one panel per n-th caption with one image per model, and a clear error for a
model the evaluation does not hold."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from experiments import eval_grid


def fake_evaluation(folder, models, prompts=5):
    rows = []
    for model in models:
        (folder / model).mkdir(parents=True)
        for i in range(prompts):
            path = f"{model}/{i:05d}_00.png"
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / path)
            rows.append({"model": model, "prompt_index": i, "image_index": 0, "path": path,
                         "scores": {"shapes_reward": 0.1 * i}})
    (folder / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "manifest.jsonl").write_text("".join(json.dumps({"prompt_index": i, "prompt": f"caption {i}"}) + "\n"
                                                   for i in range(prompts)))


def test_grid_has_one_image_per_model_in_each_panel_of_every_nth_caption(tmp_path):
    fake_evaluation(tmp_path / "eval", ["base", "a", "b"])
    out = eval_grid.model_grid(str(tmp_path / "eval"), ["base", "a", "b"], str(tmp_path / "g.png"), every=2,
                               columns=2, cell=16)
    with Image.open(out) as grid:
        width, height = grid.size
        # 3 captions (0, 2, 4) in 2 columns: 2 rows; each panel is 3 cells wide
        assert width == 2 * 3 * (16 + 4) + 12 + 2 * 12
        assert height == 28 + 2 * (2 * 18 + 4 + 16 + 18 + 12) + 12
        # caption 2's image of model "a" (red 80) sits in the first row's second panel, second cell
        assert grid.getpixel((12 + 3 * 20 + 12 + 20 + 8, 28 + 40 + 8))[0] == 80


def test_a_model_missing_from_the_evaluation_is_one_error_line(tmp_path):
    fake_evaluation(tmp_path / "eval", ["base"])
    with pytest.raises(ValueError, match="no images of sspo"):
        eval_grid.model_grid(str(tmp_path / "eval"), ["base", "sspo"], str(tmp_path / "g.png"))
    result = subprocess.run([sys.executable, "experiments/eval_grid.py", str(tmp_path / "eval"), "--output",
                             str(tmp_path / "g.png")], capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()  # libraries may log on import (bitsandbytes on a CPU does)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith("error:") and "sspo" in lines[-1] and sum(line.startswith("error:") for line in lines) == 1
    assert not (tmp_path / "g.png").exists()
