"""Patches on megatron-core: ``megatron.legacy.fused_kernels``, which no megatron-core wheel ships.

Why: RLinf's ``rlinf/utils/initialize.py`` does ``from megatron.legacy import fused_kernels`` at
import time and later calls ``fused_kernels.load(cfg)``. That module belonged to Megatron-LM's
source tree (it JIT-compiled the legacy softmax CUDA extensions); no megatron-core wheel has it,
so importing RLinf's Megatron actor fails with ``ModuleNotFoundError: megatron.legacy``.

What: an import hook that serves ``megatron.legacy`` (an empty package) and
``megatron.legacy.fused_kernels`` (with :func:`load`) **only when no real one is found**: the
finder sits at the end of ``sys.meta_path``, so an installed Megatron-LM tree always wins.

When: before anything imports ``rlinf.utils.initialize``. In the driver, ``register()`` applies
the patch. A Ray worker unpickles the Megatron actor class (which imports
``rlinf.utils.initialize``) *before* RLinf's ``Worker.__new__`` imports ``RLINF_EXT_MODULE``, so
the finder is also installed at interpreter start by the ``.pth`` line of
:mod:`rlinf_pangu.startup.site`.

This module imports only the standard library: it runs at every interpreter start-up.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any

from .core import patch

LEGACY = "megatron.legacy"
FUSED_KERNELS = "megatron.legacy.fused_kernels"

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
            module.__doc__ = "Provided by rlinf_pangu.patches.megatron: " + (load.__doc__ or "").split("\n")[0]
            module.load = load
            module.FusedKernelsUnavailable = FusedKernelsUnavailable
        else:
            module.__doc__ = "Provided by rlinf_pangu.patches.megatron (holds fused_kernels only)."


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


@patch(
    "megatron.legacy.fused_kernels",
    why="RLinf's initialize imports megatron.legacy.fused_kernels, which no megatron-core wheel ships",
    module="megatron.core",
    applies=upstream_missing,
    startup=True,  # Ray workers unpickle the Megatron actor before register()
)
def _provide_fused_kernels() -> None:
    install()


# ======================================================================================
# Loading a torch-format checkpoint a run saved (resume)
# ======================================================================================

TORCH_CKPT_LOAD = "megatron.training.checkpointing:weights-only-load"
_CHECKPOINTING = "megatron.training.checkpointing"

def checkpoint_globals() -> list[Any]:
    """The types Megatron's torch-format checkpoints pickle besides tensors, as RLinf saves them
    (one list, kept with the reader of that format: ``ckpt_convertor.megatron_io.pickled_globals``)."""
    from ckpt_convertor.megatron_io import pickled_globals

    return pickled_globals()


class CheckpointLoadError(RuntimeError):
    """Megatron could not read a torch-format checkpoint (it printed why and called sys.exit())."""


def make_weights_only_load(original: Any) -> Any:
    """Megatron's ``_load_base_checkpoint`` with the checkpoint's own pickled types allowed in
    torch's weights-only unpickler; Megatron's ``sys.exit()`` on a failed load becomes an error
    that names the directory (Megatron printed the exception just before)."""
    import functools

    @functools.wraps(original)
    def _load_base_checkpoint(load_dir, *args, **kwargs):
        import torch

        with torch.serialization.safe_globals(checkpoint_globals()):
            try:
                return original(load_dir, *args, **kwargs)
            except SystemExit as e:
                raise CheckpointLoadError(
                    f"Megatron could not load the checkpoint in {load_dir} (its reason is printed above: "
                    "'could not load the checkpoint')"
                ) from e

    _load_base_checkpoint.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    return _load_base_checkpoint


def _source_on_disk(module: str, qualname: str) -> str:
    """Source of a function in ``module`` read from disk (importing megatron to probe it would cost
    every interpreter seconds: these probes run at start-up)."""
    import ast

    from .core import upstream_source

    text = upstream_source(module)
    if not text:
        return ""
    scopes: list[ast.AST] = [ast.parse(text)]
    for part in qualname.split("."):
        found = next((n for s in scopes for n in getattr(s, "body", [])
                      if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part), None)
        if found is None:
            return ""
        scopes = [found]
    return ast.unparse(scopes[0])


def _megatron_loads_with_default_weights_only() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(x) for x in version("torch").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (2, 6) and "torch.load(checkpoint_name, map_location='cpu')" in _source_on_disk(
        _CHECKPOINTING, "_load_base_checkpoint")


@patch(
    TORCH_CKPT_LOAD,
    why="Megatron's torch-format load calls torch.load with torch>=2.6's default weights_only=True, which refuses the args (RLinf's DictConfig), numpy RNG state and enums Megatron itself pickled: every resume printed 'could not load the checkpoint' and sys.exit() in the actor",
    module=_CHECKPOINTING,
    applies=_megatron_loads_with_default_weights_only,
)
def _weights_only_checkpoint_load() -> None:
    from .core import after_import

    def install(ckpt) -> None:
        if not hasattr(ckpt._load_base_checkpoint, "__rlinf_pangu_original__"):
            ckpt._load_base_checkpoint = make_weights_only_load(ckpt._load_base_checkpoint)

    after_import(_CHECKPOINTING, install)


DP_ZERO_LOAD = "megatron.core.optimizer.DistributedOptimizer:dp-zero-load-no-grad"
_DISTRIB_OPTIMIZER = "megatron.core.optimizer.distrib_optimizer"


def make_no_grad(original: Any) -> Any:
    import functools

    @functools.wraps(original)
    def load_parameter_state_from_dp_zero(self, *args, **kwargs):
        import torch

        with torch.no_grad():
            return original(self, *args, **kwargs)

    load_parameter_state_from_dp_zero.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    return load_parameter_state_from_dp_zero


def _dp_zero_load_tracks_grad() -> bool:
    load = _source_on_disk(_DISTRIB_OPTIMIZER, "DistributedOptimizer.load_parameter_state_from_dp_zero")
    setter = _source_on_disk(_DISTRIB_OPTIMIZER, "DistributedOptimizer._set_main_param_and_optimizer_states")
    return bool(load) and "no_grad" not in load and ".copy_(" in setter and "no_grad" not in setter


@patch(
    DP_ZERO_LOAD,
    why="megatron-core 0.19's DistributedOptimizer.load_parameter_state_from_dp_zero (the torch-format load of distrib_optim.pt) copies into the fp32 main parameters outside torch.no_grad, which its sibling loaders have: every resume failed with 'a view of a leaf Variable that requires grad is being used in an in-place operation'",
    module=_DISTRIB_OPTIMIZER,
    applies=_dp_zero_load_tracks_grad,
)
def _dp_zero_load_without_grad() -> None:
    from .core import after_import

    def install(do) -> None:
        cls = do.DistributedOptimizer
        fn = cls.load_parameter_state_from_dp_zero
        if not hasattr(fn, "__rlinf_pangu_original__"):
            cls.load_parameter_state_from_dp_zero = make_no_grad(fn)

    after_import(_DISTRIB_OPTIMIZER, install)


DP_ZERO_TORCH_ADAM_STEP = "megatron.core.optimizer.DistributedOptimizer:dp-zero-load-torch-adam-step"


def make_state_setter(original: Any) -> Any:
    """``_set_main_param_and_optimizer_states`` that leaves a per-parameter optimizer state the
    file does not hold as it is. torch's Adam (Megatron's fallback without Transformer Engine or
    Apex) keeps ``step`` per parameter; ``distrib_optim.pt`` holds only param/exp_avg/exp_avg_sq,
    and ``load_state_dict`` already set ``step`` from the checkpoint's param groups."""
    import functools

    @functools.wraps(original)
    def _set_main_param_and_optimizer_states(self, model_param, tensors):
        import torch

        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        held = self.optimizer.state.get(main_param, {})
        absent = {k: None for k, v in held.items() if isinstance(v, torch.Tensor) and k not in tensors}
        return original(self, model_param, {**tensors, **absent} if absent else tensors)

    _set_main_param_and_optimizer_states.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    return _set_main_param_and_optimizer_states


def _dp_zero_load_misses_torch_adam_step() -> bool:
    setter = _source_on_disk(_DISTRIB_OPTIMIZER, "DistributedOptimizer._set_main_param_and_optimizer_states")
    return "for k, v in optim_state.items()" in setter and "tensors[key]" in setter and "'step'" not in setter \
        and '"step"' not in setter


@patch(
    DP_ZERO_TORCH_ADAM_STEP,
    why="megatron-core 0.19's torch-format load of distrib_optim.pt copies every per-parameter optimizer state by name, but with torch's Adam (no Transformer Engine or Apex) that state holds 'step', which the file does not: every resume failed with KeyError: 'step' ('Unable to load optimizer from checkpoint')",
    module=_DISTRIB_OPTIMIZER,
    applies=_dp_zero_load_misses_torch_adam_step,
)
def _dp_zero_load_keeps_torch_adam_step() -> None:
    from .core import after_import

    def install(do) -> None:
        cls = do.DistributedOptimizer
        fn = cls._set_main_param_and_optimizer_states
        if not hasattr(fn, "__rlinf_pangu_original__"):
            cls._set_main_param_and_optimizer_states = make_state_setter(fn)

    after_import(_DISTRIB_OPTIMIZER, install)


LOAD_SHARED_STEP = "megatron.core.optimizer.DistributedOptimizer:load-state-dict-shared-step"


def make_unshared_step_load(original: Any) -> Any:
    """``DistributedOptimizer.load_state_dict`` that gives each parameter its own ``step`` tensor.

    Megatron's load hands every parameter's torch-Adam state the *same* step tensor, and torch's
    Adam increments each parameter's step in place: after one resumed step the shared count has
    grown by the number of parameters, and every later update uses the wrong bias correction."""
    import functools

    @functools.wraps(original)
    def load_state_dict(self, *args, **kwargs):
        import torch

        out = original(self, *args, **kwargs)
        for state in self.optimizer.state.values():
            step = state.get("step") if isinstance(state, dict) else None
            if isinstance(step, torch.Tensor):
                state["step"] = step.detach().clone()
        return out

    load_state_dict.__rlinf_pangu_original__ = original  # type: ignore[attr-defined]
    return load_state_dict


def _load_shares_one_step_tensor() -> bool:
    src = _source_on_disk(_DISTRIB_OPTIMIZER, "DistributedOptimizer.load_state_dict")
    return "for s in state_dict_state.values():" in src and "s['step'] = step" in src


@patch(
    LOAD_SHARED_STEP,
    why="megatron-core 0.19's DistributedOptimizer.load_state_dict gives every parameter's torch-Adam state one shared step tensor, which torch's Adam then increments once per parameter: a resumed run without Transformer Engine or Apex trained with the wrong Adam bias correction (its second step differed from the uninterrupted run's)",
    module=_DISTRIB_OPTIMIZER,
    applies=_load_shares_one_step_tensor,
)
def _load_gives_each_param_its_step() -> None:
    from .core import after_import

    def install(do) -> None:
        cls = do.DistributedOptimizer
        if not hasattr(cls.load_state_dict, "__rlinf_pangu_original__"):
            cls.load_state_dict = make_unshared_step_load(cls.load_state_dict)

    after_import(_DISTRIB_OPTIMIZER, install)
