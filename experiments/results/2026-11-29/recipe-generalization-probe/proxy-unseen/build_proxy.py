"""Proxy world for choosing the recipe without touching held-out captions: a second base pretrained exactly like
the shipped one but with 90 more training combinations held out ("proxy-val"), its CFG-2 preference data, and
64 proxy-val prompts. The real held-out captions stay held out here too."""
import json, os, random, sys, time
sys.path.insert(0, ".")
import torch
import shapes_world as sw

torch.set_num_threads(2)
train, held = sw.split_specs(sw.all_image_specs())
proxy_val = random.Random(4242).sample(train, 90)
proxy_train = [s for s in train if s not in proxy_val]
sw.image_split = lambda: (proxy_train, held + proxy_val)
here = os.path.dirname(os.path.abspath(__file__))
open(os.path.join(here, "proxyval64-prompts.txt"), "w").write(
    "\n".join(s.caption for s in random.Random(0).sample(proxy_val, 64)) + "\n")
cfg = json.load(open("models/shapes-sd15/pretraining.json"))
keys = ("seed", "vae_steps", "unet_steps", "num_renders", "mismatch_rate", "damage_rate", "caption_dropout",
        "batch_size", "unet_lr", "vae_batch_size", "vae_lr", "ema_decay", "snr_gamma", "vae_latent_noise",
        "prediction_type")
t = time.time()
sw.pretrain_image_model(os.path.join(here, "model"), **{k: cfg[k] for k in keys})
print("pretrain seconds", round(time.time() - t), flush=True)
t = time.time()
print(sw.make_image_preferences(os.path.join(here, "model"), os.path.join(here, "prefs"), guidance_scale=2.0))
print("prefs seconds", round(time.time() - t), flush=True)
