# The README's two commands: `make demo` (main job on the embedded default) and `make test`.
# Each does the whole set-up on first use (scripts/setup.sh is idempotent).
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-fast test-slow bench wheelhouse clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m rlinf.train --config examples/math/pangu-tiny-grpo-megatron-cpu.yaml

test: setup
	$(PY) -m pytest -ra

test-fast: setup
	$(PY) -m pytest -ra -m "not slow"

wheelhouse: setup
	$(PY) scripts/build_wheelhouse.py --out .wheelhouse

clean:
	rm -rf runs .pytest_cache .hypothesis
