#!/bin/bash
REPO=${REPO:-$(pwd)}  # the repository root: run this script from there
# Video quickstart recipe probe on the rebuilt video world, scored on the 32 TRAINING video captions (not held out).
# usage: probe.sh NAME [trainer flags overriding the quickstart's]
cd $REPO
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
N=$1; shift
W=$REPO/../p5/v2/probe/$N; mkdir -p $W
start=$(date +%s)
.venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no train_sspo_animatediff.py \
  --pretrained_model_name_or_path models/shapes-sd15 --motion_adapter_name_or_path models/shapes-motion-adapter \
  --video_folder data/shapes-chronomagic/videos --metadata_file data/shapes-chronomagic/ChronoMagic_train.csv \
  --beta_schedule scaled_linear --resolution 32 --num_frames 8 --sample_stride 1 --train_batch_size 4 \
  --max_train_steps 40 --learning_rate 2e-3 --lr_scheduler constant --lr_warmup_steps 0 --beta_dpo 2000 \
  --self_sample_steps 4 --self_sample_guidance_scale 5 --snapshot_steps 10 --checkpointing_steps 1000 --seed 0 \
  --output_dir $W/lora "$@" > $W/train.log 2>&1
echo "train rc $? seconds $(( $(date +%s) - start )) flags: $@" > $W/time.txt
