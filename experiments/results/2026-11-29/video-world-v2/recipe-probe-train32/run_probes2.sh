#!/bin/bash
REPO=${REPO:-$(pwd)}  # the repository root: run this script from there
P=$REPO/experiments/results/2026-11-29/video-world-v2/recipe-probe-train32/probe.sh
$P sft --loss_type sft & $P ss10 --self_sample_steps 10 & wait
cd $REPO
L=$REPO/../p5/v2/probe
HF_HUB_OFFLINE=1 .venv/bin/python evaluate_sspo.py --pretrained_model_name_or_path models/shapes-sd15 \
  --motion_adapter_name_or_path models/shapes-motion-adapter \
  --lora_path $L/recipe/lora $L/steps80/lora $L/lr5e-4/lora $L/steps80_lr1e-3/lora $L/sft/lora $L/ss10/lora \
  --model_names recipe steps80 lr5e-4 steps80_lr1e-3 sft ss10 \
  --prompts data/shapes-train-video-prompts.txt --metrics shapes_video_reward --num_frames 8 --images_per_prompt 2 \
  --num_inference_steps 10 --guidance_scale 5 --generation_batch_size 16 --output_dir $L/eval-train32 > $L/eval2.log 2>&1
echo done > $L/done2.txt
