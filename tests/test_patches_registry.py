"""The patch rooms: every patch is declared in the module named for the upstream it changes, and
``python -m rlinf_pangu.patches`` lists them all with whether they apply on the installed stack."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from rlinf_pangu import patches

ROOT = Path(__file__).resolve().parents[1]

#: upstream room -> the top-level packages its patches may change.
ROOMS = {
    "rlinf": {"rlinf"},
    "sglang": {"sglang"},
    "megatron": {"megatron"},
    "transformers": {"transformers", "rlinf"},  # names RLinf's modules import from transformers
    "latex2sympy": {"rlinf"},  # latex2sympy2 is imported by RLinf's math verifier
    "transformer_engine": {"transformer_engine"},
}


def test_every_patch_lives_in_the_room_of_its_upstream():
    assert patches.PATCHES, "no patch registered"
    for p in patches.PATCHES.values():
        assert p.upstream in ROOMS, f"{p.name} declared in rlinf_pangu.patches.{p.upstream}, not an upstream room"
        assert p.module.split(".")[0] in ROOMS[p.upstream], f"{p.name} changes {p.module} from the {p.upstream} room"
        assert len(p.why) > 20, f"{p.name} has no reason"


def test_listing_names_every_patch_with_its_state_on_this_stack():
    out = subprocess.run([sys.executable, "-m", "rlinf_pangu.patches", "--json"], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert set(rows) == set(patches.PATCHES)
    assert all(r["state"] in {"applies", "not needed", "not installed"} for r in rows.values()), rows
    # on the pinned stack every patch but the SGLang-on-CPU one (probed inside SGLang only) applies; Transformer
    # Engine is GPU-only (tests/test_te_gpu.py asserts its patch's probe where it is installed)
    te = importlib.util.find_spec("transformer_engine") is not None
    assert {n for n, r in rows.items() if r["state"] != "applies"} == {"sglang.RotaryEmbedding:native-on-cpu"} | (
        set() if te else {"transformer_engine.cudnn:torch's"})


def test_no_patch_body_is_reached_through_an_indirection():
    needle = "_compat" + "()"  # spelled apart so this file does not find itself
    hits = subprocess.run(["git", "grep", "-n", "-F", needle, "--", "*.py"], capture_output=True, text=True, cwd=ROOT)
    assert hits.stdout == "", hits.stdout


def test_startup_patches_are_declared_as_such_and_armed_by_the_startup_hook():
    startup = {n for n, p in patches.PATCHES.items() if p.startup}
    assert {"megatron.legacy.fused_kernels", "rlinf.rollout.sglang:version-gate",
            "transformers.AutoModelForVision2Seq"} <= startup
    assert not any(patches.PATCHES[n].on_demand for n in startup)
