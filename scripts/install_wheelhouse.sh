#!/usr/bin/env bash
# Install a wheelhouse made by scripts/build_wheelhouse.py on a host with no package index.
#   bash scripts/install_wheelhouse.sh WHEELHOUSE_DIR [TARGET]
# WHEELHOUSE_DIR holds wheels and/or the chunks (wheels-NN.tar, NAME.whl.partNN) of one or more
# transfers. Without TARGET, installs into the current environment; with TARGET, into that folder
# (then: export PYTHONPATH=TARGET). Safe to re-run as more chunks arrive: it installs what is there.
set -euo pipefail
src=${1:?usage: install_wheelhouse.sh WHEELHOUSE_DIR [TARGET]}
target=${2:-}
py=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
shopt -s nullglob
cp "$src"/*.whl "$work"/ 2>/dev/null || true
for t in "$src"/*.tar "$src"/chunks/*.tar; do tar -xf "$t" -C "$work"; done
# Reassemble split wheels (NAME.whl.part00, part01, ...) once every part is present.
for first in "$src"/*.whl.part00 "$src"/chunks/*.whl.part00; do
  base=${first%.part00}; name=$(basename "$base")
  cat "$base".part* > "$work/$name"
  "$py" - "$work/$name" <<'PY' || { echo "[wheelhouse] $name: parts incomplete, skipped"; rm -f "$work/$name"; }
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).testzip()
PY
done
args=(-m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check)
[ -n "$target" ] && args+=(--upgrade --target "$target")
n=$(ls "$work"/*.whl 2>/dev/null | wc -l)
echo "[wheelhouse] installing $n wheels${target:+ into $target}"
"$py" "${args[@]}" "$work"/*.whl
