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
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from rlinf.utils.convertor.utils import BaseConvertor, ConvertorRule, TransformType

from rlinf_pangu.layout import LAYOUT, NORM_ALIASES, Fuse, ParamMapping

__all__ = ["PanguConvertor", "convert_mega_pangu_to_hf", "build_rules", "TRANSFORM_FOR_FUSE"]

#: How each layout fusion is undone by RLinf's TransformFunc machinery.
TRANSFORM_FOR_FUSE: dict[Fuse, TransformType] = {
    Fuse.COPY: TransformType.SPLIT_NONE,
    Fuse.QKV: TransformType.SPLIT_QKV,
    Fuse.GATE_UP: TransformType.SPLIT_FC1,
}

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
    ``reshard_tp_size`` = the rollout TP): RLinf's QKV and fc1 splits read both.
    Tied embeddings: a last pipeline stage's ``output_layer.weight`` still maps to
    ``lm_head.weight``, which SGLang's Pangu class skips for a tied model.
    """

    def build_rules(self) -> list[ConvertorRule]:
        return build_rules()


def convert_mega_pangu_to_hf(state_dict: Mapping[str, torch.Tensor], config: Any, strict: bool = True) -> dict[str, torch.Tensor]:
    """Megatron tensors (resharded to ``config.reshard_tp_size``) -> HF-named tensors.

    ``strict`` (the default, as RLinf's ReshardConfig uses it) raises ``KeyError`` naming any
    tensor that is not part of Pangu, instead of silently dropping it.
    """
    return PanguConvertor(config, strict=strict).convert(dict(state_dict))
