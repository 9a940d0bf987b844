#!/bin/bash
REPO=${REPO:-$(pwd)}  # the repository root: run this script from there
# Validation split (64 decided training captions removed from the pairs, seen in pretraining): recipe seeds 0, 1,
# then base + both LoRAs on the 64 captions, images kept for the attribute analysis.
set -e
mkdir -p $REPO/../p5/val && cd $REPO/../p5/val
sed -e "s#'data/#'$REPO/data/#" $REPO/experiments/results/2026-11-29/recipe-generalization-probe/seen-captions/make_val.py > make_val.py
$REPO/.venv/bin/python make_val.py
cmp val64-prompts.txt $REPO/experiments/results/2026-11-29/recipe-generalization-probe/seen-captions/val64-prompts.txt
cd $REPO
export HF_HUB_OFFLINE=1
for s in 0 1; do
  W=$REPO/../p5/val/seed$s; mkdir -p $W
  [ -f $W/lora/pytorch_lora_weights.safetensors ] || .venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no train_sspo_sd15.py \
    --pretrained_model_name_or_path models/shapes-sd15 --dataset_name $REPO/../p5/val/trainsplit \
    --resolution 32 --train_batch_size 8 --max_train_steps 100 --learning_rate 5e-4 --lr_scheduler constant \
    --lr_warmup_steps 0 --rank 8 --beta_dpo 2000 --self_sample_steps 10 --self_sample_guidance_scale 5 \
    --snapshot_steps 20 --checkpointing_steps 50 --seed $s --output_dir $W/lora > $W/train.log 2>&1
done
.venv/bin/python evaluate_sspo.py --pretrained_model_name_or_path models/shapes-sd15 \
  --lora_path $REPO/../p5/val/seed0/lora $REPO/../p5/val/seed1/lora --model_names sspo_s0 sspo_s1 \
  --prompts $REPO/../p5/val/val64-prompts.txt --metrics shapes_reward --images_per_prompt 4 --num_inference_steps 20 \
  --guidance_scale 5 --generation_batch_size 64 --output_dir $REPO/../p5/val/eval-val64 > $REPO/../p5/val/eval.log 2>&1
echo done > $REPO/../p5/val/done.txt
