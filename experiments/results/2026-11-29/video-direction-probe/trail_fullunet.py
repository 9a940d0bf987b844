# Trail + whole image UNet: the static cue (two fading ghosts behind the shape, trail.py) is a per-frame attribute
# that the spatial layers can learn to draw from the word (first order, like position), and the motion modules
# then only need (local cue) x (frame index), which toy runs learn. vw13/vw14 tried the trail with only the
# cross-attention trainable. usage: trail_fullunet.py OUT STEPS [lr]   (lr: only left/right)
import json, sys
sys.path.insert(0, 'experiments/results/2026-11-29/video-direction-probe')  # trail.py
import torch
from diffusers import UNetMotionModel
import trail
sys.path.insert(0, 'experiments/results/2026-11-29/video-direction-probe')
from clip_displacements import run_dircheck
sw = trail.sw
torch.set_num_threads(1)
sw.render_video = trail.render_video_with_trail
UNetMotionModel.freeze_unet2d_params = lambda self: None  # everything trains
if sys.argv[3:] == ['lr']:
    sw.DIRECTIONS = {name: sw.DIRECTIONS[name] for name in ("left", "right")}
out, steps = sys.argv[1], int(sys.argv[2])
info = sw.pretrain_motion_adapter('models/shapes-sd15', out + '/shapes-motion-adapter', steps=steps,
                                  video_model_dir=out + '/shapes-sd15-video')
info["trained"] = "motion modules + whole image UNet (trail renderer)"
info["directions"] = list(sw.DIRECTIONS)
json.dump(info, open(out + '/pretraining.json', 'w'), indent=1)
run_dircheck(out + '/shapes-sd15-video', out + '/shapes-motion-adapter', out + '/dircheck.json')
