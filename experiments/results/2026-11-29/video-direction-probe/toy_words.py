# Do "up" and "down" fail on one caption only because the text encoder never learned them (their embeddings are
# random and 1.5% apart)? toy02's setup (one caption, 4 directions, 400 steps, cross-attention + motion modules) with
# the vertical directions named by trained position words: "moving top" / "moving bottom" (ungrammatical on purpose).
# usage: toy_words.py OUT STEPS
import sys, json, dataclasses, numpy as np, torch
sys.path.insert(0, '.')
import shapes_world as sw
sys.path.insert(0, 'experiments/results/2026-11-29/video-direction-probe')
from clip_displacements import clip_rows
torch.set_num_threads(1)
out, steps = sys.argv[1], int(sys.argv[2])
sw.DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}
base = sw.parse_caption("a big red circle in the center on a blue background")
specs = [dataclasses.replace(base, direction=d) for d in sw.DIRECTIONS]
sw.video_split = lambda: (specs, [])
info = sw.pretrain_motion_adapter('models/shapes-sd15', f'{out}/adapter', steps=steps, num_clips=1000,
                                  mismatch_rate=0.0, video_model_dir=f'{out}/model')
pipe = sw.load_pipeline(f'{out}/model', f'{out}/adapter')
caps = [s.caption for s in specs for _ in range(6)]
seeds = [100 + k for _ in specs for k in range(6)]
rows = clip_rows(pipe, caps, seeds)
summary = {d: np.round(np.mean([r['disp'] for r in rows if r['prompt'].endswith(d) and r['disp']], axis=0), 3).tolist()
           for d in sw.DIRECTIONS}
per_word = {d: float(np.mean([r['direction'] for r in rows if r['prompt'].endswith(d)])) for d in sw.DIRECTIONS}
json.dump(dict(info=info, rows=rows, mean_disp=summary, direction_score_per_word=per_word), open(f'{out}/toy.json', 'w'),
          indent=1)
print('mean displacement per word', summary, 'direction score per word', per_word)
