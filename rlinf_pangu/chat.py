"""openPangu-Embedded's chat format: special tokens, the official chat template, answer split.

A completion is ``[unused16] thinking [unused17] answer [unused10]``; rewards must grade the
answer only, never the thinking, so :func:`split_thinking` is what every reward path uses.
"""

from __future__ import annotations

from typing import NamedTuple

BOS, EOS_PIECE, UNK, EOS_SP = "<s>", "[unused10]", "<unk>", "</s>"
THINK_START, THINK_END, TURN_START = "[unused16]", "[unused17]", "[unused9]"

#: The official ids of the tokens configs and templates name. Other ``[unusedN]`` exist in the
#: official vocabulary at ids this table does not claim; the factory parks them near the end.
OFFICIAL_IDS: dict[str, int] = {
    UNK: 0,
    BOS: 1,
    EOS_SP: 2,
    TURN_START: 45887,
    EOS_PIECE: 45892,
    THINK_START: 45974,
    THINK_END: 45982,
}
NUM_UNUSED = 34  # [unused0] .. [unused33]
VOCAB_SIZE = 153376
EOS_TOKEN_ID = OFFICIAL_IDS[EOS_PIECE]


def unused_token(n: int) -> str:
    return f"[unused{n}]"


def special_token_ids(vocab_size: int = VOCAB_SIZE) -> dict[str, int]:
    """Every special piece and its id: official ids where known, the rest packed before the end."""
    ids = dict(OFFICIAL_IDS)
    spare = vocab_size - NUM_UNUSED
    for n in range(NUM_UNUSED):
        tok = unused_token(n)
        if tok not in ids:
            ids[tok] = spare + n
    return ids


#: The official chat template, verbatim (full-width colon; an empty system turn is inserted
#: when the conversation does not start with one).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}{{ '[unused9]系统：[unused10]' }}{% endif %}"
    "{% if message['role'] == 'system' %}{{ '[unused9]系统：' + message['content'] + '[unused10]' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{'[unused9]助手：' + message['content'] + '[unused10]'}}{% endif %}"
    "{% if message['role'] == 'tool' %}{{'[unused9]工具：' + message['content'] + '[unused10]'}}{% endif %}"
    "{% if message['role'] == 'function' %}{{'[unused9]方法：' + message['content'] + '[unused10]'}}{% endif %}"
    "{% if message['role'] == 'user' %}{{'[unused9]用户：' + message['content'] + '[unused10]'}}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '[unused9]助手：' }}{% endif %}"
)


class Completion(NamedTuple):
    thinking: str
    answer: str
    finished_thinking: bool


def split_thinking(text: str) -> Completion:
    """Split a completion into (thinking, answer).

    The answer is what follows the last ``[unused17]`` up to ``[unused10]``. A completion that
    never closed its thinking has no answer (``finished_thinking=False``), so a reward cannot be
    earned by an answer written inside the thinking.
    """
    body = text.split(EOS_PIECE)[0] if EOS_PIECE in text else text
    if THINK_END not in body:
        thinking = body.split(THINK_START, 1)[-1] if THINK_START in body else ""
        # No thinking markers at all: fast-mode output, where the whole body is the answer.
        if THINK_START not in body:
            return Completion("", body.strip(), True)
        return Completion(thinking.strip(), "", False)
    head, answer = body.rsplit(THINK_END, 1)
    thinking = head.split(THINK_START, 1)[-1]
    return Completion(thinking.strip(), answer.strip(), True)
