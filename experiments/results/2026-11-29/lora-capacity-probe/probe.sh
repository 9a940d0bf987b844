#!/bin/bash
# Recipe probe on the validation split (val64 removed from the pairs): train one variant, score it on val64.
# usage: probe.sh NAME SEED [extra train flags...]
set -e
cd /work/main
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${THREADS:-1}
N=$1; S=$2; shift 2
W=/work/p7/$N-s$S; mkdir -p $W
start=$(date +%s)
[ -f $W/lora/pytorch_lora_weights.safetensors ] || .venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no train_sspo_sd15.py \
  --pretrained_model_name_or_path models/shapes-sd15 --dataset_name /work/p6/trainsplit \
  --resolution 32 --train_batch_size 8 --max_train_steps ${STEPS:-100} --learning_rate 5e-4 --lr_scheduler constant \
  --lr_warmup_steps 0 --rank 8 --beta_dpo 2000 --self_sample_steps 10 --self_sample_guidance_scale 5 \
  --snapshot_steps 20 --checkpointing_steps 50 --seed $S --output_dir $W/lora "$@" > $W/train.log 2>&1
echo "train seconds $(( $(date +%s) - start )) flags: $@" > $W/time.txt
.venv/bin/python evaluate_sspo.py --pretrained_model_name_or_path models/shapes-sd15 \
  --lora_path $W/lora --model_names sspo --prompts /work/p6/val64-prompts.txt \
  --metrics shapes_reward --images_per_prompt 4 --num_inference_steps 20 --guidance_scale 5 \
  --generation_batch_size 64 --output_dir $W/eval > $W/eval.log 2>&1
echo done > $W/done.txt
