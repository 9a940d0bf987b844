"""Probe: fine-tune the UNet (TE frozen) with timesteps restricted to [tmin, tmax); score on training captions."""
import os, argparse, io, json, random, sys, time, torch, numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..")); import shapes_world as sw
from PIL import Image
from diffusers import DDPMScheduler
p = argparse.ArgumentParser()
p.add_argument("--data", default="renders"); p.add_argument("--tmin", type=int, default=0); p.add_argument("--tmax", type=int, default=1000)
p.add_argument("--lr", type=float, default=1e-4); p.add_argument("--steps", type=int, default=100); p.add_argument("--bs", type=int, default=32)
p.add_argument("--threads", type=int, default=1); p.add_argument("--tag", required=True); p.add_argument("--model", default="models/shapes-sd15")
a = p.parse_args(); torch.set_num_threads(a.threads); torch.manual_seed(0)
pipe = sw.load_pipeline(a.model); vae, unet, te, tok = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer
sf = vae.config.scaling_factor; sched = DDPMScheduler.from_config(pipe.scheduler.config)
caps = [l.strip() for l in open("data/shapes-train-image-prompts.txt") if l.strip()]
captions = [c for c in caps for _ in range(4)]; seeds = list(range(len(captions)))
def evaluate():
    unet.eval()
    ims = sw.generate(pipe, captions, seeds)
    return float(np.mean([sw.reward(i, c) for i, c in zip(ims, captions)]))
rng = random.Random(0)
if a.data == "renders":
    train, _ = sw.image_split()
    def batch():
        specs = [rng.choice(train) for _ in range(a.bs)]
        return sw.to_tensor([sw.render(s, rng=rng) for s in specs]), [s.caption for s in specs]
else:
    import pandas as pd
    d = pd.read_parquet("data/shapes-pickapic/data/train-00000-of-00001.parquet")
    d = d[d.label_0 != 0.5]
    win = [Image.open(io.BytesIO((r.jpg_0 if r.label_0 == 1 else r.jpg_1))).convert("RGB") for r in d.itertuples()]
    wcaps = list(d.caption)
    def batch():
        idx = [rng.randrange(len(win)) for _ in range(a.bs)]
        return sw.to_tensor([win[i] for i in idx]), [wcaps[i] for i in idx]
with torch.no_grad():
    base = evaluate() if a.tag.endswith("withbase") else None
opt = torch.optim.AdamW(unet.parameters(), lr=a.lr); g = torch.Generator().manual_seed(0)
unet.train(); t0 = time.time()
for step in range(a.steps):
    x, c = batch()
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean * sf
        emb = te(tok(c, padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
    n = torch.randn(z.shape, generator=g); t = torch.randint(a.tmin, a.tmax, (a.bs,), generator=g)
    loss = torch.nn.functional.mse_loss(unet(sched.add_noise(z, n, t), t, emb).sample, n)
    opt.zero_grad(); loss.backward(); opt.step()
with torch.no_grad():
    r = evaluate()
out = dict(vars(a), base=base, reward=r, seconds=time.time() - t0)
print(json.dumps(out), flush=True)
open("./ft_results.jsonl", "a").write(json.dumps(out) + "\n")
