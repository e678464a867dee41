"""Lazy, validated reading of an official-layout Pangu HF checkpoint directory.

Only JSON (config.json, the index) and safetensors are read: the safetensors headers are parsed
as JSON by this module, and each tensor is read only when the converter asks for it: either
``pread`` at the offset its header gives, or as a view of the file's memory map, whose pieces
(:meth:`HFCheckpoint.runs`) the converter copies through a small buffer without touching the
map (:mod:`ckpt_convertor.gather`). Mapped pages that are touched (a dtype cast) are dropped
again (``madvise``) once written, so memory holds a few tensors, not the model. Every check that can fail
(missing/unexpected tensors, shapes, dtypes, truncated files, a config that disagrees with the
weights) runs in :meth:`HFCheckpoint.open`, before any output exists.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch

from rlinf_pangu.hf.checkpoint import PanguCheckpointError, refuse_missing
from rlinf_pangu.layout import ROTARY_INV_FREQ, PanguDims

from .errors import ConversionError
from .gather import Runs, view_runs

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

#: safetensors dtype codes <-> torch dtypes (the subset a Pangu checkpoint can hold).
ST_DTYPES: dict[str, torch.dtype] = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
ST_CODES: dict[torch.dtype, str] = {v: k for k, v in ST_DTYPES.items()}
#: The dtypes weights may have (config.json ``torch_dtype`` spelling -> torch dtype).
WEIGHT_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_MAX_HEADER = 100 * 1024**2  # safetensors' own limit
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_REQUIRED_CONFIG = ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers", "vocab_size")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, from a safetensors header."""

    name: str
    file: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int = 0  # of the tensor's bytes in the file

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty(0, dtype=self.dtype).element_size()


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and check one safetensors file's header (JSON only; no tensor data is read).

    A file shorter than its header promises (a truncated download or copy) is rejected here,
    naming the file and the tensor that runs past its end.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConversionError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            n = int.from_bytes(head, "little")
            if n > _MAX_HEADER or 8 + n > size:
                raise ConversionError(
                    f"{path}: truncated or corrupt safetensors file (header of {n} bytes, file of {size} bytes)"
                )
            raw = f.read(n)
    except OSError as e:
        raise ConversionError(f"cannot read {path}: {e}") from e
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except ValueError as e:
        raise ConversionError(f"{path}: corrupt safetensors header ({e})") from e
    data_len = size - 8 - n
    out: dict[str, TensorInfo] = {}
    for name, ent in header.items():
        if name == "__metadata__":
            continue
        try:
            code, shape, (start, end) = ent["dtype"], tuple(int(s) for s in ent["shape"]), ent["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise ConversionError(f"{path}: corrupt header entry for tensor {name!r} ({e})") from e
        if code not in ST_DTYPES:
            raise ConversionError(f"{path}: tensor {name!r} has unsupported dtype {code}")
        info = TensorInfo(name, path.name, ST_DTYPES[code], shape, 8 + n + int(start))
        if end - start != info.nbytes or start < 0:
            raise ConversionError(f"{path}: header entry for tensor {name!r} is inconsistent with its shape {shape}")
        if end > data_len:
            raise ConversionError(
                f"{path} is truncated: tensor {name!r} ends at byte {end} of the data but the file holds only "
                f"{data_len} data bytes (file size {size})"
            )
        out[name] = info
    return out


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{what} not found: {path}") from None
    except (OSError, ValueError) as e:
        raise ConversionError(f"{what} {path} cannot be read as JSON: {e}") from e


def weight_files(hf_dir: Path) -> dict[str, str]:
    """Tensor name -> file name, from the index (or the single ``model.safetensors``)."""
    index = hf_dir / INDEX_FILE
    if index.exists():
        data = read_json(index, "weights index")
        wm = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(wm, dict) or not wm:
            raise ConversionError(f"{index} has no 'weight_map'")
        return {str(k): str(v) for k, v in wm.items()}
    single = hf_dir / SINGLE_FILE
    if single.exists():
        return {name: SINGLE_FILE for name in read_safetensors_header(single)}
    others = sorted(p.name for p in hf_dir.glob("*.bin")) + sorted(p.name for p in hf_dir.glob("*.pt"))
    hint = f" ({', '.join(others)} are pickle files, which are never read: convert them to safetensors)" if others else ""
    raise ConversionError(f"no safetensors weights in {hf_dir}: expected {INDEX_FILE} or {SINGLE_FILE}{hint}")


def _layer_span(names) -> list[int]:
    return sorted({int(m.group(1)) for n in names if (m := _LAYER.match(n))})


class HFCheckpoint(Mapping[str, torch.Tensor]):
    """A validated Pangu HF checkpoint; ``ckpt[name]`` reads one tensor from disk on demand."""

    def __init__(self, path: Path, config: dict[str, Any], dims: PanguDims, tensors: dict[str, TensorInfo],
                 extras: dict[str, TensorInfo], dtype: torch.dtype):
        self.path = path
        self.config = config
        self.dims = dims
        self.tensors = tensors  # the weights the layout consumes
        self.extras = extras  # tensors kept verbatim but not converted (RoPE inv_freq buffers)
        self.dtype = dtype
        self._handles: dict[str, int] = {}
        self._maps: dict[str, tuple[mmap.mmap, torch.Tensor]] = {}

    # -- validation ----------------------------------------------------------------------
    @classmethod
    def open(cls, hf_dir: str | Path) -> "HFCheckpoint":
        """Read config.json, the index and every safetensors header, and check them against each other."""
        path = Path(hf_dir)
        if not path.is_dir():
            raise ConversionError(f"HF checkpoint directory not found: {path}")
        config = read_json(path / CONFIG_FILE, "config.json")
        if not isinstance(config, dict):
            raise ConversionError(f"{path / CONFIG_FILE} is not a JSON object")
        missing_keys = [k for k in _REQUIRED_CONFIG if not isinstance(config.get(k), int)]
        if missing_keys:
            raise ConversionError(f"{path / CONFIG_FILE} lacks integer field(s) {', '.join(missing_keys)}")
        dims = PanguDims.from_hf_config(config)

        wmap = weight_files(path)
        headers: dict[str, dict[str, TensorInfo]] = {}
        for fname in sorted(set(wmap.values())):
            fpath = path / fname
            if not fpath.is_file():
                users = sorted(n for n, f in wmap.items() if f == fname)
                raise ConversionError(
                    f"{INDEX_FILE} names {fname!r} (for {len(users)} tensors, e.g. {users[0]!r}) but {fpath} does not exist"
                )
            headers[fname] = read_safetensors_header(fpath)
        found: dict[str, TensorInfo] = {}
        for name, fname in wmap.items():
            info = headers[fname].get(name)
            if info is None:
                raise ConversionError(f"{INDEX_FILE} maps tensor {name!r} to {fname!r}, which does not contain it")
            found[name] = info

        expected = dims.hf_shapes()
        extras = {n: i for n, i in found.items() if ROTARY_INV_FREQ.search(n)}
        weights = {n: i for n, i in found.items() if n not in extras}
        if dims.tie_word_embeddings and "lm_head.weight" in weights:
            log.warning("config.json ties the embeddings; ignoring lm_head.weight in %s (as transformers does)", path)
            weights.pop("lm_head.weight")

        have_layers, want = _layer_span(weights), dims.num_hidden_layers
        if have_layers and have_layers != list(range(want)):
            raise ConversionError(
                f"config.json says num_hidden_layers={want} but the weights hold layers "
                f"{have_layers[0]}..{have_layers[-1]} ({len(have_layers)} layers) in {path}"
            )
        try:  # the one refusal of partial checkpoints the project's loaders share
            refuse_missing(expected, weights, path)
        except PanguCheckpointError as e:
            raise ConversionError(str(e)) from None
        unexpected = sorted(n for n in weights if n not in expected)
        if unexpected:
            more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
            raise ConversionError(
                f"unexpected tensor {unexpected[0]!r}{more} in {path} ({weights[unexpected[0]].file}): "
                "not part of the Pangu layout for this config.json"
            )
        for n, shape in expected.items():
            if weights[n].shape != tuple(shape):
                raise ConversionError(
                    f"tensor {n!r} in {weights[n].file} has shape {list(weights[n].shape)}, expected {list(shape)} "
                    f"from config.json (hidden_size={dims.hidden_size}, heads={dims.num_attention_heads}, "
                    f"kv_heads={dims.num_key_value_heads}, intermediate_size={dims.intermediate_size}, vocab_size={dims.vocab_size})"
                )
        dtype = cls._common_dtype(config, weights)
        ordered = {n: weights[n] for n in expected}  # canonical order
        return cls(path, config, dims, ordered, extras, dtype)

    @staticmethod
    def _common_dtype(config: dict[str, Any], weights: dict[str, TensorInfo]) -> torch.dtype:
        """All weights share one float dtype: config's ``torch_dtype`` if it names one, else the majority."""
        counts: dict[torch.dtype, int] = {}
        for i in weights.values():
            counts[i.dtype] = counts.get(i.dtype, 0) + 1
        declared = WEIGHT_DTYPES.get(str(config.get("torch_dtype", config.get("dtype", ""))))
        dtype = declared if declared in counts else max(counts, key=counts.__getitem__)
        if dtype not in WEIGHT_DTYPES.values():
            raise ConversionError(f"weights have dtype {dtype}; Pangu weights must be bfloat16, float16 or float32")
        odd = sorted(n for n, i in weights.items() if i.dtype != dtype)
        if odd:
            more = f" (and {len(odd) - 1} more)" if len(odd) > 1 else ""
            raise ConversionError(
                f"tensor {odd[0]!r} in {weights[odd[0]].file} has dtype {weights[odd[0]].dtype}{more}, "
                f"but the checkpoint's dtype is {dtype}"
            )
        return dtype

    # -- lazy access ---------------------------------------------------------------------
    def _fd(self, fname: str) -> int:
        fd = self._handles.get(fname)
        if fd is None:
            fd = self._handles[fname] = os.open(self.path / fname, os.O_RDONLY)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return fd

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.read_into(name, None)

    def info(self, name: str) -> TensorInfo:
        info = self.tensors.get(name) or self.extras.get(name)
        if info is None:
            raise KeyError(name)
        return info

    def read_into(self, name: str, buf: torch.Tensor | None) -> torch.Tensor:
        """Read one tensor, into ``buf`` (a 1-D uint8 tensor of at least its size) when given.

        Reusing buffers matters: the first-touch page faults of a fresh allocation cost several
        times more than reading the bytes from the page cache.
        """
        info = self.info(name)
        size = info.nbytes
        if buf is None:
            t = torch.empty(info.shape, dtype=info.dtype)
        else:
            t = buf[:size].view(info.dtype).view(info.shape)
        if size:
            mv = memoryview(t.reshape(-1).view(torch.uint8).numpy())
            fd, done = self._fd(info.file), 0
            while done < size:
                n = os.preadv(fd, [mv[done:]], info.offset + done)
                if n <= 0:
                    raise ConversionError(f"{self.path / info.file} ended while reading tensor {name!r} (file changed?)")
                done += n
        return t

    # -- zero-copy access ----------------------------------------------------------------
    def _map(self, fname: str) -> tuple[mmap.mmap, torch.Tensor]:
        m = self._maps.get(fname)
        if m is None:
            fd = self._fd(fname)
            size = os.fstat(fd).st_size
            mm = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)  # private: never written back
            m = self._maps[fname] = (mm, torch.frombuffer(mm, dtype=torch.uint8))
        return m

    def mapped(self, name: str) -> torch.Tensor:
        """The tensor as a view of its file's memory map: no bytes are read until used, and
        :meth:`runs` turns it (or a piece of it) back into byte runs of the file, which the
        converter copies with ``pread``/``pwritev`` (:mod:`ckpt_convertor.gather`) without ever
        touching the mapped pages."""
        info = self.info(name)
        _, whole = self._map(info.file)
        return whole[info.offset : info.offset + info.nbytes].view(info.dtype).view(info.shape)

    def runs(self, t: torch.Tensor) -> tuple[int, str, Runs] | None:
        """Where a view made by :meth:`mapped` (or a piece of one) lies in its file:
        (fd, file name, byte runs), or None for any other tensor (then its bytes must be
        written from memory)."""
        if t.device.type != "cpu":
            return None
        ptr = t.data_ptr()
        for fname, (_, whole) in self._maps.items():
            base = whole.data_ptr()
            if not base <= ptr < base + whole.numel():
                continue
            runs = view_runs(t.shape, t.stride(), t.element_size(), ptr - base)
            if runs is None or runs.end > whole.numel():
                return None
            return self._handles[fname], fname, runs
        return None

    def release(self, names: Iterable[str]) -> None:
        """Drop the mapped pages of these tensors from this process (they stay in the page cache)."""
        for name in names:
            info = self.info(name)
            m = self._maps.get(info.file)
            if m is None or not info.nbytes:
                continue
            start = info.offset - info.offset % mmap.PAGESIZE
            m[0].madvise(mmap.MADV_DONTNEED, start, info.offset + info.nbytes - start)

    def meta(self, name: str) -> torch.Tensor:
        """A shape/dtype-only stand-in, for planning the output without reading data."""
        info = self.tensors[name]
        return torch.empty(info.shape, dtype=info.dtype, device="meta")

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def close(self) -> None:
        mms = [mm for mm, _ in self._maps.values()]
        self._maps.clear()  # drops the tensors over the maps, releasing their buffer exports
        for mm in mms:
            try:
                mm.close()
            except BufferError:  # a view is still alive somewhere; the map goes with it
                pass
        for fd in self._handles.values():
            os.close(fd)
        self._handles.clear()

    @property
    def nbytes(self) -> int:
        return sum(i.nbytes for i in self.tensors.values())
