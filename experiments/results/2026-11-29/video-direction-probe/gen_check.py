# Does a toy-trained direction mechanism carry over to other captions? dircheck over N training image captions
# (optionally only those with a given position), left/right words, the same 2 seeds per word.
# usage: gen_check.py MODEL ADAPTER OUT.json [position]
import sys, json, random, numpy as np, torch
sys.path.insert(0, '.')
import shapes_world as sw
sys.path.insert(0, 'experiments/results/2026-11-29/video-direction-probe')
from clip_displacements import clip_rows, sign_follows_word
torch.set_num_threads(1)
pipe = sw.load_pipeline(sys.argv[1], sys.argv[2]); OUT = sys.argv[3]
position = sys.argv[4] if len(sys.argv) > 4 else None
train, _ = sw.video_split()
img = sorted({s.caption.rsplit(', moving', 1)[0] for s in train if position is None or s.position == position})
caps = random.Random(5).sample(img, 12)
dirs = ["left", "right"]
prompts = [f"{c}, moving {d}" for c in caps for d in dirs for _ in range(2)]
seeds = [100 + k for c in caps for d in dirs for k in range(2)]
rows = clip_rows(pipe, prompts, seeds, batch_size=16)
json.dump(rows, open(OUT, 'w'), indent=1)
ok = [r for r in rows if r['disp']]
follow = sign_follows_word(rows)
print('direction score', np.mean([r['direction'] for r in rows]), 'x-sign follows word', follow, 'n', len(ok))
