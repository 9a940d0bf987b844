# Antithetic pairs: does pretraining learn the direction word's SIGN when every clip in a batch comes with its
# time-reversed copy captioned with the opposite word, under the SAME noise and timestep? Then the only thing that
# tells the two apart at high t is the word, and the noise that hides the word's effect in ordinary batches cancels
# between the pair. Motion modules + the image UNet's cross-attention train, as in toy02 / vw3.
# usage: antithetic.py OUT STEPS toy|full   (toy: toy.py's one caption x 4 directions; full: the training grammar)
import dataclasses, json, random, sys, time
import numpy as np, torch
sys.path.insert(0, '.')
import shapes_world as sw
from diffusers import DDPMScheduler, MotionAdapter, UNetMotionModel

torch.set_num_threads(1)
out, steps, world = sys.argv[1], int(sys.argv[2]), sys.argv[3]
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
rng = random.Random(0)
if world == 'toy':
    base_spec = sw.parse_caption("a big red circle in the center on a blue background")
    pool = [dataclasses.replace(base_spec, direction=d) for d in sw.DIRECTIONS]
else:
    pool, _ = sw.video_split()
specs = [rng.choice(pool) for _ in range(1000 if world == 'toy' else 4000)]
pipe = sw.load_pipeline('models/shapes-sd15')
vae, text_encoder, tokenizer = pipe.vae, pipe.text_encoder, pipe.tokenizer
torch.manual_seed(0)
adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=2, motion_num_attention_heads=4,
                        motion_norm_num_groups=32, motion_max_seq_length=32)
unet = UNetMotionModel.from_unet2d(pipe.unet, adapter)
unet.freeze_unet2d_params()
for name, p in unet.named_parameters():
    if ".attn2." in name and "motion_modules" not in name:
        p.requires_grad_(True)
with torch.no_grad():
    frames = sw.to_tensor([f for s in specs for f in sw.render_video(s, 8, rng=rng)])
    latents = torch.cat([vae.encode(c).latent_dist.mean for c in frames.split(1000)])
    latents = (latents * vae.config.scaling_factor).unflatten(0, (len(specs), 8)).transpose(1, 2)
    captions = sorted({s.caption for s in specs} | {dataclasses.replace(s, direction=OPPOSITE[s.direction]).caption
                                                    for s in specs}) + [""]
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    embeddings = torch.cat([text_encoder(c)[0] for c in ids.split(256)])
own = torch.tensor([captions.index(s.caption) for s in specs])
opposite = torch.tensor([captions.index(dataclasses.replace(s, direction=OPPOSITE[s.direction]).caption) for s in specs])
scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
params = [p for p in unet.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
gen = torch.Generator().manual_seed(0)
unet.train()
start = time.perf_counter()
for step in range(steps):
    for g in optimizer.param_groups:
        g["lr"] = sw._lr_at(step, steps, 1e-3, warmup=50)
    index = torch.randint(0, len(specs), (4,), generator=gen)
    clean = torch.cat([latents[index], latents[index].flip(2)])          # x^0 and its time reversal
    text = torch.cat([own[index], opposite[index]])
    dropped = torch.rand(4, generator=gen) < 0.1
    text[torch.cat([dropped, dropped])] = len(captions) - 1
    noise = torch.randn(clean[:4].shape, generator=gen).repeat(2, 1, 1, 1, 1)   # shared within each pair
    t = torch.randint(0, 1000, (4,), generator=gen).repeat(2)
    pred = unet(scheduler.add_noise(clean, noise, t), t, embeddings[text].repeat_interleave(8, dim=0)).sample
    loss = torch.nn.functional.mse_loss(pred, noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    if (step + 1) % 50 == 0:
        print(f"step {step + 1} loss {loss.item():.4f} {time.perf_counter() - start:.0f}s", flush=True)
unet.eval().save_motion_modules(f'{out}/adapter')
pipe.unet.load_state_dict({k: v for k, v in unet.state_dict().items() if "motion_modules" not in k})
pipe.save_pretrained(f'{out}/model', safe_serialization=True)
json.dump({"steps": steps, "world": world, "seconds": round(time.perf_counter() - start, 1),
           "batch": "4 clips + their time reversals with the opposite word, same noise and t per pair",
           "trained": "motion modules + image UNet cross-attention"}, open(f'{out}/pretraining.json', 'w'), indent=1)
if world == 'toy':  # toy.py's check: same 6 seeds for each word; mean centroid displacement per word
    video = sw.load_pipeline(f'{out}/model', f'{out}/adapter')
    prompts = [s.caption for s in pool for _ in range(6)]
    clips = sw.generate(video, prompts, [100 + k for _ in pool for k in range(6)], num_inference_steps=10,
                        guidance_scale=5, batch_size=24)
    disp = {}
    for p, clip in zip(prompts, clips):
        spec = sw.parse_caption(p)
        centers = [c for c in (sw._static_scores(sw._as_array(f), spec, sw.SIZES[spec.size])['center'] for f in clip)
                   if c is not None]
        if len(centers) >= 2:
            disp.setdefault(spec.direction, []).append(np.subtract(centers[-1], centers[0]))
    summary = {d: np.round(np.mean(v, axis=0), 3).tolist() for d, v in disp.items()}
    score = float(np.mean([sw.video_reward_components(c, p)['direction'] for p, c in zip(prompts, clips)]))
    json.dump({"mean_disp": summary, "direction_score": score}, open(f'{out}/toy.json', 'w'), indent=1)
    print('mean displacement per word', summary, 'direction score', round(score, 3))
