# Gradient noise: the full grammar at batch 32 (4x vw3's 8) for 300 steps, the clip count of 1,200 steps at batch
# 8, so each step's gradient averages over more content and the word's small share of it is less drowned.
# Cross-attention + motion modules. usage: big_batch.py OUT STEPS BATCH [lr]   (lr: only left/right)
import json, sys
sys.path.insert(0, '.')
import torch
import shapes_world as sw
sys.path.insert(0, 'experiments/results/2026-11-29/video-direction-probe')
from clip_displacements import run_dircheck
torch.set_num_threads(1)
if sys.argv[4:] == ['lr']:
    sw.DIRECTIONS = {name: sw.DIRECTIONS[name] for name in ("left", "right")}
out, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
info = sw.pretrain_motion_adapter('models/shapes-sd15', out + '/shapes-motion-adapter', steps=steps, batch_size=batch,
                                  video_model_dir=out + '/shapes-sd15-video')
info["directions"] = list(sw.DIRECTIONS)
json.dump(info, open(out + '/pretraining.json', 'w'), indent=1)
run_dircheck(out + '/shapes-sd15-video', out + '/shapes-motion-adapter', out + '/dircheck.json')
