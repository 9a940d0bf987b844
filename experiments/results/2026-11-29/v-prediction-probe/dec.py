"""Probe: does a decoder fine-tuned on noisy latents turn the base's samples into cleaner, higher-reward images?"""
import os, copy, json, random, sys, time, torch, numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", ".."))
import shapes_world as sw
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
pipe = sw.load_pipeline("models/shapes-sd15")
vae = pipe.vae; sf = vae.config.scaling_factor
caps = [l.strip() for l in open("data/shapes-train-image-prompts.txt") if l.strip()]
captions = [c for c in caps for _ in range(4)]; seeds = list(range(len(captions)))
t0 = time.time()
with torch.no_grad():
    lat = []
    for s in range(0, len(captions), 64):
        lat.append(pipe(prompt=captions[s:s+64], generator=[torch.Generator().manual_seed(x) for x in seeds[s:s+64]],
                        num_inference_steps=20, guidance_scale=5.0, height=32, width=32, output_type="latent").images)
    lat = torch.cat(lat)
print("sampled", time.time() - t0, flush=True)
def score(decoder_vae):
    with torch.no_grad():
        imgs = decoder_vae.decode(lat / sf).sample
    imgs = ((imgs.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return float(np.mean([sw.reward(im, c) for im, c in zip(imgs, captions)])), imgs
base, base_imgs = score(vae)
print("base decoder reward", base, flush=True)
# decoder fine-tuning on noisy latents of fresh renders (train split only)
rng = random.Random(1); train, _ = sw.image_split()
results = {"base": base}
for sigma in [float(x) for x in sys.argv[2:]] or [0.5, 1.0]:
    v = copy.deepcopy(vae); v.requires_grad_(False); v.decoder.requires_grad_(True); v.post_quant_conv.requires_grad_(True)
    params = [p for p in v.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-4); g = torch.Generator().manual_seed(0)
    for step in range(600):
        batch = sw.to_tensor([sw.render(rng.choice(train), rng=rng) for _ in range(32)])
        with torch.no_grad():
            z = v.encode(batch).latent_dist.mean * sf
        z = z + sigma * torch.randn(z.shape, generator=g)
        loss = torch.nn.functional.mse_loss(v.decode(z / sf).sample, batch)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 100 == 0: print(sigma, step, loss.item(), flush=True)
    r, imgs = score(v)
    results[f"sigma{sigma}"] = r
    print("sigma", sigma, "reward", r, time.time() - t0, flush=True)
    np.save(f"./imgs_{sigma}.npy", imgs)
np.save("./imgs_base.npy", base_imgs)
json.dump(results, open("./results.json", "w"), indent=1)
