"""Both conversion directions against an expectation that does not come from ``rlinf_pangu.layout``.

The checkpoint's every element is its own address (tests/independent_layout.py: layer, tensor,
row, column, exact in fp32), and the expected Megatron shards are written from megatron-core's
conventions element by element in that module, sharing no code with the project. So a mistake that
both of the project's directions would share (a swapped K/V group, gate/up transposed, an o_proj
split along the wrong dim, a stage holding the wrong layers) fails here, and the message decodes
which element landed where.

* HF -> Megatron: ``ckpt_convertor.hf_to_megatron`` at TP 1/2, PP 1/2, VPP 2, tied and untied,
  rank file by rank file, bit for bit.
* Megatron -> HF, checkpoint: ``ckpt_convertor.megatron_to_hf`` reading rank files that hold
  the independent shards (written here over the converter's own), bit for bit against the source.
* Megatron -> HF, weight sync: the sync convertor (packed buckets as the actor sends them, RLinf's
  ``ReshardConfig.convert_fn``, and the plain ``convert_mega_pangu_to_hf``) fed what RLinf's TP gather hands it
  (the actor ranks' independent shards concatenated along Megatron's split dim), actor TP 1/2 to
  rollout TP 1/2, bit for bit against the HF tensors cut the way SGLang cuts them.

Shapes: hidden 16, 4 heads of dim 6 in 2 KV groups (q dim 24 != hidden, so a transposed o_proj
cannot fit by accident), ffn 20, 4 layers, vocab 128. Cheap (about a second per case).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import independent_layout as I
from ckpt_testlib import write_hf

CFG = dict(hidden_size=16, num_attention_heads=4, num_key_value_heads=2, head_dim=6, intermediate_size=20,
           num_hidden_layers=4, vocab_size=128)
FAST = dict(fsync=False, progress=False)


def _shape(tied: bool) -> I.Shape:
    return I.Shape.of({**CFG, "tie_word_embeddings": tied})


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> dict[bool, Path]:
    """The address-encoded HF checkpoint (fp32), untied and tied, in several safetensors files."""
    root = tmp_path_factory.mktemp("encoded")
    return {tied: write_hf(root / f"tied{int(tied)}", dtype="fp32", shard_bytes=8192,
                           tensors=I.encoded_checkpoint(_shape(tied)), tie_word_embeddings=tied, **CFG)
            for tied in (False, True)}


def test_the_encoding_is_unique_and_exact():
    hf = I.encoded_checkpoint(_shape(False))
    values = torch.cat([t.reshape(-1) for t in hf.values()])
    assert values.unique().numel() == values.numel() and float(values.max()) < 2**24
    assert I.decode(hf["model.layers.2.self_attn.k_proj.weight"][7, 3]) == "L2 self_attn.k_proj.weight[7, 3]"


def _mismatches(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], where: str) -> list[str]:
    bad = [f"{where}: missing {k}" for k in sorted(set(want) - set(got))]
    bad += [f"{where}: unexpected {k}" for k in sorted(set(got) - set(want))]
    bad += [m for k in sorted(set(got) & set(want)) if (m := I.first_mismatch(f"{where} {k}", got[k], want[k]))]
    return bad


LAYOUTS = [  # (tp, pp, vpp, tied)
    (1, 1, 1, False), (2, 1, 1, False), (1, 2, 1, False), (2, 2, 1, False), (1, 2, 2, False),
    (2, 2, 1, True), (1, 1, 1, True),
]


@pytest.mark.parametrize("tp,pp,vpp,tied", LAYOUTS)
def test_hf_to_megatron_shards_equal_the_independent_expectation(encoded, tmp_path, tp, pp, vpp, tied):
    from ckpt_convertor.convert import hf_to_megatron

    s = _shape(tied)
    hf = I.encoded_checkpoint(s)
    mg = hf_to_megatron(encoded[tied], tmp_path / "mg", tp, pp, vpp=vpp if vpp > 1 else None, **FAST)
    bad = []
    for pp_rank in range(pp):
        for tp_rank in range(tp):
            state = torch.load(mg / I.rank_file(tp_rank, pp_rank, pp), weights_only=True, map_location="cpu")
            assert set(state) == set(I.model_keys(vpp)) | {"checkpoint_version", "iteration"}
            for chunk, key in enumerate(I.model_keys(vpp)):
                want = I.megatron_rank_state(hf, s, tp_rank, tp, pp_rank, pp, chunk, vpp)
                bad += _mismatches(state[key], want, f"rank tp{tp_rank} pp{pp_rank} {key}")
    assert not bad, "\n".join(bad[:10])


@pytest.mark.parametrize("tp,pp,vpp,tied", [(2, 2, 1, False), (1, 2, 2, False), (2, 2, 1, True)])
def test_megatron_to_hf_from_independent_shards_gives_the_source_back(encoded, tmp_path, tp, pp, vpp, tied):
    """The converter's metadata (hf_meta/, tracker) from its own run; every rank file then replaced
    by the independent shards, so what megatron_to_hf reads is the expectation, not its own output."""
    from ckpt_convertor.convert import hf_to_megatron, megatron_to_hf

    from ckpt_testlib import load_hf

    s = _shape(tied)
    hf = I.encoded_checkpoint(s)
    mg = hf_to_megatron(encoded[tied], tmp_path / "mg", tp, pp, vpp=vpp if vpp > 1 else None, **FAST)
    for pp_rank in range(pp):
        for tp_rank in range(tp):
            path = mg / I.rank_file(tp_rank, pp_rank, pp)
            state = torch.load(path, weights_only=True, map_location="cpu")
            for chunk, key in enumerate(I.model_keys(vpp)):
                state[key] = I.megatron_rank_state(hf, s, tp_rank, tp, pp_rank, pp, chunk, vpp)
            torch.save(state, path)
    back = load_hf(megatron_to_hf(mg, tmp_path / "hf", **FAST))
    back = {k: v for k, v in back.items() if "inv_freq" not in k}
    bad = _mismatches(back, hf, "megatron_to_hf")
    assert not bad, "\n".join(bad[:10])


# ---- the weight sync (Megatron -> SGLang) -------------------------------------------------------

#: Megatron's TP split dim per parameter kind (column-parallel 0, row-parallel 1, replicated None),
#: what RLinf's TP gather concatenates along.
SPLIT_DIM = {"linear_qkv": 0, "linear_fc1": 0, "word_embeddings": 0, "output_layer": 0,
             "linear_proj.weight": 1, "linear_fc2": 1}


def _split_dim(name: str) -> int | None:
    return next((d for k, d in SPLIT_DIM.items() if k in name), None)


def _gathered(hf, s: I.Shape, actor_tp: int, rollout_tp: int, rollout_rank: int) -> dict[str, torch.Tensor]:
    """What RLinf's TP gather gives rollout rank ``rollout_rank``: its actor ranks' shards in rank order,
    concatenated along the split dim (replicated tensors as one rank holds them)."""
    merge = actor_tp // rollout_tp
    ranks = [I.megatron_rank_state(hf, s, r, actor_tp) for r in range(rollout_rank * merge, (rollout_rank + 1) * merge)]
    return {k: ranks[0][k] if _split_dim(k) is None else torch.cat([st[k] for st in ranks], _split_dim(k)) for k in ranks[0]}


def _sglang_cut(hf, rollout_tp: int, rank: int) -> dict[str, torch.Tensor]:
    """Each HF tensor as SGLang's TP rank holds it: column-parallel rows (q/k/v, gate/up, vocab
    tables: 128 rows split evenly, no padding needed) or row-parallel columns (o_proj, down_proj)."""
    out = {}
    for k, t in hf.items():
        if any(x in k for x in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "embed_tokens", "lm_head")):
            out[k] = t.chunk(rollout_tp, 0)[rank]
        elif k.endswith(("o_proj.weight", "down_proj.weight")):
            out[k] = t.chunk(rollout_tp, 1)[rank]
        else:
            out[k] = t
    return {k: v.contiguous() for k, v in out.items()}


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("actor_tp,rollout_tp", [(1, 1), (2, 1), (2, 2)])
def test_sync_convertor_output_equals_the_independent_expectation(encoded, actor_tp, rollout_tp, tied):
    import sync_testlib as L
    from resharding.convertor import PanguConvertor, convert_mega_pangu_to_hf

    s = _shape(tied)
    hf = I.encoded_checkpoint(s)
    rc = L.reshard_config(encoded[tied], actor_tp, rollout_tp)
    bad = []
    for rank in range(rollout_tp):
        state = _gathered(hf, s, actor_tp, rollout_tp, rank)
        want = _sglang_cut(hf, rollout_tp, rank)
        packed = PanguConvertor(rc, strict=True, packed=True).convert(dict(state))  # what the actor sends SGLang's Pangu class
        assert L.is_one_packed_buffer(packed)
        bad += _mismatches(L.unpacked(packed), want, f"rollout rank {rank} (packed)")
        bad += _mismatches(L.unpacked(rc.convert_fn(dict(state))), want, f"rollout rank {rank} (RLinf's convert_fn)")
        bad += _mismatches(convert_mega_pangu_to_hf(dict(state), rc), want, f"rollout rank {rank} (plain)")
    assert not bad, "\n".join(bad[:10])


def test_a_swapped_kv_group_is_caught_and_decoded(encoded):
    """Sensitivity: the shards of a model whose two KV groups are swapped on TP rank 0 fail the
    HF -> Megatron comparison with a message that says which head landed there."""
    s = _shape(False)
    hf = I.encoded_checkpoint(s)
    want = I.megatron_rank_state(hf, s, 0, 1)
    name = "decoder.layers.1.self_attention.linear_qkv.weight"
    per_group = (s.qpg + 2) * s.head_dim
    swapped = dict(want)
    swapped[name] = torch.cat([want[name][per_group:], want[name][:per_group]])
    bad = _mismatches(swapped, want, "control")
    assert len(bad) == 1 and "got L1 self_attn.q_proj.weight[12, 0], expected L1 self_attn.q_proj.weight[0, 0]" in bad[0], bad


@pytest.mark.slow
def test_independent_merge_of_a_trained_tp2_megatron_equals_the_sync(tiny_fp32):
    """The GPU post-sync checks load their floor through sync_testlib.post_step_hf (this module's
    merge of every TP rank's shards); on real megatron-core at TP 2 (gloo, CPU), after one optimizer
    step, it equals RLinf's sync to rollout TP 1 bit for bit, so the floor holds the synced weights."""
    import sync_testlib as L
    from harness import run_ranks

    res = run_ranks(L.post_step_reference_rank, 2, str(tiny_fp32), L._tokens(33, 12), timeout=600, grace=20)
    for r in res:
        assert r["mismatches"] == [], r["mismatches"][:5]
        assert r["changed_by_step"] > r["n"] // 2  # the step moved the weights: the comparison is not of the checkpoint
