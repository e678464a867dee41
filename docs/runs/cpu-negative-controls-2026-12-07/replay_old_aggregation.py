"""Replay issue 23's three negative controls (tests/test_compare.py data) through the aggregation the suite had
before d5e5133 (tests/megatron_ranks.py _grad_diffs' running max(out.get(..., 0.0), d), test_megatron_parity's
_worst/_worst_grad = max(values) over ranks, the CPU e2e's mean |dlogp| <= 0.05), and through the new one."""
import math, sys, torch
sys.path.insert(0, "tests")  # run from the repository root
import test_compare as T
import megatron_ranks as R
import sync_testlib as L
from compare import check, diff, logprob_gap, CheckFailed

def old_grad_diffs(pairs):
    groups = {"o_proj_bias": ".linear_proj.bias", "qkv_bias": ".linear_qkv.bias", "lm_head": "output_layer.weight"}
    out = {}
    for name, got, want in pairs:
        d = (got.float() - want.float()).abs().max().item()
        out["all"] = max(out.get("all", 0.0), d)
        for g, s in groups.items():
            if name.endswith(s):
                out[g] = max(out.get(g, 0.0), d)
    return out

TOL = 1e-4
bad = "decoder.layers.0.self_attention.linear_proj.bias"
for nan_rank in (0, 1, 3):
    ranks = [old_grad_diffs(T._grad_pairs(bad if r == nan_rank else None)) for r in range(4)]
    worst = max(r["o_proj_bias"] for r in ranks)
    new = [{"tp1": {"grad_diff": R.grad_group_diffs(T._grad_pairs(bad if r == nan_rank else None))}} for r in range(4)]
    try:
        check(R.worst_grad(new, "tp1", "o_proj_bias"), TOL); new_v = "passes"
    except CheckFailed:
        new_v = "FAILS"
    print(f"nan in one gradient, rank {nan_rank}: old worst {worst} -> old check {'passes' if worst <= TOL else 'FAILS'}; new check {new_v}")

for sides in ("both", "megatron"):
    g = torch.Generator().manual_seed(1)
    old_vals, new_ranks = [], []
    for r in range(4):
        ref = torch.randn(4, 8, 32, generator=g); got = ref.clone()
        if r == 2:
            got[1, 5, 7] = float("inf")
            if sides == "both":
                ref[1, 5, 7] = float("inf")
        old_vals.append((got - ref).abs().max().item())
        new_ranks.append({"tp2": {"logits_diff": diff("logits", got, ref)}})
    worst = max(old_vals)
    old_v = "passes" if worst <= TOL else "FAILS"
    try:
        check(R.worst_reported(new_ranks, "tp2", "logits_diff"), TOL); new_v = "passes"
    except CheckFailed:
        new_v = "FAILS"
    print(f"inf in one logit ({sides}): old per-rank {old_vals} -> old worst {worst}, old check {old_v}; new check {new_v}")

actor, floor_lp, after_lp = T._tokens_24()
moved = after_lp.clone(); moved[17] += 0.5
mean_gap = (moved - actor).abs().mean().item()
problems = L.judge_post_sync(logprob_gap("after", moved, actor), logprob_gap("floor", floor_lp, actor))
print(f"one token of 24 moved by 0.5: old CPU e2e mean |dlogp| {mean_gap:.4f} <= 0.05 -> old check {'passes' if mean_gap <= 0.05 else 'FAILS'}; new judge {'FAILS' if problems else 'passes'}")
