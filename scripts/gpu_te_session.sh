#!/usr/bin/env bash
# Issue 22 on one lent GPU: bring the wheelhouse (with Transformer Engine) over chunk by chunk, build
# TE's torch binding there, install everything into ONE target folder, then run the TE checks.
# One step per `run` call, run from the repository root there, calls back to back (the machine is
# given back ~30 s after a call; /tmp survives only while it is held). The call plan is below; each
# run's docs/runs/<run>/README.md records the calls it made and what each carried.
#
#   bash scripts/gpu_te_session.sh chunk NN      # carry .wheelhouse/chunks/NN; NN=00 first: it also probes
#                                                # the machine and starts the binding build (detached)
#   bash scripts/gpu_te_session.sh finish NN     # the last chunk: wait for the build (or use the carried
#                                                # prebuilt fallback if it failed), install TE's three wheels
#                                                # together, this repo (-e), check the imports, then te-test
#   bash scripts/gpu_te_session.sh run PART...   # later calls on the same machine: te-test, bench, grpo,
#                                                # sync (#23), grpo-1b (#18), fsdp (#13, after grpo-1b)
#
# Every step writes its log to $OUT (at most 8 files a call come back). COMMIT=<hash> names the
# commit in the JSON (there is no .git there). WAIT (s, default 300) bounds finish's wait for the build;
# TE_BUILD=no skips the build (then finish installs the carried prebuilt binding). CPU dry run of the
# whole sequence (no GPU parts): PYTHON=.venv/bin/python RLP_SITE=/tmp/x TE_BUILD=no WAIT=0 ... chunk/finish NN.
set -uo pipefail
cmd=${1:?usage: gpu_te_session.sh chunk NN | finish NN | run PART...}; shift
OUT=${OUT:-/tmp/rlp-out}; mkdir -p "$OUT"
T=${RLP_SITE:-/tmp/rlp-site}         # the one target folder
SPOOL=$T/.wheelhouse/spool
STATE=${RLP_STATE:-$T.state}          # session markers, the copied build script
mkdir -p "$STATE"
export PYTHONPATH=$T NVTE_FRAMEWORK=pytorch CUDA_DEVICE_MAX_CONNECTIONS=1 PYTHONUNBUFFERED=1 \
       TVM_FFI_DISABLE_TORCH_C_DLPACK=1 RLINF_PANGU_COMMIT=${COMMIT:-${RLINF_PANGU_COMMIT:-unknown}}
py=${PYTHON:-python3}
case $py in /*) ;; */*) py=$PWD/$py ;; esac   # calls below run from other directories

say() { echo "[te-session $(date +%H:%M:%S)] $*"; }

probe() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  echo "nvcc: $(nvcc --version 2>/dev/null | grep release)  nproc=$(nproc)  disk: $(df -h /tmp | tail -1 | awk '{print $4}') free"
}

receive() {  # NN: spool + install what is complete; refuse a chunk whose predecessors this machine lacks
  local nn=$1 k
  for ((k = 0; k < 10#$nn; k++)); do
    if [ ! -f "$STATE/chunk-$(printf %02d $k).done" ]; then
      say "FRESH MACHINE: chunk $(printf %02d $k) never arrived here (the earlier machine was given back)."
      say "Start again from: gpu_te_session.sh chunk 00 (carry .wheelhouse/chunks/00)."
      exit 3
    fi
  done
  [ -d ".wheelhouse/chunks/$nn" ] || { say "no .wheelhouse/chunks/$nn here: name it in carry"; exit 2; }
  $py scripts/wheelhouse_install.py ".wheelhouse/chunks/$nn" --target "$T" || exit 2
  touch "$STATE/chunk-$nn.done"
}

start_build() {  # detached (setsid): it outlives this call; bash reads a copy, not the synced tree
  [ "${TE_BUILD:-yes}" = no ] && return
  if [ -f "$SPOOL/build/done" ] || pgrep -f "$STATE/build_te_torch.sh" >/dev/null; then return; fi
  ls "$SPOOL"/transformer_engine_torch-*.tar.gz >/dev/null 2>&1 || { say "no TE sdist yet"; return; }
  cp scripts/build_te_torch.sh "$STATE/build_te_torch.sh"
  setsid nohup bash "$STATE/build_te_torch.sh" "$SPOOL" >/dev/null 2>&1 </dev/null &
  say "TE torch binding build started (detached): $SPOOL/build/build.log"
}

build_status() {
  [ "${TE_BUILD:-yes}" = no ] && { say "binding build skipped (TE_BUILD=no)"; return; }
  [ -f "$SPOOL/build/build.log" ] && grep -E "^\[[0-9]+/[0-9]+\]|rc=|error" "$SPOOL/build/attempt"*.log 2>/dev/null | tail -n 2 | cut -c1-200
  cat "$SPOOL/build/done" 2>/dev/null || say "build running"
}

finish_install() {
  local waited=0
  while [ ! -f "$SPOOL/build/done" ] && [ $waited -lt "${WAIT:-300}" ]; do sleep 5; waited=$((waited + 5)); done
  build_status
  tar czf "$OUT/te_build_logs.tgz" -C "$SPOOL" build 2>/dev/null
  local fallback=()
  if ! grep -q "^rc=0" "$SPOOL/build/done" 2>/dev/null; then
    say "binding build failed or unfinished after ${waited}s: installing the carried prebuilt fallback instead"
    fallback=(--use-fallback transformer-engine-torch)
    echo "binding: prebuilt fallback ($(cat "$SPOOL/build/done" 2>/dev/null || echo unfinished))" >"$STATE/binding"
  else
    echo "binding: built here ($(cat "$SPOOL/build/done"))" >"$STATE/binding"
  fi
  $py scripts/wheelhouse_install.py --target "$T" "${fallback[@]}" || exit 2
  ensure_project
  checks
}

ensure_project() {  # this repo into the runtime's Python (-e: its start-up .pth makes `python -m rlinf.train`)
  local here; here=$(pwd)
  if [ "$(cd / && $py -c 'import rlinf_pangu, os; print(os.path.dirname(os.path.dirname(rlinf_pangu.__file__)))' 2>/dev/null)" != "$here" ]; then
    $py -m pip install -q --no-index --no-deps --no-build-isolation --disable-pip-version-check -e . || exit 2
  fi
}

checks() {
  cat "$STATE/binding"
  (cd / && $py - <<'PY') || { say "TE import check failed"; exit 2; }
import importlib.metadata as md, os, time
from rlinf_pangu.patches.transformer_engine import use_torchs_cudnn
use_torchs_cudnn()  # TE loads torch's cuDNN, not the toolkit's (the patch says why)
t = time.time()
import transformer_engine.pytorch as te  # noqa: F401
versions = {d: md.version(d) for d in ("transformer-engine", "transformer-engine-cu13", "transformer-engine-torch")}
print("TE", versions, f"import {time.time() - t:.1f} s")
assert len(set(versions.values())) == 1, versions
import torch
from transformer_engine.pytorch.utils import get_cudnn_version
major, minor, patch = get_cudnn_version()
cudnn_te, cudnn_torch = f"{major}.{minor}.{patch}", torch.backends.cudnn.version()
print("cuDNN: TE", cudnn_te, "torch", cudnn_torch, "CUDNN_HOME", os.environ.get("CUDNN_HOME"))
assert major * 10000 + minor * 100 + patch == cudnn_torch, f"TE's cuDNN {cudnn_te} is not torch's {cudnn_torch}"
torch.nn.functional.scaled_dot_product_attention(*[torch.randn(1, 2, 8, 64, device="cuda", dtype=torch.bfloat16)] * 3)
from rlinf_pangu.patches.transformer_engine import mapped_cudnn_files
print("mapped cuDNN files:", *mapped_cudnn_files(), sep="\n  ")
from rlinf.hybrid_engines.megatron import megatron_model_manager as mm
import rlinf_pangu
from rlinf_pangu.megatron.config import choose_spec
print("RLinf HAVE_TE", mm.HAVE_TE, "| pangu + transformer_engine ->", choose_spec("pangu", "transformer_engine", mm.HAVE_TE).describe())
assert mm.HAVE_TE
PY
  (cd / && $py -m rlinf.train --help >/dev/null) && say "python -m rlinf.train resolves (from /)" || { say "python -m rlinf.train does not resolve"; exit 2; }
}

torch_cudnn() {  # TE and torch on torch's cuDNN in every process below (patch transformer_engine.cudnn:torch's)
  # CUDNN_SHELL=no leaves the shell alone: every process then relies on the patch's in-process load
  [ "${CUDNN_SHELL:-yes}" = no ] && { say "CUDNN_SHELL=no: cuDNN left to each process's patch"; return; }
  eval "$($py -c 'from rlinf_pangu.patches.transformer_engine import print_env; print_env()')"
  say "CUDNN_HOME=${CUDNN_HOME:-} LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
}

part() {
  case $1 in
    te-test)
      RLINF_PANGU_GPU_OUT=$OUT timeout 420 $py -m pytest -m gpu -v -s -p no:cacheprovider tests/test_te_gpu.py >"$OUT/te_gpu_tests.log" 2>&1
      say "te-test rc=$?"; grep -E "PASSED|FAILED|ERROR|passed|failed|\[te parity\]" "$OUT/te_gpu_tests.log" | cut -c1-300 | tail -20 ;;
    bench)
      timeout 450 $py benchmarks/megatron_step.py --preset 1b --device cuda --dtype bf16 --transformer-impl transformer_engine \
        --seq 2048 --micro-batch 2 --warmup 3 --rounds 7 --steps 5 --profile-steps 2 --compare-impl 4096,16384 \
        --out "$OUT/te_step.json" >"$OUT/te_step.log" 2>&1
      say "bench rc=$?"; grep -E "^\||ratio|OOM|Error" "$OUT/te_step.log" | tail -30 ;;
    grpo)
      rm -rf /tmp/rlp-runs
      timeout 480 $py -m rlinf.train --config examples/math/pangu-tiny-grpo-megatron.yaml runner.max_steps=3 \
        runner.output_dir=/tmp/rlp-runs >"$OUT/grpo_tiny_te.log" 2>&1
      say "grpo rc=$?"
      grep -m2 "Pangu Megatron spec:" "$OUT/grpo_tiny_te.log" | cut -c1-300
      grep -E "\[grpo\]|Traceback|Error" "$OUT/grpo_tiny_te.log" | tail -12 | cut -c1-300
      for f in metrics.jsonl metrics.png; do
        m=$(find /tmp/rlp-runs -name "$f" | head -1); [ -n "$m" ] && cp "$m" "$OUT/grpo_tiny_te.$f"
      done ;;
    sync)  # issue 23: the colocated hand-over as the examples run it, then the attributed sync table (SYNC_TESTS: test files)
      RLINF_PANGU_GPU_OUT=$OUT timeout 280 $py -m pytest -m gpu -v -s -ra -p no:cacheprovider \
        ${SYNC_TESTS:-tests/test_colocated_sync_gpu.py tests/test_sync_gpu.py} >"$OUT/sync_gpu_tests.log" 2>&1
      say "sync tests rc=$?"; grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed" "$OUT/sync_gpu_tests.log" | cut -c1-300 | tail -12
      timeout 300 $py benchmarks/sync.py --attribution --device cuda --out "$OUT" >"$OUT/sync_attribution.log" 2>&1
      say "sync attribution rc=$?"; tail -n 25 "$OUT/sync_attribution.log" | cut -c1-300 ;;
    grpo-1b)  # issue 18: RLinf's whole GRPO step, Pangu 1B vs RLinf's own Qwen2 path (GRPO_ARGS: extra flags, e.g. --arms pangu --set KEY=VALUE)
      timeout 580 $py benchmarks/grpo_step.py --preset 1b --device cuda --out "$OUT" --work /tmp/grpo-work --deadline-s 545 ${GRPO_ARGS:-} \
        >"$OUT/grpo_step_1b.log" 2>&1
      say "grpo-1b rc=$?"; tail -n 30 "$OUT/grpo_step_1b.log" | cut -c1-300 ;;
    fsdp)  # issue 13: RLinf's FSDP actor on grpo-1b's checkpoint and workload (run grpo-1b first, same COMMIT:
      # the JSON then holds its pangu arm too, and ratios.fsdp_vs_megatron sets the two actors side by side)
      timeout 580 $py benchmarks/grpo_step.py --preset 1b --device cuda --out "$OUT" --work /tmp/grpo-work --deadline-s 545 \
        --arms fsdp ${GRPO_ARGS:-} >"$OUT/grpo_step_1b_fsdp.log" 2>&1
      say "fsdp rc=$?"; tail -n 30 "$OUT/grpo_step_1b_fsdp.log" | cut -c1-300 ;;
    checks) checks ;;
    *) say "unknown part $1 (te-test, bench, grpo, sync, grpo-1b, fsdp, checks)"; return 2 ;;
  esac
}

case $cmd in
  chunk)
    nn=$(printf %02d "$((10#${1:?chunk NN}))")
    [ "$nn" = 00 ] && probe
    receive "$nn" 2>&1 | tee "$OUT/chunk$nn.log"; [ "${PIPESTATUS[0]}" = 0 ] || exit 2
    start_build; build_status ;;
  finish)
    nn=$(printf %02d "$((10#${1:?finish NN}))"); shift
    receive "$nn" 2>&1 | tee "$OUT/chunk$nn.log"; [ "${PIPESTATUS[0]}" = 0 ] || exit 2
    start_build
    finish_install 2>&1 | tee "$OUT/install.log"; [ "${PIPESTATUS[0]}" = 0 ] || exit 2
    torch_cudnn
    for p in ${*:-te-test}; do part "$p"; done ;;
  run)
    [ -f "$STATE/binding" ] || { say "FRESH MACHINE: nothing installed here; start again from chunk 00"; exit 3; }
    ensure_project
    torch_cudnn
    for p in "$@"; do part "$p"; done ;;
  *) echo "usage: gpu_te_session.sh chunk NN | finish NN [PART...] | run PART..."; exit 2 ;;
esac
