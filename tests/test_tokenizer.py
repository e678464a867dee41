"""PanguTokenizer: official special ids, add_bos, the official chat template, thinking split."""

from __future__ import annotations

import json

import pytest

import rlinf_pangu
from rlinf_pangu.chat import split_thinking


@pytest.fixture(scope="module")
def tok(tiny_fp32):
    rlinf_pangu.register(rlinf=False, sglang=False)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_fp32, trust_remote_code=False)


def test_loads_as_slow_pangu_tokenizer_with_official_vocab_size(tok):
    assert type(tok).__name__ == "PanguTokenizer"
    assert len(tok) == 153376


def test_named_special_tokens_have_official_ids(tok):
    expect = {"<unk>": 0, "<s>": 1, "</s>": 2, "[unused9]": 45887, "[unused10]": 45892,
              "[unused16]": 45974, "[unused17]": 45982}
    assert {t: tok.convert_tokens_to_ids(t) for t in expect} == expect
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 45892, 0, 0)


def test_encode_adds_bos_only_and_round_trips(tok):
    text = "What is 12 + 7? 请计算 12+7。"
    ids = tok(text)["input_ids"]
    assert ids[0] == 1 and ids[-1] != 45892
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_special_tokens_encode_as_single_ids(tok):
    ids = tok("[unused16]think[unused17]42[unused10]", add_special_tokens=False)["input_ids"]
    assert ids[0] == 45974 and 45982 in ids and ids[-1] == 45892


CONV = [
    {"role": "user", "content": "1+1=?"},
    {"role": "assistant", "content": "[unused16]想一想[unused17]2"},
    {"role": "user", "content": "2+3=?"},
]


def test_chat_template_without_system_inserts_empty_system_turn(tok):
    out = tok.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True)
    assert out == (
        "[unused9]系统：[unused10]"
        "[unused9]用户：1+1=?[unused10]"
        "[unused9]助手：[unused16]想一想[unused17]2[unused10]"
        "[unused9]用户：2+3=?[unused10]"
        "[unused9]助手："
    )


def test_chat_template_with_system_message(tok):
    conv = [{"role": "system", "content": "你是数学助手。"}] + CONV[:1]
    out = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=False)
    assert out == "[unused9]系统：你是数学助手。[unused10][unused9]用户：1+1=?[unused10]"


def test_chat_template_no_think_suffix_is_kept_verbatim(tok):
    conv = [{"role": "user", "content": "7*6=? /no_think"}]
    out = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert out == "[unused9]系统：[unused10][unused9]用户：7*6=? /no_think[unused10][unused9]助手："


def test_chat_template_tool_and_function_roles(tok):
    conv = [{"role": "user", "content": "q"}, {"role": "tool", "content": "t"}, {"role": "function", "content": "f"}]
    out = tok.apply_chat_template(conv, tokenize=False)
    assert out == "[unused9]系统：[unused10][unused9]用户：q[unused10][unused9]工具：t[unused10][unused9]方法：f[unused10]"


@pytest.mark.parametrize(
    "text, thinking, answer, finished",
    [
        ("[unused16]3 plus 4 is 7[unused17]7[unused10]", "3 plus 4 is 7", "7", True),
        ("[unused16]a[unused17]b[unused17] 12 [unused10]junk", "a[unused17]b", "12", True),
        ("[unused16]the answer is 7 but I keep thinking", "the answer is 7 but I keep thinking", "", False),
        ("7[unused10]", "", "7", True),  # fast mode: no thinking section at all
    ],
)
def test_split_thinking_grades_only_text_after_thinking(text, thinking, answer, finished):
    c = split_thinking(text)
    assert (c.thinking, c.answer, c.finished_thinking) == (thinking, answer, finished)


# ---- skip_special_tokens follows tokenizer_config.json ----------------------------------------


def _flagged_special(ckpt) -> dict[int, str]:
    """id -> content of every token tokenizer_config.json marks ``"special": true``."""
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    return {int(i): t["content"] for i, t in cfg["added_tokens_decoder"].items() if t["special"]}


def test_skip_special_tokens_drops_every_token_the_tokenizer_config_flags_special(tok, tiny_fp32):
    flagged = _flagged_special(tiny_fp32)
    assert {"<s>", "</s>", "<unk>", "[unused9]", "[unused10]", "[unused16]", "[unused17]"} <= set(flagged.values())
    w = tok("ab", add_special_tokens=False)["input_ids"]
    for i, content in flagged.items():
        assert tok.decode([i], skip_special_tokens=False) == content
        assert tok.decode(w + [i] + w, skip_special_tokens=True) == tok.decode(w + w, skip_special_tokens=True), content


def test_skip_special_tokens_keeps_every_token_not_flagged_special(tok, tiny_fp32):
    """'Exactly' the flagged set: ordinary pieces survive, so no text is lost."""
    flagged = _flagged_special(tiny_fp32)
    text = "The answer is 42. 答案是42。"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids and not set(ids) & set(flagged)
    assert tok.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=False) == text


ROLLOUT = "[unused16]3 plus 4 is 7[unused17]The answer is 7.[unused10]"


def test_rollout_decoded_skipping_special_tokens_contains_no_chat_markers(tok):
    """What RLinf's reward worker would read if it decoded with skip_special_tokens=True (its
    default): the text only, with neither thinking marker, so the answer could not be told from
    the thinking. The reward therefore reads the text decoded without skipping (next test)."""
    ids = tok(ROLLOUT, add_special_tokens=False)["input_ids"]
    text = tok.decode(ids, skip_special_tokens=True)
    assert not any(m in text for m in ("[unused16]", "[unused17]", "[unused10]", "[unused9]", "<s>", "</s>"))
    assert "3 plus 4 is 7" in text and "The answer is 7." in text


def test_rollout_decoded_for_the_reward_keeps_the_thinking_markers_and_splits_right(tok):
    ids = tok(ROLLOUT, add_special_tokens=False)["input_ids"]
    text = tok.decode(ids, skip_special_tokens=False)
    c = split_thinking(text)
    assert (c.thinking, c.answer, c.finished_thinking) == ("3 plus 4 is 7", "The answer is 7.", True)


# ---- what RLinf's reward worker hands the reward -----------------------------------------------

#: The right number appears only inside the thinking; the answer after [unused17] is wrong.
FOOLING_ROLLOUT = "[unused16]maybe \\boxed{7}? no[unused17] 6[unused10]"


def _rlinf_reward(tok, text: str, reference: str, patched: bool) -> float:
    """RLinf's own ``RewardWorker._compute_rule_based_rewards`` on an SGLang-style rollout (token
    ids, no text), with pangu_math as the worker's reward; ``patched=False`` runs RLinf's original
    (the negative control)."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf
    from rlinf.data.io_struct import RolloutResult
    from rlinf.workers.reward.reward_worker import RewardWorker

    from rlinf_pangu.reward import PanguMathReward

    fn = RewardWorker._compute_rule_based_rewards
    if not patched:
        fn = fn.__rlinf_pangu_original__
    cfg = OmegaConf.create({"reward": {"reward_type": "pangu_math", "reward_scale": 1.0,
                                       "reward_min_val": 0.0, "reward_max_val": 1.0}})
    worker = SimpleNamespace(tokenizer=tok, cfg=cfg, rule_based_reward=PanguMathReward(cfg.reward))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    rollout = RolloutResult(num_sequence=1, group_size=1, prompt_lengths=[1], prompt_ids=[[1]],
                            response_lengths=[len(ids)], response_ids=[ids], answers=[[reference]], is_end=[True])
    scores = fn(worker, rollout).tolist()
    assert rollout.response_texts is None  # RLinf's later decoding (down-sampling) is left as it was
    return scores[0]


def test_rlinf_reward_worker_grades_the_answer_after_the_thinking_marker(tok):
    rlinf_pangu.register(sglang=False)  # the patches, as in every RLinf worker
    assert _rlinf_reward(tok, FOOLING_ROLLOUT, "7", patched=True) == 0.0
    assert _rlinf_reward(tok, FOOLING_ROLLOUT, "6", patched=True) == 1.0


def test_unpatched_rlinf_reward_worker_loses_the_markers_and_grades_the_thinking(tok):
    """Negative control: RLinf's original decoding (skip_special_tokens=True) drops the markers,
    so pangu_math takes the whole text for a fast-mode answer and the \\boxed{7} in the thinking
    earns the reward."""
    rlinf_pangu.register(sglang=False)
    assert _rlinf_reward(tok, FOOLING_ROLLOUT, "7", patched=False) == 1.0
