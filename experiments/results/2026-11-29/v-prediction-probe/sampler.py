import os, json, sys, torch, numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..")); import shapes_world as sw
torch.set_num_threads(2)
pipe = sw.load_pipeline("models/shapes-sd15")
caps = [l.strip() for l in open("data/shapes-train-image-prompts.txt") if l.strip()]
captions = [c for c in caps for _ in range(4)]; seeds = list(range(len(captions)))
from diffusers import DDPMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler, DDIMScheduler
cfg0 = pipe.scheduler.config
for name, sched, steps, g in [("ddim", DDIMScheduler, 20, 5), ("ddim", DDIMScheduler, 100, 5), ("ddim", DDIMScheduler, 20, 3), ("ddim", DDIMScheduler, 20, 8), ("ddpm", DDPMScheduler, 100, 5), ("dpm", DPMSolverMultistepScheduler, 20, 5)]:
    pipe.scheduler = sched.from_config(cfg0)
    ims = sw.generate(pipe, captions, seeds, num_inference_steps=steps, guidance_scale=g)
    r = np.array([sw.reward(i, c) for i, c in zip(ims, captions)])
    print(name, steps, g, round(r.mean(), 4), "share<0.05:", round((r < 0.05).mean(), 3), flush=True)
