"""An expectation of Pangu's Megatron layout written without ``rlinf_pangu.layout`` (test-only).

Every converter, the sync and the SGLang loader read ``rlinf_pangu/layout.py``; tests that build
their expected shards with that module's own functions cannot see a mistake in it (a swapped K/V
group or a transposed gate/up passes both directions). This module is the second opinion: it
states where each HF element lands in megatron-core's parameters, element by element, from
megatron-core's own conventions, and shares no code with the project:

* ``linear_qkv`` (ColumnParallelLinear; megatron-core's ``SelfAttention.get_query_key_value_tensors``
  views its output as ``[query groups, (q heads per group + 2) * head_dim]``): for each KV group
  ``g`` its ``q`` heads ``g*qpg .. g*qpg+qpg-1``, then ``k`` head ``g``, then ``v`` head ``g``; TP
  rank ``r`` holds groups ``r*G/tp .. (r+1)*G/tp - 1``. Bias alike.
* ``linear_fc1`` with SwiGLU (megatron-core's ``MLP`` chunks the local output in two,
  ``glu(x) = act(x[:half]) * x[half:]``): on TP rank ``r``, ``gate`` rows of ``r``'s slice,
  then ``up`` rows of the same slice.
* ``linear_proj`` / ``linear_fc2`` (RowParallelLinear): split along the input dim (columns);
  the ``linear_proj`` bias (Pangu's o_proj bias) is whole on every rank.
* embedding / output layer (vocab-parallel): contiguous row slices; norms whole.
* pipeline stage ``p`` of ``pp`` (virtual chunk ``c`` of ``vpp``): layers
  ``c*L/vpp + p*L/(pp*vpp) ..``, numbered from 0 inside the chunk; the first stage (chunk 0)
  holds the embedding, the last (chunk vpp-1) the final norm and the output layer, which for
  tied embeddings at PP > 1 is the last stage's own copy of the embedding.

The loops below are deliberately index arithmetic (row by row), not reshapes: slow, obvious, and
unlike the project's implementation. Used by tests/test_independent_layout.py (both conversion
directions, bit for bit) and by the GPU post-sync checks to load the post-step weights into
SGLang by a path that shares nothing with the sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

__all__ = ["Shape", "encoded_checkpoint", "decode", "megatron_rank_state", "megatron_to_hf", "rank_file", "model_keys"]


@dataclass(frozen=True)
class Shape:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    layers: int
    vocab: int
    tied: bool = False

    @classmethod
    def of(cls, cfg: Mapping) -> "Shape":
        heads = cfg["num_attention_heads"]
        return cls(cfg["hidden_size"], heads, cfg.get("num_key_value_heads") or heads,
                   cfg.get("head_dim") or cfg["hidden_size"] // heads, cfg["intermediate_size"],
                   cfg["num_hidden_layers"], cfg["vocab_size"], bool(cfg.get("tie_word_embeddings", False)))

    @property
    def qpg(self) -> int:
        return self.heads // self.kv_heads


# --------------------------------------------------------------------------------------
# A checkpoint whose every element says where it came from
# --------------------------------------------------------------------------------------

#: HF tensor kinds, numbered for the encoding (0: not in a layer).
PER_LAYER = ("input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
             "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias", "self_attn.o_proj.weight",
             "self_attn.o_proj.bias", "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
             "mlp.down_proj.weight")
GLOBAL = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")


def _hf_shapes(s: Shape) -> dict[str, tuple[int, ...]]:
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    per = {"input_layernorm.weight": (s.hidden,), "self_attn.q_proj.weight": (q, s.hidden),
           "self_attn.k_proj.weight": (kv, s.hidden), "self_attn.v_proj.weight": (kv, s.hidden),
           "self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,),
           "self_attn.o_proj.weight": (s.hidden, q), "self_attn.o_proj.bias": (s.hidden,),
           "post_attention_layernorm.weight": (s.hidden,), "mlp.gate_proj.weight": (s.ffn, s.hidden),
           "mlp.up_proj.weight": (s.ffn, s.hidden), "mlp.down_proj.weight": (s.hidden, s.ffn)}
    out = {"model.embed_tokens.weight": (s.vocab, s.hidden)}
    for i in range(s.layers):
        out.update({f"model.layers.{i}.{k}": v for k, v in per.items()})
    out["model.norm.weight"] = (s.hidden,)
    if not s.tied:
        out["lm_head.weight"] = (s.vocab, s.hidden)
    return out


def _code(name: str) -> tuple[int, int]:
    """(layer + 1 or 0, tensor number) of an HF name."""
    if name.startswith("model.layers."):
        layer, rest = name[len("model.layers."):].split(".", 1)
        return int(layer) + 1, PER_LAYER.index(rest) + 1
    return 0, GLOBAL.index(name) + 1


#: Bit fields of the encoding: (((layer + 1) * 16 + tensor) * 128 + row) * 32 + col.
ROWS, COLS, KINDS = 128, 32, 16


def encoded_checkpoint(s: Shape) -> dict[str, torch.Tensor]:
    """HF tensors (fp32) whose every element is its own address, ``(((l+1)*16 + t)*128 + row)*32 + col``
    (``l`` = -1 outside the layers, ``t`` the tensor kind, 1-D: col 0): all distinct and exact in
    fp32 (< 2**24), so a misplaced element is found and :func:`decode` says what it is."""
    assert s.layers < 16 and max(s.vocab, s.heads * s.head_dim, s.ffn) <= ROWS and max(s.hidden, s.ffn, s.heads * s.head_dim) <= COLS
    out = {}
    for name, shape in _hf_shapes(s).items():
        layer, t = _code(name)
        rows = torch.arange(shape[0], dtype=torch.float64)[:, None] * COLS
        cols = torch.arange(shape[1] if len(shape) == 2 else 1, dtype=torch.float64)[None, :]
        v = (layer * KINDS + t) * ROWS * COLS + rows + cols
        out[name] = v.reshape(shape).to(torch.float32)
    return out


def decode(value: float) -> str:
    v = int(round(float(value)))
    col, v = v % COLS, v // COLS
    row, v = v % ROWS, v // ROWS
    t, layer = v % KINDS, v // KINDS
    names = PER_LAYER if layer else GLOBAL
    kind = names[t - 1] if 0 < t <= len(names) else f"?{t}"
    return f"{'L%d ' % (layer - 1) if layer else ''}{kind}[{row}, {col}]"


def first_mismatch(name: str, got: torch.Tensor, want: torch.Tensor) -> str | None:
    """None if bit-identical, else where the first element differs, decoded."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"{name}: {tuple(got.shape)} {got.dtype} vs expected {tuple(want.shape)} {want.dtype}"
    if got.dtype == torch.float32:
        bad = (got.view(torch.int32) != want.view(torch.int32)).reshape(-1).nonzero()
    else:
        bad = (got != want).reshape(-1).nonzero()
    if not len(bad):
        return None
    i = int(bad[0])
    return (f"{name}: {len(bad)} of {got.numel()} element(s) differ; first at flat index {i}: "
            f"got {decode(got.reshape(-1)[i])}, expected {decode(want.reshape(-1)[i])}")


# --------------------------------------------------------------------------------------
# HF -> one Megatron rank (the expectation), element by element
# --------------------------------------------------------------------------------------


def _rows(t: torch.Tensor, rows: list[int]) -> torch.Tensor:
    return torch.stack([t[r] for r in rows]) if rows else t[:0]


def _qkv_rows(s: Shape, tp_rank: int, tp: int) -> list[tuple[str, int]]:
    """Megatron row order of this rank's linear_qkv as (which HF tensor, HF row)."""
    groups = s.kv_heads // tp
    out = []
    for g in range(tp_rank * groups, (tp_rank + 1) * groups):
        for j in range(s.qpg):
            head = g * s.qpg + j
            out += [("q", head * s.head_dim + d) for d in range(s.head_dim)]
        out += [("k", g * s.head_dim + d) for d in range(s.head_dim)]
        out += [("v", g * s.head_dim + d) for d in range(s.head_dim)]
    return out


def _layer(hf: Mapping[str, torch.Tensor], s: Shape, i: int, tp_rank: int, tp: int) -> dict[str, torch.Tensor]:
    p = f"model.layers.{i}."
    qkv_rows = _qkv_rows(s, tp_rank, tp)
    ffn = s.ffn // tp
    mine = list(range(tp_rank * ffn, (tp_rank + 1) * ffn))
    q_cols = s.heads * s.head_dim // tp
    out = {}
    for kind in ("weight", "bias"):
        src = {x: hf[f"{p}self_attn.{x}_proj.{kind}"] for x in "qkv"}
        out[f"self_attention.linear_qkv.{kind}"] = torch.stack([src[x][r] for x, r in qkv_rows])
    out["self_attention.linear_proj.weight"] = hf[p + "self_attn.o_proj.weight"][:, tp_rank * q_cols:(tp_rank + 1) * q_cols]
    out["self_attention.linear_proj.bias"] = hf[p + "self_attn.o_proj.bias"]
    out["mlp.linear_fc1.weight"] = torch.cat([_rows(hf[p + "mlp.gate_proj.weight"], mine), _rows(hf[p + "mlp.up_proj.weight"], mine)])
    out["mlp.linear_fc2.weight"] = hf[p + "mlp.down_proj.weight"][:, tp_rank * ffn:(tp_rank + 1) * ffn]
    out["input_layernorm.weight"] = hf[p + "input_layernorm.weight"]
    out["pre_mlp_layernorm.weight"] = hf[p + "post_attention_layernorm.weight"]
    return out


def chunk_layers(s: Shape, pp_rank: int, pp: int, chunk: int = 0, vpp: int = 1) -> list[int]:
    per = s.layers // (pp * vpp)
    start = chunk * (s.layers // vpp) + pp_rank * per
    return list(range(start, start + per))


def megatron_rank_state(hf: Mapping[str, torch.Tensor], s: Shape, tp_rank: int, tp: int, pp_rank: int = 0, pp: int = 1,
                        chunk: int = 0, vpp: int = 1) -> dict[str, torch.Tensor]:
    """What megatron-core's local-spec GPTModel chunk on (tp_rank, pp_rank, chunk) holds, by name."""
    first = pp_rank == 0 and chunk == 0
    last = pp_rank == pp - 1 and chunk == vpp - 1
    vocab = s.vocab // tp
    vrows = list(range(tp_rank * vocab, (tp_rank + 1) * vocab))
    out = {}
    if first:
        out["embedding.word_embeddings.weight"] = _rows(hf["model.embed_tokens.weight"], vrows)
    for local, i in enumerate(chunk_layers(s, pp_rank, pp, chunk, vpp)):
        for k, v in _layer(hf, s, i, tp_rank, tp).items():
            out[f"decoder.layers.{local}.{k}"] = v
    if last:
        out["decoder.final_layernorm.weight"] = hf["model.norm.weight"]
        if not s.tied:
            out["output_layer.weight"] = _rows(hf["lm_head.weight"], vrows)
        elif not first:  # tied, PP > 1: the last stage's own copy of the embedding
            out["output_layer.weight"] = _rows(hf["model.embed_tokens.weight"], vrows)
    return {k: v.contiguous() for k, v in out.items()}


def rank_file(tp_rank: int, pp_rank: int, pp: int) -> str:
    """Megatron's release checkpoint file of a rank (``get_checkpoint_name`` in megatron.training)."""
    d = f"mp_rank_{tp_rank:02d}" if pp == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"
    return f"release/{d}/model_optim_rng.pt"


def model_keys(vpp: int) -> list[str]:
    return ["model"] if vpp == 1 else [f"model{c}" for c in range(vpp)]


# --------------------------------------------------------------------------------------
# Megatron ranks -> HF (the inverse, for loading post-step weights by an independent path)
# --------------------------------------------------------------------------------------


def megatron_to_hf(ranks: list[Mapping[str, torch.Tensor]], s: Shape, layer_offset: int = 0) -> dict[str, torch.Tensor]:
    """HF tensors from the TP ranks' state dicts of one pipeline stage (rank order; layer numbers
    local, ``layer_offset`` added). Inverts :func:`megatron_rank_state` element by element."""
    tp = len(ranks)
    out: dict[str, torch.Tensor] = {}
    r0 = ranks[0]
    layers = sorted({int(k.split(".")[2]) for k in r0 if k.startswith("decoder.layers.")})
    for local in layers:
        p, h = f"decoder.layers.{local}.", f"model.layers.{local + layer_offset}."
        for kind in ("weight", "bias"):
            got = {"q": {}, "k": {}, "v": {}}
            for tp_rank, st in enumerate(ranks):
                fused = st[p + f"self_attention.linear_qkv.{kind}"]
                for row, (x, hf_row) in enumerate(_qkv_rows(s, tp_rank, tp)):
                    got[x][hf_row] = fused[row]
            for x in "qkv":
                out[h + f"self_attn.{x}_proj.{kind}"] = torch.stack([got[x][r] for r in range(len(got[x]))])
        out[h + "self_attn.o_proj.weight"] = torch.cat([st[p + "self_attention.linear_proj.weight"] for st in ranks], 1)
        out[h + "self_attn.o_proj.bias"] = r0[p + "self_attention.linear_proj.bias"]
        half = s.ffn // tp
        fc1 = [st[p + "mlp.linear_fc1.weight"] for st in ranks]
        out[h + "mlp.gate_proj.weight"] = torch.cat([f[:half] for f in fc1])
        out[h + "mlp.up_proj.weight"] = torch.cat([f[half:] for f in fc1])
        out[h + "mlp.down_proj.weight"] = torch.cat([st[p + "mlp.linear_fc2.weight"] for st in ranks], 1)
        out[h + "input_layernorm.weight"] = r0[p + "input_layernorm.weight"]
        out[h + "post_attention_layernorm.weight"] = r0[p + "pre_mlp_layernorm.weight"]
    if "embedding.word_embeddings.weight" in r0:
        out["model.embed_tokens.weight"] = torch.cat([st["embedding.word_embeddings.weight"] for st in ranks])
    if "decoder.final_layernorm.weight" in r0:
        out["model.norm.weight"] = r0["decoder.final_layernorm.weight"]
    if "output_layer.weight" in r0 and not s.tied:
        out["lm_head.weight"] = torch.cat([st["output_layer.weight"] for st in ranks])
    return {k: v.contiguous() for k, v in out.items()}
