# Does the motion UNet's denoising loss depend on the direction word / the frame order?
import sys, random, numpy as np, torch
sys.path.insert(0, '.')
import shapes_world as sw
from diffusers import DDPMScheduler
torch.set_num_threads(1)
pipe = sw.load_pipeline(sys.argv[1], sys.argv[2])
unet, vae, te, tok = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
sched = DDPMScheduler.from_config(pipe.scheduler.config)
OPP = {'left': 'right', 'right': 'left', 'up': 'down', 'down': 'up'}
train, _ = sw.video_split()
rng = random.Random(0)
specs = [rng.choice(train) for _ in range(48)]
clips = [sw.render_video(s, 8, rng=rng) for s in specs]
def emb(caps):
    ids = tok(caps, padding='max_length', max_length=77, truncation=True, return_tensors='pt').input_ids
    return te(ids)[0]
with torch.no_grad():
    fr = sw.to_tensor([f for c in clips for f in c])
    lat = vae.encode(fr).latent_dist.mean * vae.config.scaling_factor
    lat = lat.unflatten(0, (len(clips), 8)).transpose(1, 2)
    true_caps = [s.caption for s in specs]
    swap_caps = [c.rsplit(' ', 1)[0] + ' ' + OPP[c.rsplit(' ', 1)[1]] for c in true_caps]
    E_true, E_swap = emb(true_caps), emb(swap_caps)
    g = torch.Generator().manual_seed(1)
    for t in (100, 300, 500, 700, 900):
        noise = torch.randn(lat.shape, generator=g)
        ts = torch.full((len(clips),), t)
        res = {}
        for name, L, E in (('true', lat, E_true), ('swapword', lat, E_swap), ('reversed', lat.flip(2), E_true)):
            noisy = sched.add_noise(L, noise, ts)
            pred = unet(noisy, ts, E.repeat_interleave(8, dim=0)).sample
            tgt = sched.get_velocity(L, noise, ts) if sched.config.prediction_type == 'v_prediction' else noise
            res[name] = torch.nn.functional.mse_loss(pred, tgt).item()
        print(t, {k: round(v, 5) for k, v in res.items()}, flush=True)
