# Is the sign learnable when the video grammar has only "left" and "right"? (toy02 learned that pair's sign
# on one caption, never up/down.) Pretrain as vw3 (image UNet cross-attention + motion modules, 600 steps) with
# shapes_world.DIRECTIONS cut to the horizontal pair, then run dircheck.py under the same cut.
# usage (from .): pretrain_horizontal.py OUT_DIR STEPS
import json, sys
sys.path.insert(0, '.')
import torch
import shapes_world as sw
sys.path.insert(0, 'experiments/results/2026-11-29/video-direction-probe')
from clip_displacements import run_dircheck

torch.set_num_threads(1)
sw.DIRECTIONS = {name: sw.DIRECTIONS[name] for name in ("left", "right")}
out, steps = sys.argv[1], int(sys.argv[2])
info = sw.pretrain_motion_adapter('models/shapes-sd15', out + '/shapes-motion-adapter', steps=steps,
                                  video_model_dir=out + '/shapes-sd15-video')
info["directions"] = list(sw.DIRECTIONS)
json.dump(info, open(out + '/pretraining.json', 'w'), indent=1)
run_dircheck(out + '/shapes-sd15-video', out + '/shapes-motion-adapter', out + '/dircheck.json')
