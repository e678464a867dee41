#!/usr/bin/env bash
# Creates .venv (Python 3.12) and installs the pinned stack plus this package. Idempotent: a stamp
# records the hash of the inputs, so a second run with nothing changed returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
stamp="$VENV/.rlinf-pangu-setup"
want=$(cat constraints.txt requirements/*.txt pyproject.toml setup.py rlinf_pangu_*.pth scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

find_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  if command -v pyenv >/dev/null 2>&1; then
    for p in "$(pyenv root)"/versions/3.12*/bin/python; do
      [ -x "$p" ] && "$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo "$p"; return; }
    done
  fi
  for p in python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do
    command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { command -v "$p"; return; }
  done
  echo "no Python 3.12 found: install it (pyenv install 3.12) or set PYTHON=/path/to/python3.12" >&2
  exit 1
}

if [ ! -x "$VENV/bin/python" ]; then
  py=$(find_python)
  echo "[setup] creating $VENV with $py"
  "$py" -m venv "$VENV"
fi
# The installer is uv, pinned in constraints.txt and bootstrapped from PyPI into the venv by pip:
# it downloads the ~3.5 GB stack in parallel and installs from its cache by hard links, where pip
# downloads and installs one file at a time (measured: docs/runs/cpu-demo-2026-12-07/README.md).
# The result is the same pinned set; pip stays in the venv for one-off installs.
uv_pin=$(grep -E '^uv==' constraints.txt | sed -E 's/[[:space:]]*#.*//')
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "$uv_pin"
# --compile-bytecode: as pip does; without .pyc files every Ray worker and SGLang process would
# compile torch, sglang and megatron from source at each start (PYTHONDONTWRITEBYTECODE hosts).
uv=("$VENV/bin/uv" pip install --python "$VENV/bin/python" -q --compile-bytecode)
t0=$SECONDS
echo "[setup] installing the pinned stack (torch 2.11.0, megatron-core, transformers, ray, hydra ...) with $uv_pin"
"${uv[@]}" -c constraints.txt -r requirements/stack.txt
echo "[setup] installing rlinf, sglang (--no-deps)"
"${uv[@]}" --no-deps -c constraints.txt -r requirements/nodeps.txt
echo "[setup] installing rlinf-pangu (editable)"
"${uv[@]}" --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo "[setup] done in $((SECONDS - t0)) s"
