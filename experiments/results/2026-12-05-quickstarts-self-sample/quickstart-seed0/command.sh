python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
HF_HUB_OFFLINE=1 .venv/bin/accelerate launch train_sspo_sd15.py --pretrained_model_name_or_path models/shapes-sd15 \
  --dataset_name data/shapes-pickapic --resolution 32 --train_batch_size 8 --max_train_steps 100 --learning_rate 5e-4 \
  --lr_scheduler constant --lr_warmup_steps 0 --rank 8 --beta_dpo 500 --self_sample_steps 10 \
  --self_sample_guidance_scale 5 --snapshot_steps 20 --checkpointing_steps 50 --seed 0 \
  --validation_prompts "a big red circle in the center on a blue background" "a small yellow square at the top left on a purple background" \
  --validation_steps 50 --num_validation_images 2 --validation_inference_steps 20 --output_dir sspo-shapes-lora
HF_HUB_OFFLINE=1 .venv/bin/python evaluate_sspo.py --pretrained_model_name_or_path models/shapes-sd15 \
  --lora_path sspo-shapes-lora --model_names sspo --prompts data/shapes-heldout-all-image-prompts.txt \
  --metrics shapes_reward --images_per_prompt 4 --num_inference_steps 20 --guidance_scale 5 --generation_batch_size 64 \
  --output_dir sspo-shapes-eval
cat sspo-shapes-eval/report.md
