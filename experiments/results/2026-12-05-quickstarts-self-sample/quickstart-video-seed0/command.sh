HF_HUB_OFFLINE=1 .venv/bin/accelerate launch train_sspo_animatediff.py \
  --pretrained_model_name_or_path models/shapes-sd15-video --motion_adapter_name_or_path models/shapes-motion-adapter \
  --video_folder data/shapes-chronomagic/videos --metadata_file data/shapes-chronomagic/ChronoMagic_train.csv \
  --beta_schedule scaled_linear --resolution 32 --num_frames 8 --sample_stride 1 --train_batch_size 4 \
  --train_target lora --max_train_steps 40 --learning_rate 5e-4 --lr_scheduler constant --lr_warmup_steps 0 \
  --beta_dpo 500 --self_sample_steps 4 --self_sample_guidance_scale 5 --snapshot_steps 10 --checkpointing_steps 20 \
  --seed 0 --validation_prompts "a big red circle in the center on a blue background, moving right" \
  --validation_steps 40 --validation_inference_steps 20 --output_dir sspo-shapes-animatediff
HF_HUB_OFFLINE=1 .venv/bin/python evaluate_sspo.py --pretrained_model_name_or_path models/shapes-sd15-video \
  --motion_adapter_name_or_path models/shapes-motion-adapter --lora_path sspo-shapes-animatediff --model_names sspo \
  --prompts data/shapes-heldout-all-video-prompts.txt --metrics shapes_video_reward --num_frames 8 \
  --images_per_prompt 2 --num_inference_steps 10 --guidance_scale 5 --generation_batch_size 16 \
  --output_dir sspo-shapes-video-eval
cat sspo-shapes-video-eval/report.md
