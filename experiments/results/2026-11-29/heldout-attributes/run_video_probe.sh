#!/bin/bash
REPO=${REPO:-$(pwd)}  # the repository root: run this script from there
# README video quickstart LoRAs, seeds 0-2 (run_seed.py copies each 32-caption report to ../quickstart-seeds/), then base + all three on all 36 held-out video captions x 4 clips
cd $REPO
for s in 0 1 2; do
  W=$REPO/../p5/vid/seed$s; mkdir -p $W
  if [ ! -f $W/scratch/sspo-shapes-animatediff/pytorch_lora_weights.safetensors ]; then
    .venv/bin/python experiments/results/2026-11-29/quickstart-seeds/run_seed.py quickstart-video $s $W/scratch > $W/run.log 2>&1
  fi
done
start=$(date +%s)
HF_HUB_OFFLINE=1 .venv/bin/python evaluate_sspo.py --pretrained_model_name_or_path models/shapes-sd15 \
  --motion_adapter_name_or_path models/shapes-motion-adapter \
  --lora_path $REPO/../p5/vid/seed0/scratch/sspo-shapes-animatediff $REPO/../p5/vid/seed1/scratch/sspo-shapes-animatediff $REPO/../p5/vid/seed2/scratch/sspo-shapes-animatediff \
  --model_names sspo_s0 sspo_s1 sspo_s2 --prompts data/shapes-heldout-all-video-prompts.txt \
  --metrics shapes_video_reward --num_frames 8 --images_per_prompt 4 \
  --num_inference_steps 10 --guidance_scale 5 --generation_batch_size 16 --output_dir $REPO/../p5/vid/eval-heldout-all36 > $REPO/../p5/vid/eval.log 2>&1
echo "eval seconds $(( $(date +%s) - start ))" >> $REPO/../p5/vid/times.txt
echo done >> $REPO/../p5/vid/times.txt
