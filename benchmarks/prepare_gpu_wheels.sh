#!/usr/bin/env bash
# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
#
# Download, where pip can reach a registry, the wheels that benchmarks/gpu_smoke.sh installs on the offline GPU
# machine (x86-64, Python 3.12, torch 2.11 cu130, accelerate, peft, transformers already there, as the
# device image's package list says). Only what that image lacks, one version of each, no dependencies resolved here:
#   diffusers (+ importlib_metadata), datasets (+ dill, multiprocess) for the trainers, bitsandbytes (ships
#   libbitsandbytes_cuda130.so), xformers 0.0.35 (built against torch's stable ABI, requires torch>=2.10; whether
#   its kernels run on cu130 is checked by gpu_smoke.sh, which falls back to SDPA).
#   peft, pinned as in requirements.txt, so the LoRA code is the version the trainers are tested with.
# bitsandbytes' wheel ships native libraries for every CUDA and ROCm release (43 MB); the copy kept here holds only
# the CUDA 13 and CPU ones, so the folder (about 17 MB) and the repository fit the 64 MiB a device call carries.
# The folder is gitignored (benchmarks/.gitignore).
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
  "peft==$(pin peft)"
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
# Keep only the native libraries that torch 2.11 cu130 can load (and the CPU one); drop their RECORD lines too.
"$PY" - "$DEST"/bitsandbytes-*.whl <<'EOF_PY'
import re, sys, zipfile
path = sys.argv[1]
drop = re.compile(r"bitsandbytes/libbitsandbytes_(rocm\d+|cuda1[0-2]\d)\.(so|dll|dylib)$")
with zipfile.ZipFile(path) as src:
    entries = [(info, src.read(info)) for info in src.infolist() if not drop.search(info.filename)]
    dropped = len(src.infolist()) - len(entries)
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
    for info, data in entries:
        if info.filename.endswith(".dist-info/RECORD"):
            data = b"".join(line for line in data.splitlines(keepends=True) if not drop.search(line.split(b",")[0].decode()))
        out.writestr(info, data)
print(f"bitsandbytes: dropped {dropped} native libraries for other CUDA/ROCm releases")
EOF_PY
ls -l "$DEST"
du -sh "$DEST"
