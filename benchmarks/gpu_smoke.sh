#!/usr/bin/env bash
# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
#
# GPU smoke benchmark of SSPO, offline, on one GPU:
#   the SD1.5 architecture with random weights (bench_sspo.py --random_init_from_config sd15: no download),
#   512 px, batch 1, bf16, gradient checkpointing, self-sampling with 20 steps;
#   with AdamW and with bitsandbytes' 8-bit AdamW; with PyTorch SDPA and, when its kernels run on this GPU's
#   torch, xformers; the real-scale configuration (batch 4 x gradient accumulation 8: the SSPO / DPO step ratio);
#   one AnimateDiff motion-LoRA line (16 frames, 256 px); one SDXL line (train_sspo_sdxl.py itself via
#   bench_sspo_sdxl.py: the SDXL base architecture with random weights, 1024 px, bf16, LoRA, 8-bit Adam, gradient
#   checkpointing, an SSPO step with 20 self-sampling steps; goal: 24 GiB); then the batched self-sampling from the
#   merged bf16 copy (the trainers' GPU default), alone and with torch.compile (default mode and reduce-overhead, i.e.
#   CUDA graphs), each profiled (samples/s, MFU, aten::copy_ share), then the older LoRA-layer variants, while time is
#   left. Self-sampling in the training configurations follows the trainers' --self_sample_merged_copy auto (on here).
# Measured on an H200 (2026-11-29): adamw_sdpa about 215 s, each sampling variant 110-200+ s. With 15 minutes of
# device time, run it in two calls of at most 7 minutes:
#   --budget_s 400 --variants adamw_sdpa realscale_4x8
#   --budget_s 400 --variants sampling_merged sampling_merged_compile sampling_merged_cudagraphs sdxl_sspo
# Reports step time, phase split and peak VRAM per variant, and whether an SSPO step fits in 12 GiB with 8-bit
# Adam and checkpointing (peak reserved by PyTorch's allocator; the CUDA context adds a few hundred MiB).
#
#   bash benchmarks/prepare_gpu_wheels.sh     # where pip can download: fills benchmarks/wheels (gitignored)
#   bash benchmarks/gpu_smoke.sh --summary_dir "$OUT"                   # on the GPU machine, carrying benchmarks/wheels
#   bash benchmarks/gpu_smoke.sh --device cpu --output_dir /tmp/smoke   # CPU test of this script
#
# --device cpu runs the same variants on the *reduced* SD1.5 architecture (--random_init_from_config sd15_reduced:
# the same blocks, layers, heads and 77-token context with narrow widths), 64 px, fp32 (bf16 is emulated on most
# CPUs and many times slower) and bench_sspo.py --smoke step counts (2 sampling steps). It tests the script, it
# measures nothing. xformers and the torch.compile variant are skipped on CPU. The SDXL line runs sspo_tiny's SDXL
# architecture at 64 px on CPU. With --variants sdxl_sspo it runs alone (its GPU time is not measured yet).
#
# Options: --device cuda|cpu, --output_dir DIR (every variant's JSON, table, plot and log), --summary_dir DIR (a
# copy of the summary, at most 5 files), --budget_s N (default 450 on GPU: variants that would not fit are skipped),
# --variants NAME... (only these, e.g. to rerun the sampling variants that an earlier run's budget skipped).
# Environment: PYTHON (default python3), SSPO_SITE (where wheels are installed, default /tmp/sspo_site).

set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
DEVICE=cuda
OUT_DIR="${TMPDIR:-/tmp}/sspo_gpu_smoke"
SUMMARY_DIR=""
BUDGET=""
ONLY=()
while (($#)); do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --output_dir) OUT_DIR=$2; shift 2 ;;
    --summary_dir) SUMMARY_DIR=$2; shift 2 ;;
    --budget_s) BUDGET=$2; shift 2 ;;
    --variants) shift; while (($#)) && [[ $1 != --* ]]; do ONLY+=("$1"); shift; done ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if [[ "$DEVICE" != cuda && "$DEVICE" != cpu ]]; then echo "--device must be cuda or cpu" >&2; exit 2; fi
BUDGET=${BUDGET:-$([[ $DEVICE == cuda ]] && echo 450 || echo 3600)}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT_DIR"

# 1. Packages. The GPU image has torch, accelerate, peft and transformers but not diffusers, datasets,
#    bitsandbytes or xformers: install the wheels carried in benchmarks/wheels, without deps or network.
if "$PY" -c "import diffusers, bitsandbytes" 2>/dev/null; then
  echo "packages: diffusers and bitsandbytes already importable, nothing installed"
else
  shopt -s nullglob
  wheels=(benchmarks/wheels/*.whl)
  if ((${#wheels[@]} == 0)); then
    echo "packages: diffusers/bitsandbytes missing and no benchmarks/wheels/*.whl:" \
         "run benchmarks/prepare_gpu_wheels.sh where pip can download, and carry benchmarks/wheels" >&2
    exit 2
  fi
  SITE=${SSPO_SITE:-/tmp/sspo_site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
    || { echo "packages: pip install of benchmarks/wheels failed" >&2; exit 2; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  echo "packages: installed ${#wheels[@]} wheels into $SITE"
fi
"$PY" -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)" \
  || exit 2
if [[ $DEVICE == cuda ]] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "no CUDA device visible: run with --device cpu for the CPU test" >&2
  exit 2
fi

# 2. xformers: only when its kernel runs here and agrees with SDPA (a wheel built for another torch/CUDA fails).
XFORMERS=0
if [[ $DEVICE == cuda ]]; then
  if xf_msg=$("$PY" - 2>&1 <<'EOF'
import torch
import torch.nn.functional as F
import xformers
import xformers.ops as xops
q = torch.randn(2, 256, 8, 64, device="cuda", dtype=torch.bfloat16)
out = xops.memory_efficient_attention(q, q, q)
ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, q, q))).transpose(1, 2)
err = (out - ref).abs().max().item()
assert err < 5e-2, f"xformers differs from SDPA by {err}"
print(f"xformers {xformers.__version__} runs (max diff to SDPA {err:.2g})")
EOF
  ); then
    XFORMERS=1
    echo "xformers: ${xf_msg##*$'\n'}"
  else
    echo "xformers: not usable here, SDPA only (${xf_msg##*$'\n'})"
  fi
else
  echo "xformers: skipped on CPU (its kernels are CUDA-only), SDPA only"
fi

# 3. The variants, most important first; each runs only if its expected time still fits the budget.
if [[ $DEVICE == cuda ]]; then
  COMMON=(--device cuda --random_init_from_config sd15 --resolution 512 --batch_size 1 --dtype bf16
          --gradient_checkpointing --self_sample_steps 20 --steps 5 --warmup 2)
else
  COMMON=(--device cpu --random_init_from_config sd15_reduced --resolution 64 --batch_size 1 --dtype fp32
          --gradient_checkpointing --smoke)
fi
FAILED=()
NOTES=()
run_variant() {  # name, required (1/0), seconds it needs at least, [--sdxl], bench_sspo.py (or bench_sspo_sdxl.py) flags...
  local name=$1 required=$2 need=$3
  shift 3
  local command=("$PY" benchmarks/bench_sspo.py "${COMMON[@]}")
  if [[ ${1:-} == --sdxl ]]; then command=("$PY" benchmarks/bench_sspo_sdxl.py); shift; fi
  if ((${#ONLY[@]})) && [[ " ${ONLY[*]} " != *" $name "* ]]; then return; fi
  local left=$((BUDGET - SECONDS))
  if ((left < need)); then
    NOTES+=("$name: skipped, ${left}s of the ${BUDGET}s budget left (needs ~${need}s)")
    echo "=== $name: skipped (${left}s left)"
    return
  fi
  echo "=== $name: ${command[1]##*/} $* (${left}s left)"
  local start=$SECONDS
  timeout "$left" "${command[@]}" "$@" --output_dir "$OUT_DIR/$name" >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  if ((rc == 0)); then
    grep -hE "^(\| (sft|dpo|sspo_|per_micro|batched)|Batched|- )" "$OUT_DIR/$name"/bench_sspo*.md
    echo "    ($((SECONDS - start)) s)"
  else
    [[ $rc == 124 ]] && why="stopped at the time budget" || why="failed (rc $rc)"
    echo "$name $why; last lines of $OUT_DIR/$name.log:"
    tail -n 15 "$OUT_DIR/$name.log"
    NOTES+=("$name: $why after $((SECONDS - start)) s")
    ((required)) && FAILED+=("$name")
  fi
}

run_variant adamw_sdpa 1 220 --configs sft dpo sspo_probe sspo_10 sspo_20 --profile_self_sampling
# where users train: batch 4 x accumulation 8, 20 sampling steps (target 8: an SSPO step within 4x a DPO step)
if [[ $DEVICE == cuda ]]; then REAL_SCALE=(--batch_size 4 --gradient_accumulation_steps 8 --steps 3 --warmup 1)
else REAL_SCALE=(--batch_size 2 --gradient_accumulation_steps 2); fi
run_variant realscale_4x8 1 180 "${REAL_SCALE[@]}" --configs dpo sspo_20 --skip stock batched
# target 7's fixes as built: the merged bf16 copy without autocast, then torch.compile of the copy
SAMPLING=(--configs --skip stock per_micro_batch --profile_self_sampling)
run_variant sampling_merged 1 110 --self_sample_merged_copy on "${SAMPLING[@]}"
if [[ $DEVICE == cuda ]]; then
  run_variant sampling_merged_compile 0 200 --self_sample_merged_copy on --compile_unet "${SAMPLING[@]}"
  run_variant sampling_merged_cudagraphs 0 200 --self_sample_merged_copy on --compile_unet \
    --compile_mode reduce-overhead "${SAMPLING[@]}"
fi
run_variant adam8bit_sdpa 1 60 --use_8bit_adam --configs dpo sspo_20 --skip stock batched
# AnimateDiff: the SD1.5 UNet + the v1-5-2 MotionAdapter architecture, a motion-LoRA SSPO step on 16 frames at 256 px
if [[ $DEVICE == cuda ]]; then VIDEO_SHAPE=(--resolution 256 --num_frames 16); else VIDEO_SHAPE=(--num_frames 4); fi
run_variant animatediff_motion_lora 1 80 --video "${VIDEO_SHAPE[@]}" --train_target motion_lora \
  --configs sft sspo_20 --skip stock batched swap
# SDXL: train_sspo_sdxl.py's own step on the SDXL base architecture (tiny SDXL architecture, 64 px, fp32 on CPU)
if [[ $DEVICE == cuda ]]; then SDXL=(--device cuda); else SDXL=(--device cpu --size tiny); fi
run_variant sdxl_sspo 1 200 --sdxl "${SDXL[@]}"
if ((XFORMERS)); then
  run_variant adam8bit_xformers 0 80 --use_8bit_adam --enable_xformers_memory_efficient_attention \
    --configs dpo sspo_20 --skip stock
  run_variant adamw_xformers 0 80 --enable_xformers_memory_efficient_attention --configs sspo_20 --skip stock batched
fi
if [[ $DEVICE == cuda ]]; then  # target 7: can the sampler get closer to the matmul peak?
  # the LoRA-layer sampler (--self_sample_merged_copy off), batched call only, profiled
  LORA_SAMPLING=(--self_sample_merged_copy off "${SAMPLING[@]}")
  run_variant sampling_channels_last 0 110 --channels_last "${LORA_SAMPLING[@]}"
  run_variant sampling_without_lora 0 110 --sampling_without_lora "${SAMPLING[@]}"
  run_variant sampling_without_lora_autocast 0 110 --sampling_without_lora --sampling_without_autocast "${SAMPLING[@]}"
  run_variant sampling_compile 0 200 --channels_last --compile_unet "${LORA_SAMPLING[@]}"
  run_variant sampling_compile_cudagraphs 0 200 --channels_last --compile_unet --compile_mode reduce-overhead \
    "${LORA_SAMPLING[@]}"
fi

# 4. Summary of all variants: gpu_smoke_summary.md / .json in --output_dir (and --summary_dir).
"$PY" - "$OUT_DIR" "$BUDGET" "$SECONDS" "$XFORMERS" "${NOTES[@]}" <<'EOF'
import glob, json, os, sys

out_dir, budget, elapsed, xformers, notes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5:]
GIB = 2 ** 30
variants = []
for path in sorted(glob.glob(os.path.join(out_dir, "*", "bench_sspo.json")), key=os.path.getmtime):
    report = json.load(open(path))
    report["variant"] = os.path.basename(os.path.dirname(path))
    variants.append(report)
sdxl = [json.load(open(path)) for path in glob.glob(os.path.join(out_dir, "*", "bench_sspo_sdxl.json"))]
if not variants and not sdxl:
    sys.exit("no variant produced a report")
first = variants[0] if variants else dict(sdxl[0], model="-", resolution="-", batch_size="-", rank="-", steps="-",
                                          warmup="-", settings={"dtype": "-"}, configs=[])
m = first["machine"]
cpu = m["device"] == "cpu"
mem = "peak RSS GiB (CPU)" if cpu else "peak allocated GiB | peak reserved GiB"
lines = [f"# SSPO GPU smoke: {m['device_name']} ({m['device']}), torch {m['torch']}, diffusers {m['diffusers']}, {m['date']}",
         "", f"Model: {first['model']}, {first['resolution']} px, batch {first['batch_size']}, "
         f"{first['settings']['dtype']}, LoRA rank {first['rank']}, {first['steps']} timed steps after "
         f"{first['warmup']} warm-up. xformers: {'used in the *_xformers variants' if xformers else 'not usable, SDPA only'}. "
         f"{elapsed} s of a {budget} s budget.", "",
         f"| variant | input | config | sampling steps | step s (median) | self-sampling | swap | ref fwd | policy fwd+bwd | other | {mem} |",
         "|" + " --- |" * (11 if cpu else 12)]
if not variants:  # only the SDXL line ran
    lines = lines[:1] + ["", f"{elapsed} s of a {budget} s budget."]
for v in variants:
    shape = f"{v['resolution']} px" + (f" x {v['video']['num_frames']} frames" if v.get("video") else "")
    shape += f", batch {v['batch_size']} x {v.get('gradient_accumulation_steps', 1)}"
    for row in v["configs"]:
        p = row["phase_seconds_per_step"]
        memory = f"{row['peak_memory_bytes'] / GIB:.2f}"
        if not cpu:
            memory += f" | {row['peak_reserved_bytes'] / GIB:.2f}"
        lines.append(f"| {v['variant']} | {shape} | {row['config']} | {row['self_sample_steps']} | {row['step_seconds_median']:.3f} | "
                     + " | ".join(f"{p[k]:.3f}" for k in ("self_sampling", "swap", "reference_forward",
                                                          "policy_forward_backward", "other")) + f" | {memory} |")
ratios = [(v["variant"], v["batch_size"], v.get("gradient_accumulation_steps", 1), v["targets"]["8_sspo_over_dpo_step"]["measured"])
          for v in variants if "8_sspo_over_dpo_step" in v["targets"]]
if ratios:
    lines += ["", "SSPO (20 sampling steps) / DPO step time (goal at batch 4 x 8: <= 4):", ""]
    lines += [f"- {name}, batch {b} x accumulation {a}: {r:.2f}" for name, b, a, r in ratios]
label = "CPU MFU" if cpu else "MFU"
sampling = [v for v in variants if v.get("batched_self_sampling")]
if sampling:
    lines += ["", f"Self-sampling, batch 1 x 8 micro-batches ({label} against the {first['matmul_peak']['dtype']} "
              "matmul peak measured in each run):", "",
              f"| variant | steps | per micro-batch samples/s | batched samples/s | batched / per micro-batch | batched TFLOP/s | "
              f"batched {label} | matmul peak TFLOP/s | max latent diff | sampler | aten::copy_ share |", "|" + " --- |" * 11]
    for v in sampling:
        b = v["batched_self_sampling"]
        per, bat = b["variants"].get("per_micro_batch"), b["variants"]["batched"]
        per_rate = "-" if per is None else f"{per['samples_per_second']:.2f}"
        ratio = "-" if per is None else f"{b['batched_over_per_micro_batch']:.2f}"
        diff = "-" if per is None else f"{b['max_abs_latent_diff']:.3g}"
        sampler = ("merged copy" if b.get("merged_copy") else "LoRA layers" + (" off" if b["without_lora"] else "")) + (
            ", no autocast" if b["without_autocast"] else "") + (f", compile {b['compile_mode']}" if b["compile_unet"] else "")
        copies = f"{b['profile']['aten_copy_share'] * 100:.1f}%" if b.get("profile") else "-"
        lines.append(f"| {v['variant']} | {b['steps']} | {per_rate} | {bat['samples_per_second']:.2f} | {ratio} | "
                     f"{bat['tflops']:.3g} | {bat['mfu'] * 100:.1f}% | {v['matmul_peak']['tflops']:.3g} | {diff} | "
                     f"{sampler} | {copies} |")
    for v in sampling:
        profile = v["batched_self_sampling"].get("profile")
        if profile:
            lines += ["", f"Top kernels of one batched self-sampling call ({v['variant']}, torch.profiler, "
                      f"{profile['sorted_by']}, share of the kernels' total {profile['total_us'] / 1e3:.1f} ms):", "",
                      "| kernel | ms | share |", "| --- | --- | --- |"]
            lines += [f"| {k['name'][:90]} | {k['us'] / 1e3:.2f} | {k['share'] * 100:.1f}% |" for k in profile["top"]]
goal = []
for v in variants:
    if v["settings"]["use_8bit_adam"] and v["settings"]["gradient_checkpointing"]:
        for row in v["configs"]:
            if row["config"].startswith("sspo_") and row["self_sample_steps"]:
                held = row["peak_memory_bytes"] if cpu else row["peak_reserved_bytes"]
                goal.append(f"- {v['variant']} {row['config']}: peak {'RSS' if cpu else 'reserved'} {held / GIB:.2f} GiB: "
                            + ("CPU run, not VRAM" if cpu else ("fits" if held <= 12 * GIB else "does NOT fit") + " in 12 GiB"))
if variants:
    lines += ["", "Goal: an SSPO step in 12 GiB of VRAM with 8-bit Adam and gradient checkpointing:"] + (goal or ["- no such run"])
for report in sdxl:  # train_sspo_sdxl.py (bench_sspo_sdxl.py): its own goal, 24 GiB
    st = report["settings"]
    held = report.get("peak_reserved_bytes", report.get("peak_rss_bytes"))
    steps = ", ".join(f"{x:.2f}" for x in report["step_seconds"])
    lines += ["", f"SDXL (train_sspo_sdxl.py): {report['model']}, {st['resolution']} px, batch 1, {st['dtype']}, LoRA rank "
              f"{st['rank']}, {'8-bit Adam' if report['use_8bit_adam'] else 'AdamW'}, gradient checkpointing, SSPO with "
              f"{st['self_sample_steps']} self-sampling steps: step seconds {steps} (the first with warm-up); peak "
              + (f"RSS {held / GIB:.2f} GiB (CPU run, not VRAM)" if cpu else
                 f"reserved {held / GIB:.2f} GiB: {'fits' if report['goal']['fits'] else 'does NOT fit'} in 24 GiB")]
if notes:
    lines += ["", "Notes:"] + [f"- {n}" for n in notes]
text = "\n".join(lines) + "\n"
open(os.path.join(out_dir, "gpu_smoke_summary.md"), "w").write(text)
json.dump({"budget_s": budget, "elapsed_s": elapsed, "xformers": xformers, "notes": notes,
           "variants": [{k: v.get(k) for k in ("variant", "machine", "model", "resolution", "batch_size",
                                               "gradient_accumulation_steps", "settings", "video",
                                           "matmul_peak", "configs", "batched_self_sampling", "targets")} for v in variants],
           "sdxl": sdxl},
          open(os.path.join(out_dir, "gpu_smoke_summary.json"), "w"), indent=2)
print(text)
EOF
summary_rc=$?

if [[ -n "$SUMMARY_DIR" ]]; then
  mkdir -p "$SUMMARY_DIR"
  cp "$OUT_DIR"/gpu_smoke_summary.md "$OUT_DIR"/gpu_smoke_summary.json "$SUMMARY_DIR"/ 2>/dev/null
  [[ -f "$OUT_DIR/adamw_sdpa/bench_sspo.md" ]] && cp "$OUT_DIR/adamw_sdpa/bench_sspo.md" "$SUMMARY_DIR/adamw_sdpa_bench_sspo.md"
  [[ -f "$OUT_DIR/adamw_sdpa/phases.png" ]] && cp "$OUT_DIR/adamw_sdpa/phases.png" "$SUMMARY_DIR/adamw_sdpa_phases.png"
fi
echo "total: ${SECONDS}s; results in $OUT_DIR"
if ((${#FAILED[@]})) || ((summary_rc)); then
  echo "FAILED: ${FAILED[*]}" >&2
  exit 1
fi
