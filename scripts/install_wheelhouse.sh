#!/usr/bin/env bash
# Install a wheelhouse made by scripts/build_wheelhouse.py on a host with no package index, into ONE
# target folder, chunk by chunk:
#   bash scripts/install_wheelhouse.sh SRC [SRC ...] TARGET      then: export PYTHONPATH=TARGET
# SRC: the wheelhouse folder, or any of its chunks (.wheelhouse/chunks/NN) as they arrive, in any
# order. Run it after every transfer with the same TARGET: what arrived is spooled in
# TARGET/.wheelhouse, split files are joined and sha256-checked, and whatever is complete is
# installed without removing anything an earlier run installed (bin/ scripts, shared package
# folders); Transformer Engine's three wheels go in together once its torch binding is built
# (scripts/build_te_torch.sh). The logic is scripts/wheelhouse_install.py (standard library only).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: install_wheelhouse.sh SRC [SRC ...] TARGET   (TARGET: the one folder to install into; then export PYTHONPATH=TARGET)" >&2
  exit 2
fi
target=${!#}
exec "${PYTHON:-python3}" "$(dirname "$0")/wheelhouse_install.py" "${@:1:$#-1}" --target "$target"
