"""Carry Pangu's registrations into child Python processes that SGLang starts.

Why this exists: SGLang spawns fresh interpreters (its scheduler and detokenizer processes;
``python -m sglang.launch_server`` is one too) that import sglang and parse ``config.json``
before any code of ours could run there:

* ``import sglang.srt.configs`` dies on transformers 5.17 ("'qwen3_asr' is already used by a
  Transformers config") unless the patch ``transformers.AutoConfig.register:sglang-exist_ok``
  is in place first;
* SGLang parses the checkpoint's ``config.json`` (model_type ``PanguEmbedded``) before it
  imports its external model package, so the Pangu config must already be registered with
  transformers.

:func:`install_for_children` prepends ``rlinf_pangu/startup/_site`` to ``PYTHONPATH``; the
``sitecustomize`` there calls :func:`install` at interpreter start, which only arms two
post-import hooks (nothing heavy is imported at start-up):

* when ``transformers.models.auto.configuration_auto`` has loaded: apply that patch;
* when ``sglang.srt.utils.hf_transformers`` (SGLang's config/tokenizer loading) has loaded:
  ``rlinf_pangu.register(rlinf=False)``;

and then lets :func:`rlinf_pangu.patches.arm_startup` arm the start-up patches for RLinf's own
modules (import-time fixes Ray workers and SGLang's processes need before ``register()``).

This module must stay import-light: it runs in every child interpreter.
"""

from __future__ import annotations

import os
from typing import Callable

__all__ = ["BOOT_DIR", "install", "install_for_children", "child_env"]

#: The directory whose ``sitecustomize.py`` runs :func:`install` in child interpreters.
BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_site")


def _after_transformers_config_auto(_module) -> None:
    from rlinf_pangu.patches import apply_patch
    from rlinf_pangu.patches.transformers import SGLANG_EXIST_OK

    apply_patch(SGLANG_EXIST_OK)


def _after_sglang_hf_utils(_module) -> None:
    import rlinf_pangu

    rlinf_pangu.register(rlinf=False)


#: module name -> what to run right after that module has executed.
HOOKS: dict[str, Callable[[object], None]] = {
    "transformers.models.auto.configuration_auto": _after_transformers_config_auto,
    "sglang.srt.utils.hf_transformers": _after_sglang_hf_utils,
}

_INSTALLED: list[bool] = []


def install() -> None:
    """Arm the post-import hooks in this interpreter (idempotent); run them now for loaded modules."""
    if _INSTALLED:
        return
    from rlinf_pangu.patches import after_import, arm_startup

    for name, callback in HOOKS.items():
        after_import(name, callback)
    # RLinf's import-time fixes (SGLang version gate, moved SGLang symbols ...) and, in an
    # explicit CPU-mode run only, the CPU redirects: Ray workers and SGLang's scheduler
    # processes import RLinf before register() can run there.
    arm_startup()
    _INSTALLED.append(True)


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with ``BOOT_DIR`` first on ``PYTHONPATH``."""
    env = dict(os.environ if env is None else env)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if BOOT_DIR not in parts:
        env["PYTHONPATH"] = os.pathsep.join([BOOT_DIR, *parts])
    return env


def install_for_children() -> None:
    """Make every interpreter started from this process from now on run :func:`install`."""
    os.environ["PYTHONPATH"] = child_env()["PYTHONPATH"]
