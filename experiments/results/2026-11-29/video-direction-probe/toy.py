# Can a motion adapter (+ the image UNet's cross-attention) learn to follow the direction word at all, in the
# easiest case: ONE image caption, 4 directions, no mismatched captions? usage: toy.py OUT TRAVEL STEPS [te]
# (te: train the text encoder too; toy02te ran it as a copy of this file, toy_te.py, with only that changed)
import sys, json, dataclasses, numpy as np, torch
sys.path.insert(0, '.')
import shapes_world as sw
torch.set_num_threads(1)
out, travel, steps = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
train_text_encoder = sys.argv[4:] == ['te']
sw.VIDEO_TRAVEL = travel
base = sw.parse_caption("a big red circle in the center on a blue background")
specs = [dataclasses.replace(base, direction=d) for d in sw.DIRECTIONS]
sw.video_split = lambda: (specs, [])
info = sw.pretrain_motion_adapter('models/shapes-sd15', f'{out}/adapter', steps=steps, num_clips=1000,
                                  mismatch_rate=0.0, video_model_dir=f'{out}/model',
                                  train_text_encoder=train_text_encoder)
pipe = sw.load_pipeline(f'{out}/model', f'{out}/adapter')
caps = [s.caption for s in specs for _ in range(6)]
seeds = [100 + k for _ in specs for k in range(6)]
clips = sw.generate(pipe, caps, seeds, num_inference_steps=10, guidance_scale=5, batch_size=24)
rows = []
for c, s, clip in zip(caps, seeds, clips):
    spec = sw.parse_caption(c)
    st = [sw._static_scores(sw._as_array(f), spec, sw.SIZES[spec.size]) for f in clip]
    cs = [x['center'] for x in st if x['center'] is not None]
    disp = (np.array(cs[-1]) - np.array(cs[0])).tolist() if len(cs) >= 2 else None
    rows.append(dict(prompt=c, seed=s, disp=disp, direction=sw.video_reward_components(clip, c)['direction']))
summary = {d: np.round(np.mean([r['disp'] for r in rows if r['prompt'].endswith(d) and r['disp']], axis=0), 3).tolist()
           for d in sw.DIRECTIONS}
json.dump(dict(info=info, rows=rows, mean_disp=summary,
               direction_score=float(np.mean([r['direction'] for r in rows]))), open(f'{out}/toy.json', 'w'), indent=1)
print('mean displacement per word', summary, 'direction score', np.mean([r['direction'] for r in rows]))
