# Learnability probe: the motion adapter pretrained only on high noise levels (t >= T_MIN), where the caption,
# not x_t, must decide where the shape is in each frame. usage: pretrain_hight.py T_MIN OUT_DIR STEPS [frozen]
import json
import sys

sys.path.insert(0, '.')
import torch
import shapes_world as sw

torch.set_num_threads(1)
t_min = int(sys.argv[1])
real_randint = torch.randint


def randint_high(low, high, size, generator=None, **kwargs):
    if high == 1000 and low == 0:  # the timestep draw of denoising_step
        return real_randint(t_min, high, size, generator=generator, **kwargs)
    return real_randint(low, high, size, generator=generator, **kwargs)


torch.randint = randint_high
out = sys.argv[2]
frozen = len(sys.argv) > 4 and sys.argv[4] == "frozen"
info = sw.pretrain_motion_adapter('models/shapes-sd15', out + '/shapes-motion-adapter', steps=int(sys.argv[3]),
                                  video_model_dir=None if frozen else out + '/shapes-sd15-video')
print(json.dumps(info))
