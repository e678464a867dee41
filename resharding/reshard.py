"""Pangu's TP and PP reshard functions for RLinf's ``MegatronCoreWeightReshard``.

RLinf calls, per bucket, ``pp_reshard_fn(state_dict, pp_group, dtype)`` (only when the rollout
has fewer pipeline stages than the actor) and then ``tp_reshard_fn(state_dict, merge_factor,
tp_subgroup)``, where ``merge_factor = actor TP / rollout TP`` and ``tp_subgroup`` holds the
``merge_factor`` consecutive actor TP ranks that make up one rollout TP rank.

Both read the split dimension and pipeline placement of every tensor from
:data:`rlinf_pangu.layout.LAYOUT` instead of matching name fragments:

* ``tp_dim is None`` (norms and the o_proj bias ``linear_proj.bias``, which Megatron keeps
  whole on every TP rank and adds once after the all-reduce): **cloned**, never gathered.
  RLinf's Qwen2.5 function asserts on ``linear_proj.bias``; concatenating it would double it.
* column/row-parallel tensors: all-gathered over the subgroup along ``tp_dim``;
* the vocabulary-parallel embedding and output layer at rollout TP > 1: cut to SGLang's own
  row range (see :mod:`resharding.vocab`), which needs rows from the whole actor TP group.
  A Megatron target (``vocab="megatron"``: RLinf's actor -> inference sync of the disaggregated
  mode, ``reshard_weights_format: mcore``) keeps Megatron's even split instead: its shards are
  merged like any other column-parallel tensor.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from rlinf_pangu.layout import LAYOUT, ParamMapping, Placement, mapping_for_megatron_name

from .vocab import sglang_vocab_rows, vocab_split_lines_up

log = logging.getLogger(__name__)

__all__ = ["tp_reshard_fn_pangu", "pp_reshard_fn_pangu", "is_vocab_parallel"]


def is_vocab_parallel(mapping: ParamMapping) -> bool:
    """The embedding and the output layer: split over TP and owned by a first/last stage."""
    return mapping.tp_dim is not None and mapping.placement is not Placement.LAYER


def _gather_cat(tensor: torch.Tensor, dim: int, world: int, group, copy: bool = True) -> torch.Tensor:
    """The ``world`` ranks' shards concatenated along ``dim``: one all-gather into the result
    (dim 0), or into ``[world, ...]`` and one transpose copy (dim 1)."""
    if world == 1:
        return tensor.clone() if copy else tensor
    src = tensor.contiguous()
    out = torch.empty((world * src.shape[0], *src.shape[1:]), dtype=src.dtype, device=src.device)
    dist.all_gather_into_tensor(out, src, group=group)
    return out if dim == 0 else torch.cat(out.chunk(world, 0), dim)


#: Whose vocabulary rows the target holds at TP > 1 (see the module docstring).
VOCAB_TARGETS = ("sglang", "megatron")


def tp_reshard_fn_pangu(model_state_dict: dict[str, torch.Tensor], merge_factor: int, tp_group, *, copy: bool = True,
                        vocab: str = "sglang") -> dict[str, torch.Tensor]:
    """Actor TP shards -> this rank's rollout TP shard, per the Pangu layout.

    The fused tensors stay in Megatron's per-rank form (QKV grouped per query group, fc1 as
    ``[gate_r; up_r]`` per actor rank, concatenated): RLinf's ``SPLIT_QKV``/``SPLIT_FC1``
    transforms in the convertor expect exactly that. Raises ``LayoutError`` naming any tensor
    that is not part of Pangu.

    ``copy=False`` returns this rank's own parameters (not gathered, not cut) as they are:
    only for a convertor that copies everything it is given (``PanguConvertor`` does), which
    pairs itself with this variant. RLinf's default, ``copy=True``, hands out new tensors.

    ``vocab``: ``"sglang"`` (the rollout: SGLang's padded row ranges) or ``"megatron"`` (a
    Megatron target such as the disaggregated mode's inference group: Megatron's even split).
    """
    if vocab not in VOCAB_TARGETS:
        raise ValueError(f"vocab must be one of {VOCAB_TARGETS}, got {vocab!r}")
    if vocab == "megatron" and merge_factor != 1:
        # Concatenated per-rank [gate_r; up_r] blocks are not Megatron's [gate; up] at a smaller
        # TP; the inference group runs at the actor's TP (rlinf_pangu.placement checks it).
        raise ValueError(f"a Megatron target must keep the actor's TP (merge factor {merge_factor}, not 1)")
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    rollout_tp, rollout_rank = tp // merge_factor, tp_rank // merge_factor
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model_state_dict.items():
        mapping, _ = mapping_for_megatron_name(name)
        if mapping.tp_dim is None:
            out[name] = tensor.clone() if copy else tensor
        elif (vocab == "sglang" and is_vocab_parallel(mapping) and rollout_tp > 1
              and not vocab_split_lines_up(tensor.shape[0] * tp, rollout_tp)):
            full = _gather_cat(tensor, 0, tp, parallel_state.get_tensor_model_parallel_group())
            lo, hi = sglang_vocab_rows(full.shape[0], rollout_tp, rollout_rank)
            out[name] = full[lo:hi].clone() if copy else full[lo:hi]
            del full
        else:
            out[name] = _gather_cat(tensor, mapping.tp_dim, merge_factor, tp_group, copy)
    return out


def _recv_device(state_dict: dict[str, torch.Tensor]) -> torch.device:
    for t in state_dict.values():
        return t.device
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def pp_reshard_fn_pangu(model_state_dict: dict[str, torch.Tensor], pp_group, dtype: Any = None) -> dict[str, torch.Tensor]:
    """Give every pipeline stage the embedding (first stage) and final norm/output layer (last).

    Layers are gathered by RLinf itself; this broadcasts the non-layer tensors of the layout
    from the stage that owns them. Shape and dtype travel with the tensor (``dtype`` from
    RLinf is ignored: a tensor keeps its own). A tensor absent on its owner in this bucket is
    skipped on every stage.
    """
    first = parallel_state.get_pipeline_model_parallel_first_rank()
    last = parallel_state.get_pipeline_model_parallel_last_rank()
    me = dist.get_rank()
    device = _recv_device(model_state_dict)
    for mapping in LAYOUT:
        if mapping.placement is Placement.LAYER:
            continue
        name = mapping.megatron_name()
        src = first if mapping.placement is Placement.FIRST else last
        mine = model_state_dict.get(name) if me == src else None
        meta = [None if mine is None else (tuple(mine.shape), mine.dtype)]
        dist.broadcast_object_list(meta, src=src, group=pp_group)
        if meta[0] is None:
            continue
        shape, tensor_dtype = meta[0]
        buf = mine.contiguous() if me == src else torch.empty(shape, dtype=tensor_dtype, device=device)
        dist.broadcast(buf, src=src, group=pp_group)
        model_state_dict[name] = buf.clone() if me == src else buf
    return model_state_dict
