"""HF-side openPangu-Embedded: config, model and tokenizer that load official checkpoints
without running their remote code (which imports torch_npu and symbols gone from transformers).

Attributes load lazily, so ``rlinf_pangu.hf.checkpoint`` (header checks, used by the converter)
does not import transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "PanguEmbeddedConfig": "configuration",
    "PanguConfigError": "configuration",
    "PanguCheckpointError": "checkpoint",
    "require_complete": "checkpoint",
    "check_tensors": "checkpoint",
    "PanguEmbeddedModel": "modeling",
    "PanguEmbeddedForCausalLM": "modeling",
    "PanguTokenizer": "tokenization",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
