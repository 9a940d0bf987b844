# Content-variety test: the full grammar's colours, shapes, backgrounds and sizes, but one position ("in the
# center") and left/right only, 600 steps (as vw16 otherwise). usage: center_only.py OUT STEPS
import json, sys
sys.path.insert(0, '.')
import torch
import shapes_world as sw
sys.path.insert(0, 'experiments/results/2026-11-29/video-direction-probe')
from clip_displacements import run_dircheck
torch.set_num_threads(1)
sw.DIRECTIONS = {name: sw.DIRECTIONS[name] for name in ("left", "right")}
full_split = sw.video_split
sw.video_split = lambda: tuple([s for s in part if s.position == "in the center"] for part in full_split())
out, steps = sys.argv[1], int(sys.argv[2])
info = sw.pretrain_motion_adapter('models/shapes-sd15', out + '/shapes-motion-adapter', steps=steps,
                                  video_model_dir=out + '/shapes-sd15-video')
info["directions"] = list(sw.DIRECTIONS)
json.dump(info, open(out + '/pretraining.json', 'w'), indent=1)
run_dircheck(out + '/shapes-sd15-video', out + '/shapes-motion-adapter', out + '/dircheck.json')
