"""HF <-> Megatron (torch format, any TP/PP/VPP) conversion of Pangu checkpoints.

Both directions stream: each HF tensor (or each TP-sharded Megatron tensor) is read once,
turned into its outputs by the mapping objects of ``rlinf_pangu.layout`` (the one Pangu layout
declaration), and written straight into its place in the output files while the next one is
being read. Peak memory is a few tensors, not a rank and not the model.

Both directions plan first on shape-only tensors (``device='meta'``), so every name, shape and
file offset is known and every inconsistency is reported before a byte of output exists.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from rlinf_pangu.layout import (
    NORM_ALIASES,
    LayoutError,
    PanguDims,
    ParamMapping,
    hf_names,
    megatron_to_hf as layout_megatron_to_hf,
    merge_tp_shards,
    stage_mappings,
)

from . import cache
from .errors import ConversionError
from .hf_reader import CONFIG_FILE, INDEX_FILE, WEIGHT_DTYPES, HFCheckpoint, read_json, read_safetensors_header
from .gather import Piece, Runs, band_bytes, copy_runs
from .hf_writer import SafetensorsWriter
from .megatron_io import (
    RANK_FILE,
    TRACKER,
    MappedPages,
    RELEASE,
    RankFileWriter,
    Stage,
    find_checkpoint,
    pipeline_stages,
    rank_dir_name,
    write_tracker,
)

log = logging.getLogger(__name__)

DTYPE_NAMES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, **WEIGHT_DTYPES}
NORM_NAMINGS = ("local", "te")
EXTRA_TENSORS = "extra_tensors.safetensors"  # in hf_meta/: tensors kept verbatim (RoPE inv_freq)
#: Files of an HF directory never copied: weights (converted instead) and pickles (never read).
_NOT_METADATA = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".pkl")
DEFAULT_SHARD_BYTES = 5 * 1024**3
_IN_FLIGHT_BYTES = 512 * 1024**2
_IO_THREADS = 4
#: Source bytes per copy job: big tensors (embedding, fc1) are split so that all I/O threads
#: stay busy until the end.
_SEGMENT_BYTES = 64 * 1024**2


def resolve_dtype(dtype: str | torch.dtype | None, default: torch.dtype) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        raise ConversionError(f"unknown dtype {dtype!r}; choose bf16, fp16 or fp32") from None


def _dtype_name(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


class _WritePipeline:
    """Overlap producing tensors (caller's thread) with writing them (``threads`` I/O threads).

    At most ``max_bytes`` of produced pieces wait for the disk, which bounds memory. The writes
    (``copy_file_range``/``pwrite``) release the GIL and target disjoint file ranges, so several
    run at once; :meth:`after` runs a clean-up once given writes are done.
    """

    def __init__(self, bar: tqdm, max_bytes: int = _IN_FLIGHT_BYTES, threads: int | None = None):
        self._pool = ThreadPoolExecutor(threads or _IO_THREADS, thread_name_prefix="ckpt-write")
        self._queue: collections.deque[tuple[Future, int]] = collections.deque()
        self._bytes = 0
        self._max = max_bytes
        self._bar = bar

    def submit(self, fn: Callable[..., int], *args: Any, nbytes: int) -> Future:
        while self._queue and self._bytes + nbytes > self._max:
            self._wait_one()
        fut = self._pool.submit(fn, *args)
        self._queue.append((fut, nbytes))
        self._bytes += nbytes
        return fut

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> Any:
        """``fn`` over ``items`` on the I/O threads (after what is queued), results in order."""
        return self._pool.map(fn, items)

    def after(self, futures: list[Future], fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` (in an I/O thread) once all ``futures`` are done."""
        left = [len(futures)]
        lock = threading.Lock()

        def done(_f: Future) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                fn(*args)

        for f in futures:
            f.add_done_callback(done)

    def _wait_one(self) -> None:
        fut, n = self._queue.popleft()
        written = fut.result()  # the bytes the job wrote (n only bounds what is in flight)
        self._bytes -= n
        self._bar.update(written)

    def drain(self) -> None:
        while self._queue:
            self._wait_one()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


class _BufferPool:
    """Reusable byte buffers for tensors read from disk and for contiguous copies.

    Why: a fresh multi-MB allocation is paid in first-touch page faults (the kernel zeroes every
    page), which cost 5x more than reading the same bytes from the page cache. Buffers return
    here once the I/O thread has written what they held; at most ``keep_bytes`` stay idle.
    """

    GRAIN = 16 * 1024**2

    def __init__(self, keep_bytes: int = 1024**3):
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()
        self._keep = keep_bytes

    def take(self, nbytes: int) -> torch.Tensor:
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if b.numel() >= nbytes]
            if fits:
                best = min(fits, key=lambda i: self._free[i].numel())
                return self._free.pop(best)
        size = max(nbytes, 1)
        if size > 1024**2:
            size = -(-size // self.GRAIN) * self.GRAIN
        return torch.empty(size, dtype=torch.uint8)

    def give(self, *bufs: torch.Tensor) -> None:
        with self._lock:
            self._free.extend(bufs)
            self._free.sort(key=lambda b: b.numel())
            total = 0
            for i, b in enumerate(self._free):  # keep the small ones, drop the largest beyond the cap
                total += b.numel()
                if total > self._keep:
                    del self._free[i:]
                    break


def _bar(total: int, desc: str, progress: bool | None) -> tqdm:
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True,
                disable=(None if progress is None else not progress), mininterval=0.5)


# ======================================================================================
# HF -> Megatron
# ======================================================================================


@dataclass(frozen=True)
class _Item:
    """One Megatron tensor of one model chunk: where it comes from and what it is called."""

    key: str
    name: str
    mapping: ParamMapping
    layer: int | None
    shape: tuple[int, ...]


def _megatron_name(m: ParamMapping, layer: int | None, stage: Stage, norm_names: str) -> str:
    local = None if layer is None else layer - stage.layer_offset
    if norm_names == "te" and m.megatron in NORM_ALIASES:
        return NORM_ALIASES[m.megatron].format(i=local)
    return m.megatron_name(local)


def _plan_stage(ckpt: HFCheckpoint, stage: Stage, tp: int, norm_names: str) -> list[_Item]:
    items = []
    for m, layer in stage_mappings(ckpt.dims, stage.layers, stage.first, stage.last):
        metas = [ckpt.meta(n) for n in m.hf_names(layer)]
        shapes = {m.shard_shape(metas, ckpt.dims, r, tp) for r in range(tp)}
        if len(shapes) != 1:
            raise ConversionError(f"{m.megatron_name(layer)} splits unevenly over TP={tp}: {sorted(shapes)}")
        items.append(_Item(stage.key, _megatron_name(m, layer, stage, norm_names), m, layer, shapes.pop()))
    return items


def hf_to_megatron(hf_dir: str | Path, out_dir: str | Path, tp: int, pp: int = 1, vpp: int | None = None,
                   dtype: str | torch.dtype | None = None, norm_names: str = "local", *,
                   fingerprint: str | None = None, fsync: bool = True, progress: bool | None = None) -> Path:
    """Convert an HF Pangu directory into a Megatron release checkpoint at ``out_dir`` (atomically).

    ``norm_names``: ``local`` for the local spec (``input_layernorm``/``pre_mlp_layernorm``),
    ``te`` for the Transformer Engine spec (norms fused into ``linear_qkv``/``linear_fc1``).
    Callers that may race on ``out_dir`` go through :func:`ckpt_convertor.cached.ensure_megatron`,
    which holds the lock; this function does not lock.
    """
    t0 = time.perf_counter()
    out = Path(out_dir).absolute()
    if norm_names not in NORM_NAMINGS:
        raise ConversionError(f"norm_names must be one of {NORM_NAMINGS}, got {norm_names!r}")
    vpp = None if vpp in (None, 1) else int(vpp)
    if vpp and pp < 2:
        raise ConversionError(f"virtual pipeline stages (vpp={vpp}) need pipeline parallel size >= 2 (got pp={pp})")
    ckpt = HFCheckpoint.open(hf_dir)
    try:
        dims = ckpt.dims
        try:
            dims.check_parallel(tp, pp, vpp)
        except LayoutError as e:
            raise ConversionError(f"{e} (config {Path(hf_dir) / CONFIG_FILE})") from None
        target = resolve_dtype(dtype, ckpt.dtype)
        itemsize = torch.empty(0, dtype=target).element_size()
        stages = pipeline_stages(dims.num_hidden_layers, pp, vpp)
        plans = [[_plan_stage(ckpt, s, tp, norm_names) for s in chunks] for chunks in stages]
        total = sum(_numel(i.shape) * itemsize for chunks in plans for items in chunks for i in items) * tp
        fp = fingerprint or cache.fingerprint(hf_dir, tp=tp, pp=pp, vpp=vpp, dtype=dtype or "auto", norm_names=norm_names)
        log.info("converting %s -> %s (TP=%d PP=%d VPP=%s, %s, %s norm names, %.2f GiB)",
                 ckpt.path, out, tp, pp, vpp, _dtype_name(target), norm_names, total / 1024**3)
        t_plan = time.perf_counter()

        with cache.staging(out) as tmp:
            files: dict[str, int] = {}
            with _bar(total, "hf->megatron", progress) as bar:
                pipe = _WritePipeline(bar)
                pool = _BufferPool()
                writers: list[RankFileWriter] = []
                try:
                    for p, chunks in enumerate(plans):
                        stage_writers = []
                        for r in range(tp):
                            plan = {stages[p][v].key: [(i.name, i.shape, target) for i in items] for v, items in enumerate(chunks)}
                            stage_writers.append(RankFileWriter(tmp / RELEASE / rank_dir_name(r, p, pp) / RANK_FILE, plan))
                        writers += stage_writers
                        for items in chunks:
                            for it in items:
                                _convert_item(ckpt, it, target, tp, stage_writers, pipe, pool, writeback=fsync)
                    pipe.drain()
                    t_copy = time.perf_counter()
                    # flush every rank file at the end, together (no stall between stages)
                    list(pipe.map(lambda w: w.close(fsync=fsync), writers))
                    t_flush = time.perf_counter()
                    files.update({str(w.path.relative_to(tmp)): w.path.stat().st_size for w in writers})
                finally:
                    pipe.close()
                    for w in writers:
                        w.abort()
            write_tracker(tmp)
            files.update(_save_hf_meta(ckpt, tmp / cache.HF_META, tmp))
            sidecar = {
                "format": "rlinf-pangu/megatron-torch",
                "converter_version": cache.CONVERTER_VERSION,
                "fingerprint": fp,
                "source": str(ckpt.path.absolute()),
                "tp": tp, "pp": pp, "vpp": vpp,
                "dtype": _dtype_name(target), "source_dtype": _dtype_name(ckpt.dtype),
                "norm_names": norm_names,
                "files": files,
            }
            (tmp / cache.SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
    finally:
        ckpt.close()
    dt = time.perf_counter() - t0
    log.info("wrote %s in %.1f s (%.0f MiB/s; checks and plan %.2f s, copy %.2f s, fsync %.2f s, rest %.2f s)",
             out, dt, total / 1024**2 / max(dt, 1e-9), t_plan - t0, t_copy - t_plan, t_flush - t_copy,
             time.perf_counter() - t_flush)
    return out


def _convert_item(ckpt: HFCheckpoint, it: _Item, target: torch.dtype, tp: int, writers: list[RankFileWriter],
                  pipe: _WritePipeline, pool: _BufferPool, writeback: bool) -> None:
    """Queue the writes of one Megatron tensor on every TP rank of its stage.

    The HF tensors are views of their files' maps and the layout cuts them into each rank's
    pieces (views too). When every piece is byte runs of a source file (always, unless a dtype
    cast made new tensors) each source tensor is copied once for all ranks, in segments that
    the I/O threads copy in parallel (:mod:`ckpt_convertor.gather`); else each rank's pieces are
    written from memory. ``writeback`` (when the files will be fsynced): start writing each
    copied band to disk at once, so the disk works during the copy instead of in the final
    fsync (7B TP2xPP2 on this host: that fsync took 0.6-0.7 s without, 0.01-0.25 s with it).
    """
    names = it.mapping.hf_names(it.layer)
    srcs = [_as(ckpt.mapped(n), target) for n in names]
    rank_parts = [it.mapping.shard_parts(srcs, ckpt.dims, r, tp) for r in range(tp)]
    copies = _plan_copies(ckpt, names, rank_parts)
    if copies is None:
        itemsize = srcs[0].element_size()
        futs = [pipe.submit(writers[r].write, it.key, it.name, parts, pool,
                            nbytes=sum(x.numel() for x in parts) * itemsize)
                for r, parts in enumerate(rank_parts)]
        pipe.after(futs, ckpt.release, names)  # drop the mapped pages the copies touched
        return
    pieces: dict[int, list[Piece]] = {}
    for r, parts in enumerate(rank_parts):
        pos = writers[r].claim(it.key, it.name, parts)
        for src, runs in copies.ranks[r]:
            pieces.setdefault(src, []).append(Piece(runs, writers[r].fd, pos))
            pos += runs.nbytes
    for src, ps in pieces.items():
        fd, fname, lo, hi = copies.sources[src]
        band = band_bytes(ps)
        seg = max(band, _SEGMENT_BYTES // band * band)
        label = f"{ckpt.path / fname} (tensor {names[src]!r})"
        for s0 in range(lo, hi, seg):
            pipe.submit(copy_runs, fd, ps, s0, min(hi, s0 + seg), band, label, writeback,
                        nbytes=min(seg, hi - s0))
    del srcs, rank_parts


@dataclass
class _Copies:
    """Per TP rank, its pieces as (source index, byte runs); per source, (fd, file, first byte, end)."""

    ranks: list[list[tuple[int, Runs]]]
    sources: list[tuple[int, str, int, int]]


def _plan_copies(ckpt: HFCheckpoint, names: list[str], rank_parts: list[list[torch.Tensor]]) -> _Copies | None:
    """Where each rank's pieces lie in the source files, or None if some piece is not in them."""
    sources = []
    for n in names:
        info = ckpt.info(n)
        sources.append((info.file, info.offset, info.offset + info.nbytes))
    ranks: list[list[tuple[int, Runs]]] = []
    fds: dict[int, int] = {}
    for parts in rank_parts:
        located = []
        for part in parts:
            found = ckpt.runs(part)
            if found is None:
                return None
            fd, fname, runs = found
            src = next((i for i, (f, lo, hi) in enumerate(sources)
                        if f == fname and lo <= runs.offset and runs.end <= hi), None)
            if src is None:
                return None
            fds[src] = fd
            located.append((src, runs))
        ranks.append(located)
    return _Copies(ranks, [(fds.get(i, -1), f, lo, hi) for i, (f, lo, hi) in enumerate(sources)])


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def save_hf_meta(hf_dir: str | Path, meta: str | Path) -> dict[str, int]:
    """Write ``meta`` (a new ``hf_meta/`` directory) from the HF directory ``hf_dir``: what
    :func:`megatron_to_hf` needs to write an official-layout directory again. A run's checkpoints
    keep one beside the actor's Megatron files (``rlinf_pangu.run_checkpoint``)."""
    meta = Path(meta)
    ckpt = HFCheckpoint.open(hf_dir)
    try:
        return _save_hf_meta(ckpt, meta, meta.parent)
    finally:
        ckpt.close()


def _save_hf_meta(ckpt: HFCheckpoint, meta: Path, root: Path) -> dict[str, int]:
    """Keep what megatron-to-hf needs to write an official-layout directory again: config,
    tokenizer and other metadata files (copied byte for byte, never interpreted), the index,
    and the tensors that are not converted (RoPE ``inv_freq`` buffers)."""
    meta.mkdir()
    out: dict[str, int] = {}
    for src in sorted(ckpt.path.iterdir()):
        if src.is_file() and not src.name.endswith(_NOT_METADATA):
            shutil.copyfile(src, meta / src.name)
            out[str((meta / src.name).relative_to(root))] = src.stat().st_size
    if ckpt.extras:
        dst = meta / EXTRA_TENSORS
        w = SafetensorsWriter(dst, [(n, i.shape, i.dtype) for n, i in ckpt.extras.items()])
        for n in ckpt.extras:
            w.write(n, ckpt[n])
        w.close()
        out[str(dst.relative_to(root))] = dst.stat().st_size
    return out


# ======================================================================================
# Megatron -> HF
# ======================================================================================


def _rank_states(mg, p: int) -> list[dict[str, Any]]:
    return [mg.load_rank(r, p) for r in range(mg.tp)]


def _chunk_keys(state: dict[str, Any], path: Path) -> list[str]:
    if "model" in state:
        return ["model"]
    keys = sorted((k for k in state if k.startswith("model") and k[5:].isdigit()), key=lambda k: int(k[5:]))
    if not keys:
        raise ConversionError(f"{path} holds no 'model' state dict (keys: {sorted(state)[:8]})")
    return keys


def _convertible(name: str, dims: PanguDims, stage: Stage) -> bool:
    if name.endswith("._extra_state"):
        return False  # Transformer Engine metadata, not a weight
    if name == "output_layer.weight" and dims.tie_word_embeddings:
        return False  # the last stage's copy of the tied embedding
    return True


def megatron_to_hf(mg_dir: str | Path, out_dir: str | Path, dtype: str | torch.dtype | None = None, *,
                   config: str | Path | None = None, meta_from: str | Path | None = None,
                   shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False, fsync: bool = True,
                   progress: bool | None = None) -> Path:
    """Convert a torch-format Megatron Pangu checkpoint (TP/PP/VPP read from its files) into an
    official-layout HF directory at ``out_dir`` (atomically).

    ``mg_dir``: a Megatron checkpoint (the directory holding ``latest_checkpointed_iteration.txt``:
    a release one of :func:`hf_to_megatron`, or an RLinf actor's, with its iteration directory and
    distributed-optimizer files), or a run's ``checkpoints/global_step_<N>`` (its ``actor/``).
    The HF config comes from ``config`` or from the checkpoint's ``hf_meta/`` (written by
    :func:`hf_to_megatron`, and by a run's saves); so do the tokenizer files, the original shard
    assignment and the RoPE buffers, which makes HF -> Megatron -> HF reproduce the original
    directory. ``meta_from``: an HF directory to take all of these from instead (a checkpoint
    without ``hf_meta/``, such as one RLinf saved without rlinf-pangu).
    """
    t0 = time.perf_counter()
    mg = find_checkpoint(_megatron_dir(Path(mg_dir)))
    out = Path(out_dir).absolute()
    with contextlib.ExitStack() as stack:
        meta = mg.root / cache.HF_META
        if meta_from is not None:
            meta = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".hf-meta-"))) / cache.HF_META
            save_hf_meta(meta_from, meta)
        return _megatron_to_hf(mg, out, meta, dtype, config, shard_bytes, overwrite, fsync, progress, t0)


def _megatron_dir(path: Path) -> Path:
    """A run's ``global_step_<N>`` holds the actor's Megatron checkpoint in ``actor/``."""
    if not (path / TRACKER).is_file() and (path / "actor" / TRACKER).is_file():
        return path / "actor"
    return path


def _megatron_to_hf(mg, out: Path, meta: Path, dtype, config, shard_bytes: int, overwrite: bool, fsync: bool,
                    progress: bool | None, t0: float) -> Path:
    config_path = Path(config) if config else meta / CONFIG_FILE
    if not config_path.is_file():
        raise ConversionError(
            f"no HF config for {mg.root}: {config_path} does not exist; pass the model's config.json (--config) "
            "or its HF directory (--meta-from, which also brings the tokenizer files)"
        )
    cfg = read_json(config_path, "config.json")
    dims = PanguDims.from_hf_config(cfg)

    # ---- plan on shapes only --------------------------------------------------------------
    planned: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    sources: dict[str, str] = {}
    vpp = None
    src_dtype = None
    for p in range(mg.pp):
        states = _rank_states(mg, p)
        keys = _chunk_keys(states[0], mg.files[(0, p)])
        vpp = len(keys) if keys != ["model"] else None
        stages = pipeline_stages(dims.num_hidden_layers, mg.pp, vpp)
        for stage in stages[p]:
            sds = [s.get(stage.key) for s in states]
            for r, sd in enumerate(sds):
                if not isinstance(sd, dict):
                    raise ConversionError(f"{mg.files[(r, p)]} lacks the {stage.key!r} state dict")
            for name, t in sds[0].items():
                if not _convertible(name, dims, stage):
                    continue
                shards = []
                for r, sd in enumerate(sds):
                    if name not in sd:
                        raise ConversionError(f"{mg.files[(r, p)]} lacks tensor {stage.key}.{name} (present on TP rank 0)")
                    shards.append(torch.empty(sd[name].shape, dtype=sd[name].dtype, device="meta"))
                src_dtype = src_dtype or t.dtype
                try:
                    full = merge_tp_shards(name, shards)
                    hf = layout_megatron_to_hf(name, full, dims, stage.layer_offset)
                except (LayoutError, RuntimeError) as e:
                    raise ConversionError(f"{mg.files[(0, p)]}: {stage.key}.{name}: {e}") from e
                for hn, ht in hf.items():
                    if hn in planned:
                        raise ConversionError(f"HF tensor {hn!r} produced twice (second time from {stage.key}.{name} on PP rank {p})")
                    planned[hn] = (tuple(ht.shape), ht.dtype)
                    sources[hn] = f"{mg.files[(0, p)]}:{stage.key}.{name}"
        del states
    want = dims.hf_shapes()
    missing = [n for n in want if n not in planned]
    if missing:
        raise ConversionError(f"the Megatron checkpoint {mg.directory} has no source for HF tensor {missing[0]!r}"
                              + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    for n, shape in want.items():
        if planned[n][0] != tuple(shape):
            raise ConversionError(f"HF tensor {n!r} from {sources[n]} has shape {list(planned[n][0])}, config expects {list(shape)}")
    target = resolve_dtype(dtype, src_dtype or torch.float32)
    entries = {n: (want[n], target) for n in hf_names(dims)}
    extras_path = meta / EXTRA_TENSORS
    extras = read_safetensors_header(extras_path) if extras_path.is_file() else {}
    for n, info in extras.items():
        entries[n] = (info.shape, info.dtype)
    assignment = _shard_assignment(entries, meta / INDEX_FILE, shard_bytes)
    total = sum(_numel(s) * torch.empty(0, dtype=d).element_size() for s, d in entries.values())

    # ---- write ------------------------------------------------------------------------------
    may_replace = (lambda _p: True) if overwrite else (lambda p: not any(p.iterdir()))
    with cache.target_lock(out), cache.staging(out, may_replace=may_replace) as tmp:
        by_file: dict[str, list[tuple[str, tuple[int, ...], torch.dtype]]] = {}
        for n, (s, d) in entries.items():
            by_file.setdefault(assignment[n], []).append((n, s, d))
        writers = {f: SafetensorsWriter(tmp / f, ents) for f, ents in by_file.items()}
        with _bar(total, "megatron->hf", progress) as bar:
            pipe = _WritePipeline(bar)
            try:
                for p in range(mg.pp):
                    states = _rank_states(mg, p)
                    pages = [MappedPages(mg.files[(r, p)]) for r in range(mg.tp)]
                    stages = pipeline_stages(dims.num_hidden_layers, mg.pp, vpp)
                    for stage in stages[p]:
                        sds = [s[stage.key] for s in states]
                        for name in sds[0]:
                            if not _convertible(name, dims, stage):
                                continue
                            shards = [sd[name] for sd in sds]
                            full = merge_tp_shards(name, shards)
                            futs = []
                            for hn, ht in layout_megatron_to_hf(name, full, dims, stage.layer_offset).items():
                                ht = _as(ht, target)
                                futs.append(pipe.submit(writers[assignment[hn]].write, hn, ht,
                                                        nbytes=ht.numel() * ht.element_size()))
                            for pg, sh in zip(pages, shards):  # once written, give the mapped pages back
                                pipe.after(futs, pg.drop, [sh])
                            del shards, full
                    pipe.drain()
                    del states
                if extras:
                    from safetensors import safe_open

                    with safe_open(str(extras_path), framework="pt") as f:
                        for n in extras:
                            t = f.get_tensor(n)
                            pipe.submit(writers[assignment[n]].write, n, t, nbytes=t.numel() * t.element_size())
                    pipe.drain()
            finally:
                pipe.close()
                if sys.exc_info()[0] is not None:
                    for w in writers.values():
                        w.abort()
        for w in writers.values():
            w.close(fsync=fsync)
        index = {"metadata": {"total_size": total}, "weight_map": {n: assignment[n] for n in sorted(entries)}}
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        _restore_hf_meta(meta, config_path, tmp, target)
    dt = time.perf_counter() - t0
    log.info("wrote HF checkpoint %s in %.1f s (%.0f MiB/s)", out, dt, total / 1024**2 / max(dt, 1e-9))
    return out


def _shard_assignment(entries: dict[str, tuple[tuple[int, ...], torch.dtype]], original_index: Path,
                      shard_bytes: int) -> dict[str, str]:
    """Tensor -> file: the original checkpoint's assignment when it covers exactly these tensors,
    else HF-style ``model-XXXXX-of-YYYYY.safetensors`` shards of at most ``shard_bytes``."""
    if original_index.is_file():
        wm = read_json(original_index, "original weights index").get("weight_map", {})
        if set(wm) == set(entries):
            return {n: wm[n] for n in entries}
        log.info("original index does not match the converted tensors; writing a new shard layout")
    groups: list[list[str]] = [[]]
    size = 0
    for n, (s, d) in entries.items():
        nbytes = _numel(s) * torch.empty(0, dtype=d).element_size()
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(n)
        size += nbytes
    k = len(groups)
    return {n: f"model-{i + 1:05d}-of-{k:05d}.safetensors" for i, g in enumerate(groups) for n in g}


def _restore_hf_meta(meta: Path, config_path: Path, dst: Path, dtype: torch.dtype) -> None:
    """Copy config, tokenizer and other metadata into the HF output (config's ``torch_dtype``
    follows a dtype change; otherwise every file is copied byte for byte)."""
    if meta.is_dir():
        for src in sorted(meta.iterdir()):
            if src.is_file() and src.name not in (EXTRA_TENSORS, INDEX_FILE, CONFIG_FILE):
                shutil.copyfile(src, dst / src.name)
    cfg_text = config_path.read_text()
    cfg = json.loads(cfg_text)
    name = _dtype_name(dtype)
    key = "torch_dtype" if "torch_dtype" in cfg or "dtype" not in cfg else "dtype"
    if cfg.get(key) != name:
        cfg[key] = name
        cfg_text = json.dumps(cfg, indent=2) + "\n"
    (dst / CONFIG_FILE).write_text(cfg_text)
