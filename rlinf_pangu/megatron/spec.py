"""Megatron layer specs for openPangu-Embedded: bias on ``linear_proj`` (o_proj), none on fc1/fc2.

Megatron builds ``linear_proj`` with ``bias=config.add_bias_linear``, and the same flag decides
the MLP biases, so the flag cannot express Pangu. The spec swaps in a row-parallel linear that
always has its bias: like every row-parallel bias it is replicated on the TP ranks and added
once after the all-reduce (``skip_bias_add``: the layer's bias-dropout-add adds it), which is
exactly the replicated ``linear_proj.bias`` of :mod:`rlinf_pangu.layout`.

Two variants: megatron-core's own modules (``local``; works everywhere, CPU included) and the
Transformer Engine modules (``te``; only built when ``transformer_engine`` imports, and never
touched otherwise: RLinf's own ``get_specs`` builds the TE spec eagerly and fails without TE).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
from typing import Any

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.tensor_parallel.layers import RowParallelLinear
from megatron.core.transformer.spec_utils import ModuleSpec

from .config import PANGU_SPEC_NAMES

__all__ = [
    "PanguRowParallelLinear",
    "te_available",
    "pangu_layer_spec",
    "get_pangu_spec",
    "biased_linear_proj",
]

log = logging.getLogger(__name__)


def te_available() -> bool:
    """True when Transformer Engine can be imported (found on the path)."""
    return importlib.util.find_spec("transformer_engine") is not None


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
        if not te_available():
            raise ImportError(
                "the Transformer Engine spec of Pangu was requested (spec_name 'pangu_te') but "
                "transformer_engine is not installed; use spec_name 'pangu' or 'pangu_local'"
            )
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return _with_biased_proj(get_gpt_layer_with_transformer_engine_spec(), _te_linear_proj())
    return _with_biased_proj(get_gpt_layer_local_spec(normalization="RMSNorm"), PanguRowParallelLinear)


def get_pangu_spec(spec_name: str, transformer_config: Any = None, use_te: bool = False) -> ModuleSpec:
    """RLinf ``get_specs``-style lookup for the Pangu spec names.

    ``pangu`` follows RLinf's ``use_te`` (True when TE imports); ``pangu_local`` and
    ``pangu_te`` force a variant.
    """
    if spec_name not in PANGU_SPEC_NAMES:
        raise ValueError(f"{spec_name!r} is not a Pangu spec name ({list(PANGU_SPEC_NAMES)})")
    te = {"pangu": bool(use_te) and te_available(), "pangu_local": False, "pangu_te": True}[spec_name]
    log.debug("Pangu layer spec %s: %s modules", spec_name, "Transformer Engine" if te else "megatron-core")
    return pangu_layer_spec(use_te=te)
