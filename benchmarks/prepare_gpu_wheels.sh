#!/usr/bin/env bash
# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
#
# Download, where pip can reach a registry, the wheels that benchmarks/gpu_smoke.sh installs on the offline GPU
# machine (x86-64, Python 3.12, torch 2.11 cu130, accelerate, peft, transformers already there; see
# /work/.library/device/KINDS.md). Only what that image lacks, one version of each, no dependencies resolved here:
#   diffusers (+ importlib_metadata), datasets (+ dill, multiprocess) for the trainers, bitsandbytes (ships
#   libbitsandbytes_cuda130.so), xformers 0.0.35 (built against torch's stable ABI, requires torch>=2.10; whether
#   its kernels run on cu130 is checked by gpu_smoke.sh, which falls back to SDPA).
# The folder is gitignored (benchmarks/.gitignore); about 52 MB, under the 64 MiB a device call carries.
#
#   bash benchmarks/prepare_gpu_wheels.sh [DEST]      # DEST defaults to benchmarks/wheels
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-benchmarks/wheels}
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}

pin() {  # NAME: the version pinned in requirements*.txt
  grep -hiE "^$1==" requirements.txt requirements-dev.txt | head -n1 | cut -d= -f3
}
WHEELS=(
  "diffusers==$(pin diffusers)"
  "importlib_metadata==10.2.0"
  "datasets==$(pin datasets)"
  "dill==0.4.1"               # datasets 5.2 wants dill<0.4.2
  "multiprocess==0.70.19"     # datasets 5.2 wants multiprocess<0.70.20
  "bitsandbytes==$(pin bitsandbytes)"
  "xformers==0.0.35"
)
mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one version of each: two stop the whole install
for spec in "${WHEELS[@]}"; do
  [[ $spec == *== ]] && { echo "no pin found for $spec in requirements*.txt" >&2; exit 1; }
  # pip matches manylinux_2_N tags exactly: list the ones these packages use.
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DEST" "$spec"
done
ls -l "$DEST"
du -sh "$DEST"
