# Why the video base scores 0.641 in `shapes_world.py check` and 0.643 in the video study, on the same 32 held-out
# captions, 2 clips each, seeds 0-63, DDIM 20, CFG 5. `check` scores the frames in memory; evaluate_sspo.py saves
# each clip as an H.264 .mp4 and scores what it reads back. This scores the same clips both ways and compares them
# with the study's per-clip base scores. Run from the repository root:
#   python experiments/results/shapes-world/video_scoring_paths.py 16 > video_scoring_paths.txt
import json
import os
import sys
import tempfile
import types

import numpy as np

sys.path.insert(0, ".")
import evaluate_sspo as ev  # noqa: E402
import shapes_world as sw  # noqa: E402

captions = [line.strip() for line in open("data/shapes-heldout-video-prompts.txt") if line.strip()]
repeated = [c for c in captions for _ in range(2)]
pipe = sw.load_pipeline("models/shapes-sd15-video", "models/shapes-motion-adapter")
batch_size = int(sys.argv[1]) if len(sys.argv) > 1 else 16
outputs = sw.generate(pipe, repeated, list(range(len(repeated))), 20, 5.0, batch_size=batch_size)
in_memory = [sw.video_reward(o, c) for o, c in zip(outputs, repeated)]
saved = types.SimpleNamespace(task="video", fps=8)
round_trip = []
with tempfile.TemporaryDirectory() as scratch:
    for i, (clip, caption) in enumerate(zip(outputs, repeated)):
        path = os.path.join(scratch, f"clip{i:03d}.mp4")
        ev.save_output(clip, path, saved)
        round_trip.append(sw.video_reward(ev.read_video_frames(path, max_frames=8), caption))
study = {}
for line in open("experiments/results/2026-11-30-study-video/eval/heldout-video/scores.jsonl"):
    row = json.loads(line)
    if row["model"] == "base":
        study[row["prompt_index"] * 2 + row["image_index"]] = next(iter(row["scores"].values()))
study_scores = [study[i] for i in range(len(repeated))]
print("batch", batch_size, "in memory", np.mean(in_memory), "mp4 round trip", np.mean(round_trip),
      "study base", np.mean(study_scores))
print("max |mp4 - study|", max(abs(a - b) for a, b in zip(round_trip, study_scores)),
      "max |mem - study|", max(abs(a - b) for a, b in zip(in_memory, study_scores)))
