# Appearance-debiased temporal loss (the idea of MotionDirector's temporal loss, Zhao et al. 2023): subtract each
# clip's per-location mean over frames from the prediction error, so that errors shared by every frame (the static
# content, which the full grammar's frozen image UNet never fits) stop dominating the gradient, and what is left is
# the motion: its axis and its sign. The toy, whose static content is fit, learns the sign; the full grammar does
# not. usage: debiased.py OUT STEPS WEIGHT [motion]   (loss = (1 - WEIGHT) * mse + WEIGHT * debiased mse;
# motion: only the motion modules train, the shipped adapter's setup; otherwise the cross-attention too)
import json, sys
sys.path.insert(0, '.')
import torch
import shapes_world as sw
sys.path.insert(0, 'experiments/results/2026-11-29/video-direction-probe')
from clip_displacements import run_dircheck
torch.set_num_threads(1)
out, steps, weight = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
model_dir = 'models/shapes-sd15' if sys.argv[4:] == ['motion'] else out + '/shapes-sd15-video'
real_mse = torch.nn.functional.mse_loss


def mse_with_debiased(prediction, target, *args, **kwargs):
    if prediction.dim() != 5:  # only the motion UNet's b c f h w
        return real_mse(prediction, target, *args, **kwargs)
    error = prediction - target
    debiased = error - error.mean(dim=2, keepdim=True)
    return (1 - weight) * error.pow(2).mean() + weight * debiased.pow(2).mean()


torch.nn.functional.mse_loss = mse_with_debiased
info = sw.pretrain_motion_adapter('models/shapes-sd15', out + '/shapes-motion-adapter', steps=steps,
                                  video_model_dir=None if sys.argv[4:] == ['motion'] else model_dir)
info["loss"] = f"(1 - {weight}) * mse + {weight} * appearance-debiased mse"
torch.nn.functional.mse_loss = real_mse
json.dump(info, open(out + '/pretraining.json', 'w'), indent=1)
run_dircheck(model_dir, out + '/shapes-motion-adapter', out + '/dircheck.json')
