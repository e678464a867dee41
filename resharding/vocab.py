"""Where SGLang puts each vocabulary row at rollout TP > 1, and why Megatron's split misses it.

SGLang's ``VocabParallelEmbedding`` / ``ParallelLMHead`` pad the vocabulary to a multiple of
64 (``DEFAULT_VOCAB_PADDING_SIZE``) and give rollout rank ``r`` the rows
``[r * P, min((r + 1) * P, V))`` with ``P = pad64(V) / tp``; the padding rows sit at the end
of the last rank. RLinf's Megatron keeps ``padded_vocab_size = V`` (no padding), so its TP
shard ``r`` is ``[r * V / tp, (r + 1) * V / tp)``. The two agree only when ``V`` is a multiple
of 64. openPangu's ``V = 153376 = 64 * 2396.5`` is not: at rollout TP 2 SGLang rank 0 holds
76704 rows, Megatron's shard 76688. SGLang's presharded loader accepts the Megatron shard
(it only checks ``V // tp`` rows) and copies it to the start of the local table, so rank 1's
tokens come out shifted by 16 rows and rank 0's last 16 tokens are zero: silent corruption.

The sync therefore cuts SGLang's own row range (:func:`sglang_vocab_rows`) on the actor side,
and SGLang's Pangu class loads a shard of exactly that many rows.
"""

from __future__ import annotations

__all__ = ["SGLANG_VOCAB_PADDING", "sglang_vocab_rows", "megatron_vocab_rows", "vocab_split_lines_up"]

#: ``sglang.srt.layers.vocab_parallel_embedding.DEFAULT_VOCAB_PADDING_SIZE`` (a test pins it).
SGLANG_VOCAB_PADDING = 64


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to


def sglang_vocab_rows(vocab_size: int, tp_size: int, tp_rank: int, padding: int = SGLANG_VOCAB_PADDING) -> tuple[int, int]:
    """``[start, end)`` of the real (unpadded) vocabulary rows SGLang's rank ``tp_rank`` holds."""
    padded = _pad(vocab_size, padding)
    if padded % tp_size:
        raise ValueError(
            f"vocab_size={vocab_size} padded to {padded} is not divisible by rollout TP {tp_size}; "
            "SGLang cannot shard this vocabulary"
        )
    per = padded // tp_size
    return min(tp_rank * per, vocab_size), min((tp_rank + 1) * per, vocab_size)


def megatron_vocab_rows(vocab_size: int, tp_size: int, tp_rank: int) -> tuple[int, int]:
    """``[start, end)`` of the vocabulary rows Megatron's TP rank holds (RLinf: no vocab padding)."""
    if vocab_size % tp_size:
        raise ValueError(f"vocab_size={vocab_size} is not divisible by tensor parallel size {tp_size}")
    per = vocab_size // tp_size
    return tp_rank * per, (tp_rank + 1) * per


def vocab_split_lines_up(vocab_size: int, tp_size: int) -> bool:
    """True when Megatron's even split over ``tp_size`` ranks equals SGLang's on every rank."""
    return all(
        sglang_vocab_rows(vocab_size, tp_size, r) == megatron_vocab_rows(vocab_size, tp_size, r)
        for r in range(tp_size)
    )
