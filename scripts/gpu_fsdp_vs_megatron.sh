#!/usr/bin/env bash
# Megatron vs FSDP actor on one GPU, same workload: the 1B examples (random weights with the official
# shapes, the same checkpoint for both), STEPS GRPO steps each, GPU memory sampled throughout, then
# one table + plot (benchmarks/fsdp_vs_megatron.py). On a GPU host with the wheelhouse installed
# (README, "On a GPU host") and this repository installed (`pip install --no-deps -e .`).
#   bash scripts/gpu_fsdp_vs_megatron.sh OUT [fsdp] [megatron] [report]     (default: all three)
# Each part fits one 10-minute device call (STEPS=12: ~30 s per step measured for Megatron's 1B);
# the parts may run in separate calls on the same warm machine (the checkpoint is kept in /tmp).
# Environment: STEPS (default 12), CKPT (default /tmp/pangu-1b-random), LIMIT_S per run (default 570).
# No checkpoint saves (runner.save_interval=-1): a 1B FSDP save writes ~20 GB and would be timed inside a step.
# Outputs: OUT/{fsdp,megatron}/{run.log,metrics.jsonl,metrics.png,gpu_mem.csv,gpu_procs.csv}, OUT/fsdp_vs_megatron.{md,json,png}.
set -uo pipefail
out=${1:?usage: gpu_fsdp_vs_megatron.sh OUT [fsdp] [megatron] [report]}; shift
parts=${*:-fsdp megatron report}
mkdir -p "$out"
export TVM_FFI_DISABLE_TORCH_C_DLPACK=1 PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
steps=${STEPS:-12}
ckpt=${CKPT:-/tmp/pangu-1b-random}
limit=${LIMIT_S:-570}

sample_gpu() {  # DIR: nvidia-smi samples until killed
  local dir=$1
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 >"$dir/gpu_mem.csv" 2>/dev/null &
  echo $! >"$dir/.smi.pid"
  ( while sleep 1; do
      nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null |
        while IFS=', ' read -r pid mib; do
          echo "$pid, $mib, $(ps -o args= -p "$pid" 2>/dev/null | cut -c1-80 | tr ',' ' ')"
        done
    done ) >"$dir/gpu_procs.csv" &
  echo $! >"$dir/.procs.pid"
}

stop_sampling() {
  local dir=$1 f
  for f in "$dir/.smi.pid" "$dir/.procs.pid"; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null
    rm -f "$f"
  done
}

run() {  # NAME CONFIG
  local name=$1 config=$2 dir="$out/$1" runs=/tmp/rlp-cmp-runs
  mkdir -p "$dir"
  rm -rf "$runs"
  sample_gpu "$dir"
  local t0=$SECONDS
  timeout "$limit" "$py" -m rlinf.train --config "$config" runner.output_dir=$runs runner.max_steps="$steps" runner.save_interval=-1 \
    rollout.model.model_path="$ckpt" pangu.make_checkpoint.enabled=true >"$dir/run.log" 2>&1
  local rc=$?
  stop_sampling "$dir"
  echo "[cmp] $name rc=$rc in $((SECONDS - t0)) s (steps asked: $steps)"
  local run_dir; run_dir=$(ls -d $runs/*/ 2>/dev/null | tail -1)
  for f in metrics.jsonl metrics.png train.log config.resolved.yaml; do
    [ -n "$run_dir" ] && [ -f "$run_dir/$f" ] && cp "$run_dir/$f" "$dir/$f"
  done
  [ $rc -ne 0 ] && grep -n -B3 -A20 "Error\|error:" "$dir/run.log" | tail -60
  grep "\[grpo\]" "$dir/run.log" | tail -$((steps + 1))
  rm -rf "$runs"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
for part in $parts; do
  case $part in
    fsdp) run fsdp examples/math/pangu-1b-grpo-fsdp.yaml ;;
    megatron) run megatron examples/math/pangu-1b-grpo-megatron.yaml ;;
    report)
      "$py" benchmarks/fsdp_vs_megatron.py --run megatron="$out/megatron" --run fsdp="$out/fsdp" --out "$out" \
        >"$out/report.log" 2>&1
      echo "[cmp] report rc=$?"; cat "$out/fsdp_vs_megatron.md" 2>/dev/null | head -20 ;;
    *) echo "unknown part $part"; exit 2 ;;
  esac
done
