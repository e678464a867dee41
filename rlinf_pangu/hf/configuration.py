"""``PanguEmbeddedConfig``: reads the official config.json (``bias``, ``rope_theta``) as-is.

The official architecture is Llama with a bias on q, k, v *and* o_proj, which is exactly
transformers' Llama with ``attention_bias=True`` and ``mlp_bias=False``; the config says ``bias``
instead of ``attention_bias``, so this class maps one onto the other.
"""

from __future__ import annotations

from typing import Any

from transformers import LlamaConfig

#: Keys an official config.json always has; a checkpoint without one of them is not usable.
REQUIRED_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "rms_norm_eps",
    "rope_theta",
    "bias",
)


class PanguConfigError(ValueError):
    """A Pangu config.json is missing a field or has an inconsistent one; names the field."""


class PanguEmbeddedConfig(LlamaConfig):
    model_type = "PanguEmbedded"
    bias: bool = True
    default_theta = 16000000.0

    def __post_init__(self, **kwargs: Any) -> None:
        # The official key is ``bias``; Llama's is ``attention_bias`` (which also covers o_proj).
        if "attention_bias" in kwargs:  # never present in official files; accept it as a synonym
            self.bias = bool(kwargs.pop("attention_bias"))
        self.attention_bias = bool(self.bias)
        self.mlp_bias = False
        super().__post_init__(**kwargs)

    @property
    def rope_theta(self) -> float:
        """RoPE base, kept as an attribute because RLinf reads ``hf_config.rope_theta``."""
        params = getattr(self, "rope_parameters", None)
        if isinstance(params, dict) and params.get("rope_theta") is not None:
            return float(params["rope_theta"])
        return self.default_theta

    @rope_theta.setter
    def rope_theta(self, value: float) -> None:
        params = dict(getattr(self, "rope_parameters", None) or {"rope_type": "default"})
        params["rope_theta"] = float(value)
        self.rope_parameters = params

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        missing = [k for k in REQUIRED_KEYS if k not in config_dict and k not in kwargs]
        if "rope_theta" in missing and isinstance(config_dict.get("rope_parameters"), dict):
            if "rope_theta" in config_dict["rope_parameters"]:
                missing.remove("rope_theta")
        if "bias" in missing and "attention_bias" in config_dict:
            missing.remove("bias")
        if missing:
            raise PanguConfigError(
                f"Pangu config.json is missing required field(s) {missing} "
                f"(an official openPangu-Embedded config.json has all of {list(REQUIRED_KEYS)})"
            )
        heads, kv = config_dict.get("num_attention_heads"), config_dict.get("num_key_value_heads")
        if heads % kv:
            raise PanguConfigError(
                f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}"
            )
        return super().from_dict(config_dict, **kwargs)
