#!/bin/bash
# usage: dircheck_travel.sh TRAVEL MODEL ADAPTER OUT
cd /work/p6
HF_HUB_OFFLINE=1 ../main/.venv/bin/python -c "
import sys; sys.path.insert(0, '/work/main'); import shapes_world as sw; sw.VIDEO_TRAVEL = float('$1')
sys.argv = ['dircheck.py', '$2', '$3', '$4']; exec(open('/work/p6/dircheck.py').read())"
