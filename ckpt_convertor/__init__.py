"""HF <-> Megatron checkpoint conversion for openPangu-Embedded (any TP/PP/VPP), streaming,
cached, atomic; the mapping comes from ``rlinf_pangu.layout``.

``python -m ckpt_convertor --help`` for the command line. In Python:

* :func:`ensure_megatron` - convert unless an identical conversion is already at the target
  (what RLinf's ``use_hf_ckpt`` start-up runs for Pangu);
* :func:`hf_to_megatron` / :func:`megatron_to_hf` - the conversions themselves.

Importing this package does not import torch (a cache hit stays fast); the converters load it
when first used.
"""

from __future__ import annotations

from typing import Any

from .cache import CONVERTER_VERSION
from .cached import ensure_megatron
from .errors import ConversionError

__all__ = ["CONVERTER_VERSION", "ConversionError", "ensure_megatron", "hf_to_megatron", "megatron_to_hf"]


def __getattr__(name: str) -> Any:
    if name in ("hf_to_megatron", "megatron_to_hf"):
        from . import convert

        return getattr(convert, name)
    raise AttributeError(name)
