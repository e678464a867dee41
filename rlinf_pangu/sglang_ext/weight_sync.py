"""Load RLinf's weight-sync buckets into a running SGLang engine the way RLinf's rollout does.

RLinf's SGLang scheduler (``rlinf.hybrid_engines.sglang.common.sgl_scheduler.Scheduler``) sets
``use_presharded_weights = True`` on every module that has the flag once (``init_rlinf_worker``,
Megatron backend), then calls ``model.load_weights(bucket)`` for each bucket it receives and
flushes the radix cache after the last one. :func:`load_presharded_weights` does the same two
model-side steps as an SGLang custom weight loader, so a plain ``sgl.Engine`` (tests, benchmarks,
a user's own loop) can take synced buckets through ``update_weights_from_tensor``::

    engine = sgl.Engine(..., custom_weight_loader=[LOADER])
    engine.update_weights_from_tensor(list(bucket.items()), load_format=LOADER, flush_cache=last)

(SGLang imports this module in its scheduler processes too, as part of the model package; it
defines no ``EntryClass``.)
"""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["LOADER", "load_presharded_weights"]

#: The import path to pass as ``custom_weight_loader`` and ``load_format``.
LOADER = f"{__name__}.load_presharded_weights"


def load_presharded_weights(model: torch.nn.Module, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Mark every module presharded (as RLinf does for the Megatron backend) and load the bucket.

    Refuses any model but SGLang's Pangu class: only its loader places the vocabulary shards
    that ``resharding`` sends (a silently substituted class would load them misaligned).
    """
    from .pangu_embedded import PanguEmbeddedForCausalLM

    if not isinstance(model, PanguEmbeddedForCausalLM):
        raise TypeError(
            f"SGLang is serving {type(model).__module__}.{type(model).__name__}, not "
            "rlinf_pangu.sglang_ext's PanguEmbeddedForCausalLM: is SGLANG_EXTERNAL_MODEL_PACKAGE set "
            "(rlinf_pangu.register()) in the process that started SGLang?"
        )
    if not getattr(model, "_rlinf_presharded", False):  # once: RLinf also sets it once, at start
        for _, module in model.named_modules():
            if hasattr(module, "use_presharded_weights"):
                module.use_presharded_weights = True
        model._rlinf_presharded = True
    model.load_weights(list(named_tensors))
