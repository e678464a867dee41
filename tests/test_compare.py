"""The comparison helper (tests/compare.py) and the negative controls that every numerical check
in tests/ and benchmarks/ relies on: a NaN, an inf and one bad token must each fail.

The controls run the real aggregation code of the checks (``megatron_ranks.grad_group_diffs``,
``worst_grad``, ``worst_reported``, the GPU post-sync judge ``sync_testlib.judge_post_sync``) on
planted data; without them a green parity or post-sync run would not prove that a NaN gradient,
an overflowing logit or one token far off the actor could fail it. Cheap (no model, no ranks).
"""

from __future__ import annotations

import math

import pytest
import torch

import megatron_ranks as R
import sync_testlib as L
from compare import CheckFailed, check, check_against_floor, diff, logprob_gap, worst, worst_value

TOL = 1e-5  # the Megatron parity tolerance (test_megatron_parity.py)


# --------------------------------------------------------------------------------------
# What the helper reports
# --------------------------------------------------------------------------------------


def test_diff_reports_worst_element_with_both_values_and_the_mean():
    want = torch.zeros(3, 4)
    got = want.clone()
    got[1, 2] = 0.25
    d = diff("w", got, want)
    assert d.finite and d.max_abs == 0.25 and d.mean_abs == pytest.approx(0.25 / 12)
    assert "w[1, 2]: got 0.25, want 0" in str(d)


def test_shape_mismatch_names_the_tensor():
    with pytest.raises(CheckFailed, match="embed: shape"):
        diff("embed", torch.zeros(2, 3), torch.zeros(3, 2))


def test_check_passes_within_tolerance_and_fails_beyond_it():
    d = diff("x", torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 + 5e-6]))
    assert check(d, TOL) is d
    with pytest.raises(CheckFailed, match=r"x: max \|diff\|"):
        check(d, 1e-6)


def test_worst_value_keeps_nan_wherever_it_comes():
    assert max([0.0, math.nan]) == 0.0  # the Python behaviour the old aggregation relied on
    for values in ([0.0, math.nan], [math.nan, 0.0], [1.0, math.nan, 2.0]):
        assert math.isnan(worst_value(values))
    assert worst_value([1.0, 3.0, 2.0]) == 3.0
    with pytest.raises(ValueError):
        worst_value([])


# --------------------------------------------------------------------------------------
# Negative controls (each must fail the check it plants into)
# --------------------------------------------------------------------------------------


def _grad_pairs(nan_in: str | None = None) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """A rank's gradients, each equal to its reference, optionally with one NaN planted."""
    g = torch.Generator().manual_seed(0)
    names = ["embedding.word_embeddings.weight", "decoder.layers.0.self_attention.linear_qkv.bias",
             "decoder.layers.0.self_attention.linear_proj.weight", "decoder.layers.0.self_attention.linear_proj.bias",
             "decoder.layers.0.mlp.linear_fc1.weight", "output_layer.weight"]
    pairs = []
    for n in names:
        want = torch.randn(8, 4, generator=g)
        got = want.clone()
        if n == nan_in:
            got[3, 1] = float("nan")
        pairs.append((n, got, want))
    return pairs


@pytest.mark.parametrize("nan_rank", [0, 1, 3])
def test_nan_in_one_gradient_fails_gradient_parity(nan_rank):
    """One NaN in the o_proj bias gradient of one rank (of 4): the groups it belongs to ('all' and
    'o_proj_bias') are non-finite after the aggregation over parameters and over ranks, whichever
    rank it is on, and the check names the tensor. The old running max reported 0 for it."""
    bad = "decoder.layers.0.self_attention.linear_proj.bias"
    ranks = [{"tp1": {"grad_diff": R.grad_group_diffs(_grad_pairs(bad if r == nan_rank else None))}} for r in range(4)]
    for group in ("all", "o_proj_bias"):
        d = R.worst_grad(ranks, "tp1", group)
        assert not d.finite
        with pytest.raises(CheckFailed, match=rf"rank {nan_rank} grad {bad}.*NaN"):
            check(d, TOL)
    check(R.worst_grad(ranks, "tp1", "qkv_bias"), TOL)  # groups without the NaN still judge normally


@pytest.mark.parametrize("sides", ["both", "megatron"])
def test_non_finite_inf_in_one_logit_fails_logits_parity(sides):
    """+inf in one logit on one rank of 4: the logits check fails naming it, also when the
    reference overflows at the same element (inf == inf counts as equal for torch.allclose /
    assert_close, and inf - inf = NaN was then dropped by the max over ranks)."""
    g = torch.Generator().manual_seed(1)
    ranks = []
    for r in range(4):
        ref = torch.randn(4, 8, 32, generator=g)
        got = ref.clone()
        if r == 2:
            got[1, 5, 7] = float("inf")
            if sides == "both":
                ref[1, 5, 7] = float("inf")
        ranks.append({"tp2": {"logits_diff": diff("logits", got, ref)}})
    d = R.worst_reported(ranks, "tp2", "logits_diff")
    with pytest.raises(CheckFailed, match=r"rank 2 logits.*1 inf.*\[1, 5, 7\]"):
        check(d, TOL)


def _tokens_24() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """24 log-probs of the actor, and what SGLang serves on the same weights by an independent load
    (the floor) and after the sync: both off by bf16-sized noise (|d| ~ 0.01, the measured floor:
    mean exp|d| 1.0107, worst 0.035 on 23 tokens, docs/runs/gpu-h100x2-2026-11-28)."""
    g = torch.Generator().manual_seed(2)
    actor = -torch.rand(24, generator=g, dtype=torch.float64) * 8
    noise = 0.02 * (torch.rand(24, generator=g, dtype=torch.float64) - 0.5)
    floor = actor + noise
    after = actor + noise.flip(0)
    return actor, floor, after


def test_worst_token_moved_by_half_among_24_fails_the_post_sync_check():
    """One token of 24 off by 0.5 nats after the sync: mean |dlogp| stays at 0.03 nats (inside the
    0.05 mean-gap tolerance of the CPU e2e check), the worst token does not. The GPU post-sync
    judge (sync_testlib.judge_post_sync) fails it and names the token; the same data without the
    moved token passes."""
    actor, floor_lp, after_lp = _tokens_24()
    floor = logprob_gap("floor", floor_lp, actor)
    good = logprob_gap("after", after_lp, actor)
    assert L.judge_post_sync(good, floor) == []
    moved = after_lp.clone()
    moved[17] += 0.5
    bad = logprob_gap("after", moved, actor)
    assert bad.mean_abs < 0.05  # the mean alone would let it through
    problems = L.judge_post_sync(bad, floor)
    assert any("worst token" in p and "after[17]" in p for p in problems), problems


def test_non_finite_logprob_fails_the_post_sync_check():
    actor, floor_lp, after_lp = _tokens_24()
    after_lp[5] = float("nan")
    problems = L.judge_post_sync(logprob_gap("after", after_lp, actor), logprob_gap("floor", floor_lp, actor))
    assert problems and "NaN" in problems[0]


def test_worst_over_diffs_weights_the_mean_and_keeps_the_worst_location():
    a = diff("a", torch.tensor([0.0, 0.0]), torch.zeros(2))
    b = diff("b", torch.tensor([0.3, 0.1]), torch.zeros(2))
    w = worst([a, b], name="both")
    assert w.max_abs == pytest.approx(0.3) and w.mean_abs == pytest.approx(0.1) and "b[0]" in w.worst_at


def test_floor_that_is_itself_wrong_fails_its_ceiling():
    actor, floor_lp, after_lp = _tokens_24()
    floor = logprob_gap("floor", floor_lp + 1.0, actor)  # a floor as broken as a bad sync
    after = logprob_gap("after", after_lp + 1.0, actor)
    assert any("the floor itself" in p for p in check_against_floor(after, floor, 1e-3, 1e-2, ceiling=(1.05, 0.25)))
