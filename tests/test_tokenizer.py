"""PanguTokenizer: official special ids, add_bos, the official chat template, thinking split."""

from __future__ import annotations

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
