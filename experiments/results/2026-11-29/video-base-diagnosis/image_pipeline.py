import sys, json, torch, numpy as np
sys.path.insert(0, '.')
import shapes_world as sw
torch.set_num_threads(1)
vcaps = [l.strip() for l in open('data/shapes-train-video-prompts.txt') if l.strip()][:16]
icaps = [l.strip() for l in open('data/shapes-train-image-prompts.txt') if l.strip()][:16]
res = {}
img = sw.load_pipeline('models/shapes-sd15')
outs = sw.generate(img, vcaps, list(range(16)), 20, 5)
comps = [sw.video_reward_components([o] * 8, c) for o, c in zip(outs, vcaps)]
res["image pipeline, video captions (DDIM 20, CFG 5), static"] = {k: round(float(np.mean([x[k] for x in comps])), 3) for k in comps[0]}
outs = sw.generate(img, icaps, list(range(16)), 20, 5)
comps = [sw.reward_components(o, c) for o, c in zip(outs, icaps)]
res["image pipeline, image captions (DDIM 20, CFG 5)"] = {k: round(float(np.mean([x[k] for x in comps])), 3) for k in comps[0]}
# the same captions with size and position removed, as the video grammar words them
vstyle = [f"a {s.color} {s.shape} on a {s.background} background" for s in map(sw.parse_caption, icaps)]
outs = sw.generate(img, vstyle, list(range(16)), 20, 5)
comps = [sw.reward_components(o, c) for o, c in zip(outs, icaps)]
res["image pipeline, image captions without size and position words"] = {k: round(float(np.mean([x[k] for x in comps])), 3) for k in ("color", "background", "shape")}
print(json.dumps(res, indent=1))
json.dump(res, open('image_pipeline.json', 'w'), indent=1)
