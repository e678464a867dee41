"""Patches on Transformer Engine 2.20: which cuDNN its loader picks.

Why: TE's import (``transformer_engine/common/__init__.py``) loads cuDNN itself, and looks first at
``CUDNN_HOME``, ``CUDNN_PATH``, ``CUDA_HOME``, ``CUDA_PATH`` and ``/usr/local/cuda`` ("prioritize
loading from system/toolkit before checking python packages"); only then at the pip ``nvidia-cudnn``
package torch depends on. On the lent H100 the CUDA image carries cuDNN 9.14 under the toolkit while
torch 2.11 ships and was built against 9.19. TE then loads 9.14 globally, and the first thing that
initialises torch's cuDNN (``torch.backends.cudnn.version()``, a cuDNN SDPA, a convolution) dies:
"cuDNN version incompatibility: PyTorch was compiled against (9, 19, 0) but found runtime version
(9, 14, 0)". That killed every TE GPU test at set-up (docs/runs/gpu-h100-2026-12-07-te). Pointing
``LD_LIBRARY_PATH`` at torch's cuDNN instead is worse: TE still loads the toolkit's core library by
path, cuDNN's sub-libraries then come from torch's copy, and TE's attention fell back from cuDNN's
fused kernels (slower steps, a 16k-token step out of memory; same run).

What: when neither ``CUDNN_HOME`` nor ``CUDNN_PATH`` is set, set ``CUDNN_HOME`` to the cuDNN of torch's
own installation (``site-packages/nvidia/cudnn`` beside ``torch``), so TE loads torch's core library,
and put that cuDNN's ``lib`` first on ``LD_LIBRARY_PATH``, so the sub-libraries cuDNN opens by name
(``libcudnn_graph.so.9`` ...) come from the same copy in every process started afterwards. The dynamic
loader reads ``LD_LIBRARY_PATH`` once, at process start, so in the process that applies the patch the
variable changes nothing; there ``CUDNN_HOME`` alone is **not** enough (measured on the H100,
docs/runs/gpu-h100-2026-12-07-te2/cudnn_diag*.txt: TE mapped torch's ``libcudnn.so.9`` and then the
image's ``/usr/lib/x86_64-linux-gnu/libcudnn_{graph,ops,...}.so.9.14.0``, reported 9.14, and torch
refused its cuDNN). So that process also loads every library of torch's cuDNN by path, dependencies
first (``RTLD_GLOBAL``): a name the loader resolves later is then one already loaded (measured: all
eight from torch's copy, TE 9.19, torch 91900, a cuDNN SDPA call runs). A cuDNN the user named is left
alone. The variables reach every process started after the patch (Ray's workers, the test ranks),
which therefore need no loading of their own.

When: before the first ``import transformer_engine`` of a process: a start-up patch (child
interpreters), applied by ``register()`` in the driver before Ray starts, and by the test harness and
``benchmarks/megatron_step.py``, which build Megatron without ``register()``.

This module imports only the standard library (it runs at interpreter start-up).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from .core import apply_patch, patch

log = logging.getLogger(__name__)

TORCH_CUDNN = "transformer_engine.cudnn:torch's"
#: what TE's loader reads first; either one set by the user wins over this patch
ENV_VARS = ("CUDNN_HOME", "CUDNN_PATH")
#: lines of TE's ``_load_cuda_library_from_system`` / ``_load_cuda_library`` that make the patch needed
_TE_LOADER_MARKS = ('os.environ.get(f"{lib_name.upper()}_HOME")', '"/usr/local/cuda"',
                    "_load_cuda_library_from_system(lib_name)")


def _package_dir(name: str) -> Path | None:
    """The directory of top-level package ``name`` without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def torch_cudnn_home() -> Path | None:
    """The cuDNN torch's wheel depends on (``nvidia-cudnn``, installed beside ``torch``), if any."""
    torch_dir = _package_dir("torch")
    if torch_dir is None:
        return None
    home = torch_dir.parent / "nvidia" / "cudnn"
    return home if any((home / "lib").glob("libcudnn.so*")) else None


def te_loader_prefers_the_toolkit() -> bool:
    """Probe: TE's cuDNN loader still reads ``CUDNN_HOME`` first and tries the toolkit before pip."""
    te = _package_dir("transformer_engine")
    source = te / "common" / "__init__.py" if te else None
    if source is None or not source.is_file():
        return False
    text = source.read_text()
    return all(mark in text for mark in _TE_LOADER_MARKS)


@patch(TORCH_CUDNN, module="transformer_engine", applies=te_loader_prefers_the_toolkit, startup=True,
       why="TE loads the CUDA toolkit's cuDNN (9.14 on the H100 image) before torch's own (9.19); torch then "
           "refuses its cuDNN ('cuDNN version incompatibility'): CUDNN_HOME is pointed at torch's cuDNN")
def point_te_at_torchs_cudnn() -> None:
    if any(os.environ.get(v) for v in ENV_VARS):
        return
    home = torch_cudnn_home()
    if home is None:
        log.debug("torch has no pip cuDNN beside it; TE picks its cuDNN itself")
        return
    os.environ["CUDNN_HOME"] = str(home)
    lib = str(home / "lib")
    before = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([lib, *(d for d in before if d != lib)])
    log.debug("CUDNN_HOME=%s (torch's cuDNN) for Transformer Engine, its lib first on LD_LIBRARY_PATH", home)
    if before[:1] != [lib]:  # this process's loader did not start with it: load the copy by path now
        load_cudnn(home)


#: torch's cuDNN libraries, each after the cuDNN libraries it needs (graph needs none; ops needs graph;
#: cnn and adv need ops and graph); the core library, which opens the others by name, last
_LOAD_ORDER = ("graph", "engines_precompiled", "engines_runtime_compiled", "heuristic", "ops", "cnn", "adv", "")


def _cudnn_libraries(lib: Path) -> list[Path]:
    """Every ``libcudnn*.so.9`` in ``lib``, in ``_LOAD_ORDER`` (any library that order does not name goes
    before the core library, so it still loads before the core opens it)."""
    def rank(path: Path) -> float:
        part = path.name[len("libcudnn"):-len(".so.9")].lstrip("_")
        return _LOAD_ORDER.index(part) if part in _LOAD_ORDER else len(_LOAD_ORDER) - 1.5
    return sorted(lib.glob("libcudnn*.so.9"), key=lambda p: (rank(p), p.name))


def mapped_cudnn_files() -> list[str]:
    """The cuDNN files this process has mapped (``/proc/self/maps``), to see where each came from."""
    try:
        with open("/proc/self/maps") as maps:
            return sorted({line.split()[-1] for line in maps if "libcudnn" in line and "/" in line})
    except OSError:
        return []


def load_cudnn(home: Path) -> list[str]:
    """Load every library of the cuDNN at ``home`` by path, globally, in ``_cudnn_libraries``'s order; return
    the names loaded. A library that fails to load is named in a warning and the rest still load (TE then
    picks as it would without the patch). Loading after ``transformer_engine`` was imported is too late for
    TE's own choice, and says so."""
    import ctypes
    import sys

    if "transformer_engine" in sys.modules:
        log.warning("Transformer Engine was imported before the patch %s: it may already hold another cuDNN "
                    "(%s)", TORCH_CUDNN, ", ".join(mapped_cudnn_files()) or "none mapped")
    loaded = []
    for path in _cudnn_libraries(home / "lib"):
        try:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as err:
            log.warning("torch's cuDNN library %s did not load (%s): TE and torch may load another copy", path, err)
            continue
        loaded.append(path.name)
    return loaded


def use_torchs_cudnn() -> bool:
    """Apply the patch in a process that builds Megatron without ``register()`` (a benchmark, the test
    harness); the decision is the patch's own: TE installed and its loader still preferring the toolkit."""
    return apply_patch(TORCH_CUDNN)


def print_env() -> int:
    """``export`` lines for a shell: what the patch sets where it applies (nothing without TE, when a cuDNN
    is named, or when torch has none). For Python processes that do not call ``register()`` and start no
    children (a benchmark, a script), so their own dynamic loader sees ``LD_LIBRARY_PATH`` too:
    ``eval "$(python -c 'from rlinf_pangu.patches.transformer_engine import print_env; print_env()')"``."""
    import shlex

    before = {k: os.environ.get(k) for k in ("CUDNN_HOME", "LD_LIBRARY_PATH")}
    use_torchs_cudnn()
    for key, old in before.items():
        new = os.environ.get(key)
        if new is not None and new != old:
            print(f"export {key}={shlex.quote(new)}")
    return 0
