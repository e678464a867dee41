"""``megatron.legacy.fused_kernels`` for megatron-core wheels, which do not ship ``megatron.legacy``.

Why: RLinf's ``rlinf/utils/initialize.py`` does ``from megatron.legacy import fused_kernels`` at
import time and later calls ``fused_kernels.load(cfg)``. That module belonged to Megatron-LM's
source tree (it JIT-compiled the legacy softmax CUDA extensions); no megatron-core wheel has it,
so importing RLinf's Megatron actor fails with ``ModuleNotFoundError: megatron.legacy``.

What: an import hook that serves ``megatron.legacy`` (an empty package) and
``megatron.legacy.fused_kernels`` (with :func:`load`) **only when no real one is found**: the
finder sits at the end of ``sys.meta_path``, so an installed Megatron-LM tree always wins.

When: it must be in place before anything imports ``rlinf.utils.initialize``. In the driver,
``rlinf_pangu.register()`` installs it (patch ``megatron.legacy.fused_kernels``). Ray worker
processes are a different story: Ray unpickles the worker class, which imports
``rlinf.workers.megatron_worker -> megatron_model_manager -> rlinf.utils.initialize`` *before*
RLinf's ``Worker.__new__`` imports ``RLINF_EXT_MODULE`` and calls its ``register()``. So the
hook is also installed at interpreter start-up by a one-line ``.pth`` file in site-packages
(the standard start-up hook, the same mechanism editable installs use), written by
``python -m rlinf_pangu.megatron_legacy_shim install-pth`` (``scripts/setup.sh`` runs it).
The ``.pth`` line does nothing when ``rlinf_pangu`` is not importable.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

LEGACY = "megatron.legacy"
FUSED_KERNELS = "megatron.legacy.fused_kernels"
PTH_NAME = "rlinf_pangu_megatron_legacy.pth"
#: The ``.pth`` line: guarded so a stale file cannot break interpreters once rlinf_pangu is gone.
PTH_LINE = (
    "import importlib.util as _u; _u.find_spec('rlinf_pangu') is not None and "
    "__import__('rlinf_pangu.megatron_legacy_shim', fromlist=['install']).install()\n"
)

#: The kernels Megatron-LM's legacy ``fused_kernels.load`` built; megatron-core's local
#: attention imports them when ``masked_softmax_fusion`` is on and the input is fp16/bf16.
SOFTMAX_KERNELS = ("scaled_masked_softmax_cuda", "scaled_upper_triang_masked_softmax_cuda", "scaled_softmax_cuda")


class FusedKernelsUnavailable(RuntimeError):
    """``masked_softmax_fusion`` was requested but no kernel for it exists in this environment."""


def load(args: Any = None) -> None:
    """Stand-in for Megatron-LM's ``fused_kernels.load(args)``: compiles nothing.

    The legacy function JIT-built the softmax CUDA extensions. Nothing here builds them, so
    this checks the one setting that would need them: with ``masked_softmax_fusion`` on and
    neither Transformer Engine (whose attention replaces the fused softmax) nor the kernels
    installed, megatron-core's local attention would fail on the first fp16/bf16 forward with
    ``No module named 'scaled_masked_softmax_cuda'``; fail here instead, naming the setting.
    """
    if not _masked_softmax_fusion(args):
        return
    if importlib.util.find_spec("transformer_engine") is not None:
        return
    if all(importlib.util.find_spec(k) is not None for k in SOFTMAX_KERNELS):
        return
    raise FusedKernelsUnavailable(
        "model.masked_softmax_fusion=True needs Megatron's fused softmax CUDA kernels "
        f"({', '.join(SOFTMAX_KERNELS)}) or Transformer Engine; neither is installed. "
        "Set actor.model.masked_softmax_fusion: false (the unfused softmax is numerically the same)."
    )


def _masked_softmax_fusion(args: Any) -> bool:
    """Read ``masked_softmax_fusion`` from RLinf's cfg (``cfg.model.*``) or a flat Megatron args."""
    if args is None:
        return False
    for holder in (getattr(args, "model", None), args):
        if holder is None:
            continue
        getter = getattr(holder, "get", None)
        value = getter("masked_softmax_fusion", None) if callable(getter) else getattr(holder, "masked_softmax_fusion", None)
        if value is not None:
            return bool(value)
    return False


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):  # default module creation
        return None

    def exec_module(self, module: ModuleType) -> None:
        if module.__name__ == FUSED_KERNELS:
            module.__doc__ = "Provided by rlinf_pangu.megatron_legacy_shim: " + (load.__doc__ or "").split("\n")[0]
            module.load = load
            module.FusedKernelsUnavailable = FusedKernelsUnavailable
        else:
            module.__doc__ = "Provided by rlinf_pangu.megatron_legacy_shim (holds fused_kernels only)."


class LegacyFinder(importlib.abc.MetaPathFinder):
    """Serves the two shim modules; placed last on ``sys.meta_path`` so real ones win."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == LEGACY:
            # A package with no search locations: ``megatron.legacy.model`` stays a clean
            # ModuleNotFoundError (RLinf falls back to megatron.core's Float16Module on it).
            return importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=True)
        if fullname == FUSED_KERNELS:
            return importlib.machinery.ModuleSpec(fullname, _Loader(), origin=__file__)
        return None


def installed() -> bool:
    """True when the finder is on ``sys.meta_path`` of this interpreter."""
    return any(isinstance(f, LegacyFinder) for f in sys.meta_path)


def install() -> bool:
    """Put the finder at the end of ``sys.meta_path`` (idempotent); True if added now."""
    if installed():
        return False
    sys.meta_path.append(LegacyFinder())
    return True


def uninstall() -> None:
    """Remove the finder (tests use this to show the upstream problem on a clean interpreter)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, LegacyFinder)]
    for name in (FUSED_KERNELS, LEGACY):
        mod = sys.modules.get(name)
        if mod is not None and isinstance(getattr(mod, "__spec__", None) and mod.__spec__.loader, _Loader):
            del sys.modules[name]


def upstream_missing() -> bool:
    """True while the installed Megatron has no ``megatron.legacy.fused_kernels`` of its own.

    Looks on disk only (``PathFinder`` over ``megatron.__path__``), never through this
    finder, so it keeps telling the truth after :func:`install`.
    """
    spec = importlib.util.find_spec("megatron")
    if spec is None or not spec.submodule_search_locations:
        return False  # no megatron at all: nothing to provide
    legacy = importlib.machinery.PathFinder.find_spec(LEGACY, list(spec.submodule_search_locations))
    if legacy is None or not legacy.submodule_search_locations:
        return True
    return importlib.machinery.PathFinder.find_spec(FUSED_KERNELS, list(legacy.submodule_search_locations)) is None


# --------------------------------------------------------------------------------------
# The start-up hook for processes that import RLinf before rlinf_pangu.register() runs
# --------------------------------------------------------------------------------------


def site_packages() -> Path:
    """The purelib directory of the running interpreter (the venv's site-packages)."""
    return Path(sysconfig.get_paths()["purelib"])


def install_pth(site_dir: Path | None = None) -> Path:
    """Write the ``.pth`` start-up line into ``site_dir`` atomically; returns its path."""
    site_dir = Path(site_dir or site_packages())
    target = site_dir / PTH_NAME
    if target.exists() and target.read_text() == PTH_LINE:
        return target
    fd, tmp = tempfile.mkstemp(dir=site_dir, prefix=".rlinf_pangu_", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(PTH_LINE)
    os.replace(tmp, target)
    log.info("wrote %s", target)
    return target


def remove_pth(site_dir: Path | None = None) -> None:
    (Path(site_dir or site_packages()) / PTH_NAME).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlinf_pangu.megatron_legacy_shim", description=__doc__.split("\n")[0])
    p.add_argument("action", choices=["install-pth", "remove-pth", "status"])
    p.add_argument("--site-dir", type=Path, default=None, help="default: this interpreter's site-packages")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.action == "install-pth":
        print(install_pth(a.site_dir))
    elif a.action == "remove-pth":
        remove_pth(a.site_dir)
    else:
        pth = Path(a.site_dir or site_packages()) / PTH_NAME
        print(f"upstream megatron.legacy.fused_kernels missing: {upstream_missing()}")
        print(f"finder installed in this interpreter: {installed()}")
        print(f"start-up hook {pth}: {'present' if pth.exists() else 'absent'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
