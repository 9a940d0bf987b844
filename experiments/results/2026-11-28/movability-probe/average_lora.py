"""Polyak averaging of LoRA iterates, exactly: mean_i(B_i A_i) = [B_1/n ... B_n/n] @ [A_1; ...; A_n], saved as
one LoRA of rank n*r (alpha = rank keeps the scale at 1, as in the runs averaged).

    python average_lora.py OUT_DIR RUN/checkpoint-50 RUN/checkpoint-60 ... RUN/checkpoint-100"""
import sys, os
from safetensors.torch import load_file, save_file
import torch
ckpts = sys.argv[2:]; out = sys.argv[1]
sds = [load_file(os.path.join(c, "pytorch_lora_weights.safetensors")) for c in ckpts]
avg = {}
for k in sds[0]:
    if "lora_A" in k or "lora.down" in k:
        avg[k] = torch.cat([sd[k] for sd in sds], 0)
    elif "lora_B" in k or "lora.up" in k:
        avg[k] = torch.cat([sd[k] / len(sds) for sd in sds], 1)
    else:
        raise KeyError(k)
os.makedirs(out, exist_ok=True); save_file(avg, os.path.join(out, "pytorch_lora_weights.safetensors")); print(len(avg), "tensors")
