#!/usr/bin/env bash
# The GPU runs behind docs/runs/: on a GPU host where the wheelhouse is installed
# (scripts/install_wheelhouse.sh) and this repository is installed with `pip install --no-deps -e .`.
#   bash scripts/gpu_session.sh OUT_DIR [grpo-tiny] [grpo-tiny-tp2] [grpo-1b] [gpu-tests] [sync] [bench]
# (grpo-tiny-tp2 and tests/test_sync_multigpu.py in gpu-tests need 2 GPUs.)
# Each part writes its log (and results) to OUT_DIR; a failing part does not stop the next one.
# A failing GRPO run is repeated once for one step with CUDA_LAUNCH_BLOCKING=1, so the log names
# the CUDA call at fault rather than a later one.
set -uo pipefail
out=${1:?usage: gpu_session.sh OUT_DIR [parts...]}; shift
parts=${*:-grpo-tiny}
mkdir -p "$out"
export TVM_FFI_DISABLE_TORCH_C_DLPACK=1 PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
runs=/tmp/rlp-runs

grpo() {  # name config timeout [overrides...]
  local name=$1 config=$2 limit=$3; shift 3
  local t0=$SECONDS
  timeout "$limit" "$py" -m rlinf.train --config "$config" runner.output_dir=$runs "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "[gpu] $name rc=$rc in $((SECONDS - t0)) s"
  local dir; dir=$(ls -d $runs/*/ 2>/dev/null | tail -1)
  for f in metrics.jsonl metrics.png train.log; do  # train.log: what upstream printed (the console is quiet)
    [ -n "$dir" ] && [ -f "$dir/$f" ] && cp "$dir/$f" "$out/$name.$f"
  done
  if [ $rc -ne 0 ]; then
    tail -40 "$out/$name.log"
    rm -rf $runs
    CUDA_LAUNCH_BLOCKING=1 timeout 240 "$py" -m rlinf.train --config "$config" runner.output_dir=$runs \
      "$@" runner.max_steps=1 >"$out/$name.blocking.log" 2>&1
    echo "[gpu] $name (CUDA_LAUNCH_BLOCKING=1, 1 step) rc=$?"
    grep -n -B5 -A25 "Error\|error:" "$out/$name.blocking.log" | head -120
  fi
  rm -rf $runs
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for part in $parts; do
  case $part in
    grpo-tiny) grpo grpo_tiny examples/math/pangu-tiny-grpo-megatron.yaml 420 ;;
    grpo-tiny-tp2) grpo grpo_tiny_tp2 examples/math/pangu-tiny-grpo-megatron.yaml 420 parallel=tp2-pp1-rollout-tp1 \
        runner.max_steps=10 ;;
    gpu-tests)
      "$py" -m pytest -m gpu -v -s -p no:cacheprovider tests/test_sync_multigpu.py tests/test_sync_gpu.py >"$out/gpu_tests.log" 2>&1
      echo "[gpu] gpu-tests rc=$?"; grep -E "PASS|FAIL|ERROR|passed|failed|rollout_tp|mean exp" "$out/gpu_tests.log" | tail -30 ;;
    sync)
      "$py" benchmarks/sync.py --out "$out" --bucket-mb 2048,1024,128 --repeats 3 >"$out/sync_7b.log" 2>&1
      echo "[gpu] sync rc=$?"; tail -7 "$out/sync_7b.log" ;;
    grpo-1b) grpo grpo_1b examples/math/pangu-1b-grpo-megatron.yaml 420 runner.max_steps=2 \
        rollout.model.model_path=/tmp/pangu-1b-random pangu.make_checkpoint.enabled=true ;;
    bench)
      "$py" benchmarks/post_sync_parity.py --preset 7b --layers 8 --out "$out" >"$out/post_sync_7b8.log" 2>&1; tail -3 "$out/post_sync_7b8.log"
      "$py" benchmarks/sglang_decode.py --out "$out" >"$out/sglang_decode.log" 2>&1; tail -3 "$out/sglang_decode.log" ;;
    *) echo "unknown part $part"; exit 2 ;;
  esac
done
