#!/bin/bash
REPO=${REPO:-$(pwd)}  # the repository root: run this script from there
# Score LoRAs (names under $REPO/../p8/vs) on the 48 validation captions, 2 clips each; base generations are cached.
cd $REPO
L=$REPO/../p8/vs
paths=(); for n in "$@"; do paths+=("$L/$n/lora"); done
HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${THREADS:-2} .venv/bin/python evaluate_sspo.py --pretrained_model_name_or_path models/shapes-sd15 \
  --motion_adapter_name_or_path models/shapes-motion-adapter --lora_path "${paths[@]}" \
  --model_names "$@" --prompts $REPO/../p8/val48-video-prompts.txt --metrics shapes_video_reward \
  --num_frames 8 --images_per_prompt 2 --num_inference_steps 10 --guidance_scale 5 --generation_batch_size 16 \
  --output_dir $L/eval-val48
