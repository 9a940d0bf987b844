import os, sys, numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..")); import shapes_world as sw
caps = [l.strip() for l in open("data/shapes-train-image-prompts.txt") if l.strip()]
captions = [c for c in caps for _ in range(4)]
for name in sys.argv[1:]:
    imgs = np.load(f"./imgs_{name}.npy")
    comps = [sw.reward_components(im, c) for im, c in zip(imgs, captions)]
    print(name, {k: round(float(np.mean([d[k] for d in comps])), 3) for k in comps[0]}, "reward", round(float(np.mean([np.mean(list(d.values())) for d in comps])), 3))
