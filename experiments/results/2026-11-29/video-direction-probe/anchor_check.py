# Did the anchor caption itself learn the sign? 6 seeds x 4 words, the same seeds per word.
# usage: anchor_check.py MODEL ADAPTER "image caption"
import sys, numpy as np, torch
sys.path.insert(0, '.')
import shapes_world as sw
torch.set_num_threads(1)
pipe = sw.load_pipeline(sys.argv[1], sys.argv[2])
prompts = [f"{sys.argv[3]}, moving {d}" for d in sw.DIRECTIONS for _ in range(6)]
seeds = [100 + k for _ in sw.DIRECTIONS for k in range(6)]
clips = sw.generate(pipe, prompts, seeds, num_inference_steps=10, guidance_scale=5, batch_size=24)
for d in sw.DIRECTIONS:
    scores = [sw.video_reward_components(c, p)["direction"] for p, c in zip(prompts, clips) if p.endswith(d)]
    print(d, np.round(scores, 2))
