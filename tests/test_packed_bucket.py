"""rlinf_pangu.packed_bucket: one sync bucket as one buffer, unpacked by SGLang's Pangu class."""

from __future__ import annotations

import io
import json
import pickle

import pytest
import torch

from rlinf_pangu.layout import LayoutError
from rlinf_pangu.packed_bucket import (
    ALIGN,
    KEY_PREFIX,
    READER_ARCHITECTURE,
    expand,
    is_packed,
    pack,
    rollout_reads_packed,
    unpack,
)


def _pieces():
    src = torch.arange(24.0).reshape(2, 3, 4)
    bf = torch.randn(3, 5).to(torch.bfloat16)
    return src, bf, [("a", src[:, 1:], (4, 4)), ("b", src.transpose(1, 2), (2, 12)), ("c", bf.t(), (5, 3))]


def test_a_bucket_packs_into_one_uint8_buffer_under_one_key():
    _, _, pieces = _pieces()
    packed = pack(pieces)
    assert len(packed) == 1
    (key, flat), = packed.items()
    assert is_packed(key) and key.startswith(KEY_PREFIX)
    assert flat.dtype is torch.uint8 and flat.dim() == 1 and flat.is_contiguous()


def test_unpack_gives_each_strided_piece_in_row_major_order_with_its_dtype():
    src, bf, pieces = _pieces()
    got = dict(unpack(*next(iter(pack(pieces).items()))))
    assert torch.equal(got["a"], src[:, 1:].reshape(4, 4))
    assert torch.equal(got["b"], src.transpose(1, 2).reshape(2, 12))
    assert got["c"].dtype is torch.bfloat16 and torch.equal(got["c"], bf.t().reshape(5, 3))


def test_entries_are_aligned_views_of_the_buffer_not_of_the_source():
    src, _, pieces = _pieces()
    (key, flat), = pack(pieces).items()
    base = flat.untyped_storage().data_ptr()
    for _, view in unpack(key, flat):
        assert view.untyped_storage().data_ptr() == base and (view.data_ptr() - base) % ALIGN == 0
    assert src.untyped_storage().data_ptr() != base


def test_a_pickled_packed_bucket_carries_its_bytes_once():
    """RLinf pickles the first sync bucket (it carries bucket_length): views of a shared buffer,
    one per tensor, would each drag the whole buffer along."""
    big = torch.zeros(1024, 1024)
    packed = pack([(f"t{i}", big[i * 64 : (i + 1) * 64], (64, 1024)) for i in range(8)])
    buf = io.BytesIO()
    torch.save(packed, buf)
    payload = 8 * 64 * 1024 * 4
    assert buf.tell() < payload * 1.1


def test_expand_unpacks_packed_items_and_passes_plain_ones_through():
    _, _, pieces = _pieces()
    plain = torch.ones(3)
    names = [n for n, _ in expand([("x", plain), *pack(pieces).items()])]
    assert names == ["x", "a", "b", "c"]


def test_no_pieces_pack_to_nothing():
    assert pack([]) == {}


def test_a_shape_that_does_not_fit_the_piece_is_an_error_naming_it():
    with pytest.raises(LayoutError, match="'q'"):
        pack([("q", torch.zeros(4, 4), (3, 4))])


def test_an_entry_past_the_buffer_is_an_error_naming_it():
    (key, flat), = pack([("w", torch.zeros(64), (64,))]).items()
    with pytest.raises(LayoutError, match="'w'.*does not fit"):
        unpack(key, flat[:100].clone())


def test_an_unreadable_manifest_is_an_error_quoting_the_key():
    with pytest.raises(LayoutError, match="unreadable manifest"):
        unpack(KEY_PREFIX + "[[oops", torch.zeros(8, dtype=torch.uint8))


def test_a_buffer_that_is_not_uint8_is_an_error():
    (key, flat), = pack([("w", torch.zeros(4), (4,))]).items()
    with pytest.raises(LayoutError, match="uint8"):
        unpack(key, flat.view(torch.float32))


def test_the_key_survives_pickling_as_rlinf_sends_it():
    _, _, pieces = _pieces()
    packed = pack(pieces)
    again = pickle.loads(pickle.dumps(packed))
    assert [n for n, _ in expand(again.items())] == ["a", "b", "c"]


def _ckpt_dir(tmp_path, architectures):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": architectures}))
    return tmp_path


def test_sglang_serving_pangus_class_reads_packed_buckets(tmp_path):
    ok, why = rollout_reads_packed("sglang", _ckpt_dir(tmp_path, [READER_ARCHITECTURE]))
    assert ok and READER_ARCHITECTURE in why


def test_a_config_naming_sglangs_llama_gets_a_tensor_per_name(tmp_path):
    """SGLang's Llama would skip the packed key without an error and serve stale weights."""
    ok, why = rollout_reads_packed("sglang", _ckpt_dir(tmp_path, ["LlamaForCausalLM"]))
    assert not ok and "LlamaForCausalLM" in why


def test_another_rollout_backend_gets_a_tensor_per_name(tmp_path):
    ok, why = rollout_reads_packed("vllm", _ckpt_dir(tmp_path, [READER_ARCHITECTURE]))
    assert not ok and "vllm" in why


def test_an_unreadable_config_gets_a_tensor_per_name_and_names_the_file(tmp_path):
    ok, why = rollout_reads_packed("sglang", tmp_path)
    assert not ok and "config.json" in why


def test_sglangs_llama_really_skips_a_packed_key_silently():
    """Why packing is gated: SGLang's own Llama loader maps a name holding ``.q_proj`` (as a packed
    key's manifest does) onto its stacked parameter and, finding none, drops it without an error
    (if this starts raising, the gate could go)."""
    import importlib.util
    from pathlib import Path

    src = (Path(importlib.util.find_spec("sglang").origin).parent / "srt/models/llama.py").read_text()
    causal_lm = src[src.index("class LlamaForCausalLM(") :]
    load = causal_lm[causal_lm.index("    def _legacy_load_weights(") :]  # its default (weight loader v1)
    assert "if name not in params_dict:\n                    continue" in load[: load.index("\n    def ", 10)]
