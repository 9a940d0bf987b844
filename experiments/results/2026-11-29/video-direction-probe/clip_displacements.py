# Shared by the stop-25/26 probes: generate clips, measure where the shape goes, run dircheck.py.
import os
import runpy
import sys

import numpy as np
import shapes_world as sw


def clip_rows(pipe, captions, seeds, batch_size=24):
    """One row per clip (DDIM 10, CFG 5): its caption, seed, the shape centroid's displacement from the first to the
    last frame where it is found (None below two frames), and the clip's direction score."""
    clips = sw.generate(pipe, captions, seeds, num_inference_steps=10, guidance_scale=5, batch_size=batch_size)
    rows = []
    for caption, seed, clip in zip(captions, seeds, clips):
        spec = sw.parse_caption(caption)
        stats = [sw._static_scores(sw._as_array(frame), spec, sw.SIZES[spec.size]) for frame in clip]
        centers = [s["center"] for s in stats if s["center"] is not None]
        disp = (np.array(centers[-1]) - np.array(centers[0])).tolist() if len(centers) >= 2 else None
        rows.append(dict(prompt=caption, seed=seed, disp=disp,
                         direction=sw.video_reward_components(clip, caption)["direction"]))
    return rows


def sign_follows_word(rows):
    """Share of left/right clips whose horizontal displacement has the word's sign."""
    horizontal = [r for r in rows if r["disp"] and r["prompt"].endswith(("left", "right"))]
    return float(np.mean([np.sign(r["disp"][0]) == (1 if r["prompt"].endswith("right") else -1) for r in horizontal]))


def run_dircheck(model_dir, adapter_dir, out_json):
    """dircheck.py's test (12 training captions x every direction word of shapes_world as patched now x 2 seeds) on a
    pretrained model folder and motion adapter; writes out_json."""
    argv = sys.argv
    sys.argv = ["dircheck.py", model_dir, adapter_dir, out_json]
    try:
        runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "dircheck.py"), run_name="__main__")
    finally:
        sys.argv = argv
