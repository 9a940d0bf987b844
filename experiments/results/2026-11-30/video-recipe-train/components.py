# Per-attribute video reward of an evaluate_sspo.py output folder, per model.
import sys, json, numpy as np
sys.path.insert(0, '.')
import shapes_world as sw
from evaluate_sspo import read_video_frames
out = sys.argv[1]
rows = [json.loads(l) for l in open(f'{out}/manifest.jsonl')]
by = {}
for r in rows:
    comp = sw.video_reward_components(read_video_frames(f"{out}/{r['path']}"), r['prompt'])
    by.setdefault(r['model'], []).append(comp)
for m, comps in by.items():
    print(m, len(comps), {k: round(float(np.mean([c[k] for c in comps])), 3) for k in comps[0]})
