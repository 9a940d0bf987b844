#!/bin/bash
REPO=${REPO:-$(pwd)}  # the repository root: run this script from there
# Video quickstart recipe sweep, scored on 48 VALIDATION captions: training-split video captions outside every
# preference set (never held-out ones). usage: [SPATIAL=1] vsweep.sh NAME [trainer flags overriding the quickstart's]
# SPATIAL=1: the LoRA on the image layers' attention only (spatial_train.py); the sp_* runs ran it as a copy of this
# file, vsweep_spatial.sh, with only the trainer line changed
cd $REPO
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
N=$1; shift
W=$REPO/../p8/vs/$N; mkdir -p $W
start=$(date +%s)
if [ -n "$SPATIAL" ]; then TRAINER=(.venv/bin/python $REPO/experiments/results/2026-11-29/video-recipe-validation/spatial_train.py)
else TRAINER=(.venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no
              train_sspo_animatediff.py); fi
"${TRAINER[@]}" \
  --pretrained_model_name_or_path models/shapes-sd15 --motion_adapter_name_or_path models/shapes-motion-adapter \
  --video_folder ${DATA:-data/shapes-chronomagic}/videos --metadata_file ${DATA:-data/shapes-chronomagic}/ChronoMagic_train.csv \
  --beta_schedule scaled_linear --resolution 32 --num_frames 8 --sample_stride 1 --train_batch_size 4 \
  --train_target lora --max_train_steps 40 --learning_rate 5e-4 --lr_scheduler constant --lr_warmup_steps 0 \
  --beta_dpo 2000 --self_sample_steps 4 --self_sample_guidance_scale 5 --snapshot_steps 10 --checkpointing_steps 1000 \
  --seed 0 --output_dir $W/lora "$@" > $W/train.log 2>&1
echo "train rc $? seconds $(( $(date +%s) - start )) flags: $@" > $W/time.txt
