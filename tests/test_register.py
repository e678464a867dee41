"""rlinf_pangu.register(): one idempotent call registers Pangu with transformers, RLinf and SGLang."""

from __future__ import annotations

import os
import subprocess
import sys


def test_register_is_idempotent_and_covers_every_framework():
    code = (
        "import os, rlinf_pangu\n"
        "rlinf_pangu.register(); rlinf_pangu.register()\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "from rlinf.config import SupportedModel\n"
        "print(CONFIG_MAPPING['PanguEmbedded'].__name__)\n"
        "print(SupportedModel('pangu').value)\n"
        "print(os.environ['SGLANG_EXTERNAL_MODEL_PACKAGE'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SGLANG_EXTERNAL_MODEL_PACKAGE"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["PanguEmbeddedConfig", "pangu", "rlinf_pangu.sglang_ext"]
