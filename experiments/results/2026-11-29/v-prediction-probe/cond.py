"""How fast does a fresh UNet + TE learn E[x0 | caption]? Shipped VAE; fresh UNet/TE; N steps; t-range option."""
import os, argparse, json, random, sys, time, torch, numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..")); import shapes_world as sw
from diffusers import DDPMScheduler, AutoencoderKL
p = argparse.ArgumentParser(); p.add_argument("--tmin", type=int, default=0); p.add_argument("--steps", type=int, default=300)
p.add_argument("--lr", type=float, default=1e-3); p.add_argument("--bs", type=int, default=64); p.add_argument("--tag", required=True)
p.add_argument("--logitnormal", type=float, default=None); p.add_argument("--vpred", action="store_true")
a = p.parse_args(); torch.set_num_threads(1)
c = sw.build_shapes_components(0); unet, te, tok = c["unet"], c["text_encoder"], c["tokenizer"]
vae = AutoencoderKL.from_pretrained("models/shapes-sd15/vae"); sf = vae.config.scaling_factor
sched = DDPMScheduler.from_config(c["scheduler"].config); ac = sched.alphas_cumprod
rng = random.Random(0); train, _ = sw.image_split()
specs = [rng.choice(train) for _ in range(8000)]
with torch.no_grad():
    lat = torch.cat([vae.encode(x).latent_dist.mean for x in sw.to_tensor([sw.render(s, rng=rng) for s in specs]).split(500)]) * sf
ids = tok([s.caption for s in specs], padding="max_length", max_length=77, return_tensors="pt").input_ids
empty = tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
params = list(unet.parameters()) + list(te.parameters()); opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=1e-4)
g = torch.Generator().manual_seed(0); t0 = time.time()
for step in range(a.steps):
    for gr in opt.param_groups: gr["lr"] = sw._lr_at(step, a.steps, a.lr)
    i = torch.randint(0, len(specs), (a.bs,), generator=g); b = ids[i].clone(); b[torch.rand(a.bs, generator=g) < 0.1] = empty
    n = torch.randn(lat[i].shape, generator=g)
    if a.logitnormal is not None:
        t = (torch.sigmoid(a.logitnormal + torch.randn(a.bs, generator=g)) * 1000).long().clamp(0, 999)
    else:
        t = torch.randint(a.tmin, 1000, (a.bs,), generator=g)
    target = sched.get_velocity(lat[i], n, t) if a.vpred else n
    loss = torch.nn.functional.mse_loss(unet(sched.add_noise(lat[i], n, t), t, te(b)[0]).sample, target)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()
caps = [l.strip() for l in open("data/shapes-train-image-prompts.txt") if l.strip()]
z0 = torch.cat([vae.encode(sw.to_tensor([sw.render(sw.parse_caption(c))])).latent_dist.mean for c in caps]) * sf
out = dict(vars(a), seconds=round(time.time() - t0))
with torch.no_grad():
    emb = te(tok(caps, padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
    for t in [950, 800, 500, 200]:
        nn_ = torch.randn(z0.shape, generator=g); tt = torch.full((len(caps),), t); zt = sched.add_noise(z0, nn_, tt)
        out_ = unet(zt, tt, emb).sample
        x0 = ac[t].sqrt() * zt - (1 - ac[t]).sqrt() * out_ if a.vpred else (zt - (1 - ac[t]).sqrt() * out_) / ac[t].sqrt()
        x = ((vae.decode(x0 / sf).sample.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        out[f"x0_reward_t{t}"] = round(float(np.mean([sw.reward(im, cc) for im, cc in zip(x, caps)])), 3)
print(json.dumps(out), flush=True); open("./cond.jsonl", "a").write(json.dumps(out) + "\n")
