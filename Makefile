# The README's two commands: `make demo` (main job on the embedded default) and `make test`.
# Each does the whole set-up on first use (scripts/setup.sh is idempotent).
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-fast test-slow test-gpu bench wheelhouse clean

setup:
	@bash scripts/setup.sh

# ARGS: key=value overrides, e.g. make demo ARGS="pangu.make_checkpoint.seed=1" (another random model),
# or ARGS=--verbose (what Ray, SGLang and Megatron print, on the console too; always in the run's train.log).
demo: setup
	$(PY) -m rlinf.train --config examples/math/pangu-tiny-grpo-megatron-cpu.yaml $(ARGS)

# Two pytest-xdist workers. Each test module is one unit of work (its fixtures run once), and the
# modules that start a whole training run (marked whole_run) share one unit, so they never overlap:
# one run takes ~13 GB of this 23 GB host (tests/conftest.py). TEST_WORKERS=0: one process, in order.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -ra --durations=25 -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

test-fast: setup
	$(PY) -m pytest -ra -m "not slow"

# The GPU tests: `pytest -m gpu` (each skips cleanly without the GPUs it needs: one for
# test_colocated_sync_gpu.py and test_sync_gpu.py, two for test_sync_multigpu.py). Their figures go to
# $(GPU_OUT) as JSON (colocated_sync.json, post_sync_parity_cuda.json, sync_multigpu.json) with the
# log beside them; keep that folder under docs/runs/<run>/. The GPU host has no .venv: python3 there.
# TE and torch share torch's cuDNN in the pytest process too (rlinf_pangu/patches/transformer_engine.py).
# GPU_TESTS picks files (default: every test file), e.g. GPU_TESTS=tests/test_colocated_sync_gpu.py.
GPU_OUT ?= runs/gpu-tests
GPU_PY ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
GPU_TESTS ?=
test-gpu:
	mkdir -p $(GPU_OUT)
	eval "$$($(GPU_PY) -c 'from rlinf_pangu.patches.transformer_engine import print_env; print_env()')" && \
	RLINF_PANGU_GPU_OUT=$(abspath $(GPU_OUT)) bash -o pipefail -c '$(GPU_PY) -m pytest -m gpu -v -s -ra $(GPU_TESTS) 2>&1 | tee -a $(GPU_OUT)/pytest_gpu.log'

wheelhouse: setup
	$(PY) scripts/build_wheelhouse.py --out .wheelhouse

clean:
	rm -rf runs .pytest_cache .hypothesis
