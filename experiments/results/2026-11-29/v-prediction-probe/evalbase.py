"""Reward (and components) of a model's samples on the 32 training captions x 4 seeds; x0-pred reward at t=800."""
import os, json, sys, torch, numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..")); import shapes_world as sw
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
pipe = sw.load_pipeline(sys.argv[1])
caps = [l.strip() for l in open("data/shapes-train-image-prompts.txt") if l.strip()]
captions = [c for c in caps for _ in range(4)]
ims = sw.generate(pipe, captions, list(range(len(captions))))
comps = [sw.reward_components(i, c) for i, c in zip(ims, captions)]
out = {k: round(float(np.mean([d[k] for d in comps])), 3) for k in comps[0]}
out["reward"] = round(float(np.mean([np.mean(list(d.values())) for d in comps])), 4)
print(sys.argv[1], json.dumps(out), flush=True)
g = np.concatenate([np.concatenate([np.asarray(i) for i in ims[r * 32:(r + 1) * 32:1]], 1) for r in range(2)], 0)
from PIL import Image; Image.fromarray(g).resize((g.shape[1] * 2, g.shape[0] * 2), Image.NEAREST).save(sys.argv[1].rstrip("/") + "_samples.png")
