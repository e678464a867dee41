"""Pangu's Megatron -> HF weight-sync convertor, as rules on RLinf's ``BaseConvertor``.

RLinf's sync (``MegatronCoreWeightReshard.gather_and_reshard_model``) hands its ``convert_fn``
one bucket of Megatron tensors already resharded to the rollout's TP; the convertor renames
them to HF names and unfuses them with RLinf's own ``TransformFunc``s (``SPLIT_QKV`` splits
the fused QKV per query group, ``SPLIT_FC1`` splits ``linear_fc1`` into gate/up per TP shard).

The rules are generated from :data:`rlinf_pangu.layout.LAYOUT` (one rule per Megatron
parameter, plus the Transformer Engine spelling of the two norms from
:data:`~rlinf_pangu.layout.NORM_ALIASES`), so the sync cannot drift from the checkpoint
converter or the SGLang loader. What Pangu adds over RLinf's Qwen2.5 rules: the o_proj bias
(``linear_proj.bias``) and the local-spec norm names, both of which come straight from the table.

The rules decide names and transforms; :meth:`PanguConvertor.convert` then performs each
transform as strided views (``rlinf_pangu.layout.unfuse_views``, the same split RLinf's
``TransformFunc`` makes, checked bit for bit against it), each copied once. RLinf's own functions
copy every tensor two or three times. By default the result is plain HF names, each tensor in its
own storage (:mod:`resharding.materialize`), as RLinf's registry contract asks. When the actor's
rollout is SGLang's Pangu class, the actor switches the convertor to packed: the copy goes into one
buffer per bucket (:mod:`rlinf_pangu.packed_bucket`), so the rollout opens one CUDA IPC handle per
bucket instead of one per tensor.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping

import torch
from rlinf.utils.convertor.utils import BaseConvertor, ConvertorRule, TransformType

from rlinf_pangu.layout import LAYOUT, NORM_ALIASES, Fuse, ParamMapping, unfuse_views
from rlinf_pangu.packed_bucket import pack

from .materialize import materialize

__all__ = ["PanguConvertor", "convert_mega_pangu_to_hf", "build_rules", "TRANSFORM_FOR_FUSE", "FUSE_FOR_TRANSFORM"]

#: How each layout fusion is undone by RLinf's TransformFunc machinery.
TRANSFORM_FOR_FUSE: dict[Fuse, TransformType] = {
    Fuse.COPY: TransformType.SPLIT_NONE,
    Fuse.QKV: TransformType.SPLIT_QKV,
    Fuse.GATE_UP: TransformType.SPLIT_FC1,
}

FUSE_FOR_TRANSFORM: dict[TransformType, Fuse] = {t: f for f, t in TRANSFORM_FOR_FUSE.items()}

_LAYER_GROUP = r"(?P<i>\d+)"


def _pattern(megatron_template: str) -> re.Pattern:
    """``decoder.layers.{i}.x.weight`` -> a full-match regex with the layer as group ``i``."""
    return re.compile(re.escape(megatron_template).replace(re.escape("{i}"), _LAYER_GROUP))


def _rule(megatron_template: str, mapping: ParamMapping) -> ConvertorRule:
    # HF targets keep the ``{i}`` placeholder: BaseConvertor.map_name formats them with the
    # match's named groups; names without a layer have no braces and pass through unchanged.
    return ConvertorRule(_pattern(megatron_template), TRANSFORM_FOR_FUSE[mapping.fuse], list(mapping.hf))


def build_rules() -> list[ConvertorRule]:
    """One rule per layout entry, plus the TE spec's names for the two per-layer norms."""
    rules = [_rule(m.megatron, m) for m in LAYOUT]
    by_megatron = {m.megatron: m for m in LAYOUT}
    rules += [_rule(te_name, by_megatron[local]) for local, te_name in NORM_ALIASES.items()]
    return rules


class PanguConvertor(BaseConvertor):
    """RLinf's ``_MG2HF_CONVERTOR_REGISTRY`` entry for model_type ``pangu``.

    ``config`` is RLinf's ``ReshardConfig`` (``model_config`` = the actor's TransformerConfig,
    ``reshard_tp_size`` = the rollout TP). Tied embeddings: a last pipeline stage's
    ``output_layer.weight`` still maps to ``lm_head.weight``, which SGLang's Pangu class skips
    for a tied model.

    Its copy is the sync's one copy, so when RLinf builds this convertor for a
    ``ReshardConfig`` that has no TP reshard function yet (its ``__post_init__`` builds the
    convertor first), it pairs it with the reshard that does not copy again
    (``tp_reshard_fn_pangu(copy=False)``). Without this convertor (``reshard_weights_format:
    mcore``, or a caller's own ``convert_fn``) RLinf picks the copying reshard as before.

    ``packed=False`` (the default, what RLinf's registry builds for any caller: RLinf's contract is
    HF names out): a tensor per HF name. ``packed=True``: each bucket comes back as one buffer under
    a manifest key (:mod:`rlinf_pangu.packed_bucket`), which only SGLang's Pangu class reads; the
    Megatron actor asks for it when its rollout is that class (patch
    ``rlinf.MegatronActor:rollout-sync-setup`` in ``rlinf_pangu.patches.rlinf``).
    """

    def __init__(self, config, strict: bool = False, packed: bool = False):
        super().__init__(config, strict)
        self.packed = packed
        mc = config.model_config
        heads = mc.num_attention_heads
        groups = mc.num_query_groups or heads
        rollout_tp = getattr(config, "reshard_tp_size", 1)
        self._kv_groups = groups // rollout_tp
        self._q_per_group = heads // groups
        self._head_dim = mc.kv_channels or mc.hidden_size // heads
        self._stacked = mc.tensor_model_parallel_size // rollout_tp
        if getattr(config, "tp_reshard_fn", False) is None:
            from .reshard import tp_reshard_fn_pangu

            config.tp_reshard_fn = functools.partial(tp_reshard_fn_pangu, copy=False)

    def build_rules(self) -> list[ConvertorRule]:
        return build_rules()

    def convert(self, state_dict: dict) -> dict[str, torch.Tensor]:
        """Megatron tensors of one bucket -> HF tensors, each copied once: one packed buffer
        (``packed``), or a new tensor per HF name."""
        pieces = []
        for name, tensor in state_dict.items():
            mapped = self.map_name(name)
            if mapped is None:
                if self.strict:
                    raise KeyError(f"Unmapped key {name}")
                continue
            transform, targets = mapped
            views = unfuse_views(FUSE_FOR_TRANSFORM[transform], tensor, self._kv_groups, self._q_per_group,
                                 self._head_dim, self._stacked, name=name)
            pieces += [(hf, view, shape) for hf, (view, shape) in zip(targets, views, strict=True)]
        return pack(pieces) if self.packed else materialize(pieces)


def convert_mega_pangu_to_hf(state_dict: Mapping[str, torch.Tensor], config: Any, strict: bool = True) -> dict[str, torch.Tensor]:
    """Megatron tensors (resharded to ``config.reshard_tp_size``) -> HF-named tensors.

    ``strict`` (the default, as RLinf's ReshardConfig uses it) raises ``KeyError`` naming any
    tensor that is not part of Pangu, instead of silently dropping it.
    """
    return PanguConvertor(config, strict=strict, packed=False).convert(dict(state_dict))
