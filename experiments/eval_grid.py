# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""A grid of images from one ``evaluate_sspo.py`` output folder: for every n-th caption, the first image of
each model (the same sampling seed for all), with the caption in full and each image's reward.

The README's picture, after the quickstart:

    python experiments/eval_grid.py sspo-shapes-eval --output docs/images/quickstart_grid.png

The decisive study's grid (every method, seed 1, final step), after its scoring:

    python experiments/eval_grid.py experiments/results/2026-12-04-decisive-study/small/eval/final-heldout \
        --models base sft_seed1-step1600 dpo_b2000_seed1-step1600 sspo_b500_seed1-step1600 \
        spin_b500_seed1-step1600 sspo_switch_b500_seed1-step1600 --labels base SFT DPO SSPO SPIN-like "new switch" \
        --columns 2 --title "small regime, 1,600 steps, seed 1: held-out captions; base, SFT, DPO (beta 2000), SSPO, \
SPIN-like, new switch; same seed" \
        --output experiments/results/2026-12-04-decisive-study/small_grid_heldout.png

Its ablations (drawn later, when the other methods' images were no longer on disk), same captions and seed:

    python experiments/eval_grid.py experiments/results/2026-12-04-decisive-study/small/eval/final-heldout \
        --models base sspo_initial_ref_b500_seed1-step1600 sspo_ssr_off_b500_seed1-step1600 \
        --labels base "reference = initial" "SSR off" --columns 3 \
        --title "small regime, 1,600 steps, seed 1: held-out captions; base, SSPO with reference = initial, SSPO \
with SSR off; same seed" --output experiments/results/2026-12-04-decisive-study/small_grid_heldout_ablations.png

The captions are chosen by a fixed rule, never by result: every ``--every``-th prompt of the evaluation, in the
order of its prompt file, starting with the first.
"""

import argparse
import json
import os
import sys
import textwrap
from typing import List, Optional

from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluate_sspo import caption_font  # noqa: E402


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def model_grid(eval_dir: str, models: List[str], output: str, labels: Optional[List[str]] = None, every: int = 8,
               columns: int = 4, cell: int = 128, title: str = "") -> str:
    """Panels of (caption, one image per model), ``columns`` panels a row. Returns ``output``."""
    labels = labels or models
    if len(labels) != len(models):
        raise ValueError(f"{len(labels)} labels for {len(models)} models")
    first_images = {(row["model"], row["prompt_index"]): row
                    for row in read_jsonl(os.path.join(eval_dir, "scores.jsonl")) if row["image_index"] == 0}
    missing = sorted(set(models) - {model for model, _ in first_images})
    if missing:
        raise ValueError(f"{eval_dir} has no images of {', '.join(missing)}")
    prompts = {row["prompt_index"]: row["prompt"] for row in read_jsonl(os.path.join(eval_dir, "manifest.jsonl"))}
    shown = sorted(prompts)[::every]
    font, small = caption_font(15), caption_font(13)
    gap, line, text_lines, header = 12, 18, 2, 28
    panel_w = len(models) * (cell + 4)
    panel_h = text_lines * line + 4 + cell + line
    rows = (len(shown) + columns - 1) // columns
    grid = Image.new("RGB", (columns * panel_w + (columns - 1) * gap + 2 * gap,
                             header + rows * (panel_h + gap) + gap), "white")
    draw = ImageDraw.Draw(grid)
    title = title or (f"held-out captions (never trained on); left to right: {', '.join(labels)}; "
                      "same seed; shapes reward under each image")
    draw.text((gap, 6), title, fill="black", font=font)
    for n, prompt_index in enumerate(shown):
        left = gap + (n % columns) * (panel_w + gap)
        top = header + (n // columns) * (panel_h + gap)
        wrapped = textwrap.wrap(prompts[prompt_index], width=17 * len(models))[:text_lines]
        for k, text in enumerate(wrapped):
            draw.text((left, top + k * line), text, fill="black", font=font)
        for c, (model, label) in enumerate(zip(models, labels)):
            row = first_images[(model, prompt_index)]
            with Image.open(os.path.join(eval_dir, row["path"])) as image:
                picture = image.convert("RGB").resize((cell, cell), Image.NEAREST)
            x, y = left + c * (cell + 4), top + text_lines * line + 4
            grid.paste(picture, (x, y))
            reward = next(iter(row["scores"].values()))
            draw.text((x + 2, y + cell + 1), f"{label} {reward:.2f}", fill="black", font=small)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    grid.save(output)
    return output


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="The first image of each model on every n-th caption of an evaluation.")
    parser.add_argument("eval_dir", help="An evaluate_sspo.py output folder (the quickstart's: sspo-shapes-eval).")
    parser.add_argument("--models", nargs="+", default=["base", "sspo"],
                        help="Model names in that evaluation, left to right (the quickstart's: base sspo).")
    parser.add_argument("--labels", nargs="+", default=None, help="What to print under each model's images.")
    parser.add_argument("--every", type=int, default=8, help="Show prompts 0, n, 2n, ... of the evaluation.")
    parser.add_argument("--columns", type=int, default=4, help="Panels per row.")
    parser.add_argument("--title", default="", help="The line above the grid (default: what it shows).")
    parser.add_argument("--output", default="docs/images/quickstart_grid.png")
    args = parser.parse_args(input_args)
    if args.every < 1 or args.columns < 1:
        parser.error("--every and --columns must be at least 1")
    if args.labels is not None and len(args.labels) != len(args.models):
        parser.error(f"--labels names {len(args.labels)} models, --models {len(args.models)}")
    return args


def main(args):
    try:
        print(model_grid(args.eval_dir, args.models, args.output, args.labels, args.every, args.columns,
                         title=args.title))
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(parse_args())
