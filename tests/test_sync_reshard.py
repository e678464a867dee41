"""RLinf's own MegatronCoreWeightReshard (gloo, CPU) syncing real megatron-core Pangu stages to
the rollout: the HF state dict produced equals the reference bit for bit.

The Megatron stages hold the tiny checkpoint's weights (6 layers, random biases and norm
weights); buckets hold 1.5 layers' bytes so a bucket boundary falls inside a layer. The
reference for rollout TP r is each HF tensor cut like SGLang cuts it (sync_testlib.rollout_reference),
computed without the convertor or the reshard functions.
"""

from __future__ import annotations

import pytest

import sync_testlib as L

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_rank(tiny_fp32, tmp_path_factory):
    return L.two_rank_megatron_run(tiny_fp32, tmp_path_factory)["results"]


def _check(results, tp, pp, rollout_tp, ranks):
    rows = [r for r in results if r.get("tp") == tp and r.get("pp") == pp and r.get("rollout_tp") == rollout_tp]
    assert sorted(r["rank"] for r in rows) == list(range(ranks))
    for r in rows:
        assert r["mismatches"] == [], f"rank {r['rank']}: {r['mismatches'][:5]}"
        assert r["aliases_params"] == [], f"rank {r['rank']} sends live parameters: {r['aliases_params'][:5]}"
        assert r["n_buckets"] > 1 and r["split_layer"], "no bucket boundary inside a layer"
        assert r["packed"], "RLinf's sync did not send each bucket as one packed buffer"


def test_actor_tp2_to_rollout_tp1_is_bit_exact(two_rank):
    _check(two_rank, 2, 1, 1, 2)


def test_actor_tp2_to_rollout_tp2_is_bit_exact_including_sglang_vocab_shards(two_rank):
    _check(two_rank, 2, 1, 2, 2)


def test_actor_pp2_to_rollout_pp1_is_bit_exact(two_rank):
    _check(two_rank, 1, 2, 1, 2)


def test_actor_tp2_pp2_to_rollout_tp1_is_bit_exact(tiny_fp32, tmp_path):
    from harness import run_ranks

    per_rank = run_ranks(L.sync_ranks, 4, str(tiny_fp32), [{"tp": 2, "pp": 2, "rollout_tps": [1]}], str(tmp_path), timeout=600, grace=20)
    _check([r for rank in per_rank for r in rank], 2, 2, 1, 4)
