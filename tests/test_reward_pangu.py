"""pangu_math: RLinf's math verifier on the answer after [unused17] only, in RLinf's registry."""

from __future__ import annotations

import pytest

from rlinf_pangu.reward import REWARD_TYPE, PanguMathReward, answer_for_grading


@pytest.fixture(scope="module")
def reward():
    import rlinf_pangu

    rlinf_pangu.register()
    return PanguMathReward({"reward_min_val": 0.0, "reward_max_val": 1.0, "reward_scale": 1.0})


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("[unused16]3+4 is 7[unused17] 7[unused10]", 1.0),  # right answer after the thinking
        ("[unused16]it is 7, surely 7[unused17] 6[unused10]", 0.0),  # right number only in the thinking
        ("[unused16]7 7 7 \\boxed{7}", 0.0),  # thinking never closed: no answer at all
        ("[unused16]hmm[unused17] The answer is \\boxed{7}.", 1.0),  # a marked final answer
        ("7", 1.0),  # fast mode (no thinking markers): the whole body is the answer
    ],
)
def test_only_the_answer_part_is_graded(reward, completion, expected):
    assert reward.get_reward([completion], [["7"]]) == [expected]


def test_rlinf_math_reward_is_fooled_by_the_thinking_where_pangu_math_is_not(reward):
    from rlinf.algorithms.rewards import get_rule_based_reward_class

    text = "[unused16]maybe \\boxed{7}? no[unused17] 6"
    rlinf_math = get_rule_based_reward_class("math")({"reward_min_val": 0.0, "reward_max_val": 1.0})
    assert rlinf_math.get_reward([text], [["7"]]) == [1.0]  # RLinf's reward reads the thinking
    assert reward.get_reward([text], [["7"]]) == [0.0]


def test_registered_where_rlinf_selects_rewards(reward):
    from rlinf.algorithms.rewards import get_rule_based_reward_class

    assert get_rule_based_reward_class(REWARD_TYPE) is PanguMathReward


def test_answer_without_a_marker_is_boxed_for_the_verifier():
    assert answer_for_grading("[unused16]x[unused17] 5") == "\\boxed{5}"
    assert answer_for_grading("[unused16]x") is None


def test_an_answer_with_its_own_marker_is_not_boxed_whole():
    # "Answer:" marks the value for the grader; boxing the whole text would hide it
    text = "[unused16]x[unused17]Adding 12 and 6.\n\n**Final answer:** 18"
    assert answer_for_grading(text) == "Adding 12 and 6.\n\n**Final answer:** 18"


def test_a_mixed_number_earns_the_reward_and_its_misreading_does_not(reward):
    done = "[unused16]x[unused17]\\boxed{{{}}}[unused10]"
    assert reward.get_reward([done.format("3\\frac{1}{2}"), done.format("\\frac{3}{2}")], [["\\frac{7}{2}"]] * 2) == [1.0, 0.0]
