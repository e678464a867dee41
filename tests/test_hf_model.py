"""The HF-side Pangu: official-layout checkpoints load without remote code and compute exactly
what transformers' Llama with bias on q, k, v and o_proj computes (the official architecture)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import rlinf_pangu
from rlinf_pangu.layout import ROTARY_INV_FREQ


@pytest.fixture(scope="module", autouse=True)
def _registered():
    rlinf_pangu.register(rlinf=False, sglang=False)


def _llama_reference(ckpt_dir):
    """Llama(attention_bias=True, mlp_bias=False) built from the raw config.json and shard files,
    independently of the Pangu classes (no PanguEmbeddedConfig involved)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    raw = json.loads((ckpt_dir / "config.json").read_text())
    cfg = LlamaConfig(
        vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"], num_attention_heads=raw["num_attention_heads"],
        num_key_value_heads=raw["num_key_value_heads"], rms_norm_eps=raw["rms_norm_eps"],
        max_position_embeddings=raw["max_position_embeddings"], tie_word_embeddings=raw["tie_word_embeddings"],
        rope_parameters={"rope_type": "default", "rope_theta": raw["rope_theta"]},
        attention_bias=True, mlp_bias=False,
    )
    ref = LlamaForCausalLM(cfg).float().eval()
    sd = {}
    for f in sorted(ckpt_dir.glob("*.safetensors")):
        sd.update({k: v for k, v in load_file(f).items() if not ROTARY_INV_FREQ.search(k)})
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    if cfg.tie_word_embeddings:
        ref.tie_weights()
    return ref


def _load_pangu(ckpt_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ckpt_dir, trust_remote_code=False, dtype=torch.float32).eval()


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 17), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("fixture", ["tiny_fp32", "tiny_tied_fp32"])
def test_logits_equal_llama_with_attention_bias_exactly(fixture, request):
    ckpt = request.getfixturevalue(fixture)
    pangu, ref = _load_pangu(ckpt), _llama_reference(ckpt)
    assert type(pangu).__name__ == "PanguEmbeddedForCausalLM"
    ids = _ids(pangu.config.vocab_size)
    with torch.no_grad():
        a, b = pangu(ids).logits, ref(ids).logits
    # Same weights, same fp32 kernels in the same order: equality is exact, not approximate.
    assert torch.equal(a, b)


def test_tied_variant_shares_embedding_and_head(tiny_tied_fp32):
    m = _load_pangu(tiny_tied_fp32)
    assert m.config.tie_word_embeddings
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()


def test_o_proj_bias_is_loaded_and_matters(tiny_fp32):
    """Negative control: the o_proj bias comes from the file and changes the logits."""
    m = _load_pangu(tiny_fp32)
    assert m.config.attention_bias and not m.config.mlp_bias
    sd = {}
    for f in tiny_fp32.glob("*.safetensors"):
        sd.update(load_file(f))
    assert torch.equal(m.model.layers[0].self_attn.o_proj.bias, sd["model.layers.0.self_attn.o_proj.bias"])
    ids = _ids(m.config.vocab_size)
    with torch.no_grad():
        before = m(ids).logits
        for layer in m.model.layers:
            layer.self_attn.o_proj.bias.zero_()
        after = m(ids).logits
    assert (before - after).abs().max() > 1e-3


def test_config_reads_official_fields(tiny_fp32):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny_fp32, trust_remote_code=False)
    raw = json.loads((tiny_fp32 / "config.json").read_text())
    assert "attention_bias" not in raw and raw["bias"] is True  # the official spelling
    assert type(cfg).__name__ == "PanguEmbeddedConfig" and cfg.model_type == "PanguEmbedded"
    assert cfg.attention_bias is True and cfg.rope_theta == raw["rope_theta"] == 16000000.0
    assert cfg.eos_token_id == 45892 and cfg.architectures == ["PanguEmbeddedForCausalLM"]


def test_official_shards_inv_freq_keys_are_ignored(tiny_fp32):
    index = json.loads((tiny_fp32 / "model.safetensors.index.json").read_text())
    assert any(ROTARY_INV_FREQ.search(k) for k in index["weight_map"])
    assert len(set(index["weight_map"].values())) > 1  # the fixture really is sharded
    m = _load_pangu(tiny_fp32)
    assert not any("inv_freq" in k for k in m.state_dict())
