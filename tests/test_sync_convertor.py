"""The Pangu Megatron->HF sync convertor: generated from the layout, registered with RLinf, exact.

In-process (no ranks): a TP-merged Megatron state built from HF tensors with the layout's own
HF->Megatron direction goes through RLinf's ReshardConfig.convert_fn (our rules on RLinf's
BaseConvertor/TransformFunc) and must give the HF tensors back bit for bit, for the local and
the Transformer Engine norm names, untied and tied.
"""

from __future__ import annotations

import pytest
import torch

import sync_testlib as L


@pytest.fixture(scope="module")
def registered():
    import rlinf_pangu

    rlinf_pangu.register()


def _reshard_config(ckpt, actor_tp=1):
    return L.reshard_config_rollout_tp1(ckpt, actor_tp=actor_tp)


def _megatron_state(hf, cfg, tp: int, rollout_tp: int = 1, rollout_rank: int = 0) -> dict[str, torch.Tensor]:
    """What RLinf's TP gather hands the convertor on one rollout rank: the layout's actor TP
    shards of that rank's group, concatenated in rank order."""
    from rlinf_pangu.layout import PanguDims, hf_to_megatron_shard, mapping_for_megatron_name

    dims = PanguDims.from_hf_config(cfg)
    merge = tp // rollout_tp
    shards = [hf_to_megatron_shard(hf, dims, r, tp) for r in range(rollout_rank * merge, (rollout_rank + 1) * merge)]
    out = {}
    for name in shards[0]:
        m, _ = mapping_for_megatron_name(name)
        out[name] = shards[0][name] if m.tp_dim is None else torch.cat([s[name] for s in shards], m.tp_dim)
    return out


def _te_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    import re

    from rlinf_pangu.layout import NORM_ALIASES

    out = {}
    for name, t in state.items():
        for local, te in NORM_ALIASES.items():
            pat = re.escape(local).replace(re.escape("{i}"), r"(\d+)")
            mt = re.fullmatch(pat, name)
            if mt:
                name = te.format(i=mt.group(1))
        out[name] = t
    return out


def test_rules_are_generated_from_the_layout(registered):
    from rlinf.utils.convertor.utils import TransformType

    from resharding.convertor import build_rules
    from rlinf_pangu.layout import LAYOUT, NORM_ALIASES

    rules = build_rules()
    assert len(rules) == len(LAYOUT) + len(NORM_ALIASES)
    kinds = {r.targets[0]: r.transform for r in rules}
    assert kinds["model.layers.{i}.self_attn.q_proj.weight"] is TransformType.SPLIT_QKV
    assert kinds["model.layers.{i}.mlp.gate_proj.weight"] is TransformType.SPLIT_FC1
    assert kinds["model.layers.{i}.self_attn.o_proj.bias"] is TransformType.SPLIT_NONE


def test_registered_in_rlinf_for_model_type_pangu(registered, tiny_fp32):
    from rlinf.utils.convertor.utils import get_mg2hf_convertor

    from resharding.convertor import PanguConvertor

    cfg = _reshard_config(tiny_fp32)
    assert isinstance(get_mg2hf_convertor("pangu", cfg), PanguConvertor)
    assert isinstance(cfg._convertor, PanguConvertor)  # what RLinf's sync will call


@pytest.mark.parametrize("names", ["local", "te"])
@pytest.mark.parametrize("actor_tp", [1, 2])
def test_convert_gives_hf_tensors_bit_for_bit(registered, tiny_fp32, names, actor_tp):
    hf = L.load_hf_state(tiny_fp32)
    cfg = L.hf_config(tiny_fp32)
    state = _megatron_state(hf, cfg, actor_tp)
    if names == "te":
        state = _te_names(state)
        assert any("layer_norm_weight" in k for k in state)
    out = _reshard_config(tiny_fp32, actor_tp).convert_fn(state)
    assert L.compare_exact(out, hf) == []


def test_tied_model_converts_without_lm_head(registered, tiny_tied_fp32):
    hf = L.load_hf_state(tiny_tied_fp32)
    cfg = L.hf_config(tiny_tied_fp32)
    assert "lm_head.weight" not in hf
    out = _reshard_config(tiny_tied_fp32).convert_fn(_megatron_state(hf, cfg, 1))
    assert L.compare_exact(out, hf) == []


def test_unknown_tensor_is_an_error_naming_it(registered, tiny_fp32):
    from resharding.convertor import convert_mega_pangu_to_hf

    with pytest.raises(KeyError, match="decoder.layers.0.mlp.linear_fc1.bias"):
        convert_mega_pangu_to_hf({"decoder.layers.0.mlp.linear_fc1.bias": torch.zeros(4)}, _reshard_config(tiny_fp32))


@pytest.mark.parametrize("actor_tp,rollout_tp", [(1, 1), (2, 1), (2, 2), (4, 1), (4, 2), (4, 4)])
def test_one_copy_convert_equals_rlinf_transform_funcs(registered, tiny_fp32, actor_tp, rollout_tp):
    """Our views-and-one-copy transforms give exactly what RLinf's own TransformFuncs give for the
    same rules (BaseConvertor.convert), on every rollout rank."""
    from rlinf.utils.convertor.utils import BaseConvertor

    from resharding.convertor import PanguConvertor

    hf, cfg = L.load_hf_state(tiny_fp32), L.hf_config(tiny_fp32)
    rc = L.reshard_config(tiny_fp32, actor_tp, rollout_tp)
    for rank in range(rollout_tp):
        state = _megatron_state(hf, cfg, actor_tp, rollout_tp, rank)
        convertor = PanguConvertor(rc, strict=True)
        assert L.compare_exact(convertor.convert(state), BaseConvertor.convert(convertor, state)) == []


def test_converted_tensors_alias_no_input(registered, tiny_fp32):
    """The convertor's copy is the sync's one copy: nothing it returns shares memory with what it
    was given (RLinf's live parameters, when the no-copy reshard feeds it)."""
    hf, cfg = L.load_hf_state(tiny_fp32), L.hf_config(tiny_fp32)
    state = _megatron_state(hf, cfg, 1)
    from resharding.convertor import PanguConvertor

    out = L.unpacked(PanguConvertor(_reshard_config(tiny_fp32, 1), strict=True, packed=True).convert(state))
    given = {t.untyped_storage().data_ptr() for t in state.values()}
    assert given.isdisjoint(t.untyped_storage().data_ptr() for t in out.values())
    assert all(t.is_contiguous() for t in out.values())
    # and the plain-name path (convert_mega_pangu_to_hf): its own storage per tensor
    from resharding.convertor import convert_mega_pangu_to_hf

    plain = convert_mega_pangu_to_hf(state, _reshard_config(tiny_fp32, 1))
    assert given.isdisjoint(t.untyped_storage().data_ptr() for t in plain.values())
    before = out["model.layers.0.self_attn.k_proj.weight"].clone()
    state["decoder.layers.0.self_attention.linear_qkv.weight"].add_(1.0)
    assert torch.equal(out["model.layers.0.self_attn.k_proj.weight"], before)


def test_rlinf_registry_convertor_gives_hf_names_to_any_caller(registered, tiny_fp32):
    """RLinf's contract: ``get_mg2hf_convertor("pangu", cfg, strict=True).convert(state)`` takes
    Megatron names and gives HF names, a tensor each, equal to the HF checkpoint bit for bit
    (an export script, a vLLM rollout or a caller's own loop can read it)."""
    from rlinf.utils.convertor.utils import get_mg2hf_convertor

    hf, cfg = L.load_hf_state(tiny_fp32), L.hf_config(tiny_fp32)
    out = get_mg2hf_convertor("pangu", _reshard_config(tiny_fp32, 1), strict=True).convert(_megatron_state(hf, cfg, 1))
    assert not L.is_one_packed_buffer(out)
    assert sorted(out) == sorted(hf)
    assert L.compare_exact(out, hf) == []


def test_packed_convertor_carries_the_same_bits_as_hf_names(registered, tiny_fp32):
    """Packing is asked for explicitly (the actor does, for SGLang's Pangu class): one buffer per
    bucket, the same bits as the public convert_mega_pangu_to_hf's plain HF names."""
    from resharding.convertor import PanguConvertor, convert_mega_pangu_to_hf

    hf, cfg = L.load_hf_state(tiny_fp32), L.hf_config(tiny_fp32)
    rc = _reshard_config(tiny_fp32, 1)
    packed = PanguConvertor(rc, strict=True, packed=True).convert(_megatron_state(hf, cfg, 1))
    plain = convert_mega_pangu_to_hf(_megatron_state(hf, cfg, 1), rc)
    assert L.is_one_packed_buffer(packed)
    assert "model.layers.0.self_attn.o_proj.bias" in plain
    assert L.compare_exact(packed, plain) == []


def test_wrong_qkv_shape_is_a_layout_error_naming_the_tensor(registered, tiny_fp32):
    from rlinf_pangu.layout import LayoutError

    name = "decoder.layers.2.self_attention.linear_qkv.weight"
    with pytest.raises(LayoutError, match=name.replace(".", r"\.") + ".*KV groups"):
        _reshard_config(tiny_fp32, 1).convert_fn({name: torch.zeros(7, 128)})


def test_sglang_format_pairs_the_copying_convertor_with_the_no_copy_reshard(registered, tiny_fp32):
    """RLinf builds the convertor before it picks a TP reshard: ours takes the one that does not
    copy (the convertor copies); the mcore format (a Megatron target: the copying reshard with
    Megatron's vocabulary split, patch rlinf.ReshardConfig:pangu-megatron-target) and a caller's
    own convert_fn keep the copying one."""
    from resharding.reshard import tp_reshard_fn_pangu

    paired = L.reshard_config(tiny_fp32, 2, 1).tp_reshard_fn
    assert paired.func is tp_reshard_fn_pangu and paired.keywords == {"copy": False}
    mcore = L.reshard_config(tiny_fp32, 2, 1, reshard_weights_format="mcore").tp_reshard_fn
    assert mcore.func is tp_reshard_fn_pangu and mcore.keywords == {"vocab": "megatron"}
    assert L.reshard_config(tiny_fp32, 2, 1, convert_fn=dict).tp_reshard_fn is tp_reshard_fn_pangu


def _actor_after_setup(ckpt_dir, rollout_ckpt, backend="sglang"):
    """RLinf's Megatron actor right after its ``init_worker_customize`` built the sync, with the
    project's rollout-sync setup (patch rlinf.MegatronActor:rollout-sync-setup) applied."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from rlinf_pangu.patches import rlinf as rlinf_patches

    rc = _reshard_config(ckpt_dir)
    actor = SimpleNamespace(cfg=OmegaConf.create({
        "actor": {}, "rollout": {"rollout_backend": backend, "model": {"model_path": str(rollout_ckpt)}},
    }))

    def init_worker_customize(self):
        self.rollout_weights_reshard = SimpleNamespace(config=rc, bucket_capacity=rc.bucket_capacity)

    rlinf_patches.make_rollout_sync_setup(init_worker_customize)(actor)
    return rc


def test_the_actor_packs_buckets_for_sglangs_pangu_class(registered, tiny_fp32):
    hf, cfg = L.load_hf_state(tiny_fp32), L.hf_config(tiny_fp32)
    rc = _actor_after_setup(tiny_fp32, tiny_fp32)
    assert L.is_one_packed_buffer(rc.convert_fn(_megatron_state(hf, cfg, 1)))


@pytest.mark.parametrize("backend,architectures", [("sglang", ["LlamaForCausalLM"]), ("vllm", ["PanguEmbeddedForCausalLM"])])
def test_the_actor_sends_hf_names_to_any_other_rollout_class(registered, tiny_fp32, tmp_path, backend, architectures):
    """SGLang's Llama (a config.json naming it) or another backend would skip a packed key and
    serve stale weights without an error: they get every tensor under its HF name."""
    import json

    (tmp_path / "config.json").write_text(json.dumps({**json.loads((tiny_fp32 / "config.json").read_text()), "architectures": architectures}))
    hf, cfg = L.load_hf_state(tiny_fp32), L.hf_config(tiny_fp32)
    out = _actor_after_setup(tiny_fp32, tmp_path, backend).convert_fn(_megatron_state(hf, cfg, 1))
    assert not L.is_one_packed_buffer(out) and L.compare_exact(out, hf) == []
