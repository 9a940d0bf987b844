# Does the video base's motion depend on the direction word? Same seeds, 4 direction words per image caption.
import sys, json, numpy as np, torch
sys.path.insert(0, '.')
import shapes_world as sw
torch.set_num_threads(1)
pipe = sw.load_pipeline(sys.argv[1], sys.argv[2]); OUT = sys.argv[3]
train, _ = sw.video_split()
img_caps = sorted({s.caption.rsplit(', moving', 1)[0] for s in train})
import random
caps = random.Random(5).sample(img_caps, 12)
dirs = list(sw.DIRECTIONS)
rows = []
for c in caps:
    prompts = [f"{c}, moving {d}" for d in dirs for _ in range(2)]
    seeds = [100 + k for _ in dirs for k in range(2)]
    clips = sw.generate(pipe, prompts, seeds, num_inference_steps=10, guidance_scale=5, batch_size=16)
    for p, s, clip in zip(prompts, seeds, clips):
        comp = sw.video_reward_components(clip, p)
        spec = sw.parse_caption(p)
        arrs = [sw._as_array(f) for f in clip]
        st = [sw._static_scores(a, spec, sw.SIZES[spec.size]) for a in arrs]
        cs = [x["center"] for x in st if x["center"] is not None]
        disp = (np.array(cs[-1]) - np.array(cs[0])).tolist() if len(cs) >= 2 else None
        rows.append(dict(prompt=p, seed=s, direction=comp["direction"], disp=disp))
json.dump(rows, open(OUT, 'w'))
d = np.mean([r['direction'] for r in rows]); print('mean direction score', d)
# same seed, different word: how different are displacements?
for c in caps[:4]:
    print(c)
    for r in rows:
        if r['prompt'].startswith(c): print('  ', r['prompt'].rsplit('moving',1)[1], r['seed'], r['disp'], round(r['direction'],2))
# Share of the variance of displacement explained by the direction word (same seed, 4 words).
import collections
by = collections.defaultdict(list)
for r in rows:
    if r['disp'] is not None:
        by[(r['prompt'].rsplit(', moving', 1)[0], r['seed'])].append(r['disp'])
within = np.mean([np.var(np.array(v), axis=0).sum() for v in by.values() if len(v) == len(dirs)])
total = np.var(np.array([r['disp'] for r in rows if r['disp'] is not None]), axis=0).sum()
print('displacement variance: total', total, 'within seed across direction words', within, 'share', within / total)
