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
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..layout import PanguDims

__all__ = [
    "PanguMegatronConfigError",
    "RLINF_MODEL_ARCH",
    "PANGU_SPEC_NAMES",
    "TRANSFORMER_IMPLS",
    "DEFAULT_TRANSFORMER_IMPL",
    "SpecChoice",
    "choose_spec",
    "transformer_config_kwargs",
    "gpt_model_kwargs",
    "pangu_transformer_config",
    "check_rlinf_model_cfg",
    "check_transformer_config",
    "is_pangu_hf_config",
]

#: ``model_type`` of PanguEmbeddedConfig (official config.json).
PANGU_HF_MODEL_TYPE = "PanguEmbedded"

#: RLinf spec names that build Pangu: "pangu" follows ``transformer_impl`` and what is installed
#: (:func:`choose_spec`), "pangu_local" forces megatron-core's own modules, "pangu_te" requires
#: Transformer Engine.
PANGU_SPEC_NAMES = ("pangu", "pangu_local", "pangu_te")

#: ``actor.megatron.transformer_impl`` (RLinf's knob, passed on to Megatron's args) values Pangu
#: trains with: Transformer Engine modules + packed sequences, or megatron-core's own modules +
#: unpacked sequences (:func:`choose_spec`). RLinf's default is the first.
TRANSFORMER_IMPLS = ("transformer_engine", "local")
DEFAULT_TRANSFORMER_IMPL = "transformer_engine"


@dataclass(frozen=True)
class SpecChoice:
    """The Megatron modules a run builds, and whether RLinf's forward packs sequences (THD)."""

    te: bool
    why: str

    @property
    def packed(self) -> bool:
        return self.te  # only TE's attention runs packed_seq_params (spec.packs_sequences decides per model)

    def describe(self) -> str:
        spec = "Transformer Engine" if self.te else "local (megatron-core modules)"
        packing = ("sequences packed (THD, RLinf's forward)" if self.packed
                   else "sequences unpacked (RLinf's unpacked forward, patch rlinf.custom_forward:no-packing-without-TE)")
        return f"Pangu Megatron spec: {spec}, {packing} -- {self.why}"


#: spec name ``pangu``: (transformer_impl, TE installed) -> the choice. Other values of
#: transformer_impl are refused by :func:`check_rlinf_model_cfg` before any worker starts.
_PANGU_CHOICES: dict[tuple[str, bool], SpecChoice] = {
    ("transformer_engine", True): SpecChoice(True, "transformer_impl=transformer_engine and Transformer Engine is installed"),
    ("transformer_engine", False): SpecChoice(False, "transformer_impl=transformer_engine but transformer_engine is not installed"),
    ("local", True): SpecChoice(False, "transformer_impl=local (Transformer Engine is installed, not used)"),
    ("local", False): SpecChoice(False, "transformer_impl=local"),
}


def choose_spec(spec_name: str, transformer_impl: str | None, te_installed: bool) -> SpecChoice:
    """What ``spec_name`` builds given RLinf's ``transformer_impl`` (None: RLinf's default) and
    whether TE is installed. ``pangu_te`` without TE is an error naming both keys."""
    if spec_name not in PANGU_SPEC_NAMES:
        raise ValueError(f"{spec_name!r} is not a Pangu spec name ({list(PANGU_SPEC_NAMES)})")
    if spec_name == "pangu_local":
        return SpecChoice(False, "spec_name=pangu_local")
    if spec_name == "pangu_te":
        if not te_installed:
            raise ImportError(
                "the Transformer Engine spec of Pangu was requested (spec_name 'pangu_te') but "
                "transformer_engine is not installed; use spec_name 'pangu' (it follows "
                "actor.megatron.transformer_impl and what is installed) or 'pangu_local'"
            )
        return SpecChoice(True, "spec_name=pangu_te")
    impl = transformer_impl or DEFAULT_TRANSFORMER_IMPL
    try:
        return _PANGU_CHOICES[(impl, bool(te_installed))]
    except KeyError:
        raise ValueError(
            f"actor.megatron.transformer_impl={impl!r}: Pangu trains with one of {list(TRANSFORMER_IMPLS)}"
        ) from None


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
    impl = _get(_get(actor_cfg, "megatron", {}) or {}, "transformer_impl", None) or DEFAULT_TRANSFORMER_IMPL
    if impl not in TRANSFORMER_IMPLS:
        problems.append(f"megatron.transformer_impl={impl!r} (Pangu trains with one of {list(TRANSFORMER_IMPLS)})")
    elif spec_name == "pangu_te" and impl == "local":
        problems.append("spec_name='pangu_te' with megatron.transformer_impl='local' (use spec_name 'pangu': it follows transformer_impl)")
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
