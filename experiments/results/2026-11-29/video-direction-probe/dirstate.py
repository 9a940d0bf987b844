# Direction check on an in-progress joint pretraining state (.pretrain_state.pt): same seeds, 4 direction words.
import sys, shutil, os, torch, tempfile
sys.path.insert(0, '.')
import shapes_world as sw
from diffusers import MotionAdapter, UNetMotionModel
torch.set_num_threads(1)
state = torch.load(sys.argv[1], weights_only=True)
print('step', state['step'])
base = sw.load_pipeline('models/shapes-sd15')
adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=2, motion_num_attention_heads=4,
                        motion_norm_num_groups=32, motion_max_seq_length=32)
unet = UNetMotionModel.from_unet2d(base.unet, adapter)
unet.load_state_dict(state['unet'])
tmp = tempfile.mkdtemp()
unet.save_motion_modules(tmp + '/adapter')
base.unet.load_state_dict({k: v for k, v in state['unet'].items() if 'motion_modules' not in k})
if 'text_encoder' in state:  # only states of --train_text_encoder runs carry it
    base.text_encoder.load_state_dict(state['text_encoder'])
base.save_pretrained(tmp + '/video')
sys.argv = ['dircheck.py', tmp + '/video', tmp + '/adapter', sys.argv[2]]
exec(open('experiments/results/2026-11-29/video-direction-probe/dircheck.py').read())
