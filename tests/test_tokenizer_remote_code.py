"""No checkpoint-provided code runs once ``rlinf_pangu.register()`` ran: AutoConfig,
AutoModelForCausalLM *and* AutoTokenizer resolve to this project's classes whatever
``trust_remote_code`` says (RLinf's FSDP model manager and its tokenizer helper pass ``True``).

The checkpoint under test is an official-layout download: config.json and tokenizer_config.json
name ``auto_map`` entries, and the release's .py files sit next to them. Here each of those files
writes a trace file the moment it is imported (and then fails, as the official ones do on a host
without ``torch_npu``), so "no code ran" is an observation, not an assumption. The negative control
shows the trace works: with transformers' own registration alone (the state the issue reports),
``AutoTokenizer(trust_remote_code=True)`` imports the checkpoint's tokenizer file.

Each case runs in a fresh interpreter with its own ``HF_MODULES_CACHE`` (transformers copies and
caches dynamic modules; a cached copy would hide a second import).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

#: The official release's code files (what ``auto_map`` points at).
REMOTE_FILES = ("tokenization_openpangu.py", "modeling_openpangu_dense.py", "configuration_openpangu_dense.py")


@pytest.fixture(scope="module")
def remote_code_ckpt(tiny_fp32, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny checkpoint with the release's .py files (trace-writing) and auto_map entries."""
    root = tmp_path_factory.mktemp("remote_code")
    ckpt, traces = root / "ckpt", root / "traces"
    ckpt.mkdir()
    traces.mkdir()
    for f in tiny_fp32.iterdir():
        if f.suffix == ".safetensors":
            (ckpt / f.name).symlink_to(f)
        else:
            shutil.copy(f, ckpt / f.name)
    for name in REMOTE_FILES:
        (ckpt / name).write_text(
            f"open({str(traces / name)!r}, 'w').write('imported')\n"
            "raise ImportError('checkpoint code ran (the official file needs torch_npu)')\n"
        )
    cfg = json.loads((ckpt / "config.json").read_text())
    tok = json.loads((ckpt / "tokenizer_config.json").read_text())
    assert "AutoModelForCausalLM" in cfg["auto_map"] and "AutoTokenizer" in tok["auto_map"], "fixture lost its auto_map"
    return ckpt, traces


def _run(code: str, ckpt: Path, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp / "hf_modules"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code, str(ckpt)], capture_output=True, text=True, timeout=300, env=env)


RESOLVE = """
import sys
import rlinf_pangu
rlinf_pangu.register(rlinf=False, sglang=False)
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from rlinf.data.tokenizers import hf_tokenizer
path = sys.argv[1]
for trust in (True, False, None):
    cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    for obj in (cfg, model, tok):
        print("auto", trust, type(obj).__module__, type(obj).__name__)
tok = hf_tokenizer(path, trust_remote_code=True)
print("rlinf", type(tok).__module__, type(tok).__name__, tok.eos_token_id, tok.pad_token_id)
"""


@pytest.fixture(scope="module")
def resolved(remote_code_ckpt, tmp_path_factory) -> dict:
    """One fresh interpreter after ``register()``: every Auto class with each trust_remote_code
    value, then RLinf's ``hf_tokenizer`` (actor, reward, dataset) as RLinf's FSDP path calls it."""
    ckpt, traces = remote_code_ckpt
    r = _run(RESOLVE, ckpt, tmp_path_factory.mktemp("resolve"))
    assert r.returncode == 0, r.stderr[-4000:]
    lines = [line.split() for line in r.stdout.splitlines()]
    return {
        "auto": [ln[1:] for ln in lines if ln[:1] == ["auto"]],
        "rlinf": next(ln[1:] for ln in lines if ln[:1] == ["rlinf"]),
        "traces": sorted(p.name for p in traces.iterdir()),
    }


def test_auto_classes_resolve_to_this_projects_classes_with_any_trust_remote_code(resolved):
    rows = resolved["auto"]
    assert len(rows) == 9, rows
    for trust, module, name in rows:
        assert module.startswith("rlinf_pangu.hf."), (trust, module, name)
    assert {name for _, _, name in rows} == {"PanguEmbeddedConfig", "PanguEmbeddedForCausalLM", "PanguTokenizer"}


def test_no_checkpoint_code_was_imported(resolved):
    assert resolved["traces"] == [], "checkpoint code was imported"


def test_rlinfs_tokenizer_helper_gets_pangus_tokenizer_with_trust_remote_code(resolved):
    """Same class, official eos ([unused10]) and pad (<unk>) ids."""
    assert resolved["rlinf"] == ["rlinf_pangu.hf.tokenization", "PanguTokenizer", "45892", "0"]


REGISTRATION_ONLY = """
import sys
from transformers import AutoConfig, AutoTokenizer
from rlinf_pangu.hf import PanguEmbeddedConfig, PanguTokenizer
AutoConfig.register(PanguEmbeddedConfig.model_type, PanguEmbeddedConfig, exist_ok=True)
AutoTokenizer.register(PanguEmbeddedConfig, slow_tokenizer_class=PanguTokenizer, exist_ok=True)
print("config", type(AutoConfig.from_pretrained(sys.argv[1], trust_remote_code=True)).__name__)
try:
    AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
except Exception as e:
    print("raised", type(e).__name__)
"""


def test_negative_control_transformers_registration_alone_runs_the_checkpoints_tokenizer(remote_code_ckpt, tmp_path):
    """The state the issue reports: transformers' own ``register`` calls (no patch) resolve the
    config to Pangu's class, but the tokenizer to the checkpoint's file, which runs."""
    ckpt, traces = remote_code_ckpt
    r = _run(REGISTRATION_ONLY, ckpt, tmp_path)
    try:
        assert "config PanguEmbeddedConfig" in r.stdout, (r.stdout, r.stderr[-3000:])
        assert (traces / "tokenization_openpangu.py").exists(), (r.stdout, r.stderr[-3000:])
    finally:
        for f in traces.iterdir():
            f.unlink()


def test_patch_probe_holds_on_the_pinned_transformers():
    """The patch is needed while transformers still counts a registered tokenizer as remote-code
    territory; a release that changes ``explicit_local_code`` fails here."""
    from rlinf_pangu.patches import PATCHES
    from rlinf_pangu.patches.transformers import REGISTERED_TOKENIZER_WINS

    assert PATCHES[REGISTERED_TOKENIZER_WINS].applies()


def test_hub_ids_and_unregistered_types_are_left_to_transformers(tmp_path):
    import rlinf_pangu
    from rlinf_pangu.patches.transformers import registered_tokenizer_for

    rlinf_pangu.register_transformers()
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert registered_tokenizer_for(tmp_path) is None  # transformers' own Llama: not ours to decide
    assert registered_tokenizer_for("openPangu/openPangu-Embedded-1B") is None
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "PanguEmbedded"}))
    assert registered_tokenizer_for(tmp_path).__name__ == "PanguTokenizer"
