#!/bin/bash
REPO=${REPO:-$(pwd)}  # the repository root: run this script from there
# usage: vprobe.sh DATA_DIR WORK_DIR [extra flags]  (video quickstart recipe; eval: 32 training video captions)
set -e
cd $REPO
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${THREADS:-1}
D=$1; W=$2; shift 2
mkdir -p $W; start=$(date +%s)
.venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no train_sspo_animatediff.py \
  --pretrained_model_name_or_path models/shapes-sd15 --motion_adapter_name_or_path models/shapes-motion-adapter \
  --video_folder $D/videos --metadata_file $D/ChronoMagic_train.csv \
  --beta_schedule scaled_linear --resolution 32 --num_frames 8 --sample_stride 1 --train_batch_size 4 \
  --max_train_steps 40 --learning_rate 5e-4 --lr_scheduler constant --lr_warmup_steps 0 --beta_dpo 2000 \
  --self_sample_steps 4 --self_sample_guidance_scale 5 --snapshot_steps 10 --checkpointing_steps 20 --seed 0 \
  --output_dir $W/lora "$@" > $W/train.log 2>&1
echo "train seconds $(( $(date +%s) - start ))" > $W/time.txt
.venv/bin/python evaluate_sspo.py --pretrained_model_name_or_path models/shapes-sd15 \
  --motion_adapter_name_or_path models/shapes-motion-adapter --lora_path $W/lora --model_names sspo \
  --prompts data/shapes-train-video-prompts.txt --metrics shapes_video_reward --num_frames 8 --images_per_prompt 2 \
  --num_inference_steps 10 --guidance_scale ${EVAL_CFG:-5} --generation_batch_size 16 --output_dir $W/eval > $W/eval.log 2>&1
