"""The one declaration of openPangu-Embedded's parameter layout.

Every consumer reads this table: the HF<->Megatron checkpoint converter (``ckpt_convertor``),
the Megatron->HF weight-sync convertor and TP reshard (``resharding``), the SGLang loader's
stacked-parameter mapping, and the tests. Each :class:`ParamMapping` knows both directions
(HF tensors -> one Megatron TP shard, and a TP-merged Megatron tensor -> HF tensors), in the
spirit of Megatron-Bridge's mapping objects, so no second copy of the mapping exists.

Layout facts (openPangu-Embedded = Llama with bias on q, k, v and o_proj):

* ``linear_qkv`` is grouped per KV group: for each of ``NG`` groups ``[q heads; k; v]``,
  then split along dim 0 over TP (a plain ``cat([q, k, v])`` is wrong);
* ``linear_fc1`` is ``cat([gate_tp_chunk, up_tp_chunk])`` on each TP rank;
* ``linear_proj.weight`` and ``linear_fc2.weight`` split along dim 1;
* ``linear_proj.bias`` (the o_proj bias) is replicated on every TP rank, added once after
  the all-reduce: it is cloned, never gathered or split.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch

__all__ = [
    "Fuse",
    "Placement",
    "PanguDims",
    "ParamMapping",
    "LAYOUT",
    "NORM_ALIASES",
    "ROTARY_INV_FREQ",
    "SGLANG_STACKED_PARAMS",
    "hf_names",
    "megatron_names",
    "stage_mappings",
    "TIED_OUTPUT",
    "mapping_for_megatron_name",
    "hf_to_megatron_shard",
    "megatron_to_hf",
    "unfuse_views",
    "merge_tp_shards",
    "split_tp",
    "LayoutError",
]


class LayoutError(ValueError):
    """A tensor does not fit the Pangu layout; the message names the tensor."""


class Fuse(enum.Enum):
    """How HF tensors combine into one Megatron tensor."""

    COPY = "copy"  # one HF tensor <-> one Megatron tensor
    QKV = "qkv"  # q, k, v interleaved per KV group
    GATE_UP = "gate_up"  # gate and up stacked per TP rank


class Placement(enum.Enum):
    """Which pipeline stage owns a parameter."""

    FIRST = "first"  # embedding: first stage
    LAYER = "layer"  # per decoder layer: the stage that owns the layer
    LAST = "last"  # final norm and output layer: last stage


@dataclass(frozen=True)
class PanguDims:
    """The shapes the layout needs; built from an HF config by :meth:`from_hf_config`."""

    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    num_hidden_layers: int
    vocab_size: int
    tie_word_embeddings: bool

    @classmethod
    def from_hf_config(cls, cfg) -> "PanguDims":
        get = cfg.get if isinstance(cfg, Mapping) else (lambda k, d=None: getattr(cfg, k, d))
        heads = get("num_attention_heads")
        hidden = get("hidden_size")
        head_dim = get("head_dim", None) or hidden // heads
        return cls(
            hidden_size=hidden,
            num_attention_heads=heads,
            num_key_value_heads=get("num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate_size=get("intermediate_size"),
            num_hidden_layers=get("num_hidden_layers"),
            vocab_size=get("vocab_size"),
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
        )

    @property
    def q_per_group(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def hf_shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected HF tensor shapes, name -> shape (layer names expanded)."""
        return {n: s for n, s in _hf_shape_items(self)}

    def check_parallel(self, tp: int, pp: int = 1, vpp: int | None = None) -> None:
        """Reject a TP/PP split this model cannot take, before any process group exists."""
        problems = []
        if tp < 1 or pp < 1:
            problems.append(f"tensor/pipeline parallel sizes must be >= 1 (got tp={tp}, pp={pp})")
        else:
            for what, n in (
                ("num_attention_heads", self.num_attention_heads),
                ("num_key_value_heads", self.num_key_value_heads),
                ("vocab_size", self.vocab_size),
                ("intermediate_size", self.intermediate_size),
            ):
                if n % tp:
                    problems.append(f"{what}={n} is not divisible by tensor parallel size {tp}")
            stages = pp * (vpp or 1)
            if self.num_hidden_layers % stages:
                problems.append(
                    f"num_hidden_layers={self.num_hidden_layers} is not divisible by "
                    f"pipeline stages {pp}" + (f" x virtual {vpp}" if vpp else "")
                )
        if problems:
            raise LayoutError("invalid parallel layout for Pangu: " + "; ".join(problems))


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------

LAYER_HF = "model.layers.{i}."
LAYER_MG = "decoder.layers.{i}."


@dataclass(frozen=True)
class ParamMapping:
    """One Megatron parameter and the HF tensors it is made of.

    ``tp_dim`` is the dim split over tensor parallelism (``None``: replicated on every rank).
    ``sglang`` names the fused SGLang parameter and the shard id of each HF tensor, for
    SGLang's ``stacked_params_mapping``.
    """

    megatron: str
    hf: tuple[str, ...]
    fuse: Fuse
    tp_dim: int | None
    placement: Placement
    sglang: tuple[str, tuple[object, ...]] | None = None

    # -- names ------------------------------------------------------------------------
    def megatron_name(self, layer: int | None = None) -> str:
        return self.megatron.format(i=layer)

    def hf_names(self, layer: int | None = None) -> list[str]:
        return [h.format(i=layer) for h in self.hf]

    @property
    def per_layer(self) -> bool:
        return self.placement is Placement.LAYER

    # -- HF -> Megatron ---------------------------------------------------------------
    def fuse_full(self, tensors: Sequence[torch.Tensor], dims: PanguDims) -> torch.Tensor:
        """The TP-merged Megatron tensor from HF tensors (in ``self.hf`` order)."""
        if self.fuse is Fuse.COPY:
            return tensors[0]
        if self.fuse is Fuse.QKV:
            q, k, v = tensors
            ng = dims.num_key_value_heads
            tail = q.shape[1:]  # (hidden,) for weights, () for biases
            return torch.cat(
                [q.reshape(ng, -1, *tail), k.reshape(ng, -1, *tail), v.reshape(ng, -1, *tail)], 1
            ).reshape(-1, *tail)
        if self.fuse is Fuse.GATE_UP:
            return torch.cat(tensors, 0)  # the TP-merged view; shards interleave, see shard()
        raise AssertionError(self.fuse)

    def shard(self, tensors: Sequence[torch.Tensor], dims: PanguDims, tp_rank: int, tp: int) -> torch.Tensor:
        """This TP rank's Megatron tensor from the HF tensors (a new tensor, not a view)."""
        return torch.cat([p.contiguous() for p in self.shard_parts(tensors, dims, tp_rank, tp)], 0)

    def shard_shape(self, tensors: Sequence[torch.Tensor], dims: PanguDims, tp_rank: int, tp: int) -> tuple[int, ...]:
        """The shape :meth:`shard` returns, from the pieces' shapes alone (planning on meta tensors:
        ``torch.cat`` of meta tensors goes through a decomposition that imports torch._dynamo, 1.6 s)."""
        parts = self.shard_parts(tensors, dims, tp_rank, tp)
        tails = {tuple(p.shape[1:]) for p in parts}
        if len(tails) != 1:
            raise ValueError(f"{self.megatron}: pieces disagree past dim 0: {sorted(tails)}")
        return (sum(p.shape[0] for p in parts), *tails.pop())

    def shard_parts(self, tensors: Sequence[torch.Tensor], dims: PanguDims, tp_rank: int, tp: int) -> list[torch.Tensor]:
        """This TP rank's Megatron tensor as pieces whose concatenation along dim 0 is :meth:`shard`.

        The pieces are views of the HF tensors (no copy), so a writer that streams them one
        after another never materialises the fused tensor: QKV is its KV groups' q/k/v row
        blocks in group order, fc1 the rank's gate rows then its up rows.
        """
        if self.fuse is Fuse.GATE_UP:
            return [t.chunk(tp, 0)[tp_rank] for t in tensors]
        if self.fuse is Fuse.QKV:
            assert self.tp_dim == 0, self.megatron
            ng = dims.num_key_value_heads
            per = ng // tp  # whole KV groups per rank (check_parallel guarantees it divides)
            grouped = [t.reshape(ng, -1, *t.shape[1:]) for t in tensors]
            return [g[i] for i in range(tp_rank * per, (tp_rank + 1) * per) for g in grouped]
        t = tensors[0]
        if self.tp_dim is None or tp == 1:
            return [t]
        return [t.chunk(tp, self.tp_dim)[tp_rank]]

    # -- Megatron -> HF ---------------------------------------------------------------
    def merge(self, shards: Sequence[torch.Tensor]) -> torch.Tensor:
        """TP shards (rank order) -> the TP-merged Megatron tensor."""
        if self.tp_dim is None or len(shards) == 1:
            return shards[0]
        if self.fuse is Fuse.GATE_UP:
            gates, ups = zip(*(s.chunk(2, 0) for s in shards))
            return torch.cat([*gates, *ups], 0)
        return torch.cat(list(shards), self.tp_dim)

    def unfuse(self, full: torch.Tensor, dims: PanguDims) -> list[torch.Tensor]:
        """The TP-merged Megatron tensor -> HF tensors (in ``self.hf`` order), each a new tensor."""
        views = unfuse_views(self.fuse, full, dims.num_key_value_heads, dims.q_per_group, dims.head_dim, name=self.megatron)
        return [v.contiguous().reshape(shape) for v, shape in views]


def unfuse_views(
    fuse: Fuse, tensor: torch.Tensor, kv_groups: int, q_per_group: int, head_dim: int,
    stacked: int = 1, name: str = "tensor",
) -> list[tuple[torch.Tensor, tuple[int, ...]]]:
    """The HF pieces of a (possibly TP-sharded) Megatron tensor as strided views, no copy.

    Each piece comes as ``(view, hf_shape)``: the view's row-major order is the HF tensor's, but
    its shape keeps the dims the split needs (q is every KV group's first rows, so no 2-D view of
    it exists). A consumer copies each view once, into storage of ``hf_shape``
    (``dst.view(view.shape).copy_(view)``); that is how the weight sync packs a bucket.

    ``tensor`` holds ``kv_groups`` whole KV groups ``[q heads; k; v]`` (QKV), or ``stacked`` actor
    TP shards ``[gate_r; up_r]`` one after another (fc1, as RLinf's TP gather concatenates them;
    1 for the TP-merged tensor, which is ``[gate; up]``).
    """
    if fuse is Fuse.COPY:
        return [(tensor, tuple(tensor.shape))]
    tail = tuple(tensor.shape[1:])
    try:
        if fuse is Fuse.QKV:
            g = tensor.reshape(kv_groups, q_per_group + 2, head_dim, *tail)
            q, k, v = g[:, :q_per_group], g[:, q_per_group : q_per_group + 1], g[:, q_per_group + 1 :]
            return [(q, (kv_groups * q_per_group * head_dim, *tail)), (k, (kv_groups * head_dim, *tail)), (v, (kv_groups * head_dim, *tail))]
        if fuse is Fuse.GATE_UP:
            f = tensor.reshape(stacked, 2, -1, *tail)
            half = (stacked * f.shape[2], *tail)
            return [(f[:, 0], half), (f[:, 1], half)]
    except RuntimeError as e:
        want = (f"{kv_groups} KV groups of ({q_per_group} q + k + v) x {head_dim} rows" if fuse is Fuse.QKV
                else f"{stacked} [gate; up] shard(s) of equal halves")
        raise LayoutError(f"{name}: shape {tuple(tensor.shape)} does not hold {want}") from e
    raise AssertionError(fuse)


LAYOUT: tuple[ParamMapping, ...] = (
    ParamMapping("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), Fuse.COPY, 0, Placement.FIRST),
    ParamMapping(LAYER_MG + "input_layernorm.weight", (LAYER_HF + "input_layernorm.weight",), Fuse.COPY, None, Placement.LAYER),
    ParamMapping(
        LAYER_MG + "self_attention.linear_qkv.weight",
        tuple(LAYER_HF + f"self_attn.{p}_proj.weight" for p in "qkv"),
        Fuse.QKV, 0, Placement.LAYER, ("qkv_proj", ("q", "k", "v")),
    ),
    ParamMapping(
        LAYER_MG + "self_attention.linear_qkv.bias",
        tuple(LAYER_HF + f"self_attn.{p}_proj.bias" for p in "qkv"),
        Fuse.QKV, 0, Placement.LAYER, ("qkv_proj", ("q", "k", "v")),
    ),
    ParamMapping(LAYER_MG + "self_attention.linear_proj.weight", (LAYER_HF + "self_attn.o_proj.weight",), Fuse.COPY, 1, Placement.LAYER),
    # The o_proj bias: replicated on every TP rank (added once after the all-reduce).
    ParamMapping(LAYER_MG + "self_attention.linear_proj.bias", (LAYER_HF + "self_attn.o_proj.bias",), Fuse.COPY, None, Placement.LAYER),
    ParamMapping(LAYER_MG + "pre_mlp_layernorm.weight", (LAYER_HF + "post_attention_layernorm.weight",), Fuse.COPY, None, Placement.LAYER),
    ParamMapping(
        LAYER_MG + "mlp.linear_fc1.weight",
        (LAYER_HF + "mlp.gate_proj.weight", LAYER_HF + "mlp.up_proj.weight"),
        Fuse.GATE_UP, 0, Placement.LAYER, ("gate_up_proj", (0, 1)),
    ),
    ParamMapping(LAYER_MG + "mlp.linear_fc2.weight", (LAYER_HF + "mlp.down_proj.weight",), Fuse.COPY, 1, Placement.LAYER),
    ParamMapping("decoder.final_layernorm.weight", ("model.norm.weight",), Fuse.COPY, None, Placement.LAST),
    ParamMapping("output_layer.weight", ("lm_head.weight",), Fuse.COPY, 0, Placement.LAST),
)

#: Tied embeddings with PP > 1: Megatron's last stage (without the embedding) keeps its own copy
#: of the embedding as ``output_layer.weight`` (synced by an all-reduce after init, so a checkpoint
#: must carry it or the last stage keeps its random init). Emitted only for such a stage.
TIED_OUTPUT = ParamMapping("output_layer.weight", ("model.embed_tokens.weight",), Fuse.COPY, 0, Placement.LAST)

#: Transformer Engine spec names for the norms (TE fuses them into the following linear).
NORM_ALIASES: dict[str, str] = {
    LAYER_MG + "input_layernorm.weight": LAYER_MG + "self_attention.linear_qkv.layer_norm_weight",
    LAYER_MG + "pre_mlp_layernorm.weight": LAYER_MG + "mlp.linear_fc1.layer_norm_weight",
}

#: Official shards carry RoPE buffers; they are derived from the config, never loaded.
ROTARY_INV_FREQ = re.compile(r"(^|\.)rotary_emb\.inv_freq$")

#: SGLang's ``stacked_params_mapping`` rows ``(fused_param, hf_param_part, shard_id)``,
#: derived from the table so the SGLang loader cannot drift from the converters.
SGLANG_STACKED_PARAMS: tuple[tuple[str, str, object], ...] = tuple(
    dict.fromkeys(  # the weight and bias rows give the same triples; keep one, in order
        (m.sglang[0], h.split("self_attn.")[-1].split("mlp.")[-1].rsplit(".", 1)[0], sid)
        for m in LAYOUT
        if m.sglang
        for h, sid in zip(m.hf, m.sglang[1])
    )
)


def _hf_shape_items(d: PanguDims):
    h, hd = d.hidden_size, d.head_dim
    q, kv = d.num_attention_heads * hd, d.num_key_value_heads * hd
    per_layer = {
        "input_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.weight": (h, q),
        "self_attn.o_proj.bias": (h,),
        "post_attention_layernorm.weight": (h,),
        "mlp.gate_proj.weight": (d.intermediate_size, h),
        "mlp.up_proj.weight": (d.intermediate_size, h),
        "mlp.down_proj.weight": (h, d.intermediate_size),
    }
    yield "model.embed_tokens.weight", (d.vocab_size, h)
    for i in range(d.num_hidden_layers):
        for n, s in per_layer.items():
            yield f"model.layers.{i}.{n}", s
    yield "model.norm.weight", (h,)
    if not d.tie_word_embeddings:
        yield "lm_head.weight", (d.vocab_size, h)


def _mappings(dims: PanguDims, layers: Iterable[int] | None = None, first: bool = True, last: bool = True):
    """(mapping, layer) pairs present in a model with ``dims`` (tied: no output layer)."""
    layers = range(dims.num_hidden_layers) if layers is None else layers
    for m in LAYOUT:
        if m.placement is Placement.FIRST and first:
            yield m, None
    for i in layers:
        for m in LAYOUT:
            if m.per_layer:
                yield m, i
    for m in LAYOUT:
        if m.placement is Placement.LAST and last:
            if m.megatron == "output_layer.weight" and dims.tie_word_embeddings:
                if not first:  # a last stage without the embedding holds a copy of it
                    yield TIED_OUTPUT, None
                continue
            yield m, None


def stage_mappings(
    dims: PanguDims, layers: Iterable[int] | None = None, first: bool = True, last: bool = True
) -> list[tuple[ParamMapping, int | None]]:
    """The (mapping, global layer) pairs one pipeline stage holds, in canonical order.

    For consumers that stream one parameter at a time (the checkpoint converter) instead of
    building a whole stage with :func:`hf_to_megatron_shard`; both walk the same list.
    """
    return list(_mappings(dims, layers, first, last))


def hf_names(dims: PanguDims) -> list[str]:
    """Every HF tensor name of a model with ``dims``, in canonical order."""
    return [n for n, _ in _hf_shape_items(dims)]


def megatron_names(dims: PanguDims) -> list[str]:
    """Every Megatron (local spec, global layer numbering) parameter name, in canonical order."""
    return [m.megatron_name(i) for m, i in _mappings(dims)]


_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.")
_ALIAS_BACK = {
    re.compile("^" + re.escape(te).replace(r"\{i\}", r"(?P<i>\d+)") + "$"): local
    for local, te in NORM_ALIASES.items()
}


def mapping_for_megatron_name(name: str) -> tuple[ParamMapping, int | None]:
    """Find the mapping and layer of a Megatron name (local or TE norm spelling).

    Raises :class:`LayoutError` naming the tensor when it is not part of Pangu.
    """
    for pat, local in _ALIAS_BACK.items():
        mt = pat.match(name)
        if mt:
            name = local.format(i=mt.group("i"))
            break
    mt = _LAYER_RE.match(name)
    layer = int(mt.group(1)) if mt else None
    for m in LAYOUT:
        if m.megatron_name(layer) == name:
            return m, layer
    raise LayoutError(f"unexpected Megatron tensor {name!r}: not part of the Pangu layout")


def split_tp(name: str, tensor: torch.Tensor, tp: int) -> list[torch.Tensor]:
    """Split a TP-merged Megatron tensor into its ``tp`` shards (the reverse of :func:`merge_tp_shards`)."""
    m, _ = mapping_for_megatron_name(name)
    if m.tp_dim is None or tp == 1:
        return [tensor] * tp
    if m.fuse is Fuse.GATE_UP:
        gate, up = tensor.chunk(2, 0)
        return [torch.cat([g, u], 0) for g, u in zip(gate.chunk(tp, 0), up.chunk(tp, 0))]
    return list(tensor.chunk(tp, m.tp_dim))


def merge_tp_shards(name: str, shards: Sequence[torch.Tensor]) -> torch.Tensor:
    """TP shards of one Megatron tensor (rank order) -> the TP-merged tensor."""
    m, _ = mapping_for_megatron_name(name)
    return m.merge(shards)


def hf_to_megatron_shard(
    hf: Mapping[str, torch.Tensor],
    dims: PanguDims,
    tp_rank: int = 0,
    tp: int = 1,
    layers: Sequence[int] | None = None,
    first: bool = True,
    last: bool = True,
    local_layer_numbers: bool = True,
) -> dict[str, torch.Tensor]:
    """One (TP rank, PP stage)'s Megatron state dict from an HF state dict (or lazy mapping).

    ``layers`` are the global layer numbers this stage owns; with ``local_layer_numbers`` they
    are renumbered from 0, as Megatron's per-stage modules name them.
    """
    out: dict[str, torch.Tensor] = {}
    layers = list(range(dims.num_hidden_layers) if layers is None else layers)
    local = {g: l for l, g in enumerate(layers)}
    for m, i in _mappings(dims, layers, first, last):
        tensors = [_get(hf, n) for n in m.hf_names(i)]
        name = m.megatron_name(local[i] if (i is not None and local_layer_numbers) else i)
        out[name] = m.shard(tensors, dims, tp_rank, tp)
    return out


def megatron_to_hf(name: str, full: torch.Tensor, dims: PanguDims, layer_offset: int = 0) -> dict[str, torch.Tensor]:
    """A TP-merged Megatron tensor -> its HF tensors (``layer_offset`` turns a stage-local layer global)."""
    m, layer = mapping_for_megatron_name(name)
    if layer is not None:
        layer += layer_offset
    return dict(zip(m.hf_names(layer), m.unfuse(full, dims)))


def _get(hf: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return hf[name]
    except KeyError:
        raise LayoutError(f"missing HF tensor {name!r}") from None
