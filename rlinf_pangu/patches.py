"""Every change this project makes to RLinf, SGLang and Megatron-core behaviour, in one place.

Each patch is a :class:`Patch` with a one-line ``why``, an ``applies`` probe that is True while
upstream still has the problem (tests assert it, so an upstream change under a patch fails a
test instead of silently double-patching), and ``apply``. ``apply_all()`` is called by
``rlinf_pangu.register()``; patches are idempotent and import their targets lazily, so a
package that is not installed simply has nothing patched.

Additive registrations (a new model type, convertor, spec) are not patches; they live in
``rlinf_pangu.integration``. CPU-only redirects are not here either: they live in
``rlinf_pangu.cpu_mode`` and are active only in the YAML-selected CPU mode.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)


@dataclass
class Patch:
    name: str
    why: str
    module: str  # the upstream module the patch changes (imported lazily)
    applies: Callable[[], bool]  # True while upstream still needs this patch
    apply: Callable[[], None]
    done: bool = field(default=False, repr=False)


PATCHES: dict[str, Patch] = {}


def patch(name: str, why: str, module: str, applies: Callable[[], bool]):
    """Register ``fn`` as the ``apply`` of a patch on ``module``."""

    def deco(fn: Callable[[], None]) -> Callable[[], None]:
        if name in PATCHES:
            raise RuntimeError(f"patch {name!r} declared twice")
        PATCHES[name] = Patch(name, why, module, applies, fn)
        return fn

    return deco


def _installed(module: str) -> bool:
    top = module.split(".")[0]
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def apply_patch(name: str) -> bool:
    """Apply one patch if its module is installed and upstream still needs it; True if applied now."""
    p = PATCHES[name]
    if p.done or not _installed(p.module):
        return False
    if not p.applies():
        log.info("patch %s not needed: upstream already changed (%s)", name, p.why)
        p.done = True
        return False
    p.apply()
    p.done = True
    log.debug("patched %s: %s", name, p.why)
    return True


def apply_all(only: list[str] | None = None) -> list[str]:
    """Apply every registered patch (or ``only`` those); returns the names applied now."""
    return [n for n in (only or list(PATCHES)) if apply_patch(n)]


def _mod(name: str):
    return importlib.import_module(name)


# ======================================================================================
# Megatron-core
# ======================================================================================


def _fused_kernels_missing() -> bool:
    return importlib.util.find_spec("megatron.legacy") is None or importlib.util.find_spec(
        "megatron.legacy.fused_kernels"
    ) is None


@patch(
    "megatron.legacy.fused_kernels",
    why="RLinf's initialize imports megatron.legacy.fused_kernels, which no megatron-core wheel ships",
    module="megatron.core",
    applies=_fused_kernels_missing,
)
def _provide_fused_kernels() -> None:
    from . import megatron_legacy_shim

    megatron_legacy_shim.install()
