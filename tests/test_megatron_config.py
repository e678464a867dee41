"""Pangu's Megatron config, spec and RLinf patches, in one process (no process group anywhere).

The multi-rank numerics are in test_megatron_parity.py; this file covers what must hold before
any rank exists: RLinf's HF-config validation gives Pangu the right fields, a config Pangu cannot
take fails with an error naming the key, the spec has the o_proj bias and nothing else, and each
patch's probe still sees the upstream problem it fixes.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import megatron_ranks as R
import rlinf_pangu
from rlinf_pangu import patches
from rlinf_pangu.layout import LayoutError
from rlinf_pangu.megatron import config as mc

MM = "rlinf.hybrid_engines.megatron.megatron_model_manager"
HAVE_TE = importlib.util.find_spec("transformer_engine") is not None


@pytest.fixture(scope="module")
def pangu_dir(tmp_path_factory) -> str:
    from rlinf_pangu.make_checkpoint import make_checkpoint

    rlinf_pangu.register(sglang=False)
    out = tmp_path_factory.mktemp("megatron-config") / "pangu-tiny"
    make_checkpoint(out, preset_name="tiny", dtype="fp32", num_hidden_layers=4)
    return str(out)


@pytest.fixture(scope="module")
def hf_config(pangu_dir):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(pangu_dir)


@pytest.fixture(scope="module")
def mm():
    rlinf_pangu.register(sglang=False)
    return importlib.import_module(MM)


# --------------------------------------------------------------------------------------
# RLinf's own HF-config validation on a Pangu checkpoint
# --------------------------------------------------------------------------------------


def _upstream(fn):
    """RLinf's own function under every wrapper the patches put around it."""
    while hasattr(fn, "__rlinf_pangu_original__"):
        fn = fn.__rlinf_pangu_original__
    return fn


def test_rlinf_validation_gives_pangu_qkv_bias_and_shapes_without_any_patch(pangu_dir, hf_config):
    """RLinf reads ``attention_bias``; PanguEmbeddedConfig derives it from the official ``bias``."""
    import rlinf.config as rc
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"model": {}})
    cfg = _upstream(rc.validate_model_cfg_by_hf_config)(cfg, pangu_dir)
    m = cfg.model
    assert m.add_qkv_bias is True
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.num_query_groups) == (4, 128, 8, 4)
    assert (m.kv_channels, m.ffn_hidden_size, m.layernorm_epsilon) == (16, 256, 1e-5)
    assert m.rotary_base == hf_config.rope_theta == 16000000.0
    assert m.share_embeddings_and_output_weights is False
    assert m.padded_vocab_size == 153376


def test_full_rlinf_validation_accepts_the_pangu_actor_config(pangu_dir):
    cfg = R.rlinf_actor_cfg(pangu_dir, tp=2, pp=2)
    assert cfg.spec_name == "pangu" and cfg.model.add_qkv_bias is True
    assert not dist.is_initialized()


def test_transformer_config_fields_come_from_the_hf_config(hf_config):
    tc = mc.pangu_transformer_config(hf_config, tp=2, pp=2, dtype=torch.float32)
    assert (tc.num_layers, tc.hidden_size, tc.num_attention_heads, tc.num_query_groups) == (4, 128, 8, 4)
    assert (tc.kv_channels, tc.ffn_hidden_size, tc.layernorm_epsilon) == (16, 256, 1e-5)
    assert tc.add_qkv_bias is True and tc.add_bias_linear is False
    assert tc.gated_linear_unit is True and tc.activation_func is F.silu
    assert tc.normalization == "RMSNorm" and tc.params_dtype == torch.float32
    mc.check_transformer_config(tc)
    gm = mc.gpt_model_kwargs(hf_config)
    assert gm["rotary_base"] == 16000000.0 and gm["position_embedding_type"] == "rope"
    assert gm["vocab_size"] == 153376 and gm["share_embeddings_and_output_weights"] is False


def test_tied_and_bf16_variants(hf_config):
    tied = hf_config.__class__(**{**hf_config.to_dict(), "tie_word_embeddings": True})
    assert mc.gpt_model_kwargs(tied)["share_embeddings_and_output_weights"] is True
    tc = mc.pangu_transformer_config(hf_config, dtype=torch.bfloat16)
    assert tc.bf16 and tc.params_dtype == torch.bfloat16


# --------------------------------------------------------------------------------------
# Configs Pangu cannot take fail early, by name
# --------------------------------------------------------------------------------------

# tiny: 8 heads, 4 KV heads, vocab 153376 (= 2^5 * 4793), ffn 256, 4 layers here
BAD_SPLITS = [
    ({"tensor_model_parallel_size": 8}, "num_key_value_heads=4 is not divisible by tensor parallel size 8"),
    ({"tensor_model_parallel_size": 3}, "num_attention_heads=8 is not divisible by tensor parallel size 3"),
    ({"pipeline_model_parallel_size": 3}, "num_hidden_layers=4 is not divisible by pipeline stages 3"),
    (
        {"pipeline_model_parallel_size": 2, "virtual_pipeline_model_parallel_size": 4},
        "num_hidden_layers=4 is not divisible by pipeline stages 2 x virtual 4",
    ),
]


@pytest.mark.parametrize("split,message", BAD_SPLITS, ids=["kv_heads", "heads", "layers", "vpp"])
def test_bad_parallel_split_fails_in_validation_before_any_process_group(pangu_dir, split, message):
    """Through RLinf's own validate_cfg entry (patched), in the driver: no process group yet."""
    tp = split.get("tensor_model_parallel_size", 1)
    pp = split.get("pipeline_model_parallel_size", 1)
    vpp = split.get("virtual_pipeline_model_parallel_size")
    with pytest.raises(LayoutError, match=message):
        R.rlinf_actor_cfg(pangu_dir, tp=tp, pp=pp, vpp=vpp)
    assert not dist.is_initialized()


def test_vocab_not_divisible_by_tp_is_named(hf_config):
    from omegaconf import OmegaConf

    odd = {**hf_config.to_dict(), "vocab_size": 153377}
    actor = OmegaConf.create({"spec_name": "pangu", "model": {"tensor_model_parallel_size": 2, **mc.RLINF_MODEL_ARCH}})
    with pytest.raises(LayoutError, match="vocab_size=153377 is not divisible by tensor parallel size 2"):
        mc.check_rlinf_model_cfg(actor, odd)


def test_standalone_transformer_config_checks_the_split_first(hf_config):
    with pytest.raises(LayoutError, match="num_attention_heads=8"):
        mc.pangu_transformer_config(hf_config, tp=3)


def test_interleaving_with_two_stages_is_refused(hf_config):
    from omegaconf import OmegaConf

    actor = OmegaConf.create(
        {"spec_name": "pangu", "model": {"pipeline_model_parallel_size": 2,
                                         "virtual_pipeline_model_parallel_size": 2, **mc.RLINF_MODEL_ARCH}}
    )
    with pytest.raises(mc.PanguMegatronConfigError, match="needs pipeline_model_parallel_size > 2"):
        mc.check_rlinf_model_cfg(actor, hf_config)


def test_wrong_architecture_keys_are_all_named(pangu_dir):
    with pytest.raises(mc.PanguMegatronConfigError) as e:
        R.rlinf_actor_cfg(pangu_dir, tp=1, pp=1, activation="gelu", position_embedding_type="learned_absolute")
    msg = str(e.value)
    assert "model.activation='gelu'" in msg and "model.position_embedding_type='learned_absolute'" in msg


def test_a_non_pangu_spec_name_is_refused_for_a_pangu_checkpoint(hf_config):
    from omegaconf import OmegaConf

    actor = OmegaConf.create({"spec_name": "local_gpt", "model": dict(mc.RLINF_MODEL_ARCH)})
    with pytest.raises(mc.PanguMegatronConfigError, match="spec_name='local_gpt'.*no o_proj bias"):
        mc.check_rlinf_model_cfg(actor, hf_config)


def test_provider_refuses_a_transformer_config_without_qkv_bias(hf_config):
    tc = mc.pangu_transformer_config(hf_config, dtype=torch.float32, add_qkv_bias=False)
    with pytest.raises(mc.PanguMegatronConfigError, match="add_qkv_bias=False"):
        mc.check_transformer_config(tc)


def test_bias_free_config_is_not_pangu(hf_config):
    plain = {**hf_config.to_dict(), "attention_bias": False, "bias": False}
    with pytest.raises(mc.PanguMegatronConfigError, match="bias=false"):
        mc.transformer_config_kwargs(plain)


# --------------------------------------------------------------------------------------
# The spec and RLinf's get_specs / model_provider_func
# --------------------------------------------------------------------------------------


def test_pangu_spec_has_a_biased_linear_proj_and_plain_mlp(mm):
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

    from rlinf_pangu.megatron.spec import PanguRowParallelLinear

    spec = mm.get_specs("pangu", None, False)  # RLinf's dispatch, patched
    attn = spec.submodules.self_attention.submodules
    assert attn.linear_proj is PanguRowParallelLinear and issubclass(attn.linear_proj, RowParallelLinear)
    mlp = spec.submodules.mlp.keywords["submodules"]
    assert (mlp.linear_fc1, mlp.linear_fc2) == (ColumnParallelLinear, RowParallelLinear)
    assert mm.get_specs("pangu_local", None, True).submodules.self_attention.submodules.linear_proj is PanguRowParallelLinear


@pytest.mark.skipif(HAVE_TE, reason="Transformer Engine installed")
def test_te_spec_without_te_is_a_clear_error_and_upstream_specs_stay_lazy(mm):
    with pytest.raises(ImportError, match="transformer_engine is not installed"):
        mm.get_specs("pangu_te", None, False)
    # upstream names still work, built only when asked for
    assert mm.get_specs("local_gpt", None, False).submodules.self_attention.submodules.linear_proj.__name__ == "RowParallelLinear"
    with pytest.raises(ValueError, match="not recognized"):
        mm.get_specs("nope", None, False)


def test_get_specs_patch_probe_still_sees_the_closed_eager_table(mm):
    """The probe; the upstream failure itself (TypeError building the TE spec without TE, with
    process groups up) is shown in the parity launch (test_megatron_parity)."""
    assert patches.PATCHES["rlinf.get_specs"].applies()
    assert callable(mm.get_specs.__rlinf_pangu_original__)


def test_provider_accepts_both_signatures_and_upstream_does_not(mm):
    assert patches.PATCHES["rlinf.model_provider_func"].applies()
    patched = mm.MegatronModelManager.model_provider_func
    original = patched.__rlinf_pangu_original__
    assert list(inspect.signature(original).parameters) == ["self", "pre_process", "post_process"]
    params = inspect.signature(patched).parameters
    assert list(params)[:4] == ["self", "pre_process", "post_process", "config"]
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    with pytest.raises(TypeError):  # what megatron-core >= 0.17's get_model does to 0.3.0's provider
        original(object(), pre_process=True, post_process=True, config=None, pg_collection=None)


def test_validation_patch_probe_still_sees_no_pangu_checks_upstream():
    assert patches.PATCHES["rlinf.validate_model_cfg_by_hf_config"].applies()
    import rlinf.config as rc

    assert hasattr(rc.validate_model_cfg_by_hf_config, "__rlinf_pangu_original__")
