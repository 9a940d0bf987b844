# Learnability probe: the whole image UNet trains with the motion modules (not only its cross-attention), so that
# spatial layers can render a caption-dependent shift. usage: pretrain_fullunet.py T_MIN OUT_DIR STEPS
import json
import sys

sys.path.insert(0, '.')
import torch
from diffusers import UNetMotionModel
import shapes_world as sw

torch.set_num_threads(1)
UNetMotionModel.freeze_unet2d_params = lambda self: None  # everything trains
t_min = int(sys.argv[1])
real_randint = torch.randint


def randint_high(low, high, size, generator=None, **kwargs):
    if high == 1000 and low == 0:  # the timestep draw of denoising_step
        return real_randint(t_min, high, size, generator=generator, **kwargs)
    return real_randint(low, high, size, generator=generator, **kwargs)


torch.randint = randint_high
out = sys.argv[2]
info = sw.pretrain_motion_adapter('models/shapes-sd15', out + '/shapes-motion-adapter', steps=int(sys.argv[3]),
                                  video_model_dir=out + '/shapes-sd15-video')
print(json.dumps(info))
