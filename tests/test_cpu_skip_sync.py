"""The CPU e2e's negative-control switch (``RLINF_PANGU_CPU_SKIP_SYNC=1``, rlinf_pangu/patches/cpu.py)
replaces RLinf's SGLang scheduler's ``batch_load_hf_weight`` with a no-op, and only when set: the rest
of RLinf's sync (receive, resume) is RLinf's own. Checked on RLinf's real Scheduler class, in a fresh
interpreter per case (the switch is read when the module is imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CODE = """
import json
import rlinf_pangu
from rlinf_pangu import patches
from rlinf_pangu.patches import cpu
rlinf_pangu.register()  # the upstream patches SGLang's import needs (as in every SGLang process of a run)
patches.arm_startup()
import rlinf.hybrid_engines.sglang.common.sgl_scheduler as ss
original = ss.Scheduler.batch_load_hf_weight
cpu._skip_weight_load(ss)
fn = ss.Scheduler.batch_load_hf_weight
out = {"replaced": fn is not original, "marked": bool(getattr(fn, "__rlinf_pangu_cpu__", False))}
if out["replaced"]:
    out["returns"] = fn(object(), {"packed": None})  # loads nothing: no model is touched
print(json.dumps(out))
"""


def _probe(skip: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLINF_PANGU")}
    if skip is not None:
        env["RLINF_PANGU_CPU_SKIP_SYNC"] = skip
    p = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_switch_off_leaves_rlinfs_weight_load_alone():
    assert _probe(None) == {"replaced": False, "marked": False}
    assert _probe("0") == {"replaced": False, "marked": False}


def test_switch_on_loads_no_synced_weight():
    assert _probe("1") == {"replaced": True, "marked": True, "returns": None}
