import os, sys, random, torch, numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..")); import shapes_world as sw
from diffusers import DDPMScheduler
torch.set_num_threads(2)
pipe = sw.load_pipeline("models/shapes-sd15"); vae, unet, te, tok = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer
sf = vae.config.scaling_factor; sched = DDPMScheduler.from_config(pipe.scheduler.config)
caps = [l.strip() for l in open("data/shapes-train-image-prompts.txt") if l.strip()]
specs = [sw.parse_caption(c) for c in caps]
imgs = sw.to_tensor([sw.render(s) for s in specs])
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    z0 = vae.encode(imgs).latent_dist.mean * sf
    emb = te(tok(caps, padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
    def to_reward(z):
        x = vae.decode(z / sf).sample
        x = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        return np.mean([sw.reward(a, c) for a, c in zip(x, caps)])
    print("recon", to_reward(z0))
    ac = sched.alphas_cumprod
    for t in [50, 200, 400, 600, 800, 950]:
        n = torch.randn(z0.shape, generator=g); tt = torch.full((len(caps),), t)
        zt = sched.add_noise(z0, n, tt)
        eps = unet(zt, tt, emb).sample
        x0 = (zt - (1 - ac[t]).sqrt() * eps) / ac[t].sqrt()
        print(t, "eps mse", float((eps - n).pow(2).mean()), "x0 mse", float((x0 - z0).pow(2).mean()), "reward of x0-pred", round(to_reward(x0), 3), flush=True)
