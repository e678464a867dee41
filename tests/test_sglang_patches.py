"""The SGLang/transformers patches (rlinf_pangu/patches/) and the start-up hook that carries
Pangu's registration into SGLang's child interpreters (rlinf_pangu.startup.children).

Each patch test asserts that upstream still has the problem (the ``applies`` probe is True on a
fresh interpreter), so an upstream fix under a patch fails here instead of silently
double-patching, and that the patched behaviour works.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from harness import fresh_env


def _python(code: str, env: dict[str, str] | None = None, timeout: int = 300) -> list[str]:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    return r.stdout.split("\n")


@pytest.fixture(scope="module")
def child(tiny_fp32):
    """One fresh interpreter without any of our environment: first the upstream problem
    (importing SGLang fails), then the start-up hook SGLang's child processes run
    (``rlinf_pangu.startup.children.install()``, which their sitecustomize calls) and what it makes work.
    The engine and HTTP-server tests cover the same hook arriving through ``PYTHONPATH``."""
    code = (
        "from rlinf_pangu import patches\n"
        "from rlinf_pangu.patches.sglang import SGLANG_CPU_PATCHES\n"
        "from rlinf_pangu.patches.transformers import SGLANG_EXIST_OK\n"
        "print('applies', patches.PATCHES[SGLANG_EXIST_OK].applies())\n"
        "try:\n"
        "    import sglang.srt.configs\n"
        "    print('unpatched import ok')\n"
        "except ValueError as e:\n"
        "    print('unpatched import failed:', e)\n"
        "from rlinf_pangu.startup import children\n"
        "children.install()\n"
        "import sglang.srt.utils.hf_transformers\n"  # SGLang's config/tokenizer loading
        "from transformers import AutoConfig, AutoTokenizer\n"
        f"print('config', type(AutoConfig.from_pretrained({str(tiny_fp32)!r})).__name__)\n"
        f"print('tokenizer', type(AutoTokenizer.from_pretrained({str(tiny_fp32)!r})).__name__)\n"
        "from sglang.srt.models.registry import ModelRegistry, import_model_classes\n"
        "print('registry', ModelRegistry.models['PanguEmbeddedForCausalLM'].__module__)\n"
        "print('package', sorted((k, v.__module__) for k, v in import_model_classes('rlinf_pangu.sglang_ext', strict=True).items()))\n"
        "print('cpu patches applied', [n for n in SGLANG_CPU_PATCHES if patches.PATCHES[n].done])\n"
    )
    return _python(code, env=fresh_env())


def test_exist_ok_patch_is_needed_and_lets_sglang_import(child):
    assert "applies True" in child
    assert any(line.startswith("unpatched import failed:") and "already used" in line for line in child)
    assert "registry rlinf_pangu.sglang_ext.pangu_embedded" in child  # SGLang imported once patched


def test_startup_hook_registers_pangu_config_and_tokenizer_when_sglang_loads_them(child):
    assert "config PanguEmbeddedConfig" in child
    assert "tokenizer PanguTokenizer" in child


def test_sglang_registers_the_package_entry_class_under_its_class_name(child):
    assert "package [('PanguEmbeddedForCausalLM', 'rlinf_pangu.sglang_ext.pangu_embedded')]" in child


def test_cpu_only_sglang_patch_stays_off_outside_an_sglang_cpu_process(child):
    from rlinf_pangu import patches
    from rlinf_pangu.patches.sglang import SGLANG_CPU_PATCHES

    assert all(patches.PATCHES[n].on_demand for n in SGLANG_CPU_PATCHES)  # never applied by apply_all()
    assert "cpu patches applied []" in child


def test_reshard_dispatch_patch_is_needed_and_routes_pangu_to_its_fns(tiny_fp32):
    import rlinf_pangu
    from rlinf_pangu import patches
    from rlinf_pangu.patches.rlinf import RESHARD_DISPATCH

    assert patches.PATCHES[RESHARD_DISPATCH].applies()  # RLinf's if/else knows no pangu
    rlinf_pangu.register()
    import rlinf.utils.resharding.reshard_config as rc
    import rlinf.utils.resharding.utils as ru

    from resharding.reshard import pp_reshard_fn_pangu, tp_reshard_fn_pangu

    with pytest.raises(NotImplementedError):
        ru.get_tp_reshard_fn.__rlinf_pangu_original__("pangu")
    assert rc.get_tp_reshard_fn("qwen2.5") is ru.tp_reshard_fn_qwen2_5  # others still RLinf's own
    cfg = __import__("sync_testlib").reshard_config(tiny_fp32, 2, 1)  # the rollout's (SGLang) target
    # Pangu's convertor binds its no-copy variant of the same function (it copies what it is given)
    assert cfg.tp_reshard_fn.func is tp_reshard_fn_pangu and cfg.tp_reshard_fn.keywords == {"copy": False}
    assert cfg.pp_reshard_fn is pp_reshard_fn_pangu


def test_megatron_target_reshard_keeps_megatrons_vocabulary_split(tiny_fp32):
    """The disaggregated mode's actor -> inference sync (format mcore) must not cut the
    vocabulary to SGLang's padded rows: Pangu's TP reshard is bound to vocab='megatron'."""
    from resharding.reshard import pp_reshard_fn_pangu, tp_reshard_fn_pangu

    cfg = __import__("sync_testlib").reshard_config(tiny_fp32, 2, 1, reshard_weights_format="mcore")
    assert cfg.tp_reshard_fn.func is tp_reshard_fn_pangu and cfg.tp_reshard_fn.keywords == {"vocab": "megatron"}
    assert cfg.pp_reshard_fn is pp_reshard_fn_pangu


def test_rlinf_qwen_tp_reshard_cannot_take_the_o_proj_bias():
    """Why Pangu needs its own TP reshard: RLinf's asserts on the (replicated) linear_proj.bias."""
    from rlinf.utils.resharding.utils import tp_reshard_fn_qwen2_5

    with pytest.raises(AssertionError, match="linear_proj.bias"):
        tp_reshard_fn_qwen2_5({"decoder.layers.0.self_attention.linear_proj.bias": torch.zeros(4)}, 1, None)
