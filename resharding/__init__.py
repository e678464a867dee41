"""Megatron -> SGLang weight sync for openPangu-Embedded in RLinf.

* :mod:`resharding.convertor` — ``convert_mega_pangu_to_hf`` / :class:`PanguConvertor`: RLinf
  ``BaseConvertor`` rules generated from ``rlinf_pangu.layout``;
* :mod:`resharding.reshard` — the TP/PP reshard functions RLinf's ``MegatronCoreWeightReshard``
  calls for model_type ``pangu`` (the replicated o_proj bias is cloned, the vocabulary is cut to
  SGLang's padded shard);
* :mod:`resharding.vocab` — SGLang's vocabulary sharding, and why Megatron's split misses it;
* :mod:`resharding.materialize` — every tensor copied once into its own storage, splits included
  (``convert_mega_pangu_to_hf``); RLinf's sync packs each bucket into one buffer instead
  (:mod:`rlinf_pangu.packed_bucket`).

:func:`register` puts the convertor into RLinf's ``_MG2HF_CONVERTOR_REGISTRY`` and the reshard
functions into the tables the patched ``get_tp_reshard_fn``/``get_pp_reshard_fn`` consult
(patch ``rlinf.get_reshard_fn:pangu`` in ``rlinf_pangu.patches.rlinf``). ``rlinf_pangu.register()``
calls it.
"""

from __future__ import annotations

import importlib

__all__ = [
    "register",
    "resolve",
    "TP_RESHARD_FNS",
    "PP_RESHARD_FNS",
    "convert_mega_pangu_to_hf",
    "PanguConvertor",
    "tp_reshard_fn_pangu",
    "pp_reshard_fn_pangu",
]

MODEL_TYPE = "pangu"

#: model_type -> "module:function" of its reshard function, consulted before RLinf's own if/else
#: (see rlinf_pangu.patches.rlinf). Paths, not functions: resolving imports megatron.core.
TP_RESHARD_FNS: dict[str, str] = {}
PP_RESHARD_FNS: dict[str, str] = {}


def resolve(target: str):
    """``"module:function"`` -> the function."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def register() -> None:
    """Register Pangu's sync convertor and reshard functions with RLinf (idempotent).

    Needs RLinf's ``SupportedModel`` to know ``pangu`` already (``rlinf_pangu.register()``
    does that first).
    """
    from rlinf.config import SupportedModel
    from rlinf.utils.convertor.utils import _MG2HF_CONVERTOR_REGISTRY

    from .convertor import PanguConvertor

    _MG2HF_CONVERTOR_REGISTRY[SupportedModel(MODEL_TYPE)] = PanguConvertor
    TP_RESHARD_FNS[MODEL_TYPE] = "resharding.reshard:tp_reshard_fn_pangu"
    PP_RESHARD_FNS[MODEL_TYPE] = "resharding.reshard:pp_reshard_fn_pangu"


def __getattr__(name: str):  # lazy: importing the package must not pull in RLinf/Megatron
    if name in ("convert_mega_pangu_to_hf", "PanguConvertor"):
        from . import convertor

        return getattr(convertor, name)
    if name in ("tp_reshard_fn_pangu", "pp_reshard_fn_pangu"):
        from . import reshard

        return getattr(reshard, name)
    raise AttributeError(name)
