#!/bin/bash
REPO=${REPO:-$(pwd)}  # the repository root: run this script from there
# Does more video preference data help? 480 training captions instead of 160, then the recipe on training captions.
cd $REPO
export HF_HUB_OFFLINE=1
V=$REPO/../p5/v2
start=$(date +%s)
.venv/bin/python shapes_world.py video_preferences --model models/shapes-sd15 --motion_adapter models/shapes-motion-adapter \
  --num_captions 480 --guidance_scale 2 --output_dir $V/chronomagic480 > $V/prefs480.log 2>&1
echo "prefs480 seconds $(( $(date +%s) - start ))" >> $V/times480.txt
W=$V/probe/pairs480; mkdir -p $W
start=$(date +%s)
.venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no train_sspo_animatediff.py \
  --pretrained_model_name_or_path models/shapes-sd15 --motion_adapter_name_or_path models/shapes-motion-adapter \
  --video_folder $V/chronomagic480/videos --metadata_file $V/chronomagic480/ChronoMagic_train.csv \
  --beta_schedule scaled_linear --resolution 32 --num_frames 8 --sample_stride 1 --train_batch_size 4 \
  --max_train_steps 40 --learning_rate 2e-3 --lr_scheduler constant --lr_warmup_steps 0 --beta_dpo 2000 \
  --self_sample_steps 4 --self_sample_guidance_scale 5 --snapshot_steps 10 --checkpointing_steps 1000 --seed 0 \
  --output_dir $W/lora > $W/train.log 2>&1
echo "train seconds $(( $(date +%s) - start ))" >> $V/times480.txt
L=$V/probe
.venv/bin/python evaluate_sspo.py --pretrained_model_name_or_path models/shapes-sd15 \
  --motion_adapter_name_or_path models/shapes-motion-adapter \
  --lora_path $L/recipe/lora $L/steps80/lora $L/lr5e-4/lora $L/steps80_lr1e-3/lora $L/sft/lora $L/ss10/lora $L/sscfg2/lora $L/ssr_off/lora $W/lora \
  --model_names recipe steps80 lr5e-4 steps80_lr1e-3 sft ss10 sscfg2 ssr_off pairs480 \
  --prompts data/shapes-train-video-prompts.txt --metrics shapes_video_reward --num_frames 8 --images_per_prompt 2 \
  --num_inference_steps 10 --guidance_scale 5 --generation_batch_size 16 --output_dir $L/eval-train32 > $L/eval4.log 2>&1
echo done >> $V/times480.txt
