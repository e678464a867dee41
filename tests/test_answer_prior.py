"""The demo answer prior makes a random model say a digit most of the time, and nothing else changes."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlinf_pangu.demo.answer_prior import apply_answer_prior, digit_token_ids

PROMPTS = ["[unused9]系统：[unused10][unused9]用户：2+3=[unused10][unused9]助手：",
           "[unused9]系统：[unused10][unused9]用户：7-4=[unused10][unused9]助手："]


def _digit_mass(ckpt, text):
    tok = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        p = model(**tok(text, return_tensors="pt")).logits[0, -1].softmax(-1)
    return float(p[digit_token_ids(tok)].sum())


def test_prior_moves_mass_to_digits_only(tiny_fp32, tmp_path):
    import rlinf_pangu

    rlinf_pangu.register_transformers()
    ckpt = shutil.copytree(tiny_fp32, tmp_path / "ckpt")
    before = {k: v.clone() for k, v in load_file(next(ckpt.glob("*.safetensors"))).items()} if len(list(ckpt.glob("*.safetensors"))) == 1 else None
    assert _digit_mass(ckpt, PROMPTS[0]) < 1e-3  # random: ~10 / 153k
    ids = apply_answer_prior(ckpt, 12.0, PROMPTS)
    assert len(ids) == 10
    for text in PROMPTS + ["[unused9]系统：[unused10][unused9]用户：9-9=[unused10][unused9]助手："]:  # unseen question, same format
        assert _digit_mass(ckpt, text) > 0.5
    if before is not None:  # only the digit rows of lm_head changed
        after = load_file(next(ckpt.glob("*.safetensors")))
        for k, v in before.items():
            if k != "lm_head.weight":
                assert torch.equal(v, after[k]), k
        changed = (before["lm_head.weight"] != after["lm_head.weight"]).any(-1).nonzero().flatten().tolist()
        assert sorted(changed) == sorted(ids)


def test_prior_refuses_tied_embeddings(tiny_tied_fp32, tmp_path):
    ckpt = shutil.copytree(tiny_tied_fp32, tmp_path / "tied")
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        apply_answer_prior(ckpt, 12.0, PROMPTS)
