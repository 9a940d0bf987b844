#!/bin/bash
REPO=${REPO:-$(pwd)}  # the repository root: run this script from there
# usage: dircheck_travel.sh TRAVEL MODEL ADAPTER OUT
mkdir -p $REPO/../p6 && cd $REPO/../p6
HF_HUB_OFFLINE=1 $REPO/.venv/bin/python -c "
import sys; sys.path.insert(0, '$REPO'); import shapes_world as sw; sw.VIDEO_TRAVEL = float('$1')
sys.argv = ['dircheck.py', '$2', '$3', '$4']; exec(open('$REPO/experiments/results/2026-11-29/video-direction-probe/dircheck.py').read())"
