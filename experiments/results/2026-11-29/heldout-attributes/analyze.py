"""Where the quickstarts' reward gain comes from, attribute by attribute.

Captions must parse under the current grammar: the video results of 2026-11-29 before the video grammar
changed (video_attributes.json) were made by this script's first version, at commit 3cf7829.

Reads evaluate_sspo.py output folders (base + LoRAs, images or videos on disk), scores every item with
shapes_world.reward_components (video_reward_components for clips), and writes per-attribute means and paired LoRA - base differences
(bootstrap CI over captions, evaluate_sspo.paired_difference), overall and split by what the caption asks for.

    python experiments/results/2026-11-29/heldout-attributes/analyze.py OUT.json EVAL_DIR [EVAL_DIR ...]
"""
import json
import os
import sys
from collections import defaultdict

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..", "..", "..")))
import evaluate_sspo as ev  # noqa: E402
import shapes_world as sw  # noqa: E402



def item_components(eval_dir, row):
    path = os.path.join(eval_dir, row["path"])
    if path.endswith((".mp4", ".gif")):
        return sw.video_reward_components(ev.read_video_frames(path), row["prompt"])
    with Image.open(path) as image:
        return sw.reward_components(image, row["prompt"])


def caption_scores(eval_dir):
    """{model: {prompt: {attribute: mean over the prompt's images}}} and {prompt: spec}."""
    per_image = defaultdict(lambda: defaultdict(list))
    with open(os.path.join(eval_dir, "manifest.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for row in rows:
        components = item_components(eval_dir, row)
        components["reward"] = float(np.mean(list(components.values())))
        per_image[row["model"]][row["prompt"]].append(components)
    return {model: {prompt: {k: float(np.mean([c[k] for c in items])) for k in items[0]}
                    for prompt, items in prompts.items()} for model, prompts in per_image.items()}


def compare(scores, prompts, key):
    base = [scores["base"][p][key] for p in prompts]
    out = {"base": float(np.mean(base))}
    for model in sorted(m for m in scores if m != "base"):
        out[model] = ev.paired_difference([scores[model][p][key] for p in prompts], base)
    return out


def main(out_path, eval_dirs):
    report = {}
    for eval_dir in eval_dirs:
        scores = caption_scores(eval_dir)
        prompts = sorted(scores["base"])
        video = sw.parse_caption(prompts[0]).direction is not None
        attributes = [k for k in scores["base"][prompts[0]] if k != "reward"]  # the reward's own components
        entry = {"n_captions": len(prompts), "overall": {k: compare(scores, prompts, k) for k in (*attributes, "reward")}}
        # Split by what the caption asks for: is the gain where the base is weak?
        for field in ("shape", "size", "position", "color", "background") + (("direction",) if video else ()):
            groups = defaultdict(list)
            for p in prompts:
                groups[getattr(sw.parse_caption(p), field)].append(p)
            entry[f"by_{field}"] = {value: {"n": len(ps), "reward": compare(scores, ps, "reward")}
                                    for value, ps in sorted(groups.items())}
        report[os.path.basename(os.path.normpath(eval_dir))] = entry
        if video:
            continue
        # Shape kind x size word, every attribute: where does the shape score move?
        cells = defaultdict(list)
        for p in prompts:
            spec = sw.parse_caption(p)
            cells[f"{spec.size} {spec.shape}"].append(p)
        entry["by_size_and_shape"] = {cell: {"n": len(ps), **{k: compare(scores, ps, k) for k in (*attributes, "reward")}}
                                      for cell, ps in sorted(cells.items())}
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)
    for name, entry in report.items():
        print(f"## {name} ({entry['n_captions']} captions)")
        models = sorted(m for m in entry["overall"]["reward"] if m != "base")
        print("| attribute | base | " + " | ".join(f"{m} - base" for m in models) + " |")
        for key in entry["overall"]:
            row = entry["overall"][key]
            print(f"| {key} | {row['base']:.3f} | " + " | ".join(
                f"{row[m]['mean']:+.3f} [{row[m]['ci_low']:+.3f}, {row[m]['ci_high']:+.3f}]" for m in models) + " |")
        if "by_size_and_shape" not in entry:
            continue
        print("\n| caption asks for | n | base reward | reward: LoRA - base, mean of the LoRAs | shape score: base, "
              "LoRA - base |")
        for cell, row in entry["by_size_and_shape"].items():
            mean_gain = {k: np.mean([row[k][m]["mean"] for m in models]) for k in ("reward", "shape")}
            print(f"| {cell} | {row['n']} | {row['reward']['base']:.3f} | {mean_gain['reward']:+.3f} | "
                  f"{row['shape']['base']:.3f}, {mean_gain['shape']:+.3f} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
