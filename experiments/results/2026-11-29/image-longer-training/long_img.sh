#!/bin/bash
# Longer-training probe: the quickstart recipe on trainsplit (val64 removed), 500 steps, LoRA every 100.
set -e
cd /work/main
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${THREADS:-1}
W=$1; shift 1
M=/work/main/models/shapes-sd15
mkdir -p $W
start=$(date +%s)
.venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no train_sspo_sd15.py \
  --pretrained_model_name_or_path $M --dataset_name /work/p6/trainsplit \
  --resolution 32 --train_batch_size 8 --max_train_steps ${STEPS:-500} --learning_rate 5e-4 --lr_scheduler constant \
  --lr_warmup_steps 0 --rank 8 --beta_dpo 2000 --self_sample_steps 10 --self_sample_guidance_scale 5 \
  --snapshot_steps 20 --checkpointing_steps 100 --seed 0 --output_dir $W/lora "$@" > $W/train.log 2>&1
echo "train seconds $(( $(date +%s) - start ))" > $W/time.txt
echo "flags: $@" >> $W/time.txt
for c in $W/lora/checkpoint-*; do
  n=$(basename $c)
  .venv/bin/python evaluate_sspo.py --pretrained_model_name_or_path $M \
    --lora_path $c --model_names sspo --prompts /work/p6/val64-prompts.txt \
    --metrics shapes_reward --images_per_prompt 4 --num_inference_steps 20 --guidance_scale 5 \
    --generation_batch_size 64 --output_dir $W/eval-$n > $W/eval-$n.log 2>&1
done
