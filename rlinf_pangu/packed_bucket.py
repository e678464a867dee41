"""One weight-sync bucket as one tensor: the wire format between Pangu's sync convertor and
SGLang's Pangu class.

Why: RLinf hands the rollout every tensor of a bucket separately. In its colocated mode each one
becomes a CUDA IPC handle of its own (``reduce_tensor``: an inter-process event created, recorded,
opened and waited on, a memory handle opened and closed), and in the disaggregated mode a send of
its own. Measured on an H100 for a 7B, that per-tensor cost was most of the sync that was not a
copy. Packed, a bucket is one contiguous ``uint8`` tensor (the sync's one copy writes straight into
it) under one key that carries the manifest, so RLinf's own send, ``reduce_tensor`` and receive
handle one tensor, with no change to RLinf.

Why the manifest lives in the key: RLinf sends a bucket as a ``{name: tensor}`` dict and passes
the names through to ``model.load_weights`` untouched; a second tensor would cost a handle again.
Why one buffer of its own (not views of a shared buffer per tensor): RLinf pickles its first bucket
(it carries ``bucket_length``), and pickling a view writes its whole storage (each tensor would
carry the entire bucket); a single tensor pickles once.

Only SGLang's Pangu class reads it (:func:`expand` at the top of its ``load_weights``). Another
model class would skip the unknown key and serve stale weights, so RLinf's actor packs only when
:func:`rollout_reads_packed` says its rollout is that class (patch
``rlinf.MegatronActor:rollout-sync-setup``); otherwise it sends a tensor per HF name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

from .layout import LayoutError

__all__ = ["KEY_PREFIX", "ALIGN", "Entry", "pack", "is_packed", "unpack", "expand", "READER_ARCHITECTURE", "rollout_reads_packed"]

#: Every packed key starts with this; the rest is the JSON manifest.
KEY_PREFIX = "rlinf_pangu.packed_bucket/v1:"

#: Byte alignment of every entry: any dtype view is legal, and CUDA copies stay aligned.
ALIGN = 256

def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_DTYPES = {_dtype_name(d): d for d in (torch.float32, torch.bfloat16, torch.float16, torch.float64)}


@dataclass(frozen=True)
class Entry:
    """Where one HF tensor sits in the packed buffer."""

    name: str
    offset: int
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for s in self.shape:
            n *= s
        return n


def _plan(pieces: list[tuple[str, torch.Tensor, tuple[int, ...]]]) -> tuple[list[Entry], int]:
    entries, off = [], 0
    for name, view, shape in pieces:
        if _dtype_name(view.dtype) not in _DTYPES:
            raise LayoutError(f"tensor {name!r} has dtype {view.dtype}, which a packed bucket does not carry")
        e = Entry(name, off, tuple(int(s) for s in shape), view.dtype)
        if e.nbytes != view.numel() * view.element_size():
            raise LayoutError(f"tensor {name!r}: {list(view.shape)} cannot take the shape {list(shape)}")
        entries.append(e)
        off += -(-e.nbytes // ALIGN) * ALIGN
    return entries, off


def _key(entries: list[Entry]) -> str:
    manifest = [[e.name, e.offset, list(e.shape), _dtype_name(e.dtype)] for e in entries]
    return KEY_PREFIX + json.dumps(manifest, separators=(",", ":"))


def pack(pieces: Iterable[tuple[str, torch.Tensor, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """``(name, view, shape)`` pieces -> ``{key: one new uint8 buffer}``, each view copied once.

    ``view`` may be strided; its row-major order is the entry's. No pieces: ``{}``.
    """
    pieces = list(pieces)
    if not pieces:
        return {}
    devices = {v.device for _, v, _ in pieces}
    if len(devices) != 1:
        raise LayoutError(f"a packed bucket must sit on one device, these pieces are on {sorted(map(str, devices))}")
    entries, total = _plan(pieces)
    flat = torch.empty(total, dtype=torch.uint8, device=devices.pop())
    for e, (_, view, _) in zip(entries, pieces):
        flat[e.offset : e.offset + e.nbytes].view(e.dtype).view(view.shape).copy_(view)
    return {_key(entries): flat}


def is_packed(name: str) -> bool:
    return name.startswith(KEY_PREFIX)


def _entries(key: str) -> list[Entry]:
    try:
        raw = json.loads(key[len(KEY_PREFIX) :])
        entries = [Entry(str(n), int(o), tuple(int(s) for s in shape), _DTYPES[d]) for n, o, shape, d in raw]
    except (ValueError, KeyError, TypeError) as err:
        raise LayoutError(f"packed bucket key {key[:80]!r}... has an unreadable manifest ({err})") from None
    return entries


def unpack(key: str, flat: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """A packed ``(key, buffer)`` -> ``(name, view)`` pairs, views of ``buffer`` (no copy)."""
    if flat.dtype != torch.uint8 or flat.dim() != 1 or not flat.is_contiguous():
        raise LayoutError(f"packed bucket buffer must be a contiguous 1-D uint8 tensor, got {flat.dtype} {list(flat.shape)}")
    out = []
    for e in _entries(key):
        if e.offset < 0 or e.offset % ALIGN or e.offset + e.nbytes > flat.numel():
            raise LayoutError(
                f"packed bucket entry {e.name!r} [{e.offset}, {e.offset + e.nbytes}) does not fit a buffer of "
                f"{flat.numel()} bytes at {ALIGN}-byte alignment"
            )
        out.append((e.name, flat[e.offset : e.offset + e.nbytes].view(e.dtype).view(e.shape)))
    return out


def expand(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Packed items unpacked in place, plain ``(name, tensor)`` items passed through."""
    for name, tensor in named_tensors:
        if is_packed(name):
            yield from unpack(name, tensor)
        else:
            yield name, tensor


#: The one reader of packed buckets: SGLang's class for this architecture (rlinf_pangu.sglang_ext).
#: SGLang picks a model's class by the ``architectures`` of its config.json.
READER_ARCHITECTURE = "PanguEmbeddedForCausalLM"


def rollout_reads_packed(backend: str, model_path: str | Path) -> tuple[bool, str]:
    """Whether a rollout unpacks packed buckets, and why. Any other reader (SGLang's Llama for a
    config.json that names ``LlamaForCausalLM``, vLLM) would skip the packed key without an error
    and serve stale weights, so it gets a tensor per HF name."""
    if backend != "sglang":
        return False, f"rollout_backend is {backend!r}, not 'sglang'"
    path = Path(model_path) / "config.json"
    try:
        archs = json.loads(path.read_text()).get("architectures") or []
    except (OSError, ValueError) as err:
        return False, f"cannot read the architectures of {path}: {err}"
    if archs[:1] != [READER_ARCHITECTURE]:
        return False, f"{path} names {archs}, not {READER_ARCHITECTURE!r} first"
    return True, f"SGLang serves {READER_ARCHITECTURE} (rlinf_pangu.sglang_ext)"
