"""Megatron's legacy torch checkpoint layout: where the rank files live, what they hold, and
writing/reading them without holding a whole rank in memory.

What Megatron-core 0.19's ``load_checkpoint`` (as RLinf 0.3.0 drives it, ``ckpt_format: torch``)
reads for a converted checkpoint:

* ``<load>/latest_checkpointed_iteration.txt`` holding ``release`` -> directory ``release/``
  (a release checkpoint: iteration 0, optimizer and RNG state are never loaded);
* ``release/mp_rank_{tp:02d}/model_optim_rng.pt`` when PP == 1, else
  ``release/mp_rank_{tp:02d}_{pp:03d}/model_optim_rng.pt``;
* each file a ``torch.save`` zip loaded with ``torch.load(map_location='cpu')`` (weights-only in
  torch >= 2.6, so it must hold only tensors and plain values) containing ``model`` (or
  ``model0``, ``model1``, ... with virtual pipeline stages), ``checkpoint_version`` (3.0: no QKV
  reordering) and ``iteration``. No ``args``: Megatron then skips its argument checks.

:class:`RankFileWriter` writes that file in torch's own format: ``torch.save`` lays out the
structure with each tensor's data region left empty (``skip_data``: uninitialised tensors whose
bytes are never written by it), then each tensor's bytes go into its region as the converter
produces them (from memory, or copied from the source files by :mod:`ckpt_convertor.gather`).
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import torch

from .errors import ConversionError

log = logging.getLogger(__name__)

TRACKER = "latest_checkpointed_iteration.txt"
RELEASE = "release"
RANK_FILE = "model_optim_rng.pt"
CHECKPOINT_VERSION = 3.0
_RANK_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?(?:_(\d{3}))?$")


def rank_dir_name(tp_rank: int, pp_rank: int, pp: int) -> str:
    """Megatron's rank directory name (``get_checkpoint_name``): the PP rank only when PP > 1."""
    return f"mp_rank_{tp_rank:02d}" if pp == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"


def model_keys(vpp: int | None) -> list[str]:
    """State-dict keys of the model chunks: ``model``, or ``model0..`` with >= 2 virtual stages."""
    return ["model"] if not vpp or vpp == 1 else [f"model{i}" for i in range(vpp)]


@dataclass(frozen=True)
class Stage:
    """One model chunk: the layers (global numbers) it holds and whether it has the embedding/head."""

    pp_rank: int
    vp_rank: int
    key: str
    layers: tuple[int, ...]
    first: bool
    last: bool

    @property
    def layer_offset(self) -> int:
        return self.layers[0] if self.layers else 0


def pipeline_stages(num_layers: int, pp: int, vpp: int | None = None) -> list[list[Stage]]:
    """Per PP rank, its model chunks, placed as Megatron places them for an even split.

    Megatron's ``get_transformer_layer_offset``: chunk ``vp`` of PP rank ``p`` holds layers from
    ``(vp * pp + p) * per_chunk``; the embedding is on (p=0, vp=0), the head on (p=pp-1, vp=last).
    """
    v = vpp or 1
    per_chunk = num_layers // (pp * v)
    keys = model_keys(vpp)
    out = []
    for p in range(pp):
        chunks = []
        for vp in range(v):
            start = (vp * pp + p) * per_chunk
            chunks.append(Stage(p, vp, keys[vp], tuple(range(start, start + per_chunk)),
                                first=(p == 0 and vp == 0), last=(p == pp - 1 and vp == v - 1)))
        out.append(chunks)
    return out


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------


def _zip_data_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """``data/<key>`` record -> (byte offset of its data in the file, size), from the zip headers."""
    out = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ConversionError(f"{path}: record {info.filename} is compressed; torch.save never compresses")
            f.seek(info.header_offset)
            local = f.read(30)
            sig, name_len, extra_len = local[:4], *struct.unpack("<HH", local[26:30])
            if sig != b"PK\x03\x04":
                raise ConversionError(f"{path}: bad zip local header for {info.filename}")
            parts = info.filename.split("/")
            if len(parts) >= 2 and parts[-2] == "data":
                out[parts[-1]] = (info.header_offset + 30 + name_len + extra_len, info.file_size)
    return out


class RankFileWriter:
    """One rank's ``model_optim_rng.pt``, filled one tensor at a time.

    ``plan`` maps each model key to the ordered (name, shape, dtype) of its tensors. The file is
    complete once every planned tensor has been written; :meth:`close` checks that.
    """

    def __init__(self, path: Path, plan: dict[str, Sequence[tuple[str, tuple[int, ...], torch.dtype]]],
                 iteration: int = 0):
        self.path = path
        state: dict[str, Any] = {}
        self._slots: dict[tuple[str, str], tuple[int, int, tuple[int, ...], torch.dtype]] = {}
        order: list[tuple[str, str, tuple[int, ...], torch.dtype]] = []
        # The skeleton: torch.save of uninitialised CPU tensors with skip_data (their bytes are
        # neither written nor read, so the untouched pages never become resident). Fake tensors
        # would do too, but FakeTensorMode imports torch._dynamo: 1.6 s per conversion.
        for key, entries in plan.items():
            sd: OrderedDict[str, torch.Tensor] = OrderedDict()
            for name, shape, dtype in entries:
                sd[name] = torch.empty(tuple(shape), dtype=dtype)
                order.append((key, name, tuple(shape), dtype))
            state[key] = sd
        state["checkpoint_version"] = CHECKPOINT_VERSION
        state["iteration"] = iteration
        path.parent.mkdir(parents=True, exist_ok=True)
        with torch.serialization.skip_data():
            torch.save(state, path)
        del state
        # torch.save numbers storages in the order it pickles them: dict order, tensor by tensor.
        offsets = _zip_data_offsets(path)
        if len(offsets) != len(order):
            raise RuntimeError(f"{path}: torch.save wrote {len(offsets)} storages for {len(order)} tensors")
        for k, (key, name, shape, dtype) in enumerate(order):
            off, size = offsets[str(k)]
            want = _numel(shape) * torch.empty(0, dtype=dtype).element_size()
            if size != want:
                raise RuntimeError(f"{path}: storage {k} for {key}.{name} has {size} bytes, expected {want}")
            self._slots[(key, name)] = (off, size, shape, dtype)
        self._done: set[tuple[str, str]] = set()
        self._fd = os.open(path, os.O_RDWR)

    def write(self, key: str, name: str, parts: torch.Tensor | Sequence[torch.Tensor],
              scratch: Scratch | None = None) -> int:
        """Write one planned tensor's bytes from memory into its region; returns the bytes written.

        ``parts``: the tensor, or pieces whose concatenation along dim 0 is the tensor (written
        one after another, so the tensor itself is never materialised). See :func:`write_pieces`
        for ``scratch``.
        """
        off = self.claim(key, name, parts)
        write_pieces(self._fd, off, [parts] if isinstance(parts, torch.Tensor) else list(parts), scratch)
        return self._slots[(key, name)][1]

    def claim(self, key: str, name: str, parts: torch.Tensor | Sequence[torch.Tensor]) -> int:
        """Check that ``parts`` (pieces along dim 0) make the planned tensor ``key.name`` and hand
        out its region: the byte offset in :attr:`fd` where the pieces go, back to back.

        The caller writes the region (or fails the conversion, which discards this file); a
        tensor never claimed makes :meth:`close` fail.
        """
        try:
            off, _size, shape, dtype = self._slots[(key, name)]
        except KeyError:
            raise ConversionError(f"{self.path}: tensor {key}.{name} was not planned") from None
        if (key, name) in self._done:
            raise ConversionError(f"{self.path}: tensor {key}.{name} written twice")
        _check_parts(self.path, name, [parts] if isinstance(parts, torch.Tensor) else list(parts), shape, dtype)
        self._done.add((key, name))
        return off

    @property
    def fd(self) -> int:
        """The open file (for writers of claimed regions)."""
        return self._fd

    def abort(self) -> None:
        """Close without checks (the caller is discarding the file's directory)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self, fsync: bool = True) -> None:
        missing = [f"{k}.{n}" for (k, n) in self._slots if (k, n) not in self._done]
        try:
            if missing:
                raise ConversionError(f"{self.path}: {len(missing)} planned tensors never written, e.g. {missing[0]}")
            if fsync:
                os.fsync(self._fd)
        finally:
            self.abort()


def _check_parts(path: Path, name: str, parts: Sequence[torch.Tensor], shape: tuple[int, ...], dtype: torch.dtype) -> None:
    rows = sum(p.shape[0] for p in parts) if shape else None
    got = (rows, *parts[0].shape[1:]) if shape else tuple(parts[0].shape)
    if (tuple(got) != tuple(shape) or any(p.dtype != dtype or tuple(p.shape[1:]) != tuple(shape[1:]) for p in parts)
            or (not shape and len(parts) != 1)):
        raise ConversionError(f"{path}: tensor {name} is {tuple(got)} {parts[0].dtype}, planned {shape} {dtype}")


class Scratch(Protocol):
    def take(self, nbytes: int) -> torch.Tensor: ...
    def give(self, *bufs: torch.Tensor) -> None: ...


def write_pieces(fd: int, pos: int, parts: Sequence[torch.Tensor], scratch: Scratch | None = None) -> int:
    """Write in-memory ``parts`` back to back into ``fd`` from ``pos`` with ``pwrite``;
    non-contiguous ones after a copy into a ``scratch`` buffer when given.

    (Pieces of the source files' maps do not come here: :mod:`ckpt_convertor.gather` copies
    them without touching the map.)
    """
    start = pos
    for part in parts:
        n = part.numel() * part.element_size()
        buf = None
        if not part.is_contiguous() and scratch is not None:
            buf = scratch.take(n)
            dst = buf[:n].view(part.dtype).view(part.shape)
            dst.copy_(part)
            part = dst
        try:
            pos += _pwrite_all(fd, _bytes_view(part), pos)
        finally:
            if buf is not None:
                scratch.give(buf)
    return pos - start


def _pwrite_all(fd: int, buf: memoryview, pos: int) -> int:
    done = 0
    while done < len(buf):
        done += os.pwrite(fd, buf[done:], pos + done)
    return done


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _bytes_view(t: torch.Tensor) -> memoryview:
    """The tensor's bytes without a copy (one copy if it is not contiguous)."""
    t = t.detach().contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


def write_tracker(root: Path, iteration: str = RELEASE) -> None:
    (root / TRACKER).write_text(iteration)


# ----------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MegatronCheckpoint:
    """A torch-format Megatron checkpoint on disk: its iteration directory and rank grid."""

    root: Path
    directory: Path
    tp: int
    pp: int
    files: dict[tuple[int, int], Path]  # (tp_rank, pp_rank) -> model_optim_rng.pt

    def load_rank(self, tp_rank: int, pp_rank: int) -> dict[str, Any]:
        return load_rank_file(self.files[(tp_rank, pp_rank)])


def find_checkpoint(root: str | Path) -> MegatronCheckpoint:
    """Locate the iteration directory from the tracker and check the rank grid is complete."""
    root = Path(root)
    tracker = root / TRACKER
    if not tracker.is_file():
        raise ConversionError(f"not a Megatron checkpoint: {tracker} does not exist")
    meta = tracker.read_text().strip()
    if meta == RELEASE:
        directory = root / RELEASE
    else:
        try:
            directory = root / f"iter_{int(meta):07d}"
        except ValueError:
            raise ConversionError(f"{tracker} holds {meta!r}, neither 'release' nor an iteration number") from None
    if not directory.is_dir():
        raise ConversionError(f"{tracker} points at {directory}, which does not exist")
    ranks: dict[tuple[int, int], Path] = {}
    with_pp = set()
    for d in sorted(directory.iterdir()):
        mt = _RANK_DIR.match(d.name)
        if not mt or not d.is_dir():
            continue
        if mt.group(3) is not None:
            raise ConversionError(f"{d}: expert-parallel rank directories are not supported (Pangu is dense)")
        tp_rank, pp_rank = int(mt.group(1)), int(mt.group(2) or 0)
        with_pp.add(mt.group(2) is not None)
        ranks[(tp_rank, pp_rank)] = d / RANK_FILE
    if not ranks:
        raise ConversionError(f"no mp_rank_* directories in {directory}")
    if len(with_pp) > 1:
        raise ConversionError(f"{directory} mixes mp_rank_XX and mp_rank_XX_YYY directories")
    tp = max(t for t, _ in ranks) + 1
    pp = max(p for _, p in ranks) + 1
    for t in range(tp):
        for p in range(pp):
            f = ranks.get((t, p))
            name = rank_dir_name(t, p, pp)
            if f is None or not f.is_file():
                raise ConversionError(f"missing rank file {directory / name / RANK_FILE} (TP={tp}, PP={pp})")
    return MegatronCheckpoint(root, directory, tp, pp, ranks)


class MappedPages:
    """Give this process's resident pages of a ``torch.load(mmap=True)``-mapped file back once
    the tensors on them have been used.

    Why: pages of a mapped file count in RSS while the map lives (the whole rank file), so
    without this a Megatron->HF conversion looks as large as a pipeline stage. The range is
    ``madvise(MADV_DONTNEED)``-ed only if ``/proc/self/maps`` shows it inside a private mapping of
    exactly this file (never anonymous memory, where DONTNEED would zero data); the pages stay in
    the page cache and a later access simply maps them again.
    """

    def __init__(self, path: Path):
        real = os.path.realpath(path)
        self.ranges: list[tuple[int, int]] = []
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and parts[5].strip() == real and parts[1].endswith("p"):
                        lo, hi = (int(x, 16) for x in parts[0].split("-"))
                        self.ranges.append((lo, hi))
        except OSError:
            pass

    def drop(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in tensors:
            st = t.untyped_storage()
            start, end = st.data_ptr(), st.data_ptr() + st.nbytes()
            lo = start - start % mmap.PAGESIZE
            for r_lo, r_hi in self.ranges:
                if r_lo <= lo and end <= r_hi:
                    hi = min(r_hi, end + (-end % mmap.PAGESIZE))
                    _madvise_dontneed(lo, hi - lo)
                    break


def _madvise_dontneed(addr: int, length: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(length), mmap.MADV_DONTNEED)


#: What a torch-format Megatron checkpoint pickles besides tensors, as RLinf 0.3.0 saves it during a
#: run: its args (RLinf's OmegaConf DictConfig, or Megatron's argparse Namespace) with Megatron
#: enums and a signal, the RNG states (Python's tuple, numpy's array), the optimizer's
#: defaultdicts. Classes and numpy's array rebuild only: nothing here runs user code. Any other
#: global is refused by torch's weights-only unpickler, which names it.
PICKLED_GLOBALS = (
    "argparse:Namespace", "collections:defaultdict", "collections:OrderedDict", "typing:Any", "signal:Signals",
    "builtins:list", "builtins:dict", "builtins:int", "builtins:float", "builtins:str", "builtins:tuple",
    "builtins:set", "builtins:bool",
    "numpy:ndarray", "numpy:dtype", "numpy._core.multiarray:_reconstruct", "numpy.core.multiarray:_reconstruct",
    "omegaconf.dictconfig:DictConfig", "omegaconf.listconfig:ListConfig", "omegaconf.base:Metadata",
    "omegaconf.base:ContainerMetadata", "omegaconf.nodes:AnyNode", "omegaconf.nodes:StringNode",
    "omegaconf.nodes:IntegerNode", "omegaconf.nodes:FloatNode", "omegaconf.nodes:BooleanNode",
    "omegaconf.nodes:EnumNode", "omegaconf.nodes:BytesNode", "omegaconf.nodes:PathNode",
    "megatron.core.enums:ModelType", "megatron.core.transformer.enums:AttnBackend",
    "megatron.core.transformer.enums:AttnMaskType", "megatron.core.transformer.enums:LayerType",
)


def pickled_globals() -> list[Any]:
    """:data:`PICKLED_GLOBALS` resolved (names this environment lacks are skipped: a checkpoint
    that uses one then fails to load, naming it)."""
    import importlib

    found = []
    for entry in PICKLED_GLOBALS:
        module, _, name = entry.partition(":")
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return found


class _Inert:
    """Stands in for what a rank file pickles besides the model (Megatron's args, RNG and optimizer
    state): the converter never reads those, so nothing of theirs is imported or run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


def _inert_globals(path: Path) -> list[tuple[type, str]]:
    """An inert stand-in for each non-tensor global ``path`` pickles; a global outside
    :data:`PICKLED_GLOBALS` is refused (ConversionError naming the file and the global)."""
    allowed = {entry.replace(":", ".") for entry in PICKLED_GLOBALS}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:  # not a zip, no data.pkl, truncated
        raise ConversionError(f"cannot read {path}: {e}") from e
    foreign = sorted(set(found) - allowed)
    if foreign:
        raise ConversionError(f"cannot load {path} with weights_only=True: it pickles {foreign[0]!r}, "
                              "which a Megatron checkpoint never holds (refused, nothing of it run)")
    return [(type(name.rsplit(".", 1)[-1], (_Inert,), {}), name) for name in found]


def load_rank_file(path: Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` and ``mmap=True``: no pickle code runs, and
    tensor data stays on disk until used. Besides tensors, only :data:`PICKLED_GLOBALS` (what
    Megatron itself pickles: args, RNG and optimizer state) may appear; they load as inert
    stand-ins (only the model's tensors are read)."""
    stand_ins = _inert_globals(path)
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # weights-only refusals and corrupt zips alike
        raise ConversionError(f"cannot load {path} with weights_only=True: {e}") from e
