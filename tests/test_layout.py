"""The one layout declaration: both directions agree, TP splits invert merges, SGLang rows derive from it."""

from __future__ import annotations

import pytest
import torch

from rlinf_pangu import layout as L
from rlinf_pangu.presets import preset


def _dims(**kw):
    return L.PanguDims.from_hf_config(preset("tiny", vocab_size=64, **kw))


def _random_hf(dims, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) for n, s in dims.hf_shapes().items()}


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_shard_merge_unfuse_returns_the_hf_tensors(tp):
    dims = _dims(num_hidden_layers=2)
    hf = _random_hf(dims)
    shards = [L.hf_to_megatron_shard(hf, dims, r, tp) for r in range(tp)]
    back = {}
    for name in shards[0]:
        full = L.merge_tp_shards(name, [s[name] for s in shards])
        assert all(torch.equal(a, b) for a, b in zip(L.split_tp(name, full, tp), [s[name] for s in shards]))
        back.update(L.megatron_to_hf(name, full, dims))
    assert back.keys() == hf.keys()
    assert all(torch.equal(back[k], hf[k]) for k in hf)


def test_qkv_is_grouped_per_kv_group_not_concatenated():
    dims = _dims(num_hidden_layers=1)
    hf = _random_hf(dims)
    qkv = L.hf_to_megatron_shard(hf, dims)["decoder.layers.0.self_attention.linear_qkv.weight"]
    hd, qpg = dims.head_dim, dims.q_per_group
    q, k = hf["model.layers.0.self_attn.q_proj.weight"], hf["model.layers.0.self_attn.k_proj.weight"]
    # group 1 starts with q heads 2..3 (two query heads per group), then k head 1
    g1 = qkv[(qpg + 2) * hd : (qpg + 2) * hd * 2]
    assert torch.equal(g1[: qpg * hd], q[qpg * hd : 2 * qpg * hd])
    assert torch.equal(g1[qpg * hd : (qpg + 1) * hd], k[hd : 2 * hd])
    assert not torch.equal(qkv, torch.cat([q, k, hf["model.layers.0.self_attn.v_proj.weight"]]))


def test_o_proj_bias_is_replicated_on_every_tp_rank():
    dims = _dims(num_hidden_layers=1)
    hf = _random_hf(dims)
    b = [L.hf_to_megatron_shard(hf, dims, r, 4)["decoder.layers.0.self_attention.linear_proj.bias"] for r in range(4)]
    assert all(torch.equal(x, hf["model.layers.0.self_attn.o_proj.bias"]) for x in b)


def test_te_norm_names_map_like_local_names():
    m, layer = L.mapping_for_megatron_name("decoder.layers.3.self_attention.linear_qkv.layer_norm_weight")
    assert (m.hf_names(layer), layer) == (["model.layers.3.input_layernorm.weight"], 3)
    m, layer = L.mapping_for_megatron_name("decoder.layers.0.mlp.linear_fc1.layer_norm_weight")
    assert m.hf_names(layer) == ["model.layers.0.post_attention_layernorm.weight"]


def test_unknown_megatron_name_is_named_in_the_error():
    with pytest.raises(L.LayoutError, match=r"decoder\.layers\.0\.mlp\.linear_fc1\.bias"):
        L.mapping_for_megatron_name("decoder.layers.0.mlp.linear_fc1.bias")


def test_sglang_stacked_params_come_from_the_table():
    assert L.SGLANG_STACKED_PARAMS == (
        ("qkv_proj", "q_proj", "q"), ("qkv_proj", "k_proj", "k"), ("qkv_proj", "v_proj", "v"),
        ("gate_up_proj", "gate_proj", 0), ("gate_up_proj", "up_proj", 1),
    )


def test_tied_model_has_no_output_layer():
    dims = _dims(tie_word_embeddings=True, num_hidden_layers=1)
    assert "output_layer.weight" not in L.megatron_names(dims)
    assert "lm_head.weight" not in L.hf_names(dims)


@pytest.mark.parametrize(
    "tp, pp, field",
    [(3, 1, "num_attention_heads"), (8, 1, "num_key_value_heads"), (1, 4, "num_hidden_layers")],
)
def test_parallel_layout_errors_name_the_field(tp, pp, field):
    with pytest.raises(L.LayoutError, match=field):
        _dims().check_parallel(tp, pp)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_shard_shape_is_the_shape_of_the_shard_without_building_it(tp):
    # the converter plans every rank file from shard_shape on meta tensors (no torch.cat there)
    dims = _dims(num_hidden_layers=1)
    hf = _random_hf(dims)
    for m, layer in L.stage_mappings(dims, range(dims.num_hidden_layers), True, True):
        tensors = [hf[n] for n in m.hf_names(layer)]
        metas = [t.to("meta") for t in tensors]
        for r in range(tp):
            assert m.shard_shape(metas, dims, r, tp) == tuple(m.shard(tensors, dims, r, tp).shape), m.megatron
