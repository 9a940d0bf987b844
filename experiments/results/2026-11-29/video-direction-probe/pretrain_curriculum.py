# A curriculum against the caption-blind optimum: the sign is a symmetric choice that ordinary training settles by
# the seed. Stage 1 trains on "moving right" clips only, so the motion modules learn one sign; stage 2 resumes the
# same run (shapes_world's resumable state) on left and right, where following the word only has to flip it.
# Cross-attention + motion modules, as vw16. usage (from .): pretrain_curriculum.py OUT_DIR STAGE1 TOTAL
import json, os, sys
sys.path.insert(0, '.')
import torch
import shapes_world as sw
sys.path.insert(0, 'experiments/results/2026-11-29/video-direction-probe')
from clip_displacements import run_dircheck

torch.set_num_threads(1)
out, stage1, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
horizontal = {name: sw.DIRECTIONS[name] for name in ("left", "right")}
state = out + '/shapes-motion-adapter/.pretrain_state.pt'
remove = os.remove
for directions, steps, mismatch_rate in (({"right": horizontal["right"]}, stage1, 0.0), (horizontal, total, 0.1)):
    sw.DIRECTIONS = directions  # stage 1 has no caption mismatch: one direction leaves no wrong word to draw
    # a finished run deletes its resume state; stage 1 keeps it aside for stage 2 to resume from
    os.remove = (lambda path: os.replace(path, path + '.stage1') if path == state else remove(path)) \
        if steps == stage1 else remove
    if steps == total and os.path.isfile(state + '.stage1'):
        os.replace(state + '.stage1', state)
    # stage 1 runs the cosine schedule of its own length; stage 2 resumes at step STAGE1 of TOTAL
    info = sw.pretrain_motion_adapter('models/shapes-sd15', out + '/shapes-motion-adapter', steps=steps,
                                      mismatch_rate=mismatch_rate, video_model_dir=out + '/shapes-sd15-video')
info.update(directions=list(sw.DIRECTIONS), curriculum=f"steps 0-{stage1}: right only; {stage1}-{total}: left and right")
json.dump(info, open(out + '/pretraining.json', 'w'), indent=1)
run_dircheck(out + '/shapes-sd15-video', out + '/shapes-motion-adapter', out + '/dircheck.json')
