"""Megatron ``TransformerConfig`` / ``GPTModel`` arguments for openPangu-Embedded, from its HF config.

Why this module: RLinf copies the *shapes* from the HF config (``validate_model_cfg_by_hf_config``:
layers, hidden, heads, query groups, kv_channels, ffn, eps, rope base, tied embeddings and
``add_qkv_bias`` from ``attention_bias``, which ``PanguEmbeddedConfig`` exposes), but the
*architecture* keys come from the YAML (``activation``, ``normalization``,
``position_embedding_type``, ``add_bias_linear``, ``spec_name``). A YAML that gets one wrong
builds a different model that still loads and trains. This module states Pangu's architecture
once, as data, and checks an RLinf actor config and a built ``TransformerConfig`` against it,
naming every key that disagrees.

openPangu-Embedded = Llama with a bias on q, k, v and o_proj: gated SiLU MLP without bias,
RMSNorm, RoPE (non-interleaved, full rotary dim), GQA. Megatron has no flag for "bias on
linear_proj only" (``add_bias_linear`` would also add fc1/fc2 biases): that bias comes from the
layer spec (:mod:`rlinf_pangu.megatron.spec`), so ``add_bias_linear`` must stay False.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..layout import PanguDims

__all__ = [
    "PanguMegatronConfigError",
    "RLINF_MODEL_ARCH",
    "PANGU_SPEC_NAMES",
    "transformer_config_kwargs",
    "gpt_model_kwargs",
    "pangu_transformer_config",
    "check_rlinf_model_cfg",
    "check_transformer_config",
    "is_pangu_hf_config",
]

#: ``model_type`` of PanguEmbeddedConfig (official config.json).
PANGU_HF_MODEL_TYPE = "PanguEmbedded"

#: RLinf spec names that build Pangu: "pangu" picks TE when installed (like RLinf's use_te),
#: "pangu_local" forces megatron-core's own modules, "pangu_te" requires Transformer Engine.
PANGU_SPEC_NAMES = ("pangu", "pangu_local", "pangu_te")

#: RLinf ``actor.model`` keys whose value is fixed by Pangu's architecture.
RLINF_MODEL_ARCH: dict[str, Any] = {
    "activation": "swiglu",  # gated SiLU MLP
    "normalization": "rmsnorm",
    "position_embedding_type": "rope",
    "rotary_percentage": 1.0,
    "add_bias_linear": False,  # no MLP bias; the o_proj bias comes from the spec
    "add_qkv_bias": True,  # from the HF config's attention_bias (= official `bias`)
    "qk_layernorm": False,
}

#: TransformerConfig fields fixed by the architecture (checked on the config RLinf built).
_TC_ARCH: dict[str, Any] = {
    "add_qkv_bias": True,
    "add_bias_linear": False,
    "gated_linear_unit": True,
    "normalization": "RMSNorm",
    "qk_layernorm": False,
    "num_moe_experts": None,
    "multi_latent_attention": False,
}


class PanguMegatronConfigError(ValueError):
    """A Megatron/RLinf config that would not build openPangu-Embedded; names every bad key."""


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    getter = getattr(cfg, "get", None)
    if callable(getter) and not hasattr(cfg, "to_dict"):  # DictConfig, not a PretrainedConfig
        return getter(key, default)
    return getattr(cfg, key, default)


def is_pangu_hf_config(hf_config: Any) -> bool:
    """True for an openPangu-Embedded HF config (object or dict)."""
    return _get(hf_config, "model_type") == PANGU_HF_MODEL_TYPE


def transformer_config_kwargs(hf_config: Any) -> dict[str, Any]:
    """The ``TransformerConfig`` fields an HF Pangu config determines (shapes + architecture)."""
    dims = PanguDims.from_hf_config(hf_config)
    if not _get(hf_config, "attention_bias", _get(hf_config, "bias", True)):
        raise PanguMegatronConfigError(
            "this config has bias=false (no q/k/v/o_proj bias): that is plain Llama, not the "
            "Pangu architecture; build it with RLinf's local_gpt spec instead"
        )
    return {
        "num_layers": dims.num_hidden_layers,
        "hidden_size": dims.hidden_size,
        "num_attention_heads": dims.num_attention_heads,
        "num_query_groups": dims.num_key_value_heads,
        "kv_channels": dims.head_dim,
        "ffn_hidden_size": dims.intermediate_size,
        "layernorm_epsilon": float(_get(hf_config, "rms_norm_eps")),
        "attention_dropout": float(_get(hf_config, "attention_dropout", 0.0) or 0.0),
        "hidden_dropout": 0.0,
        "activation_func": F.silu,
        **_TC_ARCH,
    }


def gpt_model_kwargs(hf_config: Any) -> dict[str, Any]:
    """The ``GPTModel(...)`` arguments an HF Pangu config determines (besides config and spec)."""
    return {
        "vocab_size": int(_get(hf_config, "vocab_size")),
        "max_sequence_length": int(_get(hf_config, "max_position_embeddings")),
        "position_embedding_type": "rope",
        "rotary_percent": 1.0,
        "rotary_base": _get(hf_config, "rope_theta"),
        "share_embeddings_and_output_weights": bool(_get(hf_config, "tie_word_embeddings", False)),
    }


_DTYPE_FLAGS = {
    torch.float32: {},
    torch.bfloat16: {"bf16": True},
    torch.float16: {"fp16": True},
}


def pangu_transformer_config(
    hf_config: Any,
    *,
    tp: int = 1,
    pp: int = 1,
    vpp: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    **overrides: Any,
):
    """A ``TransformerConfig`` for Pangu without RLinf (benchmarks, tools).

    The parallel split is checked first (:meth:`PanguDims.check_parallel`), so a bad TP/PP
    fails here, before any process group exists. Fusions that need Transformer Engine or
    apex kernels (masked softmax, RoPE, bias-activation, gradient accumulation) are off; pass
    ``overrides`` to turn them on where those kernels exist.
    """
    from megatron.core.transformer.transformer_config import TransformerConfig

    PanguDims.from_hf_config(hf_config).check_parallel(tp, pp, vpp)
    if dtype not in _DTYPE_FLAGS:
        raise PanguMegatronConfigError(f"dtype {dtype} is not one of {list(_DTYPE_FLAGS)}")
    kwargs = {
        **transformer_config_kwargs(hf_config),
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": pp,
        "virtual_pipeline_model_parallel_size": vpp,
        "params_dtype": dtype,
        "pipeline_dtype": dtype,
        **_DTYPE_FLAGS[dtype],
        "masked_softmax_fusion": False,
        "apply_rope_fusion": False,
        "bias_activation_fusion": False,
        "bias_dropout_fusion": False,
        "gradient_accumulation_fusion": False,
        "attention_softmax_in_fp32": True,
        **overrides,
    }
    return TransformerConfig(**kwargs)


def check_rlinf_model_cfg(actor_cfg: Any, hf_config: Any) -> None:
    """Check an RLinf actor/critic config (after RLinf's validation) against Pangu's architecture.

    Runs in the driver inside ``validate_cfg`` (see ``rlinf_pangu.patches.rlinf``), i.e. before Ray,
    torch.distributed or Megatron's process groups exist: a TP/PP split the model cannot take
    and every architecture key that disagrees are reported in one error.
    """
    model = _get(actor_cfg, "model")
    tp = int(_get(model, "tensor_model_parallel_size", 1) or 1)
    pp = int(_get(model, "pipeline_model_parallel_size", 1) or 1)
    vpp = _get(model, "virtual_pipeline_model_parallel_size", None)
    PanguDims.from_hf_config(hf_config).check_parallel(tp, pp, int(vpp) if vpp else None)

    problems = []
    if vpp and pp <= 2 and not _get(model, "overlap_p2p_comm", False):
        problems.append(
            f"virtual_pipeline_model_parallel_size={vpp} with pipeline_model_parallel_size={pp}: "
            "Megatron's interleaved schedule needs pipeline_model_parallel_size > 2 unless "
            "overlap_p2p_comm is on (batched sends/receives between the same two ranks mismatch)"
        )
    for key, want in RLINF_MODEL_ARCH.items():
        got = _get(model, key, None)
        if isinstance(want, str) and isinstance(got, str):
            ok = got.lower() == want
        else:
            ok = got == want
        if not ok:
            problems.append(f"model.{key}={got!r} (Pangu needs {want!r})")
    spec_name = _get(actor_cfg, "spec_name", None)
    if spec_name not in PANGU_SPEC_NAMES:
        problems.append(
            f"spec_name={spec_name!r} (Pangu needs one of {list(PANGU_SPEC_NAMES)}: the other specs "
            "have no o_proj bias)"
        )
    if _get(actor_cfg, "mcore_gpt", True) is False:
        problems.append("mcore_gpt=False (Pangu is built as megatron-core's GPTModel)")
    if problems:
        raise PanguMegatronConfigError("config does not describe openPangu-Embedded: " + "; ".join(problems))


def check_transformer_config(config: Any) -> None:
    """Check a built ``TransformerConfig`` has Pangu's architecture; names every wrong field."""
    problems = [
        f"{k}={getattr(config, k, None)!r} (Pangu needs {v!r})"
        for k, v in _TC_ARCH.items()
        if getattr(config, k, None) != v
    ]
    act = getattr(config, "activation_func", None)
    if act is not F.silu:
        problems.append(f"activation_func={getattr(act, '__name__', act)!r} (Pangu needs silu)")
    if problems:
        raise PanguMegatronConfigError(
            "TransformerConfig does not describe openPangu-Embedded: " + "; ".join(problems)
        )
