"""``PanguEmbeddedForCausalLM`` on transformers' Llama modules.

Numerically the official openPangu-Embedded architecture: pre-norm RMSNorm, GQA, NeoX RoPE,
SwiGLU without MLP bias, and a bias on q, k, v and o_proj (``attention_bias`` from the config's
``bias``). Official shards also carry ``rotary_emb.inv_freq`` buffers; they are derived from the
config, so loading ignores them instead of warning.
"""

from __future__ import annotations

from transformers import LlamaForCausalLM, LlamaModel

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

    def __init__(self, config: PanguEmbeddedConfig):
        super().__init__(config)
