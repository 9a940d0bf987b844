#!/bin/bash
REPO=${REPO:-$(pwd)}  # the repository root: run this script from there
# README image quickstart LoRAs, seeds 0-2 (run_seed.py copies each 32-caption report to ../quickstart-seeds/), then base + all three on held-out-all (90) and train96 captions, images kept
cd $REPO
for s in 0 1 2; do
  W=$REPO/../p5/img/seed$s; mkdir -p $W
  if [ ! -f $W/scratch/sspo-shapes-lora/pytorch_lora_weights.safetensors ]; then
    .venv/bin/python experiments/results/2026-11-29/quickstart-seeds/run_seed.py quickstart $s $W/scratch > $W/run.log 2>&1
  fi
done
for P in data/shapes-heldout-all-image-prompts.txt experiments/results/2026-11-28/movability-probe/train96-prompts.txt; do
  n=$(basename $P .txt)
  start=$(date +%s)
  HF_HUB_OFFLINE=1 .venv/bin/python evaluate_sspo.py --pretrained_model_name_or_path models/shapes-sd15 \
    --lora_path $REPO/../p5/img/seed0/scratch/sspo-shapes-lora $REPO/../p5/img/seed1/scratch/sspo-shapes-lora $REPO/../p5/img/seed2/scratch/sspo-shapes-lora \
    --model_names sspo_s0 sspo_s1 sspo_s2 --prompts $P \
    --metrics shapes_reward --images_per_prompt 4 --num_inference_steps 20 --guidance_scale 5 \
    --generation_batch_size 64 --output_dir $REPO/../p5/img/eval-$n > $REPO/../p5/img/eval-$n.log 2>&1
  echo "eval $n seconds $(( $(date +%s) - start ))" >> $REPO/../p5/img/times.txt
done
echo done >> $REPO/../p5/img/times.txt
