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
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip
echo "[setup] installing the pinned stack (torch 2.11.0, megatron-core, transformers, ray, hydra ...)"
"${pip[@]}" install -q -c constraints.txt -r requirements/stack.txt
echo "[setup] installing rlinf, sglang (--no-deps)"
"${pip[@]}" install -q --no-deps -c constraints.txt -r requirements/nodeps.txt
echo "[setup] installing rlinf-pangu (editable)"
"${pip[@]}" install -q --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo "[setup] done"
