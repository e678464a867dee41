"""Two GPUs: the sync between a Megatron actor at TP 2 (NCCL, one GPU per rank) and SGLang.

* RLinf's own ``MegatronCoreWeightReshard`` over NCCL: actor TP2 -> rollout TP1 and TP2, and
  actor PP2 -> rollout PP1, equal the reference bit for bit (the CPU/gloo tests' check, on the
  communication backend RLinf really uses).
* A real ``sgl.Engine`` at rollout TP 2 (both GPUs) and then TP 1: after one optimizer step on
  the fp32 Megatron model and the sync (each SGLang TP rank opening its actor rank's CUDA IPC
  handles, as in RLinf's colocated mode), SGLang's logprobs match Megatron's recomputed ones.

SGLang runs in bf16 (its CUDA RMSNorm has no fp32 kernel), so the judge is relative to a floor
measured in the same run on the *same* post-step weights: SGLang given them by an independent path
(sync_testlib.post_step_hf: the actor's shards merged by tests/independent_layout.py, pushed by HF
name), against Megatron's recompute. After the sync SGLang must stay within the floor's mean
exp(|dlogp|) + 2e-3 and its worst token + 0.02 nats, and match itself across the two loads to
0.02 nats on every token; the floor itself must look like bf16 noise (sync_testlib.judge_post_sync;
the measured spreads behind the margins are written next to the constants). The negative controls
from the same run (the engine before the sync, and the two ranks' row-parallel shards swapped) must
land 10x the margins beyond the floor, on the mean and on the worst token.
"""

from __future__ import annotations

import pytest
import torch

import sync_testlib as L

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs"),
]


def test_nccl_reshard_is_bit_exact_on_two_gpus(tiny_fp32, tmp_path):
    from harness import run_ranks

    phases = [{"tp": 2, "pp": 1, "rollout_tps": [1, 2], "device": "cuda"},
              {"tp": 1, "pp": 2, "rollout_tps": [1], "device": "cuda"}]
    per_rank = run_ranks(L.sync_ranks, 2, str(tiny_fp32), phases, str(tmp_path), timeout=600, grace=20, gpus=True)
    rows = [r for rank in per_rank for r in rank]
    assert {(r["tp"], r["pp"], r["rollout_tp"]) for r in rows} == {(2, 1, 1), (2, 1, 2), (1, 2, 1)}
    for r in rows:
        assert r["device"].startswith("cuda"), r
        assert r["mismatches"] == [], f"{r['tp']}x{r['pp']}->{r['rollout_tp']} rank {r['rank']}: {r['mismatches'][:5]}"
        assert r["aliases_params"] == [], r["aliases_params"][:5]
        assert r["n_buckets"] > 1 and r["split_layer"]
        assert r["packed"], "RLinf's sync did not send each bucket as one packed buffer"


def test_actor_tp2_sync_into_sglang_tp2_and_tp1_matches_megatron(tiny_fp32):
    from harness import run_ranks

    per_rank = run_ranks(L.gpu_post_sync_rank, 2, str(tiny_fp32), L._tokens(33, 12), L._tokens(24, 11),
                         timeout=420, grace=30, gpus=True)
    res = per_rank[0]
    problems = []
    for tp in (2, 1):
        r = res[f"rollout_tp{tp}"]
        print(f"rollout TP {tp}: " + "; ".join(f"{k}: {v}" for k, v in r.items()))
        problems += [f"TP{tp}: {p}" for p in L.judge_post_sync(r["after"], r["floor"]) + L.judge_same_weights(r["sync_vs_floor"])]
        problems += [f"TP{tp}: {p}" for p in L.judge_control(r["stale"], r["floor"], "stale (no sync)")]
    r = res["rollout_tp2"]
    problems += [f"TP2: {p}" for p in L.judge_control(r["swapped"], r["floor"], "row-parallel shards swapped")]
    L.record_gpu_result("sync_multigpu", {
        "what": "actor TP2 (fp32, NCCL) -> bf16 sgl.Engine at rollout TP 2 and TP 1 after one optimizer step",
        **{f"rollout_tp{tp}": {k: (v.as_dict() if hasattr(v, "as_dict") else v) for k, v in res[f"rollout_tp{tp}"].items()}
           for tp in (2, 1)},
        "problems": problems, "pass": not problems,
    })
    assert not problems, problems
