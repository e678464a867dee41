"""GPU only: the post-sync check in bf16 (benchmarks/post_sync_parity.py) on one GPU.

After one optimizer step and the sync, SGLang's log-probs are compared per token with Megatron's
recomputed ones and judged against the floor measured in the same run on the same post-step weights
(SGLang given them by an independent load: bf16 kernels alone): the mean exp(|dlogp|) within the
floor's + 2e-3, the worst token within the floor's + 0.02 nats, SGLang equal to itself across the
two loads within 0.02 on every token, and the stale control (no sync) 10x those margins away
(sync_testlib.judge_post_sync and the measured spreads next to its constants). The benchmark exits
non-zero when any of that fails; the goal mean exp(|dlogp|) <= 1.001 is reported, not asserted (the
bf16 floor alone is ~1.01).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

REPO = Path(__file__).resolve().parents[1]


def test_post_sync_bf16_logprobs_match_megatron(tmp_path):
    out = Path(os.environ.get("RLINF_PANGU_GPU_OUT") or tmp_path)
    cmd = [sys.executable, str(REPO / "benchmarks/post_sync_parity.py"), "--preset", "1b", "--layers", "8",
           "--seqs", "4", "--len", "128", "--out", str(out), "--work", str(tmp_path / "work")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    print(r.stdout[-3000:])
    result = out / "post_sync_parity_cuda.json"
    assert result.exists(), f"rc {r.returncode}, no result:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    res = json.loads(result.read_text())
    assert r.returncode == 0 and res["pass"], (res.get("problems"), r.stdout[-3000:] + r.stderr[-3000:])
    assert res["problems"] == []
