"""``PanguEmbeddedForCausalLM`` on transformers' Llama modules.

Numerically the official openPangu-Embedded architecture: pre-norm RMSNorm, GQA, NeoX RoPE,
SwiGLU without MLP bias, and a bias on q, k, v and o_proj (``attention_bias`` from the config's
``bias``). Official shards also carry ``rotary_emb.inv_freq`` buffers; they are derived from the
config, so loading ignores them instead of warning.

``from_pretrained`` is transformers' own, with one addition: before a local safetensors checkpoint
loads, its headers are checked so that a bad tensor or shard is named in the exception
(:func:`checkpoint.check_tensors`). Everything else is transformers' contract, as for Llama:
a hub name, ``None`` with ``config`` and ``state_dict``, base-model checkpoints into the head class
and back, missing and unexpected keys reported in the loading info, not refused. The refusal of
partial checkpoints lives where it protects training (:func:`checkpoint.require_complete`).
"""

from __future__ import annotations

import os
from typing import Any

from transformers import GenerationMixin, LlamaForCausalLM, LlamaModel, PretrainedConfig

from ..layout import PanguDims
from .checkpoint import check_tensors, expected_shapes, has_safetensors
from .configuration import PanguEmbeddedConfig

_IGNORE_ON_LOAD = [r"rotary_emb\.inv_freq"]


def _local_checkpoint(name_or_path: Any, kwargs: dict[str, Any]) -> str | None:
    """The local directory whose safetensors transformers is about to load, or None when it will
    load something else (a hub download, a ``state_dict``, ``.bin``/GGUF/variant files)."""
    if name_or_path is None or kwargs.get("state_dict") is not None:
        return None
    if kwargs.get("use_safetensors") is False or kwargs.get("gguf_file") or kwargs.get("variant"):
        return None
    path = os.path.join(os.fspath(name_or_path), kwargs.get("subfolder") or "")
    return path if os.path.isdir(path) and has_safetensors(path) else None


def _config_of(cls: type, path: str, config: Any) -> PretrainedConfig:
    if isinstance(config, PretrainedConfig):
        return config
    return cls.config_class.from_pretrained(config if config is not None else path)


class _NamesBadTensors:
    """``from_pretrained`` that names a bad tensor or shard of a local checkpoint, then defers to
    transformers for everything else."""

    _is_base_model = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *model_args: Any, **kwargs: Any):
        local = _local_checkpoint(pretrained_model_name_or_path, kwargs)
        if local is not None:
            dims = PanguDims.from_hf_config(_config_of(cls, local, kwargs.get("config")))
            check_tensors(local, expected_shapes(dims, base_model=cls._is_base_model),
                          shapes=not kwargs.get("ignore_mismatched_sizes", False))
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)


class PanguEmbeddedModel(_NamesBadTensors, LlamaModel):
    config_class = PanguEmbeddedConfig
    config: PanguEmbeddedConfig
    _keys_to_ignore_on_load_unexpected = _IGNORE_ON_LOAD
    _is_base_model = True


class PanguEmbeddedForCausalLM(_NamesBadTensors, LlamaForCausalLM, GenerationMixin):
    config_class = PanguEmbeddedConfig
    config: PanguEmbeddedConfig
    _keys_to_ignore_on_load_unexpected = _IGNORE_ON_LOAD
