# How much variety loses the sign? toy_pos's setup (left/right, cross-attention + motion modules, no mismatched
# captions, 1,000 clips) over the first N colours of a big circle in the center on a blue background (N=1 is toy02's
# caption without up/down). Scored on those same captions, 4 seeds per word, the same seeds for both words.
# usage: few_captions.py OUT STEPS N
import sys, json, dataclasses, numpy as np, torch
sys.path.insert(0, '.')
import shapes_world as sw
sys.path.insert(0, 'experiments/results/2026-11-29/video-direction-probe')
from clip_displacements import clip_rows, sign_follows_word
torch.set_num_threads(1)
out, steps, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sw.DIRECTIONS = {k: sw.DIRECTIONS[k] for k in ("left", "right")}
colors = [c for c in sw.COLORS if c != "blue"][:n]
specs = [dataclasses.replace(sw.parse_caption(f"a big {c} circle in the center on a blue background"), direction=d)
         for c in colors for d in sw.DIRECTIONS]
sw.video_split = lambda: (specs, [])
info = sw.pretrain_motion_adapter('models/shapes-sd15', f'{out}/adapter', steps=steps, num_clips=1000,
                                  mismatch_rate=0.0, video_model_dir=f'{out}/model')
pipe = sw.load_pipeline(f'{out}/model', f'{out}/adapter')
caps = [s.caption for s in specs for _ in range(4)]
seeds = [100 + k for _ in specs for k in range(4)]
rows = clip_rows(pipe, caps, seeds)
ok = [r for r in rows if r['disp']]
follows = sign_follows_word(rows)
json.dump(dict(info=info, colors=colors, rows=rows, sign_follows_word=follows,
               direction_score=float(np.mean([r['direction'] for r in rows]))), open(f'{out}/few.json', 'w'), indent=1)
print('colours', colors, 'sign follows the word', follows, 'of', len(ok), 'direction score',
      np.mean([r['direction'] for r in rows]))
