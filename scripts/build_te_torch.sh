#!/usr/bin/env bash
# Build Transformer Engine's PyTorch binding (transformer_engine_torch, published as an sdist only)
# on the GPU host, against that host's own torch and CUDA toolkit, with no network:
#   bash scripts/build_te_torch.sh SPOOL          # SPOOL: TARGET/.wheelhouse/spool (the sdist is there)
# The wheel lands in SPOOL/built/ (moved there only when complete), where
# scripts/wheelhouse_install.py picks it up and installs TE's three wheels together. Progress and
# logs: SPOOL/build/{build.log,attempt1.log,attempt2.log}; SPOOL/build/done holds "rc=N secs=S" at the end.
# Takes ~2 min on 16 cores (33 C++ files; MAX_JOBS defaults to the core count). It can run detached
# while further chunks arrive:  setsid nohup bash scripts/build_te_torch.sh SPOOL >/dev/null 2>&1 </dev/null &
set -u
spool=$(cd "${1:?usage: build_te_torch.sh SPOOL}" && pwd)
sdist=$(ls "$spool"/transformer_engine_torch-*.tar.gz 2>/dev/null | head -1)
logs=$spool/build
mkdir -p "$logs" "$spool/built"
rm -f "$logs/done"
exec >>"$logs/build.log" 2>&1
[ -n "$sdist" ] || { echo "no transformer_engine_torch-*.tar.gz in $spool"; echo "rc=3 secs=0" >"$logs/done"; exit 3; }
py=${PYTHON:-python3}
purelib=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# TE's common headers include cudnn.h and nccl.h, which the CUDA toolkit does not ship; torch's pip
# packages (nvidia-cudnn-cu13, nvidia-nccl-cu13) do. CPATH puts their folders after TE's own -I dirs.
inc=""
for h in cudnn.h nccl.h cublas_v2.h nvrtc.h cuda_runtime_api.h; do
  f=$(find "$purelib/nvidia" /usr/local/cuda/include -name "$h" 2>/dev/null | head -1)
  echo "header $h: ${f:-not found}"
  [ -n "$f" ] && case ":$inc:" in *":$(dirname "$f"):"*) ;; *) inc="$inc:$(dirname "$f")" ;; esac
done
export CPATH="${inc#:}${CPATH:+:$CPATH}"
# pytorch only (the image also has JAX); never try to download a prebuilt binding (no network);
# no "+<git hash>" local version (all three TE distributions must report the same version).
export NVTE_FRAMEWORK=pytorch NVTE_PYTORCH_FORCE_BUILD=TRUE NVTE_NO_LOCAL_VERSION=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
echo "torch: $("$py" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')"
echo "nvcc: $(nvcc --version 2>/dev/null | grep release)  CPATH=$CPATH  MAX_JOBS=$MAX_JOBS"

attempt() {  # $1: log file. Unpacked outside any git checkout, or setup.py takes the git hash.
  local work; work=$(mktemp -d /tmp/te-torch-build.XXXX)
  tar xzf "$sdist" -C "$work" && cd "$work"/transformer_engine_torch-* || return 99
  "$py" -m pip wheel --no-index --no-build-isolation --no-deps -v -w "$work/wheel" . >"$1" 2>&1 || return $?
  local w; w=$(ls "$work"/wheel/transformer_engine_torch-*.whl) || return 98
  cp "$w" "$spool/built/.$(basename "$w").tmp" && mv "$spool/built/.$(basename "$w").tmp" "$spool/built/$(basename "$w")"
  cd / && rm -rf "$work"
}

t0=$(date +%s)
attempt "$logs/attempt1.log"; rc=$?
echo "attempt 1 (defaults) rc=$rc after $(( $(date +%s) - t0 )) s"
if [ $rc -ne 0 ]; then
  tail -n 30 "$logs/attempt1.log"
  # NCCL EP (MoE expert parallelism) needs newer NCCL headers than some images have; Pangu is dense.
  export NVTE_WITH_NCCL_EP=0
  attempt "$logs/attempt2.log"; rc=$?
  echo "attempt 2 (NVTE_WITH_NCCL_EP=0) rc=$rc after $(( $(date +%s) - t0 )) s"
  [ $rc -ne 0 ] && tail -n 30 "$logs/attempt2.log"
fi
ls -l "$spool/built"
echo "rc=$rc secs=$(( $(date +%s) - t0 ))" >"$logs/done"
exit $rc
