"""Megatron layer specs for openPangu-Embedded: bias on ``linear_proj`` (o_proj), none on fc1/fc2.

Megatron builds ``linear_proj`` with ``bias=config.add_bias_linear``, and the same flag decides
the MLP biases, so the flag cannot express Pangu. The spec swaps in a row-parallel linear that
always has its bias: like every row-parallel bias it is replicated on the TP ranks and added
once after the all-reduce (``skip_bias_add``: the layer's bias-dropout-add adds it), which is
exactly the replicated ``linear_proj.bias`` of :mod:`rlinf_pangu.layout`.

Two variants: megatron-core's own modules (``local``; works everywhere, CPU included) and the
Transformer Engine modules (``te``; only built when ``transformer_engine`` imports, and never
touched otherwise: RLinf's own ``get_specs`` builds the TE spec eagerly and fails without TE).

Which one a run gets (:func:`choose_spec`, a table): spec name ``pangu`` follows RLinf's own knob
``actor.megatron.transformer_impl`` (``transformer_engine``, RLinf's default, or ``local``; RLinf
hands it to Megatron's global args, where Megatron's own model builders read it too) and whether
TE is installed; ``pangu_local`` / ``pangu_te`` force a variant. Sequence packing follows the
spec: RLinf's forward packs every micro-batch into THD form, which only TE's attention runs, so a
model with TE attention gets RLinf's packed forward unchanged and any other one RLinf's unpacked
path (patch ``rlinf.custom_forward:no-packing-without-TE``, deciding per model with
:func:`packs_sequences`). The choice is logged once per process, by rank 0, when the model is built.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
import sys
import weakref
from typing import Any

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.tensor_parallel.layers import RowParallelLinear
from megatron.core.transformer.spec_utils import ModuleSpec

from .config import SpecChoice, choose_spec

__all__ = [
    "PanguRowParallelLinear",
    "SpecChoice",
    "te_available",
    "choose_spec",
    "current_transformer_impl",
    "packs_sequences",
    "pangu_layer_spec",
    "get_pangu_spec",
    "biased_linear_proj",
]

log = logging.getLogger(__name__)


def te_available() -> bool:
    """True when Transformer Engine can be imported (found on the path)."""
    return importlib.util.find_spec("transformer_engine") is not None


def current_transformer_impl() -> str | None:
    """``transformer_impl`` from Megatron's global args, where RLinf puts ``actor.megatron.*``
    (``set_megatron_args``) before it builds the model; None when no args are set (benchmarks,
    tools building a model directly)."""
    try:
        from megatron.training.global_vars import get_args

        return getattr(get_args(), "transformer_impl", None)
    except (ImportError, AssertionError):
        return None


@functools.cache
def _log_choice(choice: SpecChoice) -> None:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_rank() == 0:
        log.info("%s", choice.describe())


_PACKS: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def packs_sequences(model: Any) -> bool:
    """True when ``model`` (any wrapper) computes attention with Transformer Engine's
    ``TEDotProductAttention``, the only attention that runs RLinf's packed (THD) forward.

    Decided from the built model, not from settings, so the forward always matches the modules
    the spec choice actually built. Cached per model (the forward runs every micro-batch)."""
    try:
        return _PACKS[model]
    except (KeyError, TypeError):
        pass
    # megatron-core imports its TE extension module without TE too, with placeholders for the classes
    te_ext = sys.modules.get("megatron.core.extensions.transformer_engine")
    te_attention = getattr(te_ext, "TEDotProductAttention", None)
    modules = getattr(model, "modules", None)
    packed = isinstance(te_attention, type) and callable(modules) and any(isinstance(m, te_attention) for m in modules())
    try:
        _PACKS[model] = packed
    except TypeError:
        pass
    return packed


def biased_linear_proj(base: type) -> type:
    """A subclass of the row-parallel linear ``base`` whose bias is always on.

    Megatron passes ``bias=config.add_bias_linear`` (False for Pangu); the subclass ignores it.
    """

    class _Biased(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["bias"] = True
            super().__init__(*args, **kwargs)

    _Biased.__name__ = _Biased.__qualname__ = f"Pangu{base.__name__}"
    _Biased.__module__ = __name__
    _Biased.__doc__ = f"{base.__name__} with its bias always on: Pangu's o_proj bias (replicated over TP)."
    return _Biased


#: megatron-core's RowParallelLinear with the o_proj bias (module level, so it pickles).
PanguRowParallelLinear = biased_linear_proj(RowParallelLinear)


@functools.cache
def _te_linear_proj() -> type:
    from megatron.core.extensions.transformer_engine import TERowParallelLinear

    return biased_linear_proj(TERowParallelLinear)


def _with_biased_proj(spec: ModuleSpec, proj: type) -> ModuleSpec:
    spec = copy.deepcopy(spec)
    attn = spec.submodules.self_attention.submodules
    attn.linear_proj = proj
    return spec


def pangu_layer_spec(use_te: bool = False) -> ModuleSpec:
    """The transformer-layer spec of Pangu: RMSNorm, GQA attention with qkv bias (from
    ``config.add_qkv_bias``) and an o_proj bias, gated-SiLU MLP without bias."""
    if use_te:
        choose_spec("pangu_te", None, te_available())  # raises, naming the keys, without TE
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return _with_biased_proj(get_gpt_layer_with_transformer_engine_spec(), _te_linear_proj())
    return _with_biased_proj(get_gpt_layer_local_spec(normalization="RMSNorm"), PanguRowParallelLinear)


def get_pangu_spec(spec_name: str, transformer_config: Any = None, use_te: bool = False) -> ModuleSpec:
    """RLinf ``get_specs``-style lookup for the Pangu spec names (see :func:`choose_spec`).

    ``use_te`` is RLinf's ``HAVE_TE`` (TE's torch module imported); TE counts as installed only
    when that holds. ``transformer_impl`` comes from Megatron's args (:func:`current_transformer_impl`).
    """
    installed = te_available() and (bool(use_te) or spec_name == "pangu_te")
    choice = choose_spec(spec_name, current_transformer_impl(), installed)
    _log_choice(choice)
    return pangu_layer_spec(use_te=choice.te)
