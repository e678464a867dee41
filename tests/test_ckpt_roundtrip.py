"""HF -> Megatron(TP, PP[, VPP]) -> HF is bit-exact, and every Megatron rank file holds exactly what
the layout's own whole-stage function (``hf_to_megatron_shard``) gives for that rank.

The first check alone would pass for any invertible scrambling; the second pins the Megatron side
to the one layout declaration (QKV grouped per KV group, gate/up per TP rank, replicated o_proj
bias, the last stage's copy of a tied embedding). Loading through Megatron itself is in
test_ckpt_megatron_load.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt_convertor.convert import hf_to_megatron, megatron_to_hf
from ckpt_convertor.megatron_io import RANK_FILE, RELEASE, pipeline_stages, rank_dir_name
from rlinf_pangu.layout import NORM_ALIASES
from rlinf_pangu.make_checkpoint import make_checkpoint

from ckpt_testlib import assert_same_tensors, dims_of, expected_rank_state, load_hf, write_hf

FAST = dict(fsync=False, progress=False)
_SOURCES: dict[Path, dict[str, torch.Tensor]] = {}


def _source(d: Path) -> dict[str, torch.Tensor]:
    """The source checkpoints are read once per module (they are never modified)."""
    if d not in _SOURCES:
        _SOURCES[d] = load_hf(d)
    return _SOURCES[d]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_fp32):
    """The tiny preset (6 layers, 8 heads, 4 KV heads, vocab 153376, untied), bf16 and fp32
    (the shared fp32 fixture), with several shards so the index spans files."""
    root = tmp_path_factory.mktemp("ckpt_rt")
    bf16 = make_checkpoint(root / "tiny_bf16", "tiny", seed=3, dtype="bf16", overwrite=True, shard_bytes=32 * 1024**2)
    return {"bf16": bf16, "fp32": tiny_fp32}


@pytest.fixture(scope="module")
def tiny_tied(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt_rt_tied")
    return make_checkpoint(root / "tiny_tied", "tiny", seed=4, dtype="bf16", overwrite=True,
                           shard_bytes=32 * 1024**2, tie_word_embeddings=True)


def _check_rank_files(hf_dir: Path, mg: Path, tp: int, pp: int, vpp: int | None, norm_names: str = "local") -> None:
    hf = _source(hf_dir)
    dims = dims_of(hf_dir)
    for p, chunks in enumerate(pipeline_stages(dims.num_hidden_layers, pp, vpp)):
        for r in range(tp):
            state = torch.load(mg / RELEASE / rank_dir_name(r, p, pp) / RANK_FILE, weights_only=True, map_location="cpu")
            assert set(state) == {c.key for c in chunks} | {"checkpoint_version", "iteration"}
            assert state["checkpoint_version"] == 3.0 and state["iteration"] == 0
            for c in chunks:
                want = expected_rank_state(hf, dims, r, tp, c.layers, c.first, c.last)
                if norm_names == "te":
                    renames = {local.format(i=i): te.format(i=i) for local, te in NORM_ALIASES.items()
                               for i in range(len(c.layers))}
                    want = {renames.get(k, k): v for k, v in want.items()}
                assert list(state[c.key]) == list(want), f"rank ({r},{p}) {c.key}: names/order differ"
                assert_same_tensors(state[c.key], want)


def _roundtrip(hf_dir: Path, tmp: Path, tp: int, pp: int, vpp: int | None = None, norm_names: str = "local") -> None:
    mg = hf_to_megatron(hf_dir, tmp / "mg", tp, pp, vpp=vpp, norm_names=norm_names, **FAST)
    _check_rank_files(hf_dir, mg, tp, pp, vpp, norm_names)
    back = megatron_to_hf(mg, tmp / "hf", **FAST)
    assert_same_tensors(_source(hf_dir), load_hf(back))
    src_index = json.loads((hf_dir / "model.safetensors.index.json").read_text())
    assert json.loads((back / "model.safetensors.index.json").read_text()) == src_index
    for f in hf_dir.iterdir():  # config and tokenizer files come back byte for byte
        if not f.name.endswith((".safetensors", ".json")) or f.name in ("config.json", "tokenizer_config.json"):
            assert (back / f.name).read_bytes() == f.read_bytes(), f.name


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("pp", [1, 2, 3])
def test_tiny_roundtrip_is_bit_exact(tiny, tmp_path, dtype, tp, pp):
    _roundtrip(tiny[dtype], tmp_path, tp, pp)


@pytest.mark.parametrize("tp, pp", [(1, 1), (2, 2), (4, 3), (1, 3)])
def test_tied_roundtrip_is_bit_exact_and_last_stage_holds_the_embedding(tiny_tied, tmp_path, tp, pp):
    _roundtrip(tiny_tied, tmp_path, tp, pp)
    last = torch.load(tmp_path / "mg" / RELEASE / rank_dir_name(0, pp - 1, pp) / RANK_FILE, weights_only=True)["model"]
    first = torch.load(tmp_path / "mg" / RELEASE / rank_dir_name(0, 0, pp) / RANK_FILE, weights_only=True)["model"]
    if pp > 1:  # Megatron's last stage keeps its own copy of the tied embedding
        assert torch.equal(last["output_layer.weight"], first["embedding.word_embeddings.weight"])
    else:
        assert "output_layer.weight" not in last


@pytest.mark.parametrize("tp, pp, vpp", [(2, 2, 3), (1, 3, 2)])
def test_virtual_pipeline_roundtrip_writes_model_chunks(tiny, tmp_path, tp, pp, vpp):
    _roundtrip(tiny["bf16"], tmp_path, tp, pp, vpp)


def test_te_norm_names_roundtrip(tiny, tmp_path):
    _roundtrip(tiny["bf16"], tmp_path, 2, 2, norm_names="te")


def test_dtype_cast_on_the_way_in_is_undone_on_the_way_out(tiny, tmp_path):
    mg = hf_to_megatron(tiny["fp32"], tmp_path / "mg", 2, 1, dtype="bf16", **FAST)
    state = torch.load(mg / RELEASE / "mp_rank_00" / RANK_FILE, weights_only=True)["model"]
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    back = megatron_to_hf(mg, tmp_path / "hf", dtype="fp32", **FAST)
    src = load_hf(tiny["fp32"])
    got = load_hf(back)
    assert all(torch.equal(got[k], src[k].to(torch.bfloat16).to(torch.float32)) for k in src if "inv_freq" not in k)
    assert json.loads((back / "config.json").read_text())["torch_dtype"] == "float32"


# ---- a family of generated shapes ----------------------------------------------------------


@st.composite
def _shapes(draw):
    kv = draw(st.sampled_from([1, 2, 4]))
    q_per_group = draw(st.sampled_from([1, 2, 3]))
    heads = kv * q_per_group
    head_dim = draw(st.sampled_from([4, 8]))
    layers = draw(st.integers(1, 4))
    tp = draw(st.sampled_from([t for t in (1, 2, 4) if kv % t == 0]))
    pp = draw(st.sampled_from([p for p in (1, 2, 3) if layers % p == 0]))
    cfg = dict(
        num_key_value_heads=kv, num_attention_heads=heads, hidden_size=heads * head_dim,
        intermediate_size=draw(st.sampled_from([8, 16, 24])) * tp, num_hidden_layers=layers,
        vocab_size=draw(st.integers(8, 40)) * 4, tie_word_embeddings=draw(st.booleans()),
    )
    return cfg, tp, pp, draw(st.sampled_from(["bf16", "fp32"]))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_shapes())
def test_generated_shapes_roundtrip_is_bit_exact(tmp_path_factory, case):
    cfg, tp, pp, dtype = case
    tmp = tmp_path_factory.mktemp("gen")
    hf_dir = write_hf(tmp / "src", dtype=dtype, shard_bytes=4096, **cfg)
    _roundtrip(hf_dir, tmp, tp, pp)
