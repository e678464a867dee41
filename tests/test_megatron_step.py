"""benchmarks/megatron_step.py: how it judges the o_proj bias's cost against its goal (Pangu's tokens/s >= 0.97x
the same GPTModel without the bias), on the per-round paired ratios rather than a ratio of medians alone, and
its CPU smoke run with the operator profile that attributes a difference (the timings there are not a
measurement: 2 cores, fp32).

The figures are the per-round step times (ms) of the two H100 runs with Transformer Engine
(docs/runs/gpu-h100-2026-12-07-te/te_step.toolkit-cudnn.log and docs/runs/gpu-h100-2026-12-07-te2/te_step.json).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

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


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("megatron_step") / "step.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "megatron_step.py"), "--preset", "tiny", "--device", "cpu",
           "--dtype", "fp32", "--layers", "2", "--seq", "32", "--micro-batch", "1", "--warmup", "1", "--rounds", "2",
           "--steps", "1", "--profile-steps", "1", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"json": json.loads(out.read_text()), "stdout": done.stdout}


def test_the_json_carries_the_paired_verdict_next_to_the_ratio_of_medians(smoke):
    res = smoke["json"]
    assert res["verdict"] in ("meets", "misses", "unresolved")
    assert len(res["ratio_per_round"]) == res["rounds"] == 2
    assert "per round: median" in smoke["stdout"]


def test_the_profile_names_operators_the_bias_adds(smoke):
    """Pangu has one more parameter per layer: some operator runs more often in its step than in the
    baseline's (its add, its gradient's reduction, its optimizer update)."""
    prof = smoke["json"]["profile"]
    assert prof["steps"] == 1 and prof["time"] == "self_cpu_ms"
    assert any(r["count_pangu"] > r["count_baseline"] for r in prof["differs"]), prof["differs"]
