"""The bundled data sets are what their generators write (``python -m rlinf_pangu.data``), and each
item is one the pangu_math reward can grade: chat messages and a one-digit answer."""

from __future__ import annotations

import json

import pytest

from rlinf_pangu.data import GENERATED, data_path


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_shipped_file_equals_its_generator(name):
    assert data_path(name).read_text() == GENERATED[name]()


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_every_item_is_a_chat_prompt_with_a_one_digit_answer(name):
    items = [json.loads(line) for line in data_path(name).read_text().splitlines()]
    assert items
    for item in items:
        assert item["prompt"][-1]["role"] == "user" and item["prompt"][-1]["content"]
        assert len(item["answer"]) == 1 and item["answer"].isdigit()


def test_the_echo_answer_is_the_digit_of_the_question():
    items = [json.loads(line) for line in data_path("digit_echo.jsonl").read_text().splitlines()]
    assert sorted(i["answer"] for i in items) == [str(d) for d in range(1, 10)]
    assert all(set(i["prompt"][-1]["content"].split()) == {i["answer"]} for i in items)


def test_unknown_dataset_is_named():
    with pytest.raises(FileNotFoundError, match="no bundled dataset 'nope.jsonl'"):
        data_path("nope.jsonl")
