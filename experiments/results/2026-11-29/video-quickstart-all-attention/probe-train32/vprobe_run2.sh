#!/bin/bash
REPO=${REPO:-$(pwd)}  # the repository root: run this script from there
P=$REPO/experiments/results/2026-11-29/video-quickstart-all-attention/probe-train32/vprobe.sh
$P lora_all_lr5e-4_s1 --train_target lora --learning_rate 5e-4 --seed 1 & $P lora_all_lr5e-4_s2 --train_target lora --learning_rate 5e-4 --seed 2 & wait
$P lora_all_lr2.5e-4 --train_target lora --learning_rate 2.5e-4 & $P lora_all_lr1e-3 --train_target lora --learning_rate 1e-3 & wait
cd $REPO
L=$REPO/../p6/vprobe
HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 .venv/bin/python evaluate_sspo.py --pretrained_model_name_or_path models/shapes-sd15 \
  --motion_adapter_name_or_path models/shapes-motion-adapter \
  --lora_path $L/lora_all_lr5e-4_s1/lora $L/lora_all_lr5e-4_s2/lora $L/lora_all_lr2.5e-4/lora $L/lora_all_lr1e-3/lora \
  --model_names lora_all_lr5e-4_s1 lora_all_lr5e-4_s2 lora_all_lr2.5e-4 lora_all_lr1e-3 \
  --prompts data/shapes-train-video-prompts.txt --metrics shapes_video_reward \
  --num_frames 8 --images_per_prompt 2 --num_inference_steps 10 --guidance_scale 5 --generation_batch_size 16 \
  --output_dir $L/eval2-train32 > $L/eval2.log 2>&1
