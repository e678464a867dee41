"""The band copy behind HF -> Megatron (``ckpt_convertor.gather``): byte runs of strided views,
copies that cross band and segment boundaries at every alignment, and the converter's plan that
reads every source byte exactly once for all TP ranks (so no piece silently takes the slow path).

Real files throughout; the reference for every copy is torch's own ``.contiguous()`` of the view.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt_convertor import ConversionError
from ckpt_convertor.convert import _plan_copies, _plan_stage
from ckpt_convertor.gather import Piece, Runs, band_bytes, copy_runs, view_runs
from ckpt_convertor.hf_reader import HFCheckpoint
from ckpt_convertor.megatron_io import pipeline_stages

from ckpt_testlib import write_hf


def _runs(t: torch.Tensor, base: torch.Tensor) -> Runs | None:
    return view_runs(t.shape, t.stride(), t.element_size(), t.data_ptr() - base.data_ptr())


def _bytes_of(runs: Runs, data: bytes) -> bytes:
    return b"".join(data[runs.offset + k * runs.stride : runs.offset + k * runs.stride + runs.length]
                    for k in range(runs.count))


def _as_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def test_view_runs_of_the_layout_pieces():
    base = torch.arange(8 * 12, dtype=torch.bfloat16).view(8, 12)
    data = _as_bytes(base)
    cases = {
        "whole": base,
        "row block": base[2:5],
        "column slice": base[:, 6:],
        "column slice of a row block": base[1:7, 3:9],
        "one column": base[:, 4:5],
        "grouped rows": base.reshape(2, 4, 12)[1],
        "3-d view that merges": base.reshape(4, 2, 12)[1:3],
        "bias": base[3],
        "empty": base[:0],
    }
    for what, view in cases.items():
        runs = _runs(view, base)
        assert runs is not None, what
        assert _bytes_of(runs, data) == _as_bytes(view), what
    assert _runs(base[:, 6:], base) == Runs(12, 12, 8, 24)  # one run of 6 bf16 per row
    assert _runs(base[2:5], base).count == 1  # contiguous: one run


def test_view_runs_refuses_what_is_not_equally_spaced_runs():
    base = torch.arange(4 * 6 * 8, dtype=torch.float32).view(4, 6, 8)
    assert _runs(base[:, 1:4, 2:5], base) is None  # two non-contiguous dims
    assert _runs(base[0, 0].expand(3, 8), base) is None  # broadcast (stride 0)
    assert _runs(base.view(-1).as_strided((3, 8), (4, 1)), base) is None  # overlapping rows


def _write(path: Path, data: bytes) -> int:
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 30), tp=st.sampled_from([1, 2, 3]),
       dim=st.sampled_from([0, 1]), band=st.integers(1, 700), seg=st.integers(1, 3000), lead=st.integers(0, 9))
def test_copy_runs_matches_torch_at_every_band_and_segment_alignment(tmp_path_factory, rows, cols, tp, dim, band, seg, lead):
    """A source tensor split over ``tp`` ranks along ``dim`` (as the layout splits matrices),
    copied to one output file per rank in bands of ``band`` bytes and jobs of ``seg`` bytes:
    each output equals torch's copy of the piece."""
    tmp = tmp_path_factory.mktemp("gather")
    g = torch.Generator().manual_seed(rows * 1000 + cols)
    n = (rows if dim == 0 else cols) // tp * tp
    if n == 0:
        return
    t = torch.randint(0, 2**15, (rows, cols), generator=g, dtype=torch.int16)
    t = t[:n] if dim == 0 else t[:, :n]
    t = t.contiguous()
    lead *= t.element_size()  # the tensor past a header, as in a safetensors file
    src_bytes = b"\xee" * lead + _as_bytes(t)
    src = _write(tmp / "src", src_bytes)
    base = torch.frombuffer(bytearray(src_bytes), dtype=torch.uint8)
    view = base[lead:].view(torch.int16).view(t.shape)
    outs = []
    try:
        pieces = []
        for r, part in enumerate(view.chunk(tp, dim)):
            fd = os.open(tmp / f"out{r}", os.O_RDWR | os.O_CREAT | os.O_TRUNC)
            outs.append(fd)
            os.write(fd, b"\x00" * 3)  # the region starts past a header
            runs = view_runs(part.shape, part.stride(), part.element_size(), part.data_ptr() - base.data_ptr())
            pieces.append(Piece(runs, fd, 3))
        lo, hi = lead, len(src_bytes)
        band = band_bytes(pieces, band)
        total = sum(copy_runs(src, pieces, s0, min(hi, s0 + seg), band) for s0 in range(lo, hi, seg))
        assert total == len(src_bytes) - lead
        for r, part in enumerate(t.chunk(tp, dim)):
            assert (tmp / f"out{r}").read_bytes() == b"\x00" * 3 + _as_bytes(part), (r, band, seg)
    finally:
        os.close(src)
        for fd in outs:
            os.close(fd)


def test_concurrent_segments_into_shared_files_make_the_same_bytes(tmp_path):
    """As the converter runs them: segments of one source in 4 threads at once, each writing
    both ranks' files (a column split, rows of 300 B in bands of 7 rows)."""
    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, 2**15, (4096, 300), generator=g, dtype=torch.int16)
    data = b"HEADER!!" + _as_bytes(t)
    src = _write(tmp_path / "src", data)
    base = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    view = base[8:].view(torch.int16).view(t.shape)
    fds = [os.open(tmp_path / f"out{r}", os.O_RDWR | os.O_CREAT | os.O_TRUNC) for r in range(2)]
    try:
        pieces = [Piece(_runs(part, base), fds[r], 0) for r, part in enumerate(view.chunk(2, 1))]
        band = band_bytes(pieces, 7 * 600)
        seg = 5 * band
        with ThreadPoolExecutor(4) as pool:
            done = list(pool.map(lambda s0: copy_runs(src, pieces, s0, min(len(data), s0 + seg), band, writeback=True),
                                 range(8, len(data), seg)))
        assert sum(done) == len(data) - 8
        for r, part in enumerate(t.chunk(2, 1)):
            assert (tmp_path / f"out{r}").read_bytes() == _as_bytes(part)
    finally:
        os.close(src)
        for fd in fds:
            os.close(fd)


def test_a_source_that_shrank_is_named(tmp_path):
    src = _write(tmp_path / "src", bytes(range(100)))
    dst = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(ConversionError, match="shard.safetensors ended at byte 100"):
            copy_runs(src, [Piece(Runs(0, 150, 1, 150), dst, 0)], src_name="shard.safetensors")
    finally:
        os.close(src)
        os.close(dst)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_every_item_is_copied_from_the_files_and_every_source_byte_read_once(tmp_path, tp):
    """The converter's plan for each Megatron tensor: all pieces are runs of the source files
    (none falls back to a copy through memory), and together the ranks' pieces cover each
    source tensor exactly once (``tp`` times for a replicated one, the o_proj bias)."""
    hf = write_hf(tmp_path / "hf", num_attention_heads=8, num_key_value_heads=4)  # 4 KV groups: TP up to 4
    ckpt = HFCheckpoint.open(hf)
    try:
        dims = ckpt.dims
        dims.check_parallel(tp)
        for stage in pipeline_stages(dims.num_hidden_layers, 1)[0]:
            for it in _plan_stage(ckpt, stage, tp, "local"):
                names = it.mapping.hf_names(it.layer)
                srcs = [ckpt.mapped(n) for n in names]
                rank_parts = [it.mapping.shard_parts(srcs, dims, r, tp) for r in range(tp)]
                copies = _plan_copies(ckpt, names, rank_parts)
                assert copies is not None, f"{it.name} would be copied through memory"
                for i, n in enumerate(names):
                    info = ckpt.info(n)
                    covered = torch.zeros(info.nbytes, dtype=torch.int32)
                    for located in copies.ranks:
                        for src, runs in located:
                            if src != i:
                                continue
                            for k in range(runs.count):
                                a = runs.offset + k * runs.stride - info.offset
                                covered[a : a + runs.length] += 1
                    want = tp if it.mapping.tp_dim is None else 1
                    assert set(covered.tolist()) == {want}, (it.name, n)
    finally:
        ckpt.close()
