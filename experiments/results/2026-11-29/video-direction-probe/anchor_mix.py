# Anchor mixing: half of the pretraining clips come from a few fixed "anchor" image captions (x 4 directions),
# half from the full grammar. One caption alone (toy02, toy_tl) learns the left/right sign in 400 steps, the full
# grammar never does: does an anchor that keeps teaching the sign make it carry over to every caption?
# Cross-attention + motion modules, as vw3. dircheck then runs on 12 training captions that are NOT anchors.
# usage: anchor_mix.py OUT STEPS NUM_ANCHORS
import json, sys, dataclasses
sys.path.insert(0, '.')
import torch
import shapes_world as sw
sys.path.insert(0, 'experiments/results/2026-11-29/video-direction-probe')
from clip_displacements import run_dircheck
torch.set_num_threads(1)
out, steps, num_anchors = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
anchor_captions = ["a big red circle in the center on a blue background",
                   "a small yellow square at the top left on a purple background",
                   "a big white triangle at the bottom right on a green background"][:num_anchors]
anchors = [dataclasses.replace(sw.parse_caption(c), direction=d) for c in anchor_captions for d in sw.DIRECTIONS]
full_split = sw.video_split
def mixed_split():
    train, held = full_split()
    train = [s for s in train if dataclasses.replace(s, direction=None).caption not in anchor_captions]
    return train + anchors * (len(train) // len(anchors)), held
sw.video_split = mixed_split
info = sw.pretrain_motion_adapter('models/shapes-sd15', out + '/shapes-motion-adapter', steps=steps,
                                  video_model_dir=out + '/shapes-sd15-video')
info["anchors"] = anchor_captions
json.dump(info, open(out + '/pretraining.json', 'w'), indent=1)
sw.video_split = lambda: ([s for s in full_split()[0]
                           if dataclasses.replace(s, direction=None).caption not in anchor_captions], [])
run_dircheck(out + '/shapes-sd15-video', out + '/shapes-motion-adapter', out + '/dircheck.json')
