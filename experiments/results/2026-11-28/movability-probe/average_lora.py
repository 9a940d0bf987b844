"""Polyak averaging of LoRA iterates, exactly: mean_i(B_i A_i) = [B_1/n ... B_n/n] @ [A_1; ...; A_n], saved as
one LoRA of rank n*r (alpha = rank keeps the scale at 1, as in the runs averaged).

    python average_lora.py OUT_DIR RUN/checkpoint-50 RUN/checkpoint-60 ... RUN/checkpoint-100"""
import os
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", ".."))
from sspo_utils import LORA_WEIGHT_NAME  # noqa: E402


def average_lora(checkpoints):
    state_dicts = [load_file(os.path.join(checkpoint, LORA_WEIGHT_NAME)) for checkpoint in checkpoints]
    averaged = {}
    for key in state_dicts[0]:
        if "lora_A" in key or "lora.down" in key:  # A_i stacked along the rank
            averaged[key] = torch.cat([sd[key] for sd in state_dicts], 0)
        elif "lora_B" in key or "lora.up" in key:  # B_i / n side by side
            averaged[key] = torch.cat([sd[key] / len(state_dicts) for sd in state_dicts], 1)
        else:
            raise KeyError(f"not a LoRA A/B weight: {key}")
    return averaged


if __name__ == "__main__":
    output_dir, checkpoints = sys.argv[1], sys.argv[2:]
    averaged = average_lora(checkpoints)
    os.makedirs(output_dir, exist_ok=True)
    save_file(averaged, os.path.join(output_dir, LORA_WEIGHT_NAME))
    print(len(averaged), "tensors")
