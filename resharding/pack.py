"""One storage per sync bucket: every HF tensor of a bucket is a view of a single flat buffer.

The rollout receives a bucket as CUDA IPC handles (RLinf's colocated mode sends
``reduce_tensor(t)`` per tensor; SGLang's ``update_weights_from_tensor`` pickles them the same
way). Opening a handle in the receiving process costs per *storage*, not per byte, and torch's
receiver caches an opened storage for the other tensors that share it. With a separate storage
per tensor (q, k, v, gate, up, ... ~10 per layer) a 7B sync opens ~350 handles; packed, it opens
one per bucket.

Packing is also the one copy the sync must make (the rollout may not hold views of parameters
the actor goes on to update or offload), and it performs the QKV and gate/up splits as it
copies: each piece is a strided view of the Megatron tensor (``rlinf_pangu.layout.unfuse_views``)
written once into its place.
"""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["ALIGN", "pack"]

#: Byte alignment of every tensor in the flat buffer (any dtype's element size divides it, and
#: kernels reading a piece start on an aligned address).
ALIGN = 256


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def pack(pieces: Iterable[tuple[str, torch.Tensor, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """``(name, view, shape)`` pieces -> ``{name: tensor of shape}``, all views of one new buffer.

    ``view`` may be strided; its row-major order is the result's. Pieces must share a device
    (a bucket lives on one); dtypes may differ.
    """
    pieces = list(pieces)
    if not pieces:
        return {}
    devices = {p[1].device for p in pieces}
    if len(devices) != 1:
        raise ValueError(f"one bucket spans devices {sorted(map(str, devices))}: " + ", ".join(f"{n} on {v.device}" for n, v, _ in pieces[:4]))
    offsets, total = [], 0
    for _, view, _ in pieces:
        offsets.append(total)
        total += _aligned(view.numel() * view.element_size())
    flat = torch.empty(total, dtype=torch.uint8, device=devices.pop())
    out: dict[str, torch.Tensor] = {}
    for (name, view, shape), off in zip(pieces, offsets):
        n = view.numel() * view.element_size()
        dst = flat[off : off + n].view(view.dtype).view(shape)
        dst.view(view.shape).copy_(view)
        out[name] = dst
    return out
