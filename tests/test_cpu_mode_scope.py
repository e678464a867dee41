"""The CPU redirects exist only in the explicit CPU mode: with the GPU config, no process of the
driver's start-up path (compose, checks, register(), the start-up patches every child interpreter
arms) ever imports ``rlinf_pangu.patches.cpu``; with the CPU config, it does and exports the mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from rlinf_pangu.make_checkpoint import hf_config_dict
from rlinf_pangu.presets import preset

ROOT = Path(__file__).resolve().parents[1]



def _probe(tmp_path: Path, example: str) -> dict:
    ckpt = tmp_path / "tiny"
    ckpt.mkdir(exist_ok=True)
    (ckpt / "config.json").write_text(json.dumps(hf_config_dict(preset("tiny"), torch.bfloat16)))
    code = (
        "import json, os, sys\n"
        "from rlinf_pangu import train, patches\n"
        f"cfg = train.prepare({str(ROOT / 'examples/math' / example)!r}, "
        f"['rollout.model.model_path={ckpt}', 'runner.output_dir={tmp_path}'])\n"
        "patches.arm_startup()\n"
        "import rlinf.workers.rollout.sglang.sglang_worker, rlinf.hybrid_engines.megatron.megatron_model_manager\n"
        "print(json.dumps({'cpu_mode': 'rlinf_pangu.patches.cpu' in sys.modules,"
        " 'env': os.environ.get('RLINF_PANGU_DEVICE'), 'cuda_current_device': str(getattr(__import__('torch').cuda.current_device, '__module__', ''))}))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_gpu_config_never_imports_cpu_mode(tmp_path):
    out = _probe(tmp_path, "pangu-tiny-grpo-megatron.yaml")
    assert out == {"cpu_mode": False, "env": None, "cuda_current_device": "torch.cuda"}


def test_cpu_config_activates_cpu_mode(tmp_path):
    out = _probe(tmp_path, "pangu-tiny-grpo-megatron-cpu.yaml")
    assert out["cpu_mode"] is True and out["env"] == "cpu"
    assert out["cuda_current_device"] != "torch.cuda"  # redirected once the Megatron manager is imported
