"""Probe: fine-tune only the shipped VAE's decoder (encoder frozen, so the latent space and the UNet
stay valid), as SD1.5 users swap in sd-vae-ft-mse. Renders of training captions only.
usage: decoder_ft.py OUT_MODEL_DIR STEPS"""
import os, random, shutil, sys, time, json
import torch
sys.path.insert(0, ".")
import shapes_world as sw
out, steps = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0); torch.set_num_threads(int(os.environ.get("THREADS", "1")))
src = "models/shapes-sd15"
pipe = sw.load_pipeline(src)
vae = pipe.vae
train, _ = sw.image_split()
rng = random.Random(1)
specs = [rng.choice(train) for _ in range(8000)]
images = sw.to_tensor([sw.render(s, rng=rng) for s in specs])
with torch.no_grad():
    post = torch.cat([vae.encode(c).latent_dist.mean for c in images.split(1000)])
vae.requires_grad_(False)
params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
for p in params: p.requires_grad_(True)
opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.0)
g = torch.Generator().manual_seed(0)
t0 = time.perf_counter()
for step in range(steps):
    for group in opt.param_groups: group["lr"] = sw._lr_at(step, steps, 5e-4, warmup=50)
    idx = torch.randint(0, len(specs), (32,), generator=g)
    rec = vae.decode(post[idx]).sample
    loss = torch.nn.functional.mse_loss(rec, images[idx])
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    if (step + 1) % 100 == 0: print(f"step {step+1} mse {loss.item():.4f} {time.perf_counter()-t0:.0f}s", flush=True)
os.makedirs(out, exist_ok=True)
for name in os.listdir(src):
    if name != "vae":
        dst = os.path.join(out, name)
        if not os.path.exists(dst): os.symlink(os.path.join(src, name), dst)
vae.eval().save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
json.dump({"steps": steps, "seconds": round(time.perf_counter() - t0, 1), "renders": len(specs), "batch": 32, "lr": 5e-4,
           "final_mse": loss.item()}, open(os.path.join(out, "decoder_ft.json"), "w"), indent=2)
