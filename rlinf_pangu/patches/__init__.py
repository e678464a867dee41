"""Every change this project makes to upstream behaviour: one module per upstream.

=====================  ===========================================================================
module                 what it changes
=====================  ===========================================================================
``core``               the mechanism: the ``Patch`` record, ``@patch``, import hooks, source probes
``rlinf``              RLinf 0.3.0: model building, start-up conversion, weight sync, SGLang
                       rollout, training loop
``sglang``             SGLang 0.5.17 (and SGLang serving on the CPU)
``megatron``           megatron-core 0.19 (``megatron.legacy.fused_kernels``)
``transformers``       transformers 5.17 (names RLinf and SGLang still use)
``latex2sympy``        rlinf-latex2sympy2 under RLinf's math verifier
``transformer_engine`` Transformer Engine 2.20: it loads the same cuDNN as torch
``cpu``                the explicit CPU mode's redirects (imported only when the YAML says
                       ``cluster.device: cpu``; never on the GPU path)
=====================  ===========================================================================

Each patch is declared with ``@patch(name, why=..., module=..., applies=probe)`` beside its body, in
the module of the upstream it changes; a test asserts each probe, so an upstream change under a
patch fails a test. ``python -m rlinf_pangu.patches`` lists them all with whether they apply on the
installed stack. ``rlinf_pangu.register()`` calls :func:`apply_all`; the start-up hook of child
interpreters calls :func:`arm_startup`. Importing this package is cheap (standard library only):
it runs at every interpreter start-up.
"""

from __future__ import annotations

from . import latex2sympy, megatron, rlinf, sglang, transformer_engine, transformers  # noqa: F401  (declare their patches)
from .core import PATCHES, Patch, after_import, apply_all, apply_patch, before_exec, cpu_mode_run, startup_patches

__all__ = ["PATCHES", "Patch", "after_import", "apply_all", "apply_patch", "arm_startup", "before_exec", "describe"]


def arm_startup() -> list[str]:
    """Arm the start-up patches (cheap: file reads and import hooks only).

    In a process of an explicit CPU-mode run this also arms the CPU redirects (the only place
    :mod:`rlinf_pangu.patches.cpu` is imported from at start-up).
    """
    applied = apply_all(startup_patches())
    if cpu_mode_run():
        from . import cpu

        cpu.arm()
    return applied


def describe() -> list[dict[str, str]]:
    """One row per patch: name, upstream, the module it changes, whether it applies here, why."""
    from .core import installed

    rows = []
    for p in PATCHES.values():
        if not installed(p.module):
            state = "not installed"
        else:
            try:
                state = "applies" if p.applies() else "not needed"
            except Exception as e:  # a probe that cannot run is reported, not fatal to the listing
                state = f"probe failed: {type(e).__name__}: {e}"
        rows.append({"name": p.name, "upstream": p.upstream, "module": p.module, "state": state,
                     "when": "start-up" if p.startup else ("on demand" if p.on_demand else "register()"),
                     "why": p.why})
    return rows
