# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""The README's picture: base vs SSPO LoRA on held-out captions, from the output folder of the README's
quickstart (``evaluate_sspo.py ... --output_dir sspo-shapes-eval``). Run from the repository root after the
quickstart:

    python experiments/quickstart_grid.py sspo-shapes-eval --output docs/images/quickstart_grid.png

The captions are chosen by a fixed rule, never by result: every ``--every``-th prompt of the evaluation, in the
order of its prompt file, starting with the first. Each panel shows the caption in full, the first image of that
caption for the base and for the LoRA (the same sampling seed), and each image's reward.
"""

import argparse
import json
import os
import sys
import textwrap

from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluate_sspo import caption_font  # noqa: E402


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def pair_grid(eval_dir: str, base: str, trained: str, output: str, every: int = 8, columns: int = 4,
              cell: int = 128) -> str:
    """Panels of (caption, base image, trained image), ``columns`` panels a row. Returns ``output``."""
    first_images = {(row["model"], row["prompt_index"]): row
                    for row in read_jsonl(os.path.join(eval_dir, "scores.jsonl")) if row["image_index"] == 0}
    prompts = {row["prompt_index"]: row["prompt"] for row in read_jsonl(os.path.join(eval_dir, "manifest.jsonl"))}
    shown = sorted(prompts)[::every]
    font, small = caption_font(15), caption_font(13)
    gap, line = 12, 18
    text_lines = 2
    panel_w, panel_h = 2 * cell + 4, text_lines * line + 4 + cell + line
    rows = (len(shown) + columns - 1) // columns
    header = 28
    grid = Image.new("RGB", (columns * panel_w + (columns - 1) * gap + 2 * gap,
                             header + rows * (panel_h + gap) + gap), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((gap, 6), f"held-out captions (never trained on); in each pair: left {base}, right {trained}, "
                        "same seed; shapes reward under each image", fill="black", font=font)
    for n, prompt_index in enumerate(shown):
        left = gap + (n % columns) * (panel_w + gap)
        top = header + (n // columns) * (panel_h + gap)
        wrapped = textwrap.wrap(prompts[prompt_index], width=34)[:text_lines]
        for k, text in enumerate(wrapped):
            draw.text((left, top + k * line), text, fill="black", font=font)
        for c, model in enumerate((base, trained)):
            row = first_images[(model, prompt_index)]
            with Image.open(os.path.join(eval_dir, row["path"])) as image:
                picture = image.convert("RGB").resize((cell, cell), Image.NEAREST)
            x, y = left + c * (cell + 4), top + text_lines * line + 4
            grid.paste(picture, (x, y))
            reward = next(iter(row["scores"].values()))
            draw.text((x + 2, y + cell + 1), f"{model} {reward:.2f}", fill="black", font=small)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    grid.save(output)
    return output


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Base vs LoRA on every n-th held-out caption of an evaluation.")
    parser.add_argument("eval_dir", help="An evaluate_sspo.py output folder (the quickstart's: sspo-shapes-eval).")
    parser.add_argument("--base", default="base", help="Model name of the base in that evaluation.")
    parser.add_argument("--trained", default="sspo", help="Model name of the LoRA (the quickstart's --model_names).")
    parser.add_argument("--every", type=int, default=8, help="Show prompts 0, n, 2n, ... of the evaluation.")
    parser.add_argument("--output", default="docs/images/quickstart_grid.png")
    return parser.parse_args(input_args)


if __name__ == "__main__":
    args = parse_args()
    print(pair_grid(args.eval_dir, args.base, args.trained, args.output, args.every))
