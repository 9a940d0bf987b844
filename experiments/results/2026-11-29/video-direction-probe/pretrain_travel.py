# Learnability probe: pretrain a motion adapter with the shapes world's VIDEO_TRAVEL changed.
# usage: pretrain_travel.py TRAVEL OUT_DIR STEPS [frozen]
#   default: joint (image UNet cross-attention + motion modules; writes OUT_DIR/shapes-sd15-video)  -> vw5
#   frozen:  motion modules only, as the shipped adapter                                            -> vw6
# (As run, vw6 used a sed-edited copy of this file with the same two calls.)
import json
import sys

sys.path.insert(0, '.')
import torch
import shapes_world as sw

torch.set_num_threads(1)
sw.VIDEO_TRAVEL = float(sys.argv[1])
out = sys.argv[2]
frozen = len(sys.argv) > 4 and sys.argv[4] == "frozen"
info = sw.pretrain_motion_adapter('models/shapes-sd15', out + '/shapes-motion-adapter', steps=int(sys.argv[3]),
                                  video_model_dir=None if frozen else out + '/shapes-sd15-video')
print(json.dumps(info))
