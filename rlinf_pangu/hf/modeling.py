"""``PanguEmbeddedForCausalLM`` on transformers' Llama modules.

Numerically the official openPangu-Embedded architecture: pre-norm RMSNorm, GQA, NeoX RoPE,
SwiGLU without MLP bias, and a bias on q, k, v and o_proj (``attention_bias`` from the config's
``bias``). Official shards also carry ``rotary_emb.inv_freq`` buffers; they are derived from the
config, so loading ignores them instead of warning.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import LlamaForCausalLM, LlamaModel

from ..layout import PanguDims
from .checkpoint import validate_hf_dir
from .configuration import PanguEmbeddedConfig

_IGNORE_ON_LOAD = [r"rotary_emb\.inv_freq"]


class PanguEmbeddedModel(LlamaModel):
    config_class = PanguEmbeddedConfig
    config: PanguEmbeddedConfig
    _keys_to_ignore_on_load_unexpected = _IGNORE_ON_LOAD


class PanguEmbeddedForCausalLM(LlamaForCausalLM):
    config_class = PanguEmbeddedConfig
    config: PanguEmbeddedConfig
    _keys_to_ignore_on_load_unexpected = _IGNORE_ON_LOAD

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """Validate a local checkpoint's headers first, so a bad tensor or shard is named in the error."""
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(path):
            config = kwargs.get("config")
            if not isinstance(config, PanguEmbeddedConfig):
                config = PanguEmbeddedConfig.from_pretrained(path)
            validate_hf_dir(path, PanguDims.from_hf_config(config))
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
