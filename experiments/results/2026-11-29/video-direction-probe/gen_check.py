# Does a toy-trained direction mechanism carry over to other captions? dircheck over N training image captions
# (optionally only those with a given position), left/right words, the same 2 seeds per word.
# usage: gen_check.py MODEL ADAPTER OUT.json [position]
import sys, json, random, collections, numpy as np, torch
sys.path.insert(0, '/work/main')
import shapes_world as sw
torch.set_num_threads(1)
pipe = sw.load_pipeline(sys.argv[1], sys.argv[2]); OUT = sys.argv[3]
position = sys.argv[4] if len(sys.argv) > 4 else None
train, _ = sw.video_split()
img = sorted({s.caption.rsplit(', moving', 1)[0] for s in train if position is None or s.position == position})
caps = random.Random(5).sample(img, 12)
dirs = ["left", "right"]
rows = []
prompts = [f"{c}, moving {d}" for c in caps for d in dirs for _ in range(2)]
seeds = [100 + k for c in caps for d in dirs for k in range(2)]
clips = sw.generate(pipe, prompts, seeds, num_inference_steps=10, guidance_scale=5, batch_size=16)
for p, s, clip in zip(prompts, seeds, clips):
    spec = sw.parse_caption(p)
    st = [sw._static_scores(sw._as_array(f), spec, sw.SIZES[spec.size]) for f in clip]
    cs = [x["center"] for x in st if x["center"] is not None]
    disp = (np.array(cs[-1]) - np.array(cs[0])).tolist() if len(cs) >= 2 else None
    rows.append(dict(prompt=p, seed=s, direction=sw.video_reward_components(clip, p)["direction"], disp=disp))
json.dump(rows, open(OUT, 'w'), indent=1)
ok = [r for r in rows if r['disp']]
follow = np.mean([np.sign(r['disp'][0]) == (1 if r['prompt'].endswith('right') else -1) for r in ok])
print('direction score', np.mean([r['direction'] for r in rows]), 'x-sign follows word', follow, 'n', len(ok))
