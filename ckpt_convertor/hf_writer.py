"""Streaming safetensors writer: the header is laid out from a plan, then each tensor's bytes go
to their offset as they are produced, so writing an HF shard never holds the shard in memory.

The format is safetensors' documented one: 8-byte little-endian header length, a JSON header
(``dtype``, ``shape``, ``data_offsets`` per tensor, plus ``__metadata__``) padded with spaces to
8 bytes, then the data buffer with the tensors back to back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch

from .errors import ConversionError
from .hf_reader import ST_CODES
from .megatron_io import _check_parts, _numel, write_pieces


class SafetensorsWriter:
    """One ``.safetensors`` file whose tensors are written in any order, each exactly once."""

    def __init__(self, path: Path, entries: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
                 metadata: dict[str, str] | None = None):
        self.path = path
        header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
        self._slots: dict[str, tuple[int, int, tuple[int, ...], torch.dtype]] = {}
        pos = 0
        for name, shape, dtype in entries:
            size = _numel(shape) * torch.empty(0, dtype=dtype).element_size()
            header[name] = {"dtype": ST_CODES[dtype], "shape": list(shape), "data_offsets": [pos, pos + size]}
            self._slots[name] = (pos, size, tuple(shape), dtype)
            pos += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._base = 8 + len(raw)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self._fd, len(raw).to_bytes(8, "little") + raw, 0)
        os.ftruncate(self._fd, self._base + pos)
        self._done: set[str] = set()

    def write(self, name: str, parts: torch.Tensor | Sequence[torch.Tensor]) -> int:
        """Write one planned tensor (or its pieces along dim 0, in order) into its region."""
        off, size, shape, dtype = self._slots[name]
        parts = [parts] if isinstance(parts, torch.Tensor) else list(parts)
        _check_parts(self.path, name, parts, shape, dtype)
        write_pieces(self._fd, self._base + off, parts)
        self._done.add(name)
        return size

    def abort(self) -> None:
        """Close without checks (the caller is discarding the file's directory)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self, fsync: bool = True) -> None:
        missing = [n for n in self._slots if n not in self._done]
        try:
            if missing:
                raise ConversionError(f"{self.path}: {len(missing)} planned tensors never written, e.g. {missing[0]}")
            if fsync:
                os.fsync(self._fd)
        finally:
            self.abort()
