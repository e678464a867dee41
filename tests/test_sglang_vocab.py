"""openPangu's vocabulary (153376 rows) at rollout TP > 1: SGLang pads it to a multiple of 64 and
shards the padded table, so Megatron's even split (RLinf keeps padded_vocab_size = vocab) does
not line up. The sync cuts SGLang's own rows; SGLang's Pangu class loads exactly those.
"""

from __future__ import annotations

import pytest
import torch

import sync_testlib as L
from resharding.vocab import SGLANG_VOCAB_PADDING, megatron_vocab_rows, sglang_vocab_rows, vocab_split_lines_up

PANGU_VOCAB = 153376


def test_sglang_vocab_rows_are_sglangs_own_shard_indices():
    import rlinf_pangu

    rlinf_pangu.register(rlinf=False)  # importing sglang needs the transformers exist_ok patch
    from sglang.srt.layers.vocab_parallel_embedding import (
        DEFAULT_VOCAB_PADDING_SIZE,
        VocabParallelEmbedding,
        pad_vocab_size,
    )

    assert SGLANG_VOCAB_PADDING == DEFAULT_VOCAB_PADDING_SIZE
    for vocab in (PANGU_VOCAB, 153600, 1000, 64 * 7 + 1):
        for tp in (1, 2, 4, 8):
            padded = pad_vocab_size(vocab)
            if padded % tp:
                continue
            for rank in range(tp):
                idx = VocabParallelEmbedding._get_indices(padded, padded, vocab, vocab, rank, tp)
                assert sglang_vocab_rows(vocab, tp, rank) == (idx.org_vocab_start_index, idx.org_vocab_end_index)


def test_megatron_even_split_misses_sglang_rows_for_pangu_vocab():
    assert not any(vocab_split_lines_up(PANGU_VOCAB, tp) for tp in (2, 4, 8))
    assert vocab_split_lines_up(PANGU_VOCAB, 1) and vocab_split_lines_up(153600, 2)
    assert megatron_vocab_rows(PANGU_VOCAB, 2, 0) == (0, 76688)
    assert sglang_vocab_rows(PANGU_VOCAB, 2, 0) == (0, 76704)


@pytest.fixture(scope="module")
def sglang_tp2(tiny_fp32, tmp_path_factory):
    rows = [r for r in L.two_rank_megatron_run(tiny_fp32, tmp_path_factory)["results"] if r.get("sglang_tp2")]
    assert sorted(r["rank"] for r in rows) == [0, 1]
    return rows


@pytest.mark.slow
def test_rollout_tp2_sync_loads_into_sglang_tp2_like_sglangs_own_checkpoint_load(sglang_tp2):
    for r in sglang_tp2:
        assert r["mismatches"] == [], f"SGLang rank {r['rank']}: {r['mismatches'][:5]}"
        assert r["n_params"] > 0


@pytest.mark.slow
def test_megatron_even_split_is_rejected_by_name_and_would_corrupt_stock_sglang(sglang_tp2):
    for r in sglang_tp2:
        assert "model.embed_tokens.weight" in r["even_split_ours"] and "Megatron's even split" in r["even_split_ours"]
        assert r["even_split_stock_equal"] is False  # SGLang's own presharded loader takes it, misplaced


@pytest.mark.slow
def test_cpu_rope_patch_is_applied_in_an_sglang_process_serving_on_cpu(sglang_tp2):
    from rlinf_pangu.patches.sglang import SGLANG_CPU_PATCHES

    assert all(r["cpu_patches"] == list(SGLANG_CPU_PATCHES) for r in sglang_tp2)
