#!/bin/bash
REPO=${REPO:-$(pwd)}  # the repository root: run this script from there
# After the motion adapter: base check on held-out video captions, CFG 2 video preference data, then the video quickstart.
cd $REPO
export HF_HUB_OFFLINE=1
V=$REPO/../p5/v2
while [ ! -f $V/shapes-motion-adapter/pretraining.json ]; do sleep 10; done
start=$(date +%s)
.venv/bin/python shapes_world.py check --model models/shapes-sd15 --motion_adapter $V/shapes-motion-adapter \
  --prompts data/shapes-heldout-video-prompts.txt --output $V/base_heldout_video.json > $V/check.log 2>&1
echo "check seconds $(( $(date +%s) - start ))" >> $V/times.txt
start=$(date +%s)
.venv/bin/python shapes_world.py video_preferences --model models/shapes-sd15 --motion_adapter $V/shapes-motion-adapter \
  --num_captions 160 --guidance_scale 2 --output_dir $V/shapes-chronomagic > $V/prefs.log 2>&1
echo "video_preferences seconds $(( $(date +%s) - start ))" >> $V/times.txt
echo done >> $V/times.txt
