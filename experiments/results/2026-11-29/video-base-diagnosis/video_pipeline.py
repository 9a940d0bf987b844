import sys, time, json, torch, numpy as np
sys.path.insert(0, '.')
import shapes_world as sw
torch.set_num_threads(1)
caps = [l.strip() for l in open('data/shapes-train-video-prompts.txt') if l.strip()][:16]
rep = [c for c in caps for _ in range(2)]
seeds = list(range(len(rep)))
pipe = sw.load_pipeline('models/shapes-sd15', 'models/shapes-motion-adapter')
def score(outs):
    comps = [sw.video_reward_components(o, c) for o, c in zip(outs, rep)]
    return {k: round(float(np.mean([x[k] for x in comps])), 3) for k in comps[0]} | {"reward": round(float(np.mean([np.mean(list(x.values())) for x in comps])), 3)}
res = {}
for steps, cfg in ((10, 5), (20, 5), (20, 2)):
    t = time.time(); res[f"trained adapter, DDIM {steps}, CFG {cfg}"] = score(sw.generate(pipe, rep, seeds, steps, cfg, batch_size=16)); print(res, time.time()-t, flush=True)
# zero the motion modules' output projections: each frame is then the image model's
with torch.no_grad():
    for name, p in pipe.unet.named_parameters():
        if "motion_modules" in name and "proj_out" in name:
            p.zero_()
for steps, cfg in ((10, 5), (20, 2)):
    res[f"motion modules zeroed, DDIM {steps}, CFG {cfg}"] = score(sw.generate(pipe, rep, seeds, steps, cfg, batch_size=16)); print(res, flush=True)
json.dump(res, open('video_pipeline.json', 'w'), indent=1)
