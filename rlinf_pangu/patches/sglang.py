"""Patches on SGLang 0.5.17: what RLinf 0.3.0's rollout (written for sglang <= 0.5.4) and serving on
the CPU need of it.

Child interpreters that SGLang spawns get these through :mod:`rlinf_pangu.startup.children`
(their post-import hooks), the current one through ``register()``.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

from .core import PATCHES, after_import, installed, mark, mod, patch, patched, upstream_source

log = logging.getLogger("rlinf_pangu.patches")

#: RLinf's SGLang scheduler subclass, which registers its handlers with ``_mapping.extend``.
_RLINF_SGL_SCHED = "rlinf.hybrid_engines.sglang.common.sgl_scheduler"

SGLANG_DISPATCH_EXTEND = "sglang.TypeBasedDispatcher:extend"


def _extendable_mapping_cls():
    from collections import OrderedDict

    class ExtendableMapping(OrderedDict):
        """SGLang >= 0.5.5's dispatcher mapping (an OrderedDict) that also takes RLinf's ``extend``."""

        def extend(self, pairs) -> None:
            self.update(pairs)

    return ExtendableMapping


def make_dispatcher_init(original: Callable) -> Callable:
    mapping_cls = _extendable_mapping_cls()

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if not hasattr(self._mapping, "extend"):
            self._mapping = mapping_cls(self._mapping)

    return mark(__init__, original)


@patch(
    SGLANG_DISPATCH_EXTEND,
    why="RLinf registers its scheduler/tokenizer handlers with _mapping.extend(...); sglang >= 0.5.5 made _mapping an OrderedDict",
    module="sglang.utils",
    applies=lambda: "OrderedDict(mapping)" in upstream_source("sglang.utils")
    and "_mapping.extend" in upstream_source(_RLINF_SGL_SCHED),
    startup=True,
)
def _extendable_dispatch() -> None:
    def install(su) -> None:
        init = su.TypeBasedDispatcher.__init__
        if not patched(init):
            su.TypeBasedDispatcher.__init__ = make_dispatcher_init(init)

    after_import("sglang.utils", install)


# --------------------------------------------------------------------------------------
# SGLang serving on the CPU. These apply only inside an SGLang process whose server args say
# device="cpu" (their probes read SGLang's published server args, which exist only in SGLang's
# own processes), so they can never touch the GPU path. The Pangu model class calls
# apply_sglang_cpu_patches() when it is built.
# --------------------------------------------------------------------------------------

SGLANG_CPU_ROPE = "sglang.RotaryEmbedding:native-on-cpu"
_ROPE = "sglang.srt.layers.rotary_embedding.base"


def _sglang_serving_on_cpu() -> bool:
    rc = sys.modules.get("sglang.srt.runtime_context")  # never import SGLang just to look
    args = rc.get_context().server_args if rc is not None else None
    return args is not None and getattr(args, "device", None) == "cpu"


def _sglang_rope_needs_cpu_flag() -> bool:
    if not installed("sglang") or not _sglang_serving_on_cpu():
        return False
    return not mod(_ROPE)._is_cpu


@patch(
    SGLANG_CPU_ROPE,
    why="[SGLang on CPU only] without SGLang's CPU kernel build (SGLANG_USE_CPU_ENGINE), RotaryEmbedding on device=cpu reaches for vllm's custom op; flag the host as CPU so it takes the native path",
    module=_ROPE,
    applies=_sglang_rope_needs_cpu_flag,
    on_demand=True,
)
def _sglang_rope_native_on_cpu() -> None:
    mod(_ROPE)._is_cpu = True


SGLANG_CPU_PATCHES = (SGLANG_CPU_ROPE,)


def apply_sglang_cpu_patches() -> list[str]:
    """Apply the CPU-only SGLang patches if this SGLang process serves on the CPU.

    Unlike ``apply_patch`` this re-probes every time: an earlier probe in the same process
    (before SGLang published its server args) must not rule the patch out for good.
    """
    applied = []
    for name in SGLANG_CPU_PATCHES:
        p = PATCHES[name]
        if p.applies():
            p.apply()
            p.done = True
            applied.append(name)
            log.info("patched %s: %s", name, p.why)
    return applied
