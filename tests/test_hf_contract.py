"""``from_pretrained`` keeps transformers' contract for the Pangu classes, as it does for Llama.

What transformers writes, Pangu loads: a directory, a hub-style name resolved offline from the
cache, ``None`` with ``config`` and ``state_dict``, base-model checkpoints into the causal-LM class
and back, tied and untied heads. Missing and unexpected keys are *reported* through transformers'
own loading info (``output_loading_info=True``), which PEFT, TRL and accelerate read; refusing a
partial checkpoint is the job of the project's loaders and the start-up conversion (see
tests/test_ckpt_bad_input.py). A bad tensor is still named in the exception.

Models here are small and built in the test (fresh random weights, non-zero biases); equality of
loaded weights is exact because loading copies bytes (same dtype, fp32).
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import rlinf_pangu
from rlinf_pangu.hf import PanguCheckpointError, PanguEmbeddedConfig, PanguEmbeddedForCausalLM, PanguEmbeddedModel


@pytest.fixture(scope="module", autouse=True)
def _registered():
    rlinf_pangu.register(rlinf=False, sglang=False)


def _config(tied: bool = False) -> PanguEmbeddedConfig:
    return PanguEmbeddedConfig(
        vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=16000000.0, bias=True, tie_word_embeddings=tied,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def _randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Fresh random weights, biases and norms included (zeros/ones would hide a load that skipped them)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "norm" in name else 0.0))
    return model.eval()


def _lm(tied: bool = False) -> PanguEmbeddedForCausalLM:
    return _randomized(PanguEmbeddedForCausalLM(_config(tied)))


def _ids() -> torch.Tensor:
    return torch.randint(3, 320, (2, 9), generator=torch.Generator().manual_seed(1))


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, prefix_b: str = "") -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for k, v in sa.items():
        assert torch.equal(v, sb[prefix_b + k]), k


def _saved(model, path, **kw):
    model.save_pretrained(path, **kw)
    return path


def _rewrite(d, fn):
    """Apply ``fn`` to the state dict of the single-file checkpoint in ``d`` and write it back."""
    sd = load_file(d / "model.safetensors")
    fn(sd)
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})


# ---- where the weights come from --------------------------------------------------------------


def test_loads_from_a_directory_with_nothing_missing_or_unexpected(tmp_path):
    src = _lm()
    m, info = PanguEmbeddedForCausalLM.from_pretrained(_saved(src, tmp_path / "d"), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    _assert_same_weights(src, m)


def test_none_with_config_and_state_dict_loads_that_state_dict():
    src = _lm()
    m = PanguEmbeddedForCausalLM.from_pretrained(None, config=_config(), state_dict=src.state_dict())
    _assert_same_weights(src, m)


def test_hub_style_name_resolves_offline_from_the_cache(tmp_path):
    """A ``org/name`` id found in a hub cache (files in snapshots/<rev>, refs/main naming it) loads
    with ``local_files_only=True``: no network, no local directory of that name."""
    src = _lm()
    rev = "0" * 40
    repo = tmp_path / "hub" / "models--openpangu--tiny-test"
    _saved(src, repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    assert not os.path.exists("openpangu/tiny-test")
    m = PanguEmbeddedForCausalLM.from_pretrained("openpangu/tiny-test", cache_dir=tmp_path / "hub", local_files_only=True)
    _assert_same_weights(src, m)


# ---- base model <-> causal LM -----------------------------------------------------------------


def test_base_model_checkpoint_loads_into_causal_lm_and_reports_the_head_missing(tmp_path):
    base = _randomized(PanguEmbeddedModel(_config()))
    d = _saved(base, tmp_path / "base")
    assert "embed_tokens.weight" in load_file(d / "model.safetensors")  # written without the "model." prefix
    m, info = PanguEmbeddedForCausalLM.from_pretrained(d, output_loading_info=True)
    assert info["missing_keys"] == {"lm_head.weight"} and not info["unexpected_keys"]
    _assert_same_weights(base, m.model)


def test_base_model_checkpoint_into_tied_causal_lm_leaves_nothing_missing(tmp_path):
    base = _randomized(PanguEmbeddedModel(_config(tied=True)))
    m, info = PanguEmbeddedForCausalLM.from_pretrained(_saved(base, tmp_path / "base"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    _assert_same_weights(base, m.model)


def test_causal_lm_checkpoint_loads_into_base_model_and_reports_the_head_unexpected(tmp_path):
    src = _lm()
    m, info = PanguEmbeddedModel.from_pretrained(_saved(src, tmp_path / "lm"), output_loading_info=True)
    assert info["unexpected_keys"] == {"lm_head.weight"} and not info["missing_keys"]
    _assert_same_weights(m, src, prefix_b="model.")


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_save_and_reload_gives_the_same_logits(tmp_path, tied):
    src = _lm(tied)
    m, info = PanguEmbeddedForCausalLM.from_pretrained(_saved(src, tmp_path / "d"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        assert torch.equal(src(_ids()).logits, m(_ids()).logits)  # same bytes, same kernels: exact


# ---- missing / unexpected / mismatched are reported, not refused ------------------------------


def test_checkpoint_with_a_tensor_missing_loads_and_reports_it(tmp_path):
    d = _saved(_lm(), tmp_path / "d")
    _rewrite(d, lambda sd: sd.pop("model.layers.1.self_attn.o_proj.bias"))
    _, info = PanguEmbeddedForCausalLM.from_pretrained(d, output_loading_info=True)
    assert info["missing_keys"] == {"model.layers.1.self_attn.o_proj.bias"}


def test_checkpoint_with_an_extra_tensor_loads_and_reports_it_unexpected(tmp_path):
    d = _saved(_lm(), tmp_path / "d")
    _rewrite(d, lambda sd: sd.update({"model.layers.0.mlp.gate_proj.bias": torch.zeros(96)}))
    _, info = PanguEmbeddedForCausalLM.from_pretrained(d, output_loading_info=True)
    assert info["unexpected_keys"] == {"model.layers.0.mlp.gate_proj.bias"} and not info["missing_keys"]


def test_official_shards_rotary_inv_freq_is_neither_loaded_nor_reported(tiny_tied_fp32):
    index = json.loads((tiny_tied_fp32 / "model.safetensors.index.json").read_text())
    assert any(k.endswith("rotary_emb.inv_freq") for k in index["weight_map"])
    _, info = PanguEmbeddedForCausalLM.from_pretrained(tiny_tied_fp32, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))


def test_ignore_mismatched_sizes_reports_the_mismatch_instead_of_raising(tmp_path):
    d = _saved(_lm(), tmp_path / "d")
    _rewrite(d, lambda sd: sd.update({"model.norm.weight": torch.ones(7)}))
    _, info = PanguEmbeddedForCausalLM.from_pretrained(d, ignore_mismatched_sizes=True, output_loading_info=True)
    assert [k for k, *_ in info["mismatched_keys"]] == ["model.norm.weight"]


# ---- a bad tensor is still named ---------------------------------------------------------------


def test_wrong_shape_in_a_base_model_checkpoint_is_named_with_its_name_in_the_file(tmp_path):
    d = _saved(_randomized(PanguEmbeddedModel(_config())), tmp_path / "base")
    _rewrite(d, lambda sd: sd.update({"layers.0.self_attn.q_proj.bias": torch.zeros(5)}))
    with pytest.raises(PanguCheckpointError, match=r"'layers\.0\.self_attn\.q_proj\.bias'.*\[5\].*\[64\]"):
        PanguEmbeddedForCausalLM.from_pretrained(d)


def _sharded(tmp_path):
    d = _saved(_lm(), tmp_path / "sharded", max_shard_size="100KB")
    assert len(list(d.glob("model-*.safetensors"))) > 1
    return d


def test_truncated_shard_is_named(tmp_path):
    d = _sharded(tmp_path)
    shard = sorted(d.glob("model-*.safetensors"))[-1]
    os.truncate(shard, shard.stat().st_size - 100)
    with pytest.raises(PanguCheckpointError, match=shard.name):
        PanguEmbeddedForCausalLM.from_pretrained(d)


def test_index_placing_a_tensor_in_a_shard_that_lacks_it_is_named(tmp_path):
    d = _sharded(tmp_path)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    name = "model.norm.weight"
    index["weight_map"][name] = next(f for f in files if f != index["weight_map"][name])
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(PanguCheckpointError, match=r"tensor 'model\.norm\.weight'.*does not hold it"):
        PanguEmbeddedForCausalLM.from_pretrained(d)


# ---- class conventions -------------------------------------------------------------------------


def test_generation_mixin_is_a_direct_base_of_the_causal_lm_class():
    from transformers import GenerationMixin

    assert GenerationMixin in PanguEmbeddedForCausalLM.__bases__
    assert PanguEmbeddedForCausalLM.can_generate() and not PanguEmbeddedModel.can_generate()
