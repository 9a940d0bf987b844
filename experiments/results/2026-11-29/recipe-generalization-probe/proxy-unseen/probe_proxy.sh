#!/bin/bash
REPO=${REPO:-$(pwd)}  # the repository root: run this script from there
# usage: probe_proxy.sh WORK_DIR [extra trainer flags...]
# The quickstart's recipe on the proxy base and its CFG-2 pairs; evaluated on 64 proxy-val captions, which the
# proxy base never saw in pretraining (as the real held-out captions for the shipped base). CFG 5, 4 images each.
set -e
cd $REPO
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${THREADS:-1}
P=$REPO/../p4/proxy
W=$1; shift 1
mkdir -p $W
start=$(date +%s)
.venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no train_sspo_sd15.py \
  --pretrained_model_name_or_path $P/model --dataset_name $P/prefs \
  --resolution 32 --train_batch_size 8 --max_train_steps 100 --learning_rate 5e-4 --lr_scheduler constant \
  --lr_warmup_steps 0 --rank 8 --beta_dpo 2000 --self_sample_steps 10 --self_sample_guidance_scale 5 \
  --snapshot_steps 20 --checkpointing_steps 50 --seed 0 --output_dir $W/lora "$@" > $W/train.log 2>&1
echo "train seconds $(( $(date +%s) - start ))" > $W/time.txt
echo "flags: $@" >> $W/time.txt
.venv/bin/python evaluate_sspo.py --pretrained_model_name_or_path $P/model \
  --lora_path $W/lora --model_names sspo --prompts $P/${PROMPTS:-proxyval64-prompts.txt} \
  --metrics shapes_reward --images_per_prompt 4 --num_inference_steps 20 --guidance_scale 5 \
  --generation_batch_size 64 --output_dir $W/eval > $W/eval.log 2>&1
if [ -n "$SEEN_TOO" ]; then
.venv/bin/python evaluate_sspo.py --pretrained_model_name_or_path $P/model \
  --lora_path $W/lora --model_names sspo --prompts $P/proxyseen64-prompts.txt \
  --metrics shapes_reward --images_per_prompt 4 --num_inference_steps 20 --guidance_scale 5 \
  --generation_batch_size 64 --output_dir $W/eval_seen > $W/eval_seen.log 2>&1
fi
