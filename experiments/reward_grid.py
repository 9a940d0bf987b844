# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""A picture of an ``evaluate_sspo.py`` run: prompts as rows, models as columns, the first image of
each prompt (the same seed for every model) with its reward written under it.

    python experiments/reward_grid.py sspo-shapes-eval --models base=base "SSPO LoRA=sspo-shapes-lora" \
        --output docs/quickstart_grid.png
"""

import argparse
import json
import os
import sys
from typing import Dict

from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluate_sspo import caption_font, fit_text  # noqa: E402


def reward_grid(eval_dir: str, models: Dict[str, str], output: str, num_prompts: int = 6, cell: int = 96) -> str:
    """``models`` maps a column label to a model name of the evaluation. Returns ``output``."""
    rows = {}
    with open(os.path.join(eval_dir, "scores.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if row["image_index"] == 0:
                rows[(row["model"], row["prompt_index"])] = row
    with open(os.path.join(eval_dir, "manifest.jsonl")) as f:
        prompts = {}
        for line in f:
            row = json.loads(line)
            prompts[row["prompt_index"]] = row["prompt"]
    shown = sorted(prompts)[:num_prompts]
    font, caption, label = caption_font(), 16, 14
    width, header = cell * len(models), 18
    grid = Image.new("RGB", (width, header + len(shown) * (caption + cell + label)), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(models):
        draw.text((c * cell + 3, 3), fit_text(draw, name, font, cell - 6), fill="black", font=font)
    for r, prompt_index in enumerate(shown):
        top = header + r * (caption + cell + label)
        draw.text((3, top + 2), fit_text(draw, prompts[prompt_index], font, width - 6), fill="black", font=font)
        for c, model in enumerate(models.values()):
            row = rows[(model, prompt_index)]
            with Image.open(os.path.join(eval_dir, row["path"])) as image:
                if getattr(image, "n_frames", 1) > 1:
                    image.seek(image.n_frames // 2)
                grid.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST), (c * cell, top + caption))
            value = next(iter(row["scores"].values()))
            draw.text((c * cell + 3, top + caption + cell + 1), f"reward {value:.2f}", fill="black", font=font)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    grid.save(output)
    return output


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Grid of an evaluation's images with the reward under each.")
    parser.add_argument("eval_dir")
    parser.add_argument("--models", nargs="+", required=True, help="LABEL=MODEL_NAME pairs, one per column.")
    parser.add_argument("--output", required=True)
    parser.add_argument("--num_prompts", type=int, default=6)
    return parser.parse_args(input_args)


if __name__ == "__main__":
    args = parse_args()
    print(reward_grid(args.eval_dir, dict(pair.split("=", 1) for pair in args.models), args.output, args.num_prompts))
