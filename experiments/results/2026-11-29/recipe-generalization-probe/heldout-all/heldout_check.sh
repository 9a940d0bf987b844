#!/bin/bash
REPO=${REPO:-$(pwd)}  # the repository root: run this script from there
# README image quickstart (as committed) for training seeds 0 1 2, then the same LoRA on all 90 held-out captions
cd $REPO
for s in 0 1 2; do
  W=$REPO/../p4/hcheck/seed$s; rm -rf $W; mkdir -p $W
  .venv/bin/python experiments/results/2026-11-29/quickstart-seeds/run_seed.py quickstart $s $W/scratch > $W/run.log 2>&1
  start=$(date +%s)
  HF_HUB_OFFLINE=1 .venv/bin/python evaluate_sspo.py --pretrained_model_name_or_path models/shapes-sd15 \
    --lora_path $W/scratch/sspo-shapes-lora --model_names sspo --prompts data/shapes-heldout-all-image-prompts.txt \
    --metrics shapes_reward --images_per_prompt 4 --num_inference_steps 20 --guidance_scale 5 \
    --generation_batch_size 64 --output_dir $W/eval90 > $W/eval90.log 2>&1
  echo "eval90 seconds $(( $(date +%s) - start ))" >> $W/run.log
done
