REPO=${REPO:-$(pwd)}  # the repository root: run this script from there
# usage: sweep.sh NAME [extra trainer flags...]; env SPATIAL=1 for the LoRA on the image layers only,
# PROMPTS (default the 32 training video captions), IPP clips per caption (default 4), SEED (default 0).
set -e
NAME=$1; shift
R=$REPO; M=$R/models/shapes-sd15-video; A=$R/models/shapes-motion-adapter; D=$REPO/../p11/sweep/$NAME
mkdir -p $D; cd $D
if [ -n "$SPATIAL" ]; then TRAIN="$R/experiments/results/2026-11-29/video-recipe-validation/spatial_train.py"; else TRAIN=$R/train_sspo_animatediff.py; fi
START=$(date +%s)
HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $R/.venv/bin/accelerate launch --num_cpu_threads_per_process 1 $TRAIN \
  --pretrained_model_name_or_path $M --motion_adapter_name_or_path $A \
  --video_folder $R/data/shapes-chronomagic/videos --metadata_file $R/data/shapes-chronomagic/ChronoMagic_train.csv \
  --beta_schedule scaled_linear --resolution 32 --num_frames 8 --sample_stride 1 --train_batch_size 4 \
  --train_target lora --max_train_steps 40 --learning_rate 5e-4 --lr_scheduler constant --lr_warmup_steps 0 \
  --beta_dpo 2000 --self_sample_steps 4 --self_sample_guidance_scale 5 --snapshot_steps 10 --checkpointing_steps 20 \
  --seed ${SEED:-0} --output_dir lora "$@" > train.log 2>&1
echo "train_seconds $(( $(date +%s) - START ))" > time.txt
HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $R/.venv/bin/python $R/evaluate_sspo.py --pretrained_model_name_or_path $M \
  --motion_adapter_name_or_path $A --lora_path lora --model_names sspo \
  --prompts $R/data/${PROMPTS:-shapes-train-video-prompts.txt} --metrics shapes_video_reward --num_frames 8 \
  --images_per_prompt ${IPP:-4} --num_inference_steps 10 --guidance_scale 5 --generation_batch_size 16 --output_dir eval > eval.log 2>&1
grep "^| sspo" eval/report.md
HF_HUB_OFFLINE=1 $R/.venv/bin/python $REPO/experiments/results/2026-11-30/video-recipe-train/components.py eval 2>&1 | grep -v kernels > components.txt
cat components.txt
