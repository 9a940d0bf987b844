# Direction-only captions: a share of the clips (any content of the grammar) is captioned "moving {direction}" alone,
# so that for those clips the text says nothing but the direction, as the toy's text varied only in it, while
# the clips keep the full grammar's variety. dircheck then uses full captions, and short_check the short ones.
# Cross-attention + motion modules. usage: short_captions.py OUT STEPS SHARE
import json, sys, types
sys.path.insert(0, '.')
import numpy as np, torch
import shapes_world as sw
sys.path.insert(0, 'experiments/results/2026-11-29/video-direction-probe')
from clip_displacements import run_dircheck
torch.set_num_threads(1)
out, steps, share = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
# mismatch() is called for a share (mismatch_rate) of the clips: those get the direction-only caption instead
sw.mismatch = lambda spec, rng: types.SimpleNamespace(caption=f"moving {spec.direction}")
info = sw.pretrain_motion_adapter('models/shapes-sd15', out + '/shapes-motion-adapter', steps=steps,
                                  mismatch_rate=share, video_model_dir=out + '/shapes-sd15-video')
info["captions"] = f"{share} of the clips captioned 'moving {{direction}}' only, no mismatched captions"
json.dump(info, open(out + '/pretraining.json', 'w'), indent=1)
pipe = sw.load_pipeline(out + '/shapes-sd15-video', out + '/shapes-motion-adapter')
prompts = [f"moving {d}" for d in sw.DIRECTIONS for _ in range(8)]
seeds = [100 + k for _ in sw.DIRECTIONS for k in range(8)]
clips = sw.generate(pipe, prompts, seeds, num_inference_steps=10, guidance_scale=5, batch_size=32)
with open(out + '/short_check.txt', 'w') as f:
    for d in sw.DIRECTIONS:
        disps = []
        for p, c in zip(prompts, clips):
            if p.endswith(d):  # the shape's colour is unknown: take the pixels least like the corner pixel
                a = [np.asarray(x).astype(float) for x in c]
                masks = [np.linalg.norm(x - x[0, 0], axis=-1) > 60 for x in a]
                cs = [(np.nonzero(m)[1].mean(), np.nonzero(m)[0].mean()) for m in masks if m.sum() > 3]
                disps.append(np.round((np.array(cs[-1]) - np.array(cs[0])) / 32, 2).tolist() if len(cs) > 1 else None)
        print(d, disps, file=f)
print(open(out + '/short_check.txt').read())
run_dircheck(out + '/shapes-sd15-video', out + '/shapes-motion-adapter', out + '/dircheck.json')
