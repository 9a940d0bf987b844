"""The reward of perfect renders after a round trip through a model's VAE (encode, decode): the most any
UNet sampling in that latent space can score. 90 held-out captions, one jittered render each.
usage: vae_ceiling.py MODEL_DIR OUT.json"""
import json, random, sys
from collections import defaultdict
import numpy as np, torch
sys.path.insert(0, ".")
import shapes_world as sw
torch.set_num_threads(1)
pipe = sw.load_pipeline(sys.argv[1])
_, held = sw.image_split()
specs = random.Random(0).sample(held, 90)
renders = [sw.render(s, rng=random.Random(i)) for i, s in enumerate(specs)]
with torch.no_grad():
    decoded = pipe.vae.decode(pipe.vae.encode(sw.to_tensor(renders)).latent_dist.mean).sample
decoded = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
out = {"model": sys.argv[1], "captions": len(specs)}
for name, images in (("render", [np.asarray(r) for r in renders]), ("round_trip", list(decoded))):
    parts, kinds = defaultdict(list), defaultdict(list)
    for spec, image in zip(specs, images):
        c = sw.reward_components(image, spec.caption)
        for k, v in c.items():
            parts[k].append(v)
        parts["reward"].append(float(np.mean(list(c.values()))))
        kinds[spec.shape].append(c["shape"])
    out[name] = {k: round(float(np.mean(v)), 4) for k, v in parts.items()}
    out[name]["shape_by_kind"] = {k: round(float(np.mean(v)), 4) for k, v in kinds.items()}
print(json.dumps(out))
json.dump(out, open(sys.argv[2], "w"), indent=2)
