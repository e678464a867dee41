"""``PanguEmbeddedForCausalLM`` for SGLang: SGLang's Llama with Pangu's weight loading.

openPangu-Embedded is Llama with a bias on q, k, v and o_proj; SGLang's Llama layers already put
``config.attention_bias or config.bias`` on ``qkv_proj`` and ``o_proj``, so the forward is
SGLang's own. What this class owns is loading, for both an HF checkpoint and RLinf's weight sync:

* the stacked parameters (q/k/v -> ``qkv_proj``, gate/up -> ``gate_up_proj``) come from
  :data:`rlinf_pangu.layout.SGLANG_STACKED_PARAMS`, the table every converter reads;
* a tensor that has no parameter here is an error naming it (SGLang's Llama logs and skips it,
  which is how a renamed o_proj bias would go unnoticed);
* a weight-sync bucket may arrive as one buffer (:mod:`rlinf_pangu.packed_bucket`), one CUDA IPC
  handle instead of one per tensor;
* the vocabulary-parallel tables (embedding, lm_head) accept the full vocabulary or exactly the
  rows SGLang's rank holds after its 64-row padding (what ``resharding`` sends at rollout
  TP > 1); Megatron's even split, which SGLang's own presharded loader would accept and misplace
  for Pangu's vocabulary of 153376, is rejected with the reason (see ``resharding.vocab``).
"""

from __future__ import annotations

import logging
from typing import Iterable

import torch
from sglang.srt.layers.utils import get_layer_id
from sglang.srt.layers.vocab_parallel_embedding import VocabParallelEmbedding
from sglang.srt.model_loader.weight_utils import default_weight_loader
from sglang.srt.models.llama import LlamaForCausalLM

from rlinf_pangu import packed_bucket
from rlinf_pangu.patches.sglang import apply_sglang_cpu_patches
from rlinf_pangu.layout import ROTARY_INV_FREQ, SGLANG_STACKED_PARAMS, LayoutError

log = logging.getLogger(__name__)

__all__ = ["PanguEmbeddedForCausalLM", "EntryClass"]


def _stacked_target(name: str) -> tuple[str, object] | None:
    """``...self_attn.k_proj.bias`` -> (``...self_attn.qkv_proj.bias``, ``"k"``), per the layout."""
    for fused, part, shard_id in SGLANG_STACKED_PARAMS:
        token = f".{part}."
        if token in name:
            return name.replace(token, f".{fused}."), shard_id
    return None


def _load_vocab_rows(module: VocabParallelEmbedding, param: torch.nn.Parameter, tensor: torch.Tensor, name: str) -> None:
    """Load the embedding/lm_head: full vocabulary, or exactly this rank's SGLang rows."""
    idx = module.shard_indices
    lo, hi = idx.org_vocab_start_index, idx.org_vocab_end_index
    rows = tensor.shape[0]
    if rows == module.org_vocab_size:
        local = tensor.narrow(0, lo, hi - lo)
    elif rows == hi - lo:
        local = tensor
    else:
        megatron_rows = module.org_vocab_size // module.tp_size
        hint = (
            f"; {rows} rows is Megatron's even split, which does not line up with SGLang's 64-padded "
            "shards for this vocabulary (resharding.tp_reshard_fn_pangu sends SGLang's rows)"
            if rows == megatron_rows
            else ""
        )
        raise LayoutError(
            f"tensor {name!r} has {rows} vocabulary rows; this SGLang rank (of {module.tp_size}) expects "
            f"the full vocabulary ({module.org_vocab_size}) or its own rows [{lo}, {hi}) ({hi - lo}){hint}"
        )
    if tuple(local.shape[1:]) != tuple(param.shape[1:]):
        raise LayoutError(f"tensor {name!r} has shape {list(tensor.shape)}, parameter expects [*, {list(param.shape[1:])}]")
    with torch.no_grad():
        param[: local.shape[0]].copy_(local)
        param[local.shape[0] :].zero_()


class PanguEmbeddedForCausalLM(LlamaForCausalLM):
    """SGLang's Llama for openPangu-Embedded (``"architectures": ["PanguEmbeddedForCausalLM"]``)."""

    def __init__(self, config, quant_config=None, prefix: str = "") -> None:
        if not (getattr(config, "attention_bias", False) or getattr(config, "bias", False)):
            raise LayoutError(
                "openPangu-Embedded has a bias on q, k, v and o_proj, but this config sets neither "
                "`bias` nor `attention_bias`: refusing to build a model that would drop them"
            )
        apply_sglang_cpu_patches()  # no-op unless this SGLang process serves on the CPU
        super().__init__(config, quant_config=quant_config, prefix=prefix)

    def _targets(self) -> tuple[dict[str, torch.nn.Parameter], dict[str, VocabParallelEmbedding]]:
        """Parameters and vocabulary tables by name, indexed once: the sync calls
        :meth:`load_weights` once per bucket, and walking a 7B module tree each time cost ~1 ms.
        (The parameters are the same objects for the engine's life; releasing and resuming
        memory keeps them.)"""
        if getattr(self, "_target_index", None) is None:
            params = dict(self.named_parameters())
            vocab = {f"{n}.weight": m for n, m in self.named_modules() if isinstance(m, VocabParallelEmbedding)}
            self._target_index = (params, vocab)
        return self._target_index

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load HF-named tensors (a checkpoint, or one bucket of RLinf's weight sync, which may
        come packed into one buffer: :mod:`rlinf_pangu.packed_bucket`)."""
        params, vocab = self._targets()
        tied = bool(getattr(self.config, "tie_word_embeddings", False))
        start, end = self.model.start_layer, self.model.end_layer
        pipeline = self.pp_group.world_size > 1
        loaded: set[str] = set()
        for name, tensor in packed_bucket.expand(weights):
            if ROTARY_INV_FREQ.search(name) or (tied and name == "lm_head.weight"):
                continue
            layer = get_layer_id(name)
            if layer is not None and not start <= layer < end:
                continue  # another pipeline stage's layer
            stacked = _stacked_target(name)
            target, shard_id = stacked if stacked else (name, None)
            param = params.get(target)
            if param is None:
                if pipeline and layer is None:
                    continue  # embedding / norm / lm_head of another pipeline stage
                raise LayoutError(f"tensor {name!r} has no parameter {target!r} in SGLang's Pangu model")
            if target in vocab:
                _load_vocab_rows(vocab[target], param, tensor, name)
            elif shard_id is not None:
                param.weight_loader(param, tensor, shard_id)
            else:
                getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            loaded.add(target)
        return loaded


EntryClass = PanguEmbeddedForCausalLM
