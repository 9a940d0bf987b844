# A video world with one visual context: the shape always "in the center", left/right only, and either one
# background (blue) or all five. Does a motion adapter learn the direction word there, and does it carry over
# to held-out colour x shape x size x direction combinations? Cross-attention + motion modules, no mismatched
# captions. usage: context.py OUT STEPS {blue|all} [NUM_CLIPS]
import sys, json, random, dataclasses, numpy as np, torch
sys.path.insert(0, '.')
import shapes_world as sw
sys.path.insert(0, 'experiments/results/2026-11-29/video-direction-probe')
from clip_displacements import clip_rows, sign_follows_word
torch.set_num_threads(1)
out, steps, backgrounds = sys.argv[1], int(sys.argv[2]), sys.argv[3]
num_clips = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
sw.DIRECTIONS = {k: sw.DIRECTIONS[k] for k in ("left", "right")}
image_heldout = set(sw.image_split()[1])
specs = [dataclasses.replace(s, direction=d) for s in sw.all_image_specs() for d in sw.DIRECTIONS
         if s.position == "in the center" and (backgrounds == "all" or s.background == "blue")]
held = set(random.Random(2410).sample(range(len(specs)), round(0.2 * len(specs))))
held_specs = [s for i, s in enumerate(specs) if i in held or dataclasses.replace(s, direction=None) in image_heldout]
train_specs = [s for s in specs if s not in held_specs]
sw.video_split = lambda: (train_specs, held_specs)
info = sw.pretrain_motion_adapter('models/shapes-sd15', f'{out}/adapter', steps=steps, num_clips=num_clips,
                                  mismatch_rate=0.0, video_model_dir=f'{out}/model')
pipe = sw.load_pipeline(f'{out}/model', f'{out}/adapter')
result = dict(info=info, backgrounds=backgrounds, num_train=len(train_specs), num_held_out=len(held_specs))
for name, chosen in (("held_out", held_specs[:24]), ("train", random.Random(5).sample(train_specs, 12))):
    # every chosen caption under both words, the same seeds for both
    caps = [dataclasses.replace(s, direction=d).caption for s in chosen for d in sw.DIRECTIONS for _ in range(2)]
    seeds = [100 + k for _ in chosen for _ in sw.DIRECTIONS for k in range(2)]
    rows = clip_rows(pipe, caps, seeds)
    result[name] = dict(rows=rows, sign_follows_word=sign_follows_word(rows),
                        direction_score=float(np.mean([r['direction'] for r in rows])))
    print(name, 'sign follows the word', result[name]['sign_follows_word'], 'direction score',
          result[name]['direction_score'], flush=True)
json.dump(result, open(f'{out}/context.json', 'w'), indent=1)
