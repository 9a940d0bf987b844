#!/bin/bash
REPO=${REPO:-$(pwd)}  # the repository root: run this script from there
# usage: probe.sh DATASET WORK_DIR [extra trainer flags...]  (model: shipped base; eval: 96 training captions)
set -e
cd $REPO
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${THREADS:-1}
D=$1; W=$2; shift 2
M=$REPO/models/shapes-sd15
mkdir -p $W
start=$(date +%s)
.venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no train_sspo_sd15.py \
  --pretrained_model_name_or_path $M --dataset_name $D \
  --resolution 32 --train_batch_size 8 --max_train_steps 100 --learning_rate 5e-4 --lr_scheduler constant \
  --lr_warmup_steps 0 --rank 8 --beta_dpo 2000 --self_sample_steps 10 --self_sample_guidance_scale 5 \
  --snapshot_steps 20 --checkpointing_steps 50 --seed 0 --output_dir $W/lora "$@" > $W/train.log 2>&1
echo "train seconds $(( $(date +%s) - start ))" > $W/time.txt
.venv/bin/python evaluate_sspo.py --pretrained_model_name_or_path $M \
  --lora_path $W/lora --model_names sspo --prompts experiments/results/2026-11-28/movability-probe/train96-prompts.txt \
  --metrics shapes_reward --images_per_prompt 4 --num_inference_steps 20 --guidance_scale ${EVAL_CFG:-5} \
  --generation_batch_size 64 --output_dir $W/eval > $W/eval.log 2>&1
grep -A4 "shapes reward\|win rate" $W/eval/report.md | head -20
