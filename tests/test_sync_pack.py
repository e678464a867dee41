"""resharding.pack: a sync bucket as views of one flat buffer (one CUDA IPC handle per bucket)."""

from __future__ import annotations

import pytest
import torch

from resharding.pack import ALIGN, pack


def test_strided_pieces_land_in_row_major_order():
    src = torch.arange(24.0).reshape(2, 3, 4)
    got = pack([("a", src[:, 1:], (4, 4)), ("b", src.transpose(1, 2), (2, 12))])
    assert torch.equal(got["a"], src[:, 1:].reshape(4, 4))
    assert torch.equal(got["b"], src.transpose(1, 2).reshape(2, 12))


def test_mixed_dtypes_share_one_storage_at_aligned_offsets():
    got = pack([("x", torch.ones(3, dtype=torch.bfloat16), (3,)), ("y", torch.full((5,), 2.0), (5,)),
                ("z", torch.arange(7, dtype=torch.int64), (7,))])
    assert [got[k].dtype for k in "xyz"] == [torch.bfloat16, torch.float32, torch.int64]
    assert len({t.untyped_storage().data_ptr() for t in got.values()}) == 1
    base = got["x"].untyped_storage().data_ptr()
    assert all((t.data_ptr() - base) % ALIGN == 0 for t in got.values())
    assert got["y"].tolist() == [2.0] * 5 and got["z"].tolist() == list(range(7))


def test_empty_bucket_packs_to_nothing():
    assert pack([]) == {}


def test_pieces_on_two_devices_are_refused_by_name():
    with pytest.raises(ValueError, match="spans devices.*w on meta"):
        pack([("v", torch.zeros(2), (2,)), ("w", torch.zeros(2, device="meta"), (2,))])
