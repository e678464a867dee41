"""``python -m sglang.launch_server --model-path DIR`` serves the tiny Pangu on the CPU.

The server is started exactly as the README tells users to (SGLang's own module, plus the
environment ``rlinf_pangu.startup.register.sglang_env()`` / ``python -m rlinf_pangu.serve --print-env``
gives), on a loopback port, with SGLang's tokenizer (so the detokenizer process and the
PanguTokenizer registration in SGLang's processes are exercised). ``/generate`` with a text
prompt must return the HF greedy continuation (fp32), then the server is shut down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

pytestmark = pytest.mark.slow

#: On the CPU SGLang sizes its static memory from host RAM: it fails when free RAM drops by more
#: than (1 - fraction) while it loads (other test processes on a loaded host). A large fraction
#: allocates nothing more: max_total_tokens caps the KV pool.

PROMPT = "The capital of the arithmetic kingdom is"
NEW_TOKENS = 8
START_TIMEOUT_S = 420


def _post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def _wait_healthy(base: str, proc: subprocess.Popen, log_path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    _dump_stacks(proc)
    pytest.fail(f"server not healthy after {START_TIMEOUT_S} s (each process's Python stack at the end):\n"
                f"{log_path.read_text()[-12000:]}")


def _dump_stacks(proc: subprocess.Popen) -> None:
    """Where a start that never gets healthy hangs: SIGABRT to the server's process group makes each
    process (started with ``PYTHONFAULTHANDLER=1``, see ``server_env``) write every thread's Python
    stack to the log before it dies (a start that hung once in a clean-clone run: its log alone stopped after
    SGLang's model imports)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGABRT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass


def server_env(env: dict[str, str]) -> dict[str, str]:
    """A test server's environment: faulthandler on, so ``_dump_stacks`` can show a hang."""
    return {**env, "PYTHONFAULTHANDLER": "1"}


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_launch_server_generate_equals_hf_greedy(tiny_fp32, tmp_path):
    from harness import free_port

    from rlinf_pangu.startup.register import sglang_env

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "sglang.launch_server", "--model-path", str(tiny_fp32),
        "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32",
        "--attention-backend", "torch_native", "--sampling-backend", "pytorch", "--disable-cuda-graph",
        "--mem-fraction-static", "0.5", "--max-total-tokens", "2048", "--random-seed", "0",
        "--log-level", "warning",
    ]
    log_path = tmp_path / "server.log"
    env = server_env(sglang_env({k: v for k, v in os.environ.items() if k != "SGLANG_EXTERNAL_MODEL_PACKAGE"}))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(base, proc, log_path)
        out = _post(base + "/generate", {
            "text": PROMPT,
            "sampling_params": {"temperature": 0, "max_new_tokens": NEW_TOKENS, "ignore_eos": True},
        })
    finally:
        _stop(proc)
    assert proc.returncode is not None

    import rlinf_pangu

    rlinf_pangu.register_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_fp32))
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_fp32), dtype=torch.float32).eval()
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)[0, ids.shape[1]:]
    assert out["output_ids"] == ref.tolist()
    assert out["text"] == tok.decode(ref, skip_special_tokens=True)


def test_dump_stacks_shows_where_a_hung_server_waits(tmp_path):
    """The diagnostic a start-up timeout relies on: a hung child's Python stack reaches the log."""
    log_path = tmp_path / "hung.log"
    code = "import time\ndef waiting_here():\n    print('waiting', flush=True)\n    time.sleep(300)\nwaiting_here()\n"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], env=server_env(dict(os.environ)), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120  # the interpreter's start-up hooks can take seconds on a loaded host
    while "waiting" not in log_path.read_text() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    _dump_stacks(proc)
    assert proc.poll() is not None
    assert "waiting_here" in log_path.read_text()
