# Collision test: toy02's setup (one image caption, cross-attention + motion modules, 400 steps), but left/right
# only and the caption's position phrase named as argv[2]. toy02 (centre) learned the left/right sign; does a
# caption whose position phrase contains "left" too? usage: toy_pos.py OUT "at the top left" STEPS
import sys, json, dataclasses, numpy as np, torch
sys.path.insert(0, '.')
import shapes_world as sw
sys.path.insert(0, 'experiments/results/2026-11-29/video-direction-probe')
from clip_displacements import clip_rows
torch.set_num_threads(1)
out, position, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
sw.DIRECTIONS = {k: sw.DIRECTIONS[k] for k in ("left", "right")}
base = sw.parse_caption(f"a big red circle {position} on a blue background")
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
json.dump(dict(info=info, rows=rows, mean_disp=summary,
               direction_score=float(np.mean([r['direction'] for r in rows]))), open(f'{out}/toy.json', 'w'), indent=1)
print('mean displacement per word', summary, 'direction score', np.mean([r['direction'] for r in rows]))
