"""The two layout additions the converter relies on: ``ParamMapping.shard_parts`` (zero-copy pieces
of a TP shard) and the tied embedding's copy on a last-only pipeline stage (``TIED_OUTPUT``)."""

from __future__ import annotations

import pytest
import torch

from rlinf_pangu import layout as L
from rlinf_pangu.presets import preset


def _dims(**kw):
    return L.PanguDims.from_hf_config(preset("tiny", vocab_size=64, num_hidden_layers=2, **kw))


def _hf(dims, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) for n, s in dims.hf_shapes().items()}


def _reference_shard(m: L.ParamMapping, tensors, dims, r: int, tp: int) -> torch.Tensor:
    """Written out from the layout facts, independently of shard/shard_parts."""
    if m.fuse is L.Fuse.GATE_UP:
        gate, up = tensors
        return torch.cat([gate.chunk(tp, 0)[r], up.chunk(tp, 0)[r]], 0)
    full = m.fuse_full(tensors, dims)
    return full if m.tp_dim is None else full.chunk(tp, m.tp_dim)[r]


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_shard_parts_concatenate_to_the_shard_and_are_views(tp):
    dims = _dims()
    hf = _hf(dims)
    for m, layer in L.stage_mappings(dims):
        tensors = [hf[n] for n in m.hf_names(layer)]
        for r in range(tp):
            parts = m.shard_parts(tensors, dims, r, tp)
            want = _reference_shard(m, tensors, dims, r, tp)
            assert torch.equal(torch.cat([p.contiguous() for p in parts], 0), want), (m.megatron, r)
            assert torch.equal(m.shard(tensors, dims, r, tp), want)
            sources = {t.untyped_storage().data_ptr() for t in tensors}
            assert all(p.untyped_storage().data_ptr() in sources for p in parts), "a part is a copy"


def test_tied_output_copy_only_on_a_last_stage_without_the_embedding():
    dims = _dims(tie_word_embeddings=True)
    hf = _hf(dims)
    last_only = L.hf_to_megatron_shard(hf, dims, 0, 1, [1], first=False, last=True)
    assert torch.equal(last_only["output_layer.weight"], hf["model.embed_tokens.weight"])
    both = L.hf_to_megatron_shard(hf, dims, 0, 1, [0, 1], first=True, last=True)
    assert "output_layer.weight" not in both  # one stage: Megatron shares the embedding itself
    assert "output_layer.weight" not in L.megatron_names(dims)
