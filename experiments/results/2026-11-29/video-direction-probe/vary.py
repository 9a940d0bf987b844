# Which variety loses the sign? few_captions.py's setup (left/right, cross-attention + motion modules, no
# mismatched captions, 1,000 clips, 400 steps) over the training image captions that vary only in the named
# attributes (the others fixed at: a big red circle in the center on a blue background). Scored on 12 of those
# captions (all if fewer), 2 seeds per word, the same seeds for both words.
# usage: vary.py OUT STEPS ATTRIBUTE [ATTRIBUTE ...]   (color, shape, background, size, position)
import sys, json, random, dataclasses, numpy as np, torch
sys.path.insert(0, '.')
import shapes_world as sw
sys.path.insert(0, 'experiments/results/2026-11-29/video-direction-probe')
from clip_displacements import clip_rows, sign_follows_word
torch.set_num_threads(1)
out, steps, varied = sys.argv[1], int(sys.argv[2]), set(sys.argv[3:])
sw.DIRECTIONS = {k: sw.DIRECTIONS[k] for k in ("left", "right")}
fixed = sw.parse_caption("a big red circle in the center on a blue background")
train_images, _ = sw.image_split()
images = [s for s in train_images if all(getattr(s, a) == getattr(fixed, a)
                                         for a in ("color", "shape", "background", "size", "position") if a not in varied)]
specs = [dataclasses.replace(s, direction=d) for s in images for d in sw.DIRECTIONS]
sw.video_split = lambda: (specs, [])
info = sw.pretrain_motion_adapter('models/shapes-sd15', f'{out}/adapter', steps=steps, num_clips=1000,
                                  mismatch_rate=0.0, video_model_dir=f'{out}/model')
pipe = sw.load_pipeline(f'{out}/model', f'{out}/adapter')
chosen = random.Random(5).sample(images, min(12, len(images)))
caps = [dataclasses.replace(s, direction=d).caption for s in chosen for d in sw.DIRECTIONS for _ in range(2)]
seeds = [100 + k for _ in chosen for _ in sw.DIRECTIONS for k in range(2)]
rows = clip_rows(pipe, caps, seeds)
ok = [r for r in rows if r['disp']]
follows = sign_follows_word(rows)
json.dump(dict(info=info, varied=sorted(varied), num_image_captions=len(images), rows=rows, sign_follows_word=follows,
               direction_score=float(np.mean([r['direction'] for r in rows]))), open(f'{out}/vary.json', 'w'), indent=1)
print('varied', sorted(varied), len(images), 'image captions; sign follows the word', follows, 'of', len(ok),
      'direction score', np.mean([r['direction'] for r in rows]))
