"""resharding.materialize (convert_mega_pangu_to_hf, and the convertor with packed=False): one copy, a storage per tensor."""

from __future__ import annotations

import io

import torch

from resharding.materialize import materialize


def test_strided_pieces_land_in_row_major_order():
    src = torch.arange(24.0).reshape(2, 3, 4)
    got = materialize([("a", src[:, 1:], (4, 4)), ("b", src.transpose(1, 2), (2, 12))])
    assert torch.equal(got["a"], src[:, 1:].reshape(4, 4))
    assert torch.equal(got["b"], src.transpose(1, 2).reshape(2, 12))


def test_every_tensor_owns_its_storage_and_keeps_its_dtype():
    src = torch.arange(64.0).reshape(8, 8)
    got = materialize([("x", src[:2].to(torch.bfloat16), (2, 8)), ("y", src[:, :4], (8, 4))])
    assert got["x"].dtype is torch.bfloat16 and got["y"].dtype is torch.float32
    for t in got.values():
        assert t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()
    assert got["y"].untyped_storage().data_ptr() != src.untyped_storage().data_ptr()


def test_a_pickled_tensor_carries_only_its_own_bytes():
    """RLinf pickles the first sync bucket (it carries bucket_length): a view of a shared buffer
    would drag the whole buffer along, once per tensor."""
    big = torch.zeros(1024, 1024)
    got = materialize([(f"t{i}", big[i * 8 : (i + 1) * 8], (8, 1024)) for i in range(4)])
    buf = io.BytesIO()
    torch.save(got["t0"], buf)
    assert buf.tell() < 2 * got["t0"].numel() * 4
