"""Every HF tensor of a bucket written once, from a strided view, into its own tensor
(``convert_mega_pangu_to_hf``, and the convertor with ``packed=False``; RLinf's sync packs the
bucket into one buffer instead, :mod:`rlinf_pangu.packed_bucket`).

The rollout may not hold views of parameters the actor goes on to update or offload, so the sync
must copy every tensor once. RLinf's own ``TransformFunc``s copy two or three times (``clone``
in the TP reshard, ``contiguous`` then ``clone`` in the QKV and fc1 splits). Here the QKV and
gate/up splits are strided views of the Megatron tensor (``rlinf_pangu.layout.unfuse_views``),
each copied once into a new tensor of its HF shape.

Why a storage per tensor and not views of one shared buffer: pickling a view writes its whole
storage (RLinf pickles its first bucket), so every tensor would carry the entire bucket; that took
the CPU e2e run out of memory once.
"""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["materialize"]


def materialize(pieces: Iterable[tuple[str, torch.Tensor, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """``(name, view, shape)`` pieces -> ``{name: new contiguous tensor of shape}``.

    ``view`` may be strided; its row-major order is the result's.
    """
    out: dict[str, torch.Tensor] = {}
    for name, view, shape in pieces:
        dst = torch.empty(shape, dtype=view.dtype, device=view.device)
        dst.view(view.shape).copy_(view)
        out[name] = dst
    return out
