"""How benchmarks/megatron_step.py judges the o_proj bias's cost against its goal (Pangu's tokens/s >= 0.97x
the same GPTModel without the bias): on the per-round paired ratios, not on a ratio of medians alone.

The figures are the per-round step times (ms) of the two H100 runs with Transformer Engine
(docs/runs/gpu-h100-2026-12-07-te/te_step.toolkit-cudnn.log and docs/runs/gpu-h100-2026-12-07-te2/te_step.json).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from megatron_step import judge_ratio  # noqa: E402

GOAL = 0.97
FIRST_RUN = ([129.6, 149.0, 117.6, 132.2, 131.6, 132.2, 136.9], [155.9, 130.3, 116.0, 124.1, 142.9, 131.7, 138.4])
SECOND_RUN = ([126.7, 156.2, 159.4, 132.5, 150.0, 162.4, 170.1], [118.0, 136.9, 150.6, 153.1, 122.8, 150.7, 150.0])


def test_each_round_pairs_the_two_models_timed_back_to_back():
    pangu, base = SECOND_RUN
    judged = judge_ratio(pangu, base, GOAL)
    assert judged["ratio_per_round"] == pytest.approx([b / p for p, b in zip(pangu, base)])


def test_a_ratio_of_medians_near_one_with_rounds_on_both_sides_is_unresolved():
    """The first TE run: medians 0.996, but the rounds range from 0.87 to 1.20: the goal is inside."""
    judged = judge_ratio(*FIRST_RUN, GOAL)
    assert judged["verdict"] == "unresolved", judged
    lo, hi = judged["ratio_iqr"]
    assert lo < GOAL < hi


def test_most_rounds_below_the_goal_misses_it_even_where_one_round_is_far_above():
    """The second TE run: Pangu slower in 6 of 7 rounds (one round at 1.16)."""
    judged = judge_ratio(*SECOND_RUN, GOAL)
    assert judged["verdict"] == "misses", judged
    assert judged["ratio_paired_median"] == pytest.approx(0.928, abs=1e-3)


def test_rounds_all_above_the_goal_meet_it():
    judged = judge_ratio([100.0, 101.0, 99.0, 100.5], [99.5, 100.8, 99.2, 100.0], GOAL)
    assert judged["verdict"] == "meets", judged


def test_one_round_is_judged_on_its_own_ratio():
    assert judge_ratio([100.0], [90.0], GOAL)["verdict"] == "misses"
    assert judge_ratio([100.0], [99.0], GOAL)["verdict"] == "meets"
